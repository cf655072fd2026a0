"""Fusion ablation: train every text-image fusion on the phantom with the same budget, evaluate, tabulate, plot.

Each fusion is trained by the bundle's own ``train.json`` (+ the size overlay + its ``fusion_*.json``
overlay) on the same cases with the same seed and epochs, then scored by ``evaluate.json`` on the
held-out cases (Dice, HD95, NSD, volume similarity per structure). The results are written as
``ablation.json``, ``ablation.md`` (the table pasted into the bundle's model card) and ``ablation.png``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

from textseg.bundle import DEFAULT_BUNDLE, bundle_parser, run_bundle
from textseg.files import write_result
from textseg.networks import FUSIONS

__all__ = ["METRICS", "ablation_markdown", "plot_ablation", "run_fusion_ablation"]

METRICS = {"val_mean_dice": "Dice", "val_nsd": "NSD", "val_hd95": "HD95 (mm)", "val_volume_similarity": "Vol. sim."}
"""Evaluation metric -> column title."""


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _parameter_count(bundle_dir: Path, configs: Sequence[str], overrides: dict) -> int:
    parser = bundle_parser(bundle_dir, configs)
    parser.update(overrides)
    return sum(p.numel() for p in parser.get_parsed_content("network_def").parameters())


def run_fusion_ablation(
    output_dir: str | os.PathLike = "outputs/ablation",
    fusions: Sequence[str] = tuple(FUSIONS),
    data_dir: str | os.PathLike = "data/phantom_ablation",
    num_train: int = 16,
    num_test: int = 4,
    epochs: int = 30,
    seed: int = 0,
    bundle_dir: str | os.PathLike = DEFAULT_BUNDLE,
    size_overlays: Sequence[str] = ("tiny.json",),
    num_workers: int = 0,
    overrides: dict | None = None,
) -> dict:
    """Train and evaluate each fusion with the same data, seed and epochs; write JSON, markdown and PNG.

    Args:
        output_dir: results folder (one subfolder per fusion with its checkpoint and evaluation).
        fusions: names among :data:`textseg.networks.FUSIONS` (each run sets the bundle's ``fusion`` key).
        data_dir: phantom dataset folder (generated, or reused when it matches).
        num_train, num_test: phantom cases for training and evaluation.
        epochs: training epochs of every fusion (validation, which picks the checkpoint, runs every 5).
        seed: phantom and training seed.
        bundle_dir: the bundle.
        size_overlays: overlays applied before the fusion's (``tiny.json`` for the CPU).
        num_workers: data loader workers.
        overrides: config overrides for every fusion, e.g. ``{"network_def#depths": [1, 1, 1, 1]}`` for a
            network cheap enough to train to convergence on a CPU.

    Returns:
        ``{"settings": {...}, "fusions": {fusion: {"structures": {name: {metric: mean}}, "mean": {metric: mean},
        "parameters": int, "train_seconds": float}}}``.
    """
    from textseg.phantom import make_phantom_dataset

    unknown = [f for f in fusions if f not in FUSIONS]
    if unknown or not fusions:
        raise ValueError(f"unknown fusion(s) {unknown}; choose among {sorted(FUSIONS)}.")
    if epochs < 1 or num_train < 2 or num_test < 1:
        raise ValueError(f"need epochs >= 1, num_train >= 2 and num_test >= 1, got {epochs}, {num_train}, {num_test}.")
    bundle_dir = Path(bundle_dir).resolve()
    output_dir = Path(output_dir)
    data_dir = Path(data_dir).resolve()
    make_phantom_dataset(data_dir, num_train=num_train, num_test=num_test, seed=seed)
    overrides = dict(overrides or {})
    settings = {
        "num_train": num_train,
        "num_test": num_test,
        "epochs": epochs,
        "seed": seed,
        "overlays": list(size_overlays),
        "overrides": overrides,
    }
    results: dict = {"settings": settings, "fusions": {}}
    common = dict(
        dataset_dir=str(data_dir),
        dataset_name="phantom",
        num_workers=num_workers,
        initialize=[f"$monai.utils.set_determinism(seed={seed})"],
        **overrides,
    )
    for index, fusion in enumerate(fusions, 1):
        overlays = list(size_overlays)
        chosen = {"fusion": fusion, "ckpt_name": f"model_{fusion}.pt"}
        run_dir = (output_dir / fusion).resolve()
        print(f"[{index}/{len(fusions)}] {fusion}: training {epochs} epochs on {num_train} phantoms -> {run_dir}", flush=True)
        started = time.perf_counter()
        run_bundle(
            bundle_dir,
            ["train.json", *overlays],
            workflow_type="train",
            ckpt_dir=str(run_dir),
            output_dir=str(run_dir / "train"),
            epochs=epochs,
            val_interval=min(5, epochs),
            num_val=min(2, num_train - 1),
            **chosen,
            **common,
        )
        train_seconds = time.perf_counter() - started
        print(f"[{index}/{len(fusions)}] {fusion}: evaluating on {num_test} held-out phantoms", flush=True)
        run_bundle(
            bundle_dir,
            ["train.json", "evaluate.json", *overlays],
            workflow_type="infer",
            ckpt_dir=str(run_dir),
            output_dir=str(run_dir / "evaluation"),
            **chosen,
            **common,
        )
        per_structure = json.loads((run_dir / "evaluation" / "per_structure.json").read_text(encoding="utf-8"))
        structures = {name: {m: values[m]["mean"] for m in METRICS} for name, values in per_structure.items()}
        results["fusions"][fusion] = {
            "structures": structures,
            "mean": {m: _mean([s[m] for s in structures.values()]) for m in METRICS},
            "parameters": _parameter_count(bundle_dir, ["train.json", *overlays], {**(overrides or {}), "fusion": fusion}),
            "train_seconds": round(train_seconds, 1),
        }
    table = ablation_markdown(results)
    write_result(output_dir / "ablation", results, table)
    plot_ablation(results, output_dir / "ablation.png")
    print(table)
    print(f"wrote {output_dir / 'ablation.json'}, {output_dir / 'ablation.md'}, {output_dir / 'ablation.png'}")
    return results


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def ablation_markdown(results: dict) -> str:
    """The summary table (mean over structures) and the per-structure Dice table, as markdown."""
    fusions = results["fusions"]
    s = results["settings"]
    lines = [
        f"Phantom, {s['num_train']} training / {s['num_test']} held-out cases, {s['epochs']} epochs, seed {s['seed']}, "
        f"overlays {', '.join(s['overlays']) or 'none'}"
        + (f", overrides {', '.join(f'{k}={v}' for k, v in s.get('overrides', {}).items())}" if s.get("overrides") else "")
        + "; means over structures.",
        "",
        "| fusion | " + " | ".join(METRICS.values()) + " | parameters | training (s) |",
        "|---|" + "---:|" * (len(METRICS) + 2),
    ]
    for fusion, r in fusions.items():
        cells = [_fmt(r["mean"][m], 2 if m == "val_hd95" else 3) for m in METRICS]
        lines.append(f"| {fusion} | " + " | ".join(cells) + f" | {r['parameters']:,} | {r['train_seconds']:.0f} |")
    structures = list(next(iter(fusions.values()))["structures"])
    lines += ["", "Dice per structure:", "", "| structure | " + " | ".join(fusions) + " |", "|---|" + "---:|" * len(fusions)]
    for name in structures:
        lines.append(f"| {name} | " + " | ".join(_fmt(r["structures"][name]["val_mean_dice"]) for r in fusions.values()) + " |")
    return "\n".join(lines) + "\n"


def plot_ablation(results: dict, output: str | os.PathLike) -> Path:
    """Grouped bar plot of Dice per structure, one colour per fusion, with the mean as the last group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fusions = results["fusions"]
    structures = list(next(iter(fusions.values()))["structures"])
    groups = structures + ["mean"]
    width = 0.8 / len(fusions)
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(groups)), 4.2))
    x = np.arange(len(groups))
    for i, (fusion, r) in enumerate(fusions.items()):
        values = [r["structures"][n]["val_mean_dice"] for n in structures] + [r["mean"]["val_mean_dice"]]
        values = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
        ax.bar(x + (i - (len(fusions) - 1) / 2) * width, values, width, label=fusion)
    ax.set_xticks(x, [g.replace("_", " ") for g in groups], rotation=35, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice (held-out phantoms)")
    s = results["settings"]
    ax.set_title(f"Fusion ablation: {s['num_train']} phantoms, {s['epochs']} epochs, same seed")
    ax.legend(ncol=len(fusions), loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output
