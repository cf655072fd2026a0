"""Python API: segment an image from a text prompt with a textseg bundle, and score it."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from textseg.bundle import DEFAULT_BUNDLE, SHIPPED_CONFIGS, read_config_value, run_bundle
from textseg.files import write_atomic
from textseg.prompts import resolution_structures, resolve
from textseg.visualize import overlay_png
from textseg.vocabulary import load_vocabulary

__all__ = ["SegmentationResult", "check_image_path", "segment", "dice_per_structure"]


@dataclass
class SegmentationResult:
    """What :func:`segment` wrote: the label map, one mask per structure, the label table and an overlay."""

    prompt: str
    targets: list[str]
    label_map: Path
    masks: dict[str, Path]
    labels: list[dict]
    overlay: Path | None
    report: Path


def _case_name(image: Path) -> str:
    name = image.name
    for suffix in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def check_image_path(image: str | os.PathLike) -> Path:
    """Fail early, naming the file, on a missing or unreadable image; a folder is taken as a DICOM series."""
    path = Path(image)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if path.is_dir():
        if not any(p.is_file() for p in path.iterdir()):
            raise ValueError(f"{path}: empty folder, expected a DICOM series.")
        return path
    if path.name.endswith((".nii", ".nii.gz")):
        try:
            loaded = nib.load(str(path))
            shape = loaded.shape
            np.asarray(loaded.dataobj)  # reads every byte: a truncated or corrupt file fails here
        except Exception as e:
            raise ValueError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e}).") from e
        if len(shape) == 4 and shape[3] == 1:
            return path
        if len(shape) != 3:
            raise ValueError(f"{path}: expected a 3D volume, got a {len(shape)}D image of shape {tuple(shape)}.")
    return path


def segment(
    image: str | os.PathLike,
    prompt: str,
    output_dir: str | os.PathLike = "outputs",
    bundle_dir: str | os.PathLike = DEFAULT_BUNDLE,
    configs: Sequence[str] = SHIPPED_CONFIGS,
    overlay: bool = True,
    **override,
) -> SegmentationResult:
    """Segment the structures a prompt names; every output keeps the input image's grid and affine.

    Writes, under ``output_dir``: ``<case>_seg.nii.gz`` (label map of vocabulary ids),
    ``<case>_masks/<structure>.nii.gz`` (binary masks), ``<case>_labels.json`` (ids, names, colours) and
    ``<case>_overlay.png``. Every file is written to a temporary name first, so an error leaves earlier
    results intact.

    Args:
        image: NIfTI file or DICOM folder.
        prompt: free text, e.g. "segment the liver and kidneys".
        output_dir: destination folder.
        bundle_dir: the bundle (with ``models/model.pt``).
        configs: bundle configs to merge; default the shipped real-CT model's, ``("inference.json", "real_ct.json")``;
            ``("inference.json", "tiny.json")`` is the phantom-trained tiny model.
        overlay: also write the overlay PNG.
        override: more bundle config overrides.
    """
    image = check_image_path(image).resolve()
    class_names = read_config_value(bundle_dir, configs, "class_names")
    resolution = resolve(prompt)
    resolution_structures(resolution, allowed=class_names)  # fail before loading any model
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    case = _case_name(image)
    vocabulary = load_vocabulary()
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".tmp-") as work:
        run_bundle(
            bundle_dir,
            configs,
            workflow_type="infer",
            input_dict={"image": str(image), "prompt": resolution},  # the prompt is data, resolved once, here
            output_dir=work,
            **override,
        )
        written = sorted(Path(work).glob("*_seg.nii.gz"))
        if len(written) != 1:
            raise RuntimeError(f"bundle inference wrote {len(written)} label maps, expected 1: {written}")
        label_img = nib.load(str(written[0]))
        label_data = np.asarray(label_img.dataobj)
        # named structures, then the answers to position/size queries (what else the label map kept)
        answers = [vocabulary.by_id(int(i)).name for i in np.unique(label_data) if i > 0]
        targets = resolution.structures + [n for n in answers if n not in resolution.structures]
        labels = vocabulary.label_table(targets)
        mask_dir = Path(work) / f"{case}_masks"
        mask_dir.mkdir()
        masks = {}
        for row in labels:
            mask = nib.Nifti1Image((label_data == row["id"]).astype(np.uint8), label_img.affine, label_img.header)
            mask.set_data_dtype(np.uint8)
            nib.save(mask, str(mask_dir / f"{row['name']}.nii.gz"))
            masks[row["name"]] = output_dir / f"{case}_masks" / f"{row['name']}.nii.gz"
        volumes = {
            row["name"]: float((label_data == row["id"]).sum() * abs(np.linalg.det(label_img.affine[:3, :3])) / 1000.0) for row in labels
        }
        report = {
            "image": str(image),
            "prompt": prompt,
            "targets": targets,
            "labels": labels,
            "volume_ml": volumes,
            "resolution": resolution.to_dict(),
        }
        write_atomic(Path(work) / f"{case}_labels.json", json.dumps(report, indent=2))
        if overlay:
            overlay_png(
                image if image.is_file() and image.name.endswith((".nii", ".nii.gz")) else _as_nifti(image, label_img, work),
                written[0],
                labels,
                Path(work) / f"{case}_overlay.png",
                title=prompt,
            )
        # move into place: replace file by file, folders last
        final_label = output_dir / f"{case}_seg.nii.gz"
        os.replace(written[0], final_label)
        for name in (f"{case}_labels.json", f"{case}_overlay.png"):
            if (Path(work) / name).exists():
                os.replace(Path(work) / name, output_dir / name)
        final_masks = output_dir / f"{case}_masks"
        if final_masks.exists():
            shutil.rmtree(final_masks)
        os.replace(mask_dir, final_masks)
    return SegmentationResult(
        prompt=prompt,
        targets=targets,
        label_map=final_label,
        masks=masks,
        labels=labels,
        overlay=output_dir / f"{case}_overlay.png" if overlay else None,
        report=output_dir / f"{case}_labels.json",
    )


def _as_nifti(image: Path, like: nib.Nifti1Image, work: str) -> Path:
    """Read a non-NIfTI image (DICOM folder) with MONAI's ITK reader into a NIfTI beside ``work`` for display."""
    from monai.transforms import LoadImage

    data = LoadImage(image_only=True, ensure_channel_first=False)(str(image))
    path = Path(work) / "display_image.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.asarray(data.affine, dtype=np.float64)), str(path))
    return path


def dice_per_structure(
    prediction: str | os.PathLike,
    reference: str | os.PathLike,
    targets: Sequence[str],
    reference_map: Mapping[int, str],
) -> dict[str, float]:
    """Dice of each target between a predicted label map (vocabulary ids) and a reference label map
    (dataset ids, named by ``reference_map``), on the reference grid; both must share it."""
    from textseg.metrics import binary_dice  # imports torch: `textseg resolve` imports this module without it

    vocabulary = load_vocabulary()
    pred_img, ref_img = nib.load(str(prediction)), nib.load(str(reference))
    if pred_img.shape[:3] != ref_img.shape[:3] or not np.allclose(pred_img.affine, ref_img.affine, atol=1e-3):
        raise ValueError(f"{prediction} and {reference} are not on the same grid.")
    pred = np.asarray(pred_img.dataobj)
    ref = np.asarray(ref_img.dataobj)
    ids_by_name = {name: int(i) for i, name in reference_map.items()}
    scores = {}
    for name in targets:
        if name not in ids_by_name:
            raise KeyError(f"the reference has no label for {name!r}; it has {sorted(ids_by_name)}")
        scores[name] = binary_dice(pred == vocabulary[name].id, ref == ids_by_name[name])
    return scores
