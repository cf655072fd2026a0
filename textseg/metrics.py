"""Per-structure evaluation reports."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.engines import Workflow
from monai.utils import min_version, optional_import

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = ["PerStructureReport", "write_atomic"]


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write text to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


class PerStructureReport:
    """Ignite handler writing a metric's per-structure means (NaN-aware) as JSON and CSV when evaluation ends.

    Reads ``engine.state.metric_details[metric_name]``, shape [N_images, K], as saved by MONAI metric
    handlers (``save_details=True``).

    Args:
        metric_name: name of the metric in the evaluator.
        class_names: the K structure names, in channel order.
        output_dir: folder for ``<metric_name>_per_structure.{json,csv}``.
    """

    def __init__(self, metric_name: str, class_names: Sequence[str], output_dir: str | os.PathLike):
        self.metric_name = metric_name
        self.class_names = list(class_names)
        self.output_dir = Path(output_dir)

    def attach(self, engine: Workflow) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Workflow) -> None:
        details = engine.state.metric_details.get(self.metric_name)
        if details is None:
            raise KeyError(f"metric {self.metric_name!r} saved no details; known: {sorted(engine.state.metric_details)}")
        values = torch.as_tensor(details, dtype=torch.float64).reshape(-1, len(self.class_names))
        report = {}
        for k, name in enumerate(self.class_names):
            column = values[:, k]
            valid = column[~torch.isnan(column)]
            report[name] = {"mean": float(valid.mean()) if len(valid) else math.nan, "cases": int(len(valid))}
        write_atomic(self.output_dir / f"{self.metric_name}_per_structure.json", json.dumps(report, indent=2))
        rows = [["structure", "mean", "cases"]] + [[n, f"{r['mean']:.4f}", r["cases"]] for n, r in report.items()]
        buffer = io.StringIO()
        csv.writer(buffer).writerows(rows)
        write_atomic(self.output_dir / f"{self.metric_name}_per_structure.csv", buffer.getvalue())
