"""The main job: segment the shipped real CT from a prompt with the shipped model, and score it.

The phantom variant (``run_phantom_demo``: phantom data -> train the tiny bundle on CPU -> segment the
held-out phantoms) stays one command away (``make demo-phantom``).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

from textseg.bundle import DEFAULT_BUNDLE, SHIPPED_CONFIGS, read_config_value, run_bundle
from textseg.checkpoints import checkpoint_matches
from textseg.files import write_atomic
from textseg.segment import SegmentationResult, dice_per_structure, segment

__all__ = [
    "DEMO_PROMPT",
    "PHANTOM_PROMPT",
    "EXAMPLE_CT",
    "EXAMPLE_LABELS",
    "TINY_CONFIGS",
    "train_bundle",
    "run_demo",
    "run_phantom_demo",
]

DEMO_PROMPT = "segment the liver, spleen and kidneys"
PHANTOM_PROMPT = "segment the liver and kidneys"
TINY_CONFIGS = ("tiny.json",)
EXAMPLE_CT = Path(__file__).resolve().parents[1] / "examples" / "ct" / "example_ct.nii.gz"
"""The shipped real example CT (TotalSegmentator's example, Apache-2.0; see examples/ct/README.md)."""
EXAMPLE_LABELS = EXAMPLE_CT.parent / "example_seg_fast_force_split.nii.gz"


def train_bundle(
    bundle_dir: str | os.PathLike = DEFAULT_BUNDLE,
    dataset_dir: str | os.PathLike = "data/phantom",
    dataset_name: str = "phantom",
    epochs: int = 40,
    val_interval: int = 10,
    overlays: Sequence[str] = TINY_CONFIGS,
    **override,
):
    """Train a bundle (``train.json`` + overlays) on a datasets.yaml entry; returns the workflow.

    The checkpoint is written when validation improves, so validation runs at least once
    (``val_interval`` is capped at ``epochs``).
    """
    return run_bundle(
        bundle_dir,
        ["train.json", *overlays],
        workflow_type="train",
        dataset_dir=str(Path(dataset_dir).resolve()),
        dataset_name=dataset_name,
        epochs=epochs,
        val_interval=min(val_interval, epochs),
        **override,
    )


def run_demo(
    image: str | os.PathLike | None = None,
    prompt: str = DEMO_PROMPT,
    output_dir: str | os.PathLike = "outputs",
    bundle_dir: str | os.PathLike = DEFAULT_BUNDLE,
    allow_non_ct: bool = False,
) -> dict:
    """Segment a real CT from a prompt with the shipped model; return the report (also ``output_dir/demo_report.json``).

    Without ``image`` the shipped example CT is segmented and scored against its label map (Dice per
    structure; it is a training patient of the shipped model, so these are training-data numbers). With
    ``image`` (NIfTI file or DICOM folder) that image is segmented, and nothing is scored.
    """
    from textseg.datasets import label_maps

    started = time.time()
    checkpoint = Path(bundle_dir) / "models" / read_config_value(bundle_dir, SHIPPED_CONFIGS, "ckpt_name")
    if not checkpoint.is_file():
        raise FileNotFoundError(
            f"the shipped real-CT checkpoint {checkpoint} is missing: restore it (git checkout -- {checkpoint}) "
            "or train it with 'make train-real'."
        )
    scored = image is None
    image = Path(image) if image is not None else EXAMPLE_CT
    print(f"segmenting {image} from the prompt {prompt!r} with {checkpoint}")
    result = segment(image, prompt, output_dir, bundle_dir, SHIPPED_CONFIGS, allow_non_ct=allow_non_ct)
    seconds = time.time() - started
    case = {"image": str(image), "label_map": str(result.label_map), "overlay": str(result.overlay), "targets": result.targets}
    report: dict = {"prompt": prompt, "bundle": str(bundle_dir), "checkpoint": str(checkpoint), "cases": [case]}
    if scored and EXAMPLE_LABELS.is_file():
        case["dice"] = dice_per_structure(result.label_map, EXAMPLE_LABELS, result.targets, label_maps()["totalseg_example"])
        case["scored_on"] = "training patient of the shipped model (not a measure of accuracy on unseen patients)"
        print("Dice per structure (this CT is a training patient of the shipped model):")
        for name, value in case["dice"].items():
            print(f"  {name:<20} {value:.3f}")
        scores = [v for v in case["dice"].values() if not math.isnan(v)]
        report["mean_dice"] = sum(scores) / len(scores)
        print(f"  {'mean':<20} {report['mean_dice']:.3f}")
    masks = sorted({str(p.parent) for p in result.masks.values()})
    print(f"wrote {result.label_map}, {', '.join(m + '/' for m in masks)}, {result.report}, {result.overlay}")
    report["total_seconds"] = round(seconds, 1)
    write_atomic(Path(output_dir) / "demo_report.json", json.dumps(report, indent=2))
    print(f"done in {seconds:.0f} s; report: {Path(output_dir) / 'demo_report.json'}")
    return report


def run_phantom_demo(
    image: str | os.PathLike | None = None,
    prompt: str = PHANTOM_PROMPT,
    output_dir: str | os.PathLike = "outputs",
    bundle_dir: str | os.PathLike = DEFAULT_BUNDLE,
    data_dir: str | os.PathLike = "data/phantom",
    epochs: int = 40,
    retrain: bool = False,
    num_train: int = 24,
    num_test: int = 2,
    seed: int = 0,
) -> dict:
    """Run the phantom demo end to end and return its report (also written to ``output_dir/demo_report.json``).

    Without ``image`` the held-out phantom cases are segmented and scored (Dice per structure);
    with ``image`` (NIfTI or DICOM folder) that image is segmented with the trained model.
    Training is skipped when the tiny checkpoint exists, unless ``retrain``.
    """
    from textseg.datasets import label_maps, load_datalist
    from textseg.phantom import make_phantom_dataset

    started = time.time()
    print(f"[1/3] phantom dataset in {data_dir}")
    make_phantom_dataset(data_dir, num_train=num_train, num_test=num_test, seed=seed)
    checkpoint = Path(bundle_dir) / "models" / "model_tiny.pt"
    if checkpoint.exists() and not retrain and not checkpoint_matches(checkpoint, bundle_dir, TINY_CONFIGS):
        print(f"      {checkpoint} was trained with another network or other prompt embeddings: training again")
        retrain = True
    if retrain or not checkpoint.exists():
        print(f"[2/3] training the tiny bundle for {epochs} epochs on CPU -> {checkpoint}")
        train_bundle(bundle_dir, data_dir, epochs=epochs)
    else:
        print(f"[2/3] reusing {checkpoint} (pass --retrain to train again)")
    trained_s = time.time() - started
    output_dir = Path(output_dir)
    report: dict = {"prompt": prompt, "bundle": str(bundle_dir), "checkpoint": str(checkpoint), "cases": []}
    if image is not None:
        cases = [{"image": str(image)}]
    else:
        cases = load_datalist("phantom", data_dir, section="test")
    print(f"[3/3] segmenting {len(cases)} image(s) from the prompt {prompt!r}")
    for case in cases:
        result: SegmentationResult = segment(case["image"], prompt, output_dir, bundle_dir, ("inference.json", *TINY_CONFIGS))
        entry = {"image": case["image"], "label_map": str(result.label_map), "overlay": str(result.overlay), "targets": result.targets}
        if "label" in case:
            entry["dice"] = dice_per_structure(result.label_map, case["label"], result.targets, label_maps()["phantom"])
            print("  " + Path(case["image"]).name + ": " + ", ".join(f"{k} {v:.3f}" for k, v in entry["dice"].items()))
        print(f"  wrote {result.label_map}, {result.overlay}")
        report["cases"].append(entry)
    scores = [v for c in report["cases"] for v in c.get("dice", {}).values() if not math.isnan(v)]
    if scores:
        report["mean_dice"] = sum(scores) / len(scores)
        print(f"mean Dice over the prompted structures: {report['mean_dice']:.3f}")
    report["train_seconds"] = round(trained_s, 1)
    report["total_seconds"] = round(time.time() - started, 1)
    write_atomic(output_dir / "demo_report.json", json.dumps(report, indent=2))
    print(f"report: {output_dir / 'demo_report.json'} ({report['total_seconds']:.0f} s)")
    return report
