"""``datasets.yaml``: public datasets' label ids mapped onto the vocabulary, and MONAI data lists from them.

Each entry of ``datasets.yaml`` says how a local copy of a dataset is laid out and which vocabulary
structure each of its label ids is. :func:`load_datalist` turns a local copy into MONAI data dicts
``{"image", "label", "dataset", "annotated"}``; :func:`label_maps` gives the id -> name maps that
:class:`textseg.transforms.LabelToChannelsd` needs to train one model on several partially labelled
datasets.

Layouts (paths relative to the dataset's root folder):

- ``msd``: the Medical Segmentation Decathlon layout, ``dataset.json`` (or ``datalist``) with
  ``"training"``/``"test"`` lists of ``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}``;
  a training entry may list ``"annotated"`` names (partial labels for that case). Without the file, the
  ``images`` glob and ``labels`` folder are used as in ``paired_folders``.
- ``paired_folders``: images matched by the ``images`` glob, each label in the ``labels`` folder with
  the image's file name, rewritten by ``image_prefix``/``label_prefix`` and ``image_suffix``/``label_suffix``
  (``FLARE22_Tr_0001_0000.nii.gz`` -> ``FLARE22_Tr_0001.nii.gz``, ``img0001.nii.gz`` -> ``label0001.nii.gz``).
- ``case_folders``: one folder per case; images matched by the ``images`` glob (``"*/imaging.nii.gz"``),
  the label is the one file matching the ``labels`` glob in the image's folder.
- ``totalsegmentator``: ``case_folders`` with ``images: "*/ct.nii.gz"`` and a combined label map
  ``labels: "segmentations.nii.gz"`` in each case folder; build it from the published per-structure
  masks ``<case>/segmentations/<name>.nii.gz`` with :func:`combine_totalsegmentator_masks`.

Every layout may restrict the cases with ``include``, a file-name pattern (``"amos_0[0-4]*"``).
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from textseg.vocabulary import Vocabulary, load_vocabulary

__all__ = [
    "DEFAULT_DATASETS_PATH",
    "DatasetError",
    "DatasetSpec",
    "combine_totalsegmentator_masks",
    "label_maps",
    "load_datalist",
    "load_datalists",
    "load_dataset_specs",
    "split_slabs",
]

DEFAULT_DATASETS_PATH = Path(os.environ.get("TEXTSEG_DATASETS", Path(__file__).resolve().parents[1] / "datasets.yaml"))
"""``$TEXTSEG_DATASETS`` or the repository's ``datasets.yaml`` (it is not installed with the package)."""

LAYOUTS = ("msd", "paired_folders", "case_folders", "totalsegmentator")
_LAYOUT_DEFAULTS: dict[str, dict[str, str]] = {
    "msd": {"images": "imagesTr/*.nii.gz", "labels": "labelsTr", "datalist": "dataset.json"},
    "paired_folders": {"images": "imagesTr/*.nii.gz", "labels": "labelsTr"},
    "case_folders": {},
    "totalsegmentator": {"images": "*/ct.nii.gz", "labels": "segmentations.nii.gz"},
}
_COMMON_KEYS = {"description", "modality", "source", "licence", "layout", "labels_map", "labels_from_vocabulary_ids", "annotated"}
_OPTION_KEYS = {"images", "labels", "datalist", "image_prefix", "image_suffix", "label_prefix", "label_suffix", "include", "default_root"}


class DatasetError(ValueError):
    """A dataset entry, or a local copy of a dataset, that cannot be used; the message names what is wrong."""


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of ``datasets.yaml``.

    Attributes:
        name: the entry's key (``"btcv"``).
        description, modality, source, licence: documentation of the dataset.
        layout: one of :data:`LAYOUTS`.
        images: glob of the image files, relative to the dataset's root.
        labels: label folder (``msd``/``paired_folders``) or label file glob inside a case folder.
        labels_map: dataset label id -> vocabulary canonical name.
        annotated: names annotated in every case (the default for cases that do not list their own).
        options: the other layout keys (``datalist``, ``image_prefix``, ``image_suffix``, ``label_prefix``,
            ``label_suffix``, ``include``, ``default_root``).
    """

    name: str
    description: str
    modality: str
    source: str
    licence: str
    layout: str
    images: str
    labels: str
    labels_map: dict[int, str]
    annotated: tuple[str, ...]
    options: dict = field(default_factory=dict)


def _parse_spec(name: str, entry: object, vocabulary: Vocabulary, path: Path) -> DatasetSpec:
    where = f"{path}: dataset {name!r}"
    if not isinstance(entry, dict):
        raise DatasetError(f"{where}: the entry is not a mapping")
    unknown_keys = set(entry) - _COMMON_KEYS - _OPTION_KEYS
    if unknown_keys:
        raise DatasetError(f"{where}: unknown keys {sorted(unknown_keys)} (allowed: {sorted(_COMMON_KEYS | _OPTION_KEYS)})")
    layout = entry.get("layout")
    if layout not in LAYOUTS:
        raise DatasetError(f"{where}: layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    if "labels_from_vocabulary_ids" in entry:
        try:
            first, last = (int(i) for i in entry["labels_from_vocabulary_ids"])
            labels_map = {i: vocabulary.by_id(i).name for i in range(first, last + 1)}
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{where}: labels_from_vocabulary_ids must be [first, last] vocabulary ids ({e})") from e
    else:
        raw = entry.get("labels_map") or {}
        if not isinstance(raw, dict):
            raise DatasetError(f"{where}: labels_map must map label ids to vocabulary names")
        try:
            labels_map = {int(i): str(n) for i, n in raw.items()}
        except ValueError as e:
            raise DatasetError(f"{where}: labels_map keys must be integer label ids ({e})") from e
    if not labels_map:
        raise DatasetError(f"{where}: no labels_map")
    for label_id, label_name in labels_map.items():
        if label_id < 1:
            raise DatasetError(f"{where}: label {label_id} {label_name!r}: label ids start at 1 (0 is background)")
        if label_name not in vocabulary:
            closest = ", ".join(vocabulary.closest(label_name, 5))
            raise DatasetError(f"{where}: label {label_id} {label_name!r} is not in the vocabulary; closest vocabulary terms: {closest}")
    names = list(labels_map.values())
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DatasetError(f"{where}: labels_map gives {repeated} to more than one label id")
    annotated = entry.get("annotated", "all")
    if annotated == "all":
        annotated = tuple(names)
    elif isinstance(annotated, list):
        annotated = tuple(str(a) for a in annotated)
    else:
        raise DatasetError(f"{where}: annotated must be 'all' or a list of names, got {annotated!r}")
    unknown = [a for a in annotated if a not in names]
    if unknown:
        raise DatasetError(f"{where}: annotated names {unknown} are not in its labels_map")
    options = {**_LAYOUT_DEFAULTS[layout], **{k: v for k, v in entry.items() if k in _OPTION_KEYS}}
    missing = [k for k in ("images", "labels") if not options.get(k)]
    if missing:
        raise DatasetError(f"{where}: layout {layout!r} needs {' and '.join(missing)}")
    return DatasetSpec(
        name=name,
        description=str(entry.get("description", "")),
        modality=str(entry.get("modality", "CT")),
        source=str(entry.get("source", "")),
        licence=str(entry.get("licence", "")),
        layout=layout,
        images=str(options.pop("images")),
        labels=str(options.pop("labels")),
        labels_map=labels_map,
        annotated=annotated,
        options=options,
    )


@lru_cache(maxsize=16)
def _load_specs(path: str, mtime_ns: int, vocabulary: Vocabulary) -> dict[str, DatasetSpec]:
    file = Path(path)
    try:
        content = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise DatasetError(f"{file}: cannot read the datasets file ({e})") from e
    if not isinstance(content, dict) or not isinstance(content.get("datasets"), dict):
        raise DatasetError(f"{file}: not a datasets file (expected a 'datasets' mapping)")
    if content.get("version", 1) != 1:
        raise DatasetError(f"{file}: version {content['version']!r} is not supported (supported: 1)")
    return {str(name): _parse_spec(str(name), entry, vocabulary, file) for name, entry in content["datasets"].items()}


def load_dataset_specs(path: str | os.PathLike | None = None, vocabulary: Vocabulary | None = None) -> dict[str, DatasetSpec]:
    """Every entry of a datasets file, validated against the vocabulary.

    Args:
        path: datasets file; default :data:`DEFAULT_DATASETS_PATH`.
        vocabulary: default: the packaged vocabulary.

    Raises:
        DatasetError: the file is missing or invalid, or a label name is not in the vocabulary (the
            message names the dataset, the label id and the closest vocabulary terms).
    """
    file = Path(path or DEFAULT_DATASETS_PATH).resolve()
    if not file.is_file():
        hint = " (datasets.yaml lives in the textseg repository; pass path= or set TEXTSEG_DATASETS)" if path is None else ""
        raise DatasetError(f"datasets file not found: {file}{hint}")
    return dict(_load_specs(str(file), file.stat().st_mtime_ns, vocabulary or load_vocabulary()))


def label_maps(path: str | os.PathLike | None = None, vocabulary: Vocabulary | None = None) -> dict[str, dict[int, str]]:
    """Dataset name -> {label id: vocabulary name}, for :class:`textseg.transforms.LabelToChannelsd`."""
    return {name: dict(spec.labels_map) for name, spec in load_dataset_specs(path, vocabulary).items()}


def _missing(spec: DatasetSpec, what: str, path: Path) -> DatasetError:
    return DatasetError(f"dataset {spec.name!r}: {what} not found: {path}")


def _included(spec: DatasetSpec, image: Path) -> bool:
    pattern = spec.options.get("include")
    return pattern is None or fnmatch.fnmatch(image.name, str(pattern))


def _glob_images(spec: DatasetSpec, root: Path) -> list[Path]:
    # names starting with '.' are skipped: MSD archives carry macOS '._x.nii.gz' resource files
    images = sorted(p for p in root.glob(spec.images) if p.is_file() and not p.name.startswith(".") and _included(spec, p))
    if not images:
        include = f" (include: {spec.options['include']!r})" if "include" in spec.options else ""
        raise DatasetError(f"dataset {spec.name!r}: no images match {str(root / spec.images)!r}{include}")
    return images


def _label_name(spec: DatasetSpec, image_name: str) -> str:
    """An image's file name -> its label's file name (prefix/suffix rules of the entry)."""
    opts = spec.options
    image_prefix, image_suffix = str(opts.get("image_prefix", "")), str(opts.get("image_suffix", ""))
    if not (image_name.startswith(image_prefix) and image_name.endswith(image_suffix)):
        raise DatasetError(
            f"dataset {spec.name!r}: image {image_name!r} does not start with {image_prefix!r} and end with {image_suffix!r}"
        )
    core = image_name[len(image_prefix) : len(image_name) - len(image_suffix)]
    return f"{opts.get('label_prefix', '')}{core}{opts.get('label_suffix', '')}"


def _paired_cases(spec: DatasetSpec, root: Path) -> list[dict]:
    cases = []
    for image in _glob_images(spec, root):
        label = root / spec.labels / _label_name(spec, image.name)
        if not label.is_file():
            raise _missing(spec, "label file", label)
        cases.append({"image": str(image), "label": str(label)})
    return cases


def _case_folder_cases(spec: DatasetSpec, root: Path) -> list[dict]:
    cases = []
    for image in _glob_images(spec, root):
        labels = sorted(image.parent.glob(spec.labels))
        if len(labels) != 1:
            if not labels and spec.layout == "totalsegmentator" and (image.parent / "segmentations").is_dir():
                raise DatasetError(
                    f"dataset {spec.name!r}: label file not found: {image.parent / spec.labels}; the case has per-structure "
                    "masks in segmentations/: combine them with textseg.datasets.combine_totalsegmentator_masks"
                )
            if not labels:
                raise _missing(spec, "label file", image.parent / spec.labels)
            raise DatasetError(
                f"dataset {spec.name!r}: {len(labels)} label files match {spec.labels!r} in {image.parent}: {[p.name for p in labels]}"
            )
        cases.append({"image": str(image), "label": str(labels[0])})
    return cases


def _msd_cases(spec: DatasetSpec, root: Path, section: str) -> list[dict]:
    manifest = root / str(spec.options.get("datalist", "dataset.json"))
    if not manifest.is_file():
        if section != "training":
            raise DatasetError(f"dataset {spec.name!r}: the {section!r} section needs {manifest}, which is missing")
        return _paired_cases(spec, root)
    try:
        content = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"dataset {spec.name!r}: cannot read {manifest} ({e})") from e
    sections = [k for k, v in content.items() if isinstance(v, list)] if isinstance(content, dict) else []
    if section not in sections:
        raise DatasetError(f"dataset {spec.name!r}: {manifest} has no {section!r} list (it has: {', '.join(sections) or 'none'})")
    cases = []
    for k, entry in enumerate(content[section]):
        entry = {"image": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, Mapping) or "image" not in entry:
            raise DatasetError(f"dataset {spec.name!r}: {manifest} {section}[{k}] has no 'image'")
        image = (root / str(entry["image"])).resolve()
        if not _included(spec, image):
            continue
        if not image.is_file():
            raise _missing(spec, "image", image)
        case: dict = {"image": str(image)}
        if "label" in entry:
            label = (root / str(entry["label"])).resolve()
            if not label.is_file():
                raise _missing(spec, "label file", label)
            case["label"] = str(label)
        elif section == "training":
            raise DatasetError(f"dataset {spec.name!r}: {manifest} {section}[{k}] ({entry['image']}) has no 'label'")
        if "annotated" in entry:
            case["annotated"] = [str(a) for a in entry["annotated"]]
        cases.append(case)
    if not cases:
        raise DatasetError(
            f"dataset {spec.name!r}: {manifest} lists no {section!r} cases"
            + (f" matching {spec.options['include']!r}" if "include" in spec.options else "")
        )
    return cases


def load_datalist(
    name: str,
    root: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
    vocabulary: Vocabulary | None = None,
    section: str = "training",
) -> list[dict]:
    """MONAI data dicts for a local copy of a datasets file entry.

    Args:
        name: dataset entry, e.g. ``"phantom"`` or ``"btcv"``.
        root: the folder of the local copy (default: the entry's ``default_root``, relative to the
            working directory).
        path: datasets file (default :data:`DEFAULT_DATASETS_PATH`).
        vocabulary: default: the packaged vocabulary.
        section: ``"training"``; other manifest lists (``"test"``, ``"validation"``) for the ``msd`` layout,
            whose cases carry a label only when the manifest gives one.

    Returns:
        ``[{"image", "label", "dataset", "annotated"}]`` with absolute paths, sorted as the manifest (or by
        file name); ``annotated`` lists the vocabulary names labelled in that case (partial labels).

    Raises:
        DatasetError: an unknown dataset (the message lists the known ones), a missing root, no matching
            image, a missing label file (named), or a case listing annotated names outside the labels_map.
    """
    specs = load_dataset_specs(path, vocabulary)
    if name not in specs:
        raise DatasetError(f"unknown dataset {name!r}; datasets.yaml has: {', '.join(sorted(specs))}")
    spec = specs[name]
    if root is None:
        if "default_root" not in spec.options:
            raise DatasetError(f"dataset {name!r}: pass the folder of your local copy (the entry has no default_root)")
        root = spec.options["default_root"]
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"dataset {name!r}: folder not found: {root}")
    if spec.layout == "msd":
        cases = _msd_cases(spec, root, section)
    elif section != "training":
        raise DatasetError(f"dataset {name!r}: layout {spec.layout!r} has only the 'training' section, not {section!r}")
    elif spec.layout == "paired_folders":
        cases = _paired_cases(spec, root)
    else:
        cases = _case_folder_cases(spec, root)
    known = set(spec.labels_map.values())
    for case in cases:
        case["dataset"] = name
        annotated = case.get("annotated", list(spec.annotated))
        unknown = [a for a in annotated if a not in known]
        if unknown:
            raise DatasetError(f"dataset {name!r}: case {case['image']} lists annotated {unknown}, which are not in its labels_map")
        case["annotated"] = list(annotated)
    return cases


def load_datalists(
    sources: Sequence[Mapping | str],
    path: str | os.PathLike | None = None,
    vocabulary: Vocabulary | None = None,
) -> list[dict]:
    """Mix several datasets (each with its own label set) into one data list, for partial-label training.

    Args:
        sources: dataset names, or ``{"name", "root", "section"}`` mappings (root and section optional),
            as :func:`load_datalist` takes them.
        path: datasets file (default :data:`DEFAULT_DATASETS_PATH`).
        vocabulary: default: the packaged vocabulary.

    Returns:
        the cases of all sources, interleaved round-robin (so that the last cases, often held out for
        validation, come from every dataset); each keeps its ``dataset`` and ``annotated`` keys.

    Raises:
        DatasetError: no source, a source without a name, or any error of :func:`load_datalist`.
    """
    if not sources:
        raise DatasetError("no dataset to load: give at least one datasets.yaml entry")
    lists = []
    for source in sources:
        source = {"name": source} if isinstance(source, str) else dict(source)
        unknown = set(source) - {"name", "root", "section"}
        if "name" not in source or unknown:
            raise DatasetError(f"a dataset source needs a 'name' and may have 'root' and 'section', got {sorted(source)}")
        lists.append(load_datalist(source["name"], source.get("root"), path, vocabulary, source.get("section", "training")))
    mixed = []
    for i in range(max(len(cases) for cases in lists)):
        mixed.extend(cases[i] for cases in lists if i < len(cases))
    return mixed


def split_slabs(cases: Sequence[Mapping], holdout: Mapping[str, Sequence[float]]) -> dict[str, list[dict]]:
    """Hold a band of slices of each case out of training, for validation on a patient the model trained on.

    A case of a dataset named in ``holdout`` (``{"totalseg_example": [0.0, 0.15]}``, fractions of the
    inferior-superior axis) becomes up to two training cases (``slab`` below and above the band) and one
    validation case (``slab`` = the band); :class:`textseg.augment.CropSlabd` crops them. Cases of other
    datasets train whole.

    Returns:
        ``{"training": [...], "validation": [...]}``, copies of the cases with a ``slab`` key added.
    """
    split: dict[str, list[dict]] = {"training": [], "validation": []}
    for case in cases:
        band = holdout.get(case.get("dataset", ""))
        if band is None:
            split["training"].append(dict(case))
            continue
        low, high = (float(v) for v in band)
        if not 0.0 <= low < high <= 1.0:
            raise DatasetError(f"holdout band {list(band)} of dataset {case.get('dataset')!r} must be fractions 0 <= low < high <= 1")
        split["training"].extend(dict(case, slab=part) for part in ([0.0, low], [high, 1.0]) if part[1] - part[0] > 0.02)
        split["validation"].append(dict(case, slab=[low, high]))
    return split


def combine_totalsegmentator_masks(
    case_dir: str | os.PathLike,
    output: str | os.PathLike | None = None,
    vocabulary: Vocabulary | None = None,
    masks_dir: str = "segmentations",
) -> Path:
    """Combine a TotalSegmentator case's per-structure masks into one label map of vocabulary ids.

    ``<case_dir>/<masks_dir>/<name>.nii.gz`` (one binary mask per structure, as published) becomes
    ``output`` (default ``<case_dir>/segmentations.nii.gz``, the ``totalsegmentator`` entry's label file),
    uint8 with the vocabulary id of each structure; where masks overlap, the higher id wins.

    Raises:
        DatasetError: no masks, a mask whose name is not in the vocabulary, or masks of different shapes.
    """
    import nibabel as nib
    import numpy as np

    vocabulary = vocabulary or load_vocabulary()
    folder = Path(case_dir) / masks_dir
    masks = sorted(folder.glob("*.nii.gz"))
    if not masks:
        raise DatasetError(f"no per-structure masks (*.nii.gz) in {folder}")
    names = {p: p.name[: -len(".nii.gz")] for p in masks}
    unknown = [n for n in names.values() if n not in vocabulary]
    if unknown:
        raise DatasetError(
            f"{folder}: masks {unknown} are not vocabulary structures; "
            f"closest to {unknown[0]!r}: {', '.join(vocabulary.closest(unknown[0], 3))}"
        )
    if max(vocabulary[n].id for n in names.values()) > 255:
        raise DatasetError(f"{folder}: vocabulary ids above 255 do not fit a uint8 label map")
    combined, reference = None, None
    for mask_path in sorted(masks, key=lambda p: vocabulary[names[p]].id):
        image = nib.load(str(mask_path))
        mask = np.asanyarray(image.dataobj) > 0
        if combined is None:
            combined, reference = np.zeros(mask.shape, np.uint8), image
        elif mask.shape != combined.shape:
            raise DatasetError(f"{mask_path}: shape {mask.shape} differs from {combined.shape} of the other masks")
        combined[mask] = vocabulary[names[mask_path]].id
    out = Path(output) if output is not None else Path(case_dir) / "segmentations.nii.gz"
    header = reference.header.copy()
    header.set_data_dtype(np.uint8)
    nib.save(nib.Nifti1Image(combined, reference.affine, header), str(out))
    return out
