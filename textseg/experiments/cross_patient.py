"""Cross-patient study of the real-CT recipe: train on one patient, test on the other, both ways; then both.

Every model is trained with ``train.json`` + ``real_ct.json`` + ``real_ct_train.json`` (+ the caller's overlays, e.g.
``head_linear.json``; held-out slabs excluded, see :func:`textseg.datasets.split_slabs`) and evaluated with
``evaluate.json`` (Dice and normalised surface Dice per structure, partial labels respected) on three kinds of data,
kept apart in the table:

- ``training data``: the slabs the model was trained on;
- ``held-out slab``: a band of slices of a training patient that training never saw;
- ``other patient``: a patient the model never saw.

Only structures labelled both in the evaluated data and in the model's training data are scored.

The model trained on both patients is the shipped one (``models/model.pt``); it is trained here only when
missing.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from textseg.bundle import DEFAULT_BUNDLE, read_config_value, run_bundle
from textseg.datasets import load_datalists, split_slabs
from textseg.files import write_result

__all__ = [
    "FINETUNE_CONFIG",
    "KEY_STRUCTURES",
    "PATIENTS",
    "TRAIN_CONFIGS",
    "train_real_model",
    "evaluate_real_model",
    "run_cross_patient",
    "table_markdown",
]

PATIENTS = ("totalseg_example", "ccth_a01")
"""The real patients (datasets.yaml entries)."""
KEY_STRUCTURES = ("liver", "spleen", "kidney_right", "kidney_left", "stomach", "aorta")
"""Structures shown in the table (all structures are in the JSON)."""
TRAIN_CONFIGS = ("train.json", "real_ct.json", "real_ct_train.json")
"""The recipe's configs (64x64x32 training patches)."""
FINETUNE_CONFIG = "real_ct_finetune.json"
"""The recipe's second stage, on top of :data:`TRAIN_CONFIGS`: a few epochs on patches of the inference window."""


def train_real_model(
    patients: Sequence[str],
    ckpt_dir: str | os.PathLike,
    epochs: int | None = None,
    bundle_dir: str | os.PathLike = DEFAULT_BUNDLE,
    overlays: Sequence[str] = (),
    finetune: bool = False,
    finetune_epochs: int | None = None,
    **override,
) -> Path:
    """Train the real-CT recipe (plus ``overlays``, e.g. ``("head_linear.json",)``) on ``patients`` (datasets.yaml
    names, default roots) for ``epochs`` (default: the recipe's), as ``make train-real``'s first stage does. With ``finetune``
    (both stages, as ``make train-real`` runs them) that model is ``ckpt_dir/stage1.pt``, and stage 2 (:data:`FINETUNE_CONFIG`)
    trains on from it for ``finetune_epochs`` (default: its own); stage 1 is skipped when ``stage1.pt`` is there (a run
    killed in stage 2) and deleted once stage 2 completes. ``override`` goes to both stages. Returns the checkpoint path."""
    ckpt_dir = Path(ckpt_dir)
    configs = (*TRAIN_CONFIGS, *overlays)
    ckpt_name = read_config_value(bundle_dir, configs, "ckpt_name")
    common = {"datasets": [{"name": p} for p in patients], "ckpt_dir": str(ckpt_dir), "output_dir": str(ckpt_dir / "eval"), **override}
    stage1 = ckpt_dir / ("stage1.pt" if finetune else ckpt_name)
    if not (finetune and stage1.is_file()):
        budget = {} if epochs is None else {"epochs": epochs, "val_interval": max(1, epochs // 4)}
        run_bundle(bundle_dir, configs, workflow_type="train", ckpt_name=stage1.name, **common, **budget)
    if finetune:
        budget = {} if finetune_epochs is None else {"epochs": finetune_epochs, "val_interval": finetune_epochs}
        run_bundle(bundle_dir, (*configs, FINETUNE_CONFIG), workflow_type="train", ckpt_path=str(stage1), **common, **budget)
        stage1.unlink()
    return ckpt_dir / ckpt_name


def evaluate_real_model(
    checkpoint: str | os.PathLike,
    cases: Sequence[Mapping],
    output_dir: str | os.PathLike,
    bundle_dir: str | os.PathLike = DEFAULT_BUNDLE,
    overlays: Sequence[str] = (),
) -> dict:
    """Dice and NSD per structure of ``checkpoint`` (a model of the recipe plus ``overlays``) on ``cases`` (data
    dicts, optionally with a ``slab``).

    Returns ``{structure: {"dice": mean, "nsd": mean, "cases": n}}`` for the structures labelled in the cases.
    """
    checkpoint = Path(checkpoint).resolve()
    output_dir = Path(output_dir)
    run_bundle(
        bundle_dir,
        (*TRAIN_CONFIGS, *overlays, "evaluate.json"),
        workflow_type=None,
        ckpt_dir=str(checkpoint.parent),
        ckpt_name=checkpoint.name,
        output_dir=str(output_dir),
        num_workers=0,
        **{"validate#dataset#data": [dict(c) for c in cases]},
    )
    report = json.loads((output_dir / "per_structure.json").read_text(encoding="utf-8"))
    return {
        name: {"dice": m["val_mean_dice"]["mean"], "nsd": m["val_nsd"]["mean"], "cases": m["val_mean_dice"]["cases"]}
        for name, m in report.items()
        if m["val_mean_dice"]["cases"] > 0
    }


def run_cross_patient(
    output_dir: str | os.PathLike = "outputs/cross_patient",
    epochs: int = 20,
    bundle_dir: str | os.PathLike = DEFAULT_BUNDLE,
    shipped_checkpoint: str | os.PathLike | None = None,
    retrain: bool = False,
    models: Sequence[str] = (*PATIENTS, "both"),
    overlays: Sequence[str] = (),
) -> list[dict]:
    """Train the single-patient models for ``epochs`` (when missing), evaluate them and the shipped model (trained
    with the recipe's own epochs when missing or ``retrain``); write the table.

    ``models`` picks the rows: a patient name (the model trained on that patient alone) and/or ``"both"`` (the
    shipped model), e.g. ``("both",)`` to re-measure the shipped model only. ``overlays`` go on top of the recipe for
    every model, e.g. ``("head_linear.json",)`` with ``shipped_checkpoint`` a model trained with them.

    Writes ``output_dir/cross_patient.{json,md}``; returns the rows.
    """
    output_dir = Path(output_dir)
    configs = (*TRAIN_CONFIGS, *overlays)  # what train_real_model trains with
    holdout = read_config_value(bundle_dir, configs, "holdout_slabs")
    ckpt_name = read_config_value(bundle_dir, configs, "ckpt_name")
    shipped = Path(shipped_checkpoint or Path(bundle_dir) / "models" / "model.pt")
    rows = []
    unknown = [m for m in models if m not in (*PATIENTS, "both")]
    if unknown or not models:
        raise ValueError(f"unknown model(s) {unknown}; choose among {[*PATIENTS, 'both']}.")
    for trained_on in models:
        patients = list(PATIENTS) if trained_on == "both" else [trained_on]
        checkpoint = shipped if trained_on == "both" else output_dir / f"trained_on_{trained_on}" / ckpt_name
        if retrain or not checkpoint.is_file():
            budget = None if trained_on == "both" else epochs
            epochs_text = budget or "the recipe's"
            print(f"training on {', '.join(patients)} for {epochs_text} epochs -> {checkpoint}", flush=True)
            checkpoint = train_real_model(patients, checkpoint.parent, budget, bundle_dir, overlays)
        cases = load_datalists([{"name": p} for p in patients])
        trained = {name for case in cases for name in case["annotated"]}  # a model is scored only on what it learnt
        split = split_slabs(cases, holdout)
        others = [p for p in PATIENTS if p not in patients]
        sets = [("training data", patients, split["training"]), ("held-out slab", patients, split["validation"])]
        sets += [("other patient", [p], load_datalists([{"name": p}])) for p in others]
        for kind, evaluated, eval_cases in sets:
            name = f"{trained_on}__{kind.replace(' ', '_')}__{'_'.join(evaluated)}"
            print(f"evaluating the model trained on {trained_on} on {kind} ({', '.join(evaluated)})", flush=True)
            scores = evaluate_real_model(checkpoint, eval_cases, output_dir / "evaluations" / name, bundle_dir, overlays)
            scores = {k: v for k, v in scores.items() if k in trained}
            rows.append(
                {"trained_on": trained_on, "evaluated_on": evaluated, "kind": kind, "checkpoint": str(checkpoint), "scores": scores}
            )
    table = table_markdown(rows)
    write_result(output_dir / "cross_patient", rows, table)
    print(table)
    return rows


def table_markdown(rows: Sequence[Mapping], structures: Sequence[str] = KEY_STRUCTURES) -> str:
    """Dice / NSD per structure, one row per (model, data); '-' where the data do not label the structure or the
    model's training data did not."""
    head = "| trained on | evaluated on | data | " + " | ".join(structures) + " | mean Dice (labelled, all structures) |"
    lines = [head, "|" + "---|" * (4 + len(structures))]
    for row in rows:
        scores = row["scores"]
        cells = [
            f"{scores[s]['dice']:.3f} / {scores[s]['nsd']:.3f}" if s in scores and not math.isnan(scores[s]["dice"]) else "-"
            for s in structures
        ]
        dice = [v["dice"] for v in scores.values() if not math.isnan(v["dice"])]
        mean = f"{sum(dice) / len(dice):.3f} ({len(dice)})" if dice else "-"
        lines.append(f"| {row['trained_on']} | {', '.join(row['evaluated_on'])} | {row['kind']} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines) + "\n\nCells: Dice / NSD. Labels are TotalSegmentator predictions (silver standard).\n"
