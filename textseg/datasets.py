"""``datasets.yaml``: public datasets' label ids mapped onto the vocabulary, and MONAI data lists from them."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from textseg.vocabulary import Vocabulary, load_vocabulary

__all__ = ["DEFAULT_DATASETS_PATH", "DatasetError", "DatasetSpec", "load_dataset_specs", "load_datalist", "label_maps"]

DEFAULT_DATASETS_PATH = Path(os.environ.get("TEXTSEG_DATASETS", Path(__file__).resolve().parents[1] / "datasets.yaml"))
"""``$TEXTSEG_DATASETS`` or the repository's ``datasets.yaml``."""

LAYOUTS = ("msd", "paired_folders", "totalsegmentator")


class DatasetError(ValueError):
    """A dataset entry or a local copy of a dataset that cannot be used; the message names what is wrong."""


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of ``datasets.yaml``."""

    name: str
    description: str
    modality: str
    source: str
    licence: str
    layout: str
    labels_map: dict[int, str]
    annotated: tuple[str, ...]
    options: dict = field(default_factory=dict)  # layout-specific keys (images, labels, suffixes, label_file, default_root)


def _parse_spec(name: str, entry: dict, vocabulary: Vocabulary, path: Path) -> DatasetSpec:
    where = f"{path}: dataset {name!r}"
    layout = entry.get("layout")
    if layout not in LAYOUTS:
        raise DatasetError(f"{where}: layout {layout!r} is not one of {LAYOUTS}")
    if "labels_from_vocabulary_ids" in entry:
        first, last = entry["labels_from_vocabulary_ids"]
        labels_map = {i: vocabulary.by_id(i).name for i in range(int(first), int(last) + 1)}
    else:
        labels_map = {int(i): str(n) for i, n in (entry.get("labels_map") or {}).items()}
    if not labels_map:
        raise DatasetError(f"{where}: no labels_map")
    for label_id, label_name in labels_map.items():
        if label_name not in vocabulary:
            raise DatasetError(
                f"{where}: label {label_id} {label_name!r} is not in the vocabulary; closest: {', '.join(vocabulary.closest(label_name, 3))}"
            )
    annotated = entry.get("annotated", "all")
    annotated = tuple(labels_map.values()) if annotated == "all" else tuple(annotated)
    unknown = [a for a in annotated if a not in labels_map.values()]
    if unknown:
        raise DatasetError(f"{where}: annotated names {unknown} are not in its labels_map")
    known = {"description", "modality", "source", "licence", "layout", "labels_map", "labels_from_vocabulary_ids", "annotated"}
    return DatasetSpec(
        name=name, description=str(entry.get("description", "")), modality=str(entry.get("modality", "CT")),
        source=str(entry.get("source", "")), licence=str(entry.get("licence", "")), layout=layout,
        labels_map=labels_map, annotated=annotated, options={k: v for k, v in entry.items() if k not in known},
    )


@lru_cache(maxsize=8)
def _load_specs(path: str) -> dict[str, DatasetSpec]:
    file = Path(path)
    if not file.is_file():
        raise DatasetError(f"datasets file not found: {file} (set TEXTSEG_DATASETS or pass path=)")
    try:
        content = yaml.safe_load(file.read_text())
        entries = content["datasets"]
    except (yaml.YAMLError, KeyError, TypeError) as e:
        raise DatasetError(f"{file}: not a datasets file ({e})") from e
    vocabulary = load_vocabulary()
    return {name: _parse_spec(name, entry, vocabulary, file) for name, entry in entries.items()}


def load_dataset_specs(path: str | os.PathLike | None = None) -> dict[str, DatasetSpec]:
    """Every entry of a datasets file (default :data:`DEFAULT_DATASETS_PATH`), validated against the vocabulary."""
    return dict(_load_specs(str(Path(path or DEFAULT_DATASETS_PATH).resolve())))


def label_maps(path: str | os.PathLike | None = None) -> dict[str, dict[int, str]]:
    """Dataset name -> {label id: vocabulary name}, for :class:`textseg.transforms.LabelToChannelsd`."""
    return {name: dict(spec.labels_map) for name, spec in load_dataset_specs(path).items()}


def _require(path: Path, what: str, dataset: str) -> str:
    if not path.exists():
        raise DatasetError(f"dataset {dataset!r}: {what} not found: {path}")
    return str(path)


def _msd_cases(spec: DatasetSpec, root: Path, section: str) -> list[dict]:
    manifest = root / "dataset.json"
    if not manifest.is_file():
        raise DatasetError(f"dataset {spec.name!r}: {manifest} not found (MSD layout expects dataset.json in the root)")
    try:
        entries = json.loads(manifest.read_text())[section]
    except (ValueError, KeyError) as e:
        raise DatasetError(f"dataset {spec.name!r}: {manifest} has no readable {section!r} list ({e})") from e
    cases = []
    for entry in entries:
        entry = {"image": entry} if isinstance(entry, str) else entry
        case = {"image": _require(root / entry["image"], "image", spec.name)}
        if "label" in entry:
            case["label"] = _require(root / entry["label"], "label file", spec.name)
        if "annotated" in entry:
            case["annotated"] = list(entry["annotated"])
        cases.append(case)
    return cases


def _paired_cases(spec: DatasetSpec, root: Path) -> list[dict]:
    images_dir = root / spec.options.get("images", "imagesTr")
    labels_dir = root / spec.options.get("labels", "labelsTr")
    image_suffix = spec.options.get("image_suffix", ".nii.gz")
    label_suffix = spec.options.get("label_suffix", ".nii.gz")
    images = sorted(images_dir.glob(f"*{image_suffix}"))
    if not images:
        raise DatasetError(f"dataset {spec.name!r}: no '*{image_suffix}' images in {images_dir}")
    cases = []
    for image in images:
        case_id = image.name[: -len(image_suffix)]
        cases.append({"image": str(image), "label": _require(labels_dir / f"{case_id}{label_suffix}", "label file", spec.name)})
    return cases


def _totalsegmentator_cases(spec: DatasetSpec, root: Path) -> list[dict]:
    label_file = spec.options.get("label_file", "segmentations.nii.gz")
    images = sorted(root.glob("*/ct.nii.gz"))
    if not images:
        raise DatasetError(f"dataset {spec.name!r}: no <case>/ct.nii.gz under {root}")
    return [{"image": str(i), "label": _require(i.parent / label_file, "label file", spec.name)} for i in images]


def load_datalist(
    name: str, root: str | os.PathLike | None = None, path: str | os.PathLike | None = None, section: str = "training"
) -> list[dict]:
    """MONAI data dicts for a local copy of a datasets.yaml entry.

    Args:
        name: dataset entry, e.g. ``"phantom"`` or ``"btcv"``.
        root: the dataset's folder (default: the entry's ``default_root``).
        path: datasets file (default :data:`DEFAULT_DATASETS_PATH`).
        section: ``"training"`` or ``"test"`` (MSD layout only; test cases carry labels when the manifest has them).

    Returns:
        ``[{"image", "label", "dataset", "annotated"}]`` with absolute paths; ``annotated`` lists the
        vocabulary names labelled in that case (partial labels).
    """
    specs = load_dataset_specs(path)
    if name not in specs:
        raise DatasetError(f"unknown dataset {name!r}; datasets.yaml has: {', '.join(sorted(specs))}")
    spec = specs[name]
    if root is None:
        if "default_root" not in spec.options:
            raise DatasetError(f"dataset {name!r}: pass the folder of your local copy (it has no default_root)")
        root = spec.options["default_root"]
    root = Path(root).resolve()
    if not root.is_dir():
        raise DatasetError(f"dataset {name!r}: folder not found: {root}")
    if spec.layout == "msd":
        cases = _msd_cases(spec, root, section)
    elif section != "training":
        raise DatasetError(f"dataset {name!r}: layout {spec.layout!r} has no {section!r} section")
    elif spec.layout == "paired_folders":
        cases = _paired_cases(spec, root)
    else:
        cases = _totalsegmentator_cases(spec, root)
    for case in cases:
        case["dataset"] = name
        annotated = case.get("annotated", list(spec.annotated))
        unknown = [a for a in annotated if a not in spec.labels_map.values()]
        if unknown:
            raise DatasetError(f"dataset {name!r}: case {case['image']} lists annotated {unknown}, not in its labels_map")
        case["annotated"] = list(annotated)
    return cases

