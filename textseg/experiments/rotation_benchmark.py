"""Rotation benchmark: Dice of a trained bundle on rotated scans, with and without canonicalization.

Held-out phantoms are generated rotated (the anatomy turns inside a fixed, axis-aligned grid, so the ground
truth is exact); the real CT, when given, is rotated by resampling and compared with the model's own
prediction on the unrotated scan (its reference labels come from another model). Each image is segmented
through the bundle's ``inference.json`` (+ overlays), once as it is (``ct_transforms#canonicalize`` false)
and once canonicalized (:class:`textseg.canonical.CanonicalizeRotationd`), and the predictions are scored on
the image's own grid.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from textseg.canonical import rotation_matrix
from textseg.files import atomic_path
from textseg.metrics import binary_dice

__all__ = [
    "BENCHMARK_ROTATIONS",
    "rotate_volume",
    "make_rotated_phantoms",
    "make_rotated_ct",
    "segment_cases",
    "run_rotation_benchmark",
    "summarize",
    "markdown_table",
    "write_report",
]

BENCHMARK_ROTATIONS: dict[str, tuple[float, float, float]] = {
    "none": (0.0, 0.0, 0.0),
    "z 15°": (0.0, 0.0, 15.0),
    "z 45°": (0.0, 0.0, 45.0),
    "z 90°": (0.0, 0.0, 90.0),
    "x 5.73°": (5.73, 0.0, 0.0),
    "y 5.73°": (0.0, 5.73, 0.0),
}
"""Name -> rotation ``(ax, ay, az)`` in degrees (the SegVol reproduction's failure cases: 45° about z, 0.1 rad about x/y)."""


def rotate_volume(
    volume: np.ndarray,
    affine: np.ndarray,
    angles_deg: Sequence[float],
    order: int = 1,
    pad_value: float = -1024.0,
    centre: Sequence[float] | None = None,
) -> np.ndarray:
    """Rotate a volume's content in world space about ``centre`` (default: the grid centre), on the same grid.

    Args:
        volume: (X, Y, Z) array.
        affine: its 4x4 voxel -> world affine.
        angles_deg: ``(ax, ay, az)``, see :func:`textseg.canonical.rotation_matrix`.
        order: spline order (0 for label maps).
        pad_value: value where the rotated content leaves nothing.
        centre: world point (mm) to rotate about.

    Returns:
        (X, Y, Z) array: what was at world ``p`` is now at ``R (p - c) + c``.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if centre is None:
        centre = affine[:3, :3] @ ((np.asarray(volume.shape) - 1) / 2.0) + affine[:3, 3]
    centre = np.asarray(centre, dtype=np.float64)
    world_back = np.eye(4)
    world_back[:3, :3] = rotation_matrix(angles_deg).T
    world_back[:3, 3] = centre - rotation_matrix(angles_deg).T @ centre
    mapping = np.linalg.inv(affine) @ world_back @ affine  # new voxel -> old voxel
    out = ndimage.affine_transform(
        volume.astype(np.float32) if order > 0 else volume,
        mapping[:3, :3],
        offset=mapping[:3, 3],
        output_shape=volume.shape,
        order=order,
        mode="constant",
        cval=pad_value,
    )
    return out.astype(volume.dtype, copy=False)


def _save(data: np.ndarray, affine: np.ndarray, path: Path, dtype) -> None:
    img = nib.Nifti1Image(data.astype(dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def make_rotated_phantoms(
    out_dir: str | os.PathLike,
    seeds: Sequence[int],
    rotations: Mapping[str, Sequence[float]] = BENCHMARK_ROTATIONS,
    spacing: Sequence[float] = (4.0, 4.0, 4.0),
    shape: Sequence[int] | None = None,
) -> list[dict]:
    """Write one phantom per seed and rotation (the same anatomy for a seed); returns the cases.

    Returns:
        dicts with ``image``, ``label`` (NIfTI paths), ``source`` (``phantom <seed>``) and ``rotation`` (a name).
    """
    from textseg.phantom import make_phantom

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = []
    for seed in seeds:
        for r, (name, angles) in enumerate(rotations.items()):
            stem = f"phantom{seed}_rot{r}"
            image, label = out_dir / f"{stem}.nii.gz", out_dir / f"{stem}_label.nii.gz"
            if not (image.exists() and label.exists()):
                make_phantom(seed, shape=shape, spacing=spacing, rotation_deg=tuple(angles)).save(image, label)
            cases.append({"image": str(image), "label": str(label), "source": f"phantom {seed}", "rotation": name})
    return cases


def make_rotated_ct(
    ct_path: str | os.PathLike, out_dir: str | os.PathLike, rotations: Mapping[str, Sequence[float]] = BENCHMARK_ROTATIONS
) -> list[dict]:
    """Write the real CT rotated about its grid centre for each rotation (air outside); returns the cases."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    img = nib.load(str(ct_path))
    volume = np.asarray(img.dataobj, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"{ct_path}: expected a 3D CT, got shape {volume.shape}.")
    cases = []
    for r, (name, angles) in enumerate(rotations.items()):
        path = out_dir / f"ct_rot{r}.nii.gz"
        if not path.exists():
            rotated = volume if not any(angles) else rotate_volume(volume, img.affine, angles, order=1, pad_value=-1024.0)
            _save(np.round(rotated), img.affine, path, np.int16)
        cases.append({"image": str(path), "source": "real CT", "rotation": name, "angles": list(angles)})
    return cases


def segment_cases(
    cases: Sequence[Mapping],
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    canonicalize: bool,
    prompt: str,
    bundle_dir: str | os.PathLike,
    configs: Sequence[str] = ("inference.json", "tiny.json"),
) -> dict[str, Path]:
    """Segment every case's image with the bundle in one evaluator run; returns image path -> label map path."""
    from textseg.bundle import run_bundle

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    run_bundle(
        bundle_dir,
        configs,
        workflow_type="infer",
        datalist=[{"image": str(Path(c["image"]).resolve()), "prompt": prompt} for c in cases],
        output_dir=str(output_dir.resolve()),
        ckpt_path=str(Path(checkpoint).resolve()),
        **{"ct_transforms#canonicalize": bool(canonicalize)},
    )
    outputs = {}
    for case in cases:
        stem = Path(case["image"]).name.removesuffix(".nii.gz")
        path = output_dir / f"{stem}_seg.nii.gz"
        if not path.exists():
            raise RuntimeError(f"the bundle wrote no label map for {case['image']} (expected {path}).")
        outputs[case["image"]] = path
    return outputs


def run_rotation_benchmark(
    checkpoint: str | os.PathLike,
    work_dir: str | os.PathLike,
    seeds: Sequence[int] = (1001, 1002),
    rotations: Mapping[str, Sequence[float]] = BENCHMARK_ROTATIONS,
    spacing: Sequence[float] = (4.0, 4.0, 4.0),
    shape: Sequence[int] | None = None,
    real_ct: str | os.PathLike | None = None,
    bundle_dir: str | os.PathLike = "bundles/text_prompted_ct_segmentation",
    configs: Sequence[str] = ("inference.json", "tiny.json"),
) -> dict:
    """Segment rotated phantoms (and the real CT) with and without canonicalization and score them.

    Args:
        checkpoint: trained weights for ``configs``.
        work_dir: where the rotated images and predictions go.
        seeds: phantom seeds (keep them out of the training seeds; the demo trains on seeds 0-25).
        rotations: name -> ``(ax, ay, az)`` degrees; the first is the unrotated reference.
        spacing, shape: phantom grid (default 4 mm, the tiny bundle's resolution).
        real_ct: optional CT (NIfTI) scored against the model's own prediction on the unrotated CT.
        bundle_dir, configs: the bundle and its config files.

    Returns:
        ``{"rows": [...], "summary": [...], "seconds": ..., "inference_seconds": {mode: s}}``: one row per image,
        mode and structure; the summary per data kind, mode and rotation.
    """
    from textseg.bundle import read_config_value
    from textseg.phantom import PHANTOM_LABELS
    from textseg.vocabulary import load_vocabulary

    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}: train one first (`make demo`, or scripts/bench_rotation.py trains it).")
    if not rotations:
        raise ValueError("no rotations to benchmark.")
    started = time.time()
    work_dir = Path(work_dir)
    vocabulary = load_vocabulary()
    class_names = read_config_value(bundle_dir, "inference.json", "class_names")
    prompt = ", ".join(class_names)
    cases = make_rotated_phantoms(work_dir / "images", seeds, rotations, spacing, shape)
    if real_ct is not None:
        cases += make_rotated_ct(real_ct, work_dir / "images", rotations)
    rows = []
    predictions, mode_seconds = {}, {}
    for mode, canonical in (("affine only", False), ("canonicalized", True)):
        tick = time.time()
        predictions[mode] = segment_cases(
            cases, checkpoint, work_dir / ("canonical" if canonical else "plain"), canonical, prompt, bundle_dir, configs
        )
        mode_seconds[mode] = round(time.time() - tick, 1)
    ct_reference = None
    for case in cases:
        if "label" in case:
            ref_ids = np.asarray(nib.load(case["label"]).dataobj)
            reference = {name: ref_ids == i for i, name in PHANTOM_LABELS.items() if name in class_names}
        else:  # real CT: the unrotated plain prediction, rotated like this case
            if ct_reference is None:
                unrotated = next(c for c in cases if c["source"] == "real CT" and not any(c["angles"]))
                ref_img = nib.load(str(predictions["affine only"][unrotated["image"]]))
                ct_reference = (np.asarray(ref_img.dataobj), ref_img.affine)
            ids, affine = ct_reference
            rotated = ids if not any(case["angles"]) else rotate_volume(ids, affine, case["angles"], order=0, pad_value=0)
            reference = {name: rotated == vocabulary[name].id for name in class_names if (ids == vocabulary[name].id).sum() >= 50}
        for mode in predictions:
            pred = np.asarray(nib.load(str(predictions[mode][case["image"]])).dataobj)
            if pred.shape != next(iter(reference.values())).shape:
                raise RuntimeError(f"{case['image']}: prediction shape {pred.shape} is not the image's.")
            for name, ref in reference.items():
                rows.append(
                    {
                        "source": case["source"],
                        "rotation": case["rotation"],
                        "mode": mode,
                        "structure": name,
                        "dice": binary_dice(pred == vocabulary[name].id, ref),
                    }
                )
    return {
        "rows": rows,
        "summary": summarize(rows, list(rotations)),
        "seconds": round(time.time() - started, 1),
        "inference_seconds": mode_seconds,
        "images": len(cases),
        "checkpoint": str(checkpoint),
        "seeds": list(seeds),
        "rotations": {k: list(v) for k, v in rotations.items()},
        "real_ct": str(real_ct) if real_ct else None,
    }


def summarize(rows: Sequence[Mapping], rotation_order: Sequence[str]) -> list[dict]:
    """Mean Dice per data kind (phantom / real CT), rotation and mode, and its ratio to the unrotated Dice."""
    summary = []
    kinds = sorted({"phantom" if r["source"].startswith("phantom") else r["source"] for r in rows})
    for kind in kinds:
        for mode in ("affine only", "canonicalized"):
            means = {}
            for rotation in rotation_order:
                values = [
                    r["dice"]
                    for r in rows
                    if r["mode"] == mode
                    and r["rotation"] == rotation
                    and (r["source"].startswith("phantom") if kind == "phantom" else r["source"] == kind)
                    and not math.isnan(r["dice"])
                ]
                means[rotation] = float(np.mean(values)) if values else float("nan")
            base = means[rotation_order[0]]
            for rotation in rotation_order:
                ratio = means[rotation] / base if base else float("nan")
                summary.append(
                    {
                        "data": kind,
                        "mode": mode,
                        "rotation": rotation,
                        "dice": means[rotation],
                        "ratio": ratio,
                        "drop_percent": 100.0 * (1.0 - ratio),
                    }
                )
    return summary


def markdown_table(summary: Sequence[Mapping]) -> str:
    """Rows: data and mode; columns: rotations; cells: mean Dice (ratio to unrotated)."""
    rotations = list(dict.fromkeys(s["rotation"] for s in summary))
    lines = ["| data | mode | " + " | ".join(rotations) + " |", "|---|---|" + "---|" * len(rotations)]
    for data, mode in dict.fromkeys((s["data"], s["mode"]) for s in summary):
        cells = {s["rotation"]: s for s in summary if s["data"] == data and s["mode"] == mode}
        lines.append(f"| {data} | {mode} | " + " | ".join(f"{cells[r]['dice']:.3f} ({cells[r]['ratio']:.3f})" for r in rotations) + " |")
    return "\n".join(lines)


def write_report(result: Mapping, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``rotation_benchmark.json``, ``rotation_benchmark.md`` (table) and ``rotation_benchmark.png`` (plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from textseg.files import write_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "rotation_benchmark.json",
        "markdown": out_dir / "rotation_benchmark.md",
        "png": out_dir / "rotation_benchmark.png",
    }
    write_atomic(paths["json"], json.dumps(result, indent=2))
    table = markdown_table(result["summary"])
    note = (
        "Mean Dice over structures and cases (ratio to the unrotated Dice of the same mode). Phantoms: against the "
        "ground truth; real CT: against the model's own prediction on the unrotated scan.\n"
    )
    write_atomic(paths["markdown"], note + "\n" + table + "\n")
    kinds = list(dict.fromkeys(s["data"] for s in result["summary"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        rotations = list(dict.fromkeys(s["rotation"] for s in result["summary"] if s["data"] == kind))
        x = np.arange(len(rotations))
        for k, mode in enumerate(("affine only", "canonicalized")):
            values = {s["rotation"]: s["dice"] for s in result["summary"] if s["data"] == kind and s["mode"] == mode}
            ax.bar(x + (k - 0.5) * 0.38, [values[r] for r in rotations], width=0.38, label=mode)
        ax.set_xticks(x, rotations)
        ax.set_ylim(0, 1.15)
        ax.set_ylabel("mean Dice" if kind == "phantom" else "Dice vs unrotated prediction")
        ax.set_title(f"{kind}: rotation robustness")
        ax.legend(loc="upper center", ncol=2, fontsize=8)
    fig.tight_layout()
    with atomic_path(paths["png"]) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return paths
