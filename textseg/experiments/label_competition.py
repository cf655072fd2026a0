"""Label competition: is a structure better segmented when every class the model knows is answered with it?

The network answers each prompt on its own (one sigmoid per prompt). The label map the bundle writes then gives a voxel
to the most probable *asked* prompt above the threshold (:class:`textseg.transforms.ProbabilitiesToLabelMapd`), so a
structure that was not asked cannot claim a voxel: pelvic muscles answered "spleen" stay spleen unless the gluteus is asked
too. One forward pass answers all the model's classes here, and three masks per asked structure are compared with the
reference on the network grid:

- ``independent``: the structure's probability reaches the threshold (what ``evaluate.json`` scores);
- ``asked``: the structure is the most probable of the asked ones and reaches the threshold (what ``textseg segment`` and
  ``make demo`` write);
- ``all_classes``: the structure is the most probable of all the model's classes and reaches the threshold.

``asked`` is a subset of ``independent`` and ``all_classes`` of ``asked``: competition only removes voxels.

:func:`run_threshold_sweep` asks the other question about the same probabilities: is 0.5 the right threshold for a model
trained with balanced cross-entropy (``pos_weight_cap``), which pushes foreground up to that many times harder than
background? It scores every labelled structure's ``independent`` mask at several thresholds.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from textseg.bundle import DEFAULT_BUNDLE, load_bundle_network
from textseg.datasets import load_datalists
from textseg.experiments.cross_patient import KEY_STRUCTURES, TRAIN_CONFIGS
from textseg.files import write_result
from textseg.metrics import binary_dice
from textseg.transforms import IGNORE_CHANNEL

__all__ = [
    "DEMO_STRUCTURES",
    "METHODS",
    "THRESHOLDS",
    "competing_masks",
    "run_label_competition",
    "run_threshold_sweep",
    "sweep_markdown",
    "table_markdown",
    "threshold_dice",
]

METHODS = ("independent", "asked", "all_classes")
"""The three ways of turning per-prompt probabilities into masks (module docstring)."""

DEMO_STRUCTURES = ("liver", "spleen", "kidney_right", "kidney_left")
"""What ``make demo`` asks for."""

THRESHOLDS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
"""Probability thresholds of :func:`run_threshold_sweep`."""


def competing_masks(probabilities: np.ndarray, asked: Sequence[int], threshold: float = 0.5) -> dict[str, np.ndarray]:
    """The masks of the asked channels by each of :data:`METHODS`.

    Args:
        probabilities: [K, *S] per-class probabilities.
        asked: channel indices of the asked structures.
        threshold: minimum probability for foreground.

    Returns:
        ``{method: [len(asked), *S] bool}``.
    """
    asked = list(asked)
    if not asked or len(set(asked)) != len(asked) or not all(0 <= k < probabilities.shape[0] for k in asked):
        raise ValueError(f"asked channels {asked} must be distinct indices of the {probabilities.shape[0]} classes.")
    above = probabilities >= threshold
    winner_asked = np.asarray(asked)[probabilities[asked].argmax(0)]
    winner_all = probabilities.argmax(0)
    return {
        "independent": np.stack([above[k] for k in asked]),
        "asked": np.stack([above[k] & (winner_asked == k) for k in asked]),
        "all_classes": np.stack([above[k] & (winner_all == k) for k in asked]),
    }


def threshold_dice(probabilities: np.ndarray, label: np.ndarray, thresholds: Sequence[float]) -> dict[float, dict[int, float]]:
    """Dice of each labelled channel's mask ``probabilities >= threshold``, per threshold.

    Args:
        probabilities: [K, *S] per-class probabilities.
        label: [K, *S] reference, 1 inside, 0 outside, :data:`IGNORE_CHANNEL` for a structure not annotated.
        thresholds: probabilities in (0, 1).

    Returns:
        ``{threshold: {channel: dice}}`` over the channels annotated and present in ``label``.
    """
    if probabilities.shape != label.shape:
        raise ValueError(f"probabilities {probabilities.shape} and label {label.shape} differ in shape.")
    if not thresholds or not all(0.0 < t < 1.0 for t in thresholds):
        raise ValueError(f"thresholds must be probabilities in (0, 1), got {list(thresholds)}.")
    scored = [k for k in range(label.shape[0]) if not (label[k] == IGNORE_CHANNEL).all() and (label[k] > 0).any()]
    return {float(t): {k: binary_dice(probabilities[k] >= t, label[k] > 0) for k in scored} for t in thresholds}


def _all_class_answers(network, parser, patient: str, dataset_root: str | os.PathLike | None, checkpoint: Path):
    """Yields ``(case name, [K, *S] probabilities of every class, [K, *S] label channels)`` for each case of ``patient``,
    on the network grid (the configs' ``validate#preprocessing`` and ``validate#inferer``)."""
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    inferer = parser.get_parsed_content("validate#inferer")
    entry = {"name": patient} if dataset_root is None else {"name": patient, "root": str(dataset_root)}
    for case in load_datalists([entry]):
        data = preprocessing(dict(case))
        print(f"answering all {data['label'].shape[0]} classes of {checkpoint.name} on {Path(case['image']).name}", flush=True)
        with torch.no_grad():
            logits = inferer(data["image"][None].float(), network, text_embedding=torch.as_tensor(data["text_embedding"]))
        yield Path(case["image"]).name, torch.sigmoid(logits[0]).numpy(), np.asarray(data["label"])


def run_threshold_sweep(
    output_dir: str | os.PathLike = "outputs/threshold_sweep",
    checkpoint: str | os.PathLike | None = None,
    patients: Sequence[str] = ("totalseg_example", "ccth_a01"),
    thresholds: Sequence[float] = THRESHOLDS,
    bundle_dir: str | os.PathLike = DEFAULT_BUNDLE,
    configs: Sequence[str] = TRAIN_CONFIGS,
    dataset_root: str | os.PathLike | None = None,
) -> dict:
    """Dice of every labelled structure of each case of ``patients`` at each threshold (one forward pass per case), for
    ``checkpoint`` (default: the shipped ``models/model.pt``; a model of ``configs``).

    Writes ``output_dir/threshold_sweep.{json,md}``; returns ``{"thresholds", "cases": [{"case", "patient", "dice":
    {threshold: {structure: dice}}}]}`` (JSON keys of thresholds are strings).
    """
    checkpoint = Path(checkpoint or Path(bundle_dir) / "models" / "model.pt")
    network, parser = load_bundle_network(checkpoint, bundle_dir, configs)
    class_names = list(parser.get_parsed_content("class_names"))
    rows = []
    for patient in patients:
        for name, probabilities, label in _all_class_answers(network, parser, patient, dataset_root, checkpoint):
            dice = threshold_dice(probabilities, label, thresholds)
            rows.append(
                {"case": name, "patient": patient, "dice": {str(t): {class_names[k]: d for k, d in v.items()} for t, v in dice.items()}}
            )
    result = {"checkpoint": str(checkpoint), "thresholds": [float(t) for t in thresholds], "cases": rows}
    table = sweep_markdown(result)
    write_result(Path(output_dir) / "threshold_sweep", result, table)
    print(table)
    return result


def sweep_markdown(result: Mapping) -> str:
    """One row per case and threshold: Dice of the key organs and the mean over the case's labelled structures."""
    lines = ["| case | threshold | " + " | ".join(KEY_STRUCTURES) + " | mean Dice (labelled) |", "|---" * (len(KEY_STRUCTURES) + 3) + "|"]
    for row in result["cases"]:
        for t in result["thresholds"]:
            dice = row["dice"][str(t)]
            cells = [f"{dice[s]:.3f}" if s in dice else "-" for s in KEY_STRUCTURES]
            lines.append(f"| {row['case']} | {t:g} | " + " | ".join(cells) + f" | {np.mean(list(dice.values())):.3f} ({len(dice)}) |")
    return "\n".join(lines) + "\n"


def run_label_competition(
    output_dir: str | os.PathLike = "outputs/label_competition",
    checkpoint: str | os.PathLike | None = None,
    patient: str = "totalseg_example",
    structures: Sequence[str] = DEMO_STRUCTURES,
    bundle_dir: str | os.PathLike = DEFAULT_BUNDLE,
    configs: Sequence[str] = TRAIN_CONFIGS,
    dataset_root: str | os.PathLike | None = None,
) -> dict:
    """Dice of each asked structure by each of :data:`METHODS`, for ``checkpoint`` (default: the shipped
    ``models/model.pt``; a model of ``configs``) on every case of ``patient`` (a datasets.yaml name; ``dataset_root``
    where its files are, default its own).

    Writes ``output_dir/label_competition.{json,md}``; returns ``{"structures", "cases": [{"case", "dice": {method:
    {structure: dice}}, "voxels": ...}], "mean": {method: {structure: mean Dice}}}``.
    """
    checkpoint = Path(checkpoint or Path(bundle_dir) / "models" / "model.pt")
    network, parser = load_bundle_network(checkpoint, bundle_dir, configs)
    class_names = list(parser.get_parsed_content("class_names"))
    unknown = [s for s in structures if s not in class_names]
    if unknown:
        raise ValueError(f"{unknown} are not classes of the model; it has {class_names}.")
    asked = [class_names.index(s) for s in structures]
    threshold = float(parser.get_parsed_content("threshold"))
    rows = []
    for case_name, probabilities, label in _all_class_answers(network, parser, patient, dataset_root, checkpoint):
        masks = competing_masks(probabilities, asked, threshold)
        dice, voxels = {m: {} for m in METHODS}, {m: {} for m in METHODS}
        for j, (name, k) in enumerate(zip(structures, asked)):
            if (label[k] == IGNORE_CHANNEL).all():
                continue  # not annotated in this case
            for method in METHODS:
                dice[method][name] = binary_dice(masks[method][j], label[k] > 0)
                voxels[method][name] = int(masks[method][j].sum())
        rows.append({"case": case_name, "dice": dice, "voxels": voxels})
    mean = {
        m: {s: float(np.nanmean(v)) for s in structures if (v := [r["dice"][m][s] for r in rows if s in r["dice"][m]])} for m in METHODS
    }
    result = {"checkpoint": str(checkpoint), "patient": patient, "structures": list(structures), "cases": rows, "mean": mean}
    table = table_markdown(result)
    write_result(Path(output_dir) / "label_competition", result, table)
    print(table)
    return result


def table_markdown(result: Mapping) -> str:
    """Mean Dice per method (rows) and asked structure (columns), with their mean."""
    structures = [s for s in result["structures"] if any(s in result["mean"][m] for m in METHODS)]
    lines = ["| labels from | " + " | ".join(structures) + " | mean |", "|---" * (len(structures) + 2) + "|"]
    for method in METHODS:
        values = [result["mean"][method].get(s, float("nan")) for s in structures]
        cells = [f"{v:.3f}" for v in values] + [f"{np.nanmean(values):.3f}" if values else "-"]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
