"""Field-of-view study: one model and one patient, evaluated on different bands of slices.

A user's CT covers anything from a few centimetres to the whole trunk. A model that has learnt where its training
volumes end, rather than the anatomy, scores the same organ very differently depending on how much of the body is
around it. Each row evaluates ``checkpoint`` on one band of slices (fractions of the inferior-superior axis, cropped
by :class:`textseg.augment.CropSlabd`) of ``patient`` with the cross-patient evaluation
(:func:`textseg.experiments.cross_patient.evaluate_real_model`); only the structures present in the band count.

The rows measure the dependence on the field of view, not generalisation: when ``patient`` is a training patient,
most bands overlap the training data.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from textseg.bundle import DEFAULT_BUNDLE
from textseg.datasets import load_datalists
from textseg.experiments.cross_patient import evaluate_real_model, table_markdown
from textseg.files import write_result

__all__ = ["DEFAULT_BANDS", "run_field_of_view"]

DEFAULT_BANDS = ((0.0, 1.0), (0.5, 1.0), (0.6, 0.9), (0.86, 1.0))
"""The whole volume, its upper half, a mid band and a thin top band (fractions of the inferior-superior axis)."""


def run_field_of_view(
    output_dir: str | os.PathLike = "outputs/field_of_view",
    checkpoint: str | os.PathLike | None = None,
    patient: str = "totalseg_example",
    bands: Sequence[Sequence[float]] = DEFAULT_BANDS,
    bundle_dir: str | os.PathLike = DEFAULT_BUNDLE,
    overlays: Sequence[str] = (),
) -> list[dict]:
    """Dice and NSD per structure of ``checkpoint`` (default: the shipped ``models/model.pt``; a model of the recipe
    plus ``overlays``, e.g. ``("head_linear.json",)``) on each band of ``patient`` (a datasets.yaml name).

    Writes ``output_dir/field_of_view.{json,md}``; returns the rows (as in the cross-patient table, ``kind`` names
    the band).
    """
    bands = [(float(low), float(high)) for low, high in bands]
    wrong = [list(b) for b in bands if not 0.0 <= b[0] < b[1] <= 1.0]
    if wrong or not bands:
        raise ValueError(f"bands {wrong or '[]'}: each band is [low, high] with 0 <= low < high <= 1")
    output_dir = Path(output_dir)
    checkpoint = Path(checkpoint or Path(bundle_dir) / "models" / "model.pt")
    cases = load_datalists([{"name": patient}])
    rows = []
    for low, high in bands:
        print(f"evaluating {checkpoint} on slices {low:.0%}-{high:.0%} of {patient}", flush=True)
        scores = evaluate_real_model(
            checkpoint,
            [dict(c, slab=[low, high]) for c in cases],
            output_dir / "evaluations" / f"{patient}_{low:g}_{high:g}",
            bundle_dir,
            overlays,
        )
        rows.append(
            {"trained_on": checkpoint.name, "evaluated_on": [patient], "kind": f"slices {low:.0%}-{high:.0%}", "scores": scores,
             "checkpoint": str(checkpoint), "band": [low, high]}
        )  # fmt: skip
    table = table_markdown(rows)
    write_result(output_dir / "field_of_view", rows, table)
    print(table)
    return rows
