"""Segmentation metrics in millimetres (HD95, normalised surface Dice, volume similarity) and per-structure reports.

Dice and the distance metrics are MONAI's (``DiceMetric``, ``HausdorffDistanceMetric``,
``SurfaceDiceMetric``); the classes here add the voxel spacing the bundle resamples to, so distances are in
mm inside an ignite evaluator (whose metric handlers pass only ``y_pred, y``). Volume similarity
(``1 - |V_pred - V_true| / (V_pred + V_true)``, Taha & Hanbury, BMC Med Imaging 2015) is not in MONAI.

Every metric gives NaN for a channel that is empty in both prediction and reference, so unannotated
channels (zeroed by :class:`textseg.transforms.MaskUnsupervisedd`) drop out of the means.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.engines import Workflow
from monai.metrics import CumulativeIterationMetric, HausdorffDistanceMetric, SurfaceDiceMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import min_version, optional_import

from textseg.files import write_atomic

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = [
    "binary_dice",
    "HausdorffDistance95Metric",
    "NormalizedSurfaceDiceMetric",
    "VolumeSimilarityMetric",
    "PerStructureReport",
]


def binary_dice(prediction, reference) -> float:
    """Dice of two boolean arrays of one shape (numpy); NaN when both are empty."""
    total = prediction.sum() + reference.sum()
    return float(2.0 * (prediction & reference).sum() / total) if total else float("nan")


class HausdorffDistance95Metric(HausdorffDistanceMetric):
    """95th-percentile symmetric Hausdorff distance in mm, per image and channel.

    Args:
        spacing: voxel spacing in mm of the images compared (e.g. the bundle's ``pixdim``).
        include_background: whether channel 0 counts (our channels are prompts, not background: True).
    """

    def __init__(self, spacing: Sequence[float] | float | None = None, include_background: bool = True, reduction: str = "mean"):
        super().__init__(include_background=include_background, percentile=95, reduction=reduction)
        self.spacing = spacing

    def _compute_tensor(self, y_pred, y, **kwargs):
        kwargs.setdefault("spacing", self.spacing)
        return super()._compute_tensor(y_pred, y, **kwargs)


class NormalizedSurfaceDiceMetric(SurfaceDiceMetric):
    """Normalised surface Dice (Nikolov et al., 2021): the share of both boundaries within ``tolerance`` mm
    of the other, per image and channel.

    Args:
        tolerance: boundary tolerance in mm, the same for every channel.
        spacing: voxel spacing in mm.
        include_background: whether channel 0 counts.
    """

    def __init__(
        self,
        tolerance: float = 2.0,
        spacing: Sequence[float] | float | None = None,
        include_background: bool = True,
        reduction: str = "mean",
    ):
        super().__init__(class_thresholds=[float(tolerance)], include_background=include_background, reduction=reduction)
        self.tolerance = float(tolerance)
        self.spacing = spacing

    def _compute_tensor(self, y_pred, y, **kwargs):
        kwargs.setdefault("spacing", self.spacing)
        channels = y_pred.shape[1] - (0 if self.include_background else 1)
        self.class_thresholds = [self.tolerance] * channels
        return super()._compute_tensor(y_pred, y, **kwargs)


class VolumeSimilarityMetric(CumulativeIterationMetric):
    """Volume similarity ``1 - |V_pred - V_true| / (V_pred + V_true)`` per image and channel; NaN when both are empty.

    Inputs are binary, batch-first ``[B, K, *S]`` tensors.
    """

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
        if y_pred.shape != y.shape:
            raise ValueError(f"y_pred and y should have the same shape, got {tuple(y_pred.shape)} and {tuple(y.shape)}.")
        predicted = (y_pred > 0).flatten(2).sum(2).double()
        true = (y > 0).flatten(2).sum(2).double()
        total = predicted + true
        similarity = 1.0 - (predicted - true).abs() / total.clamp(min=1)
        return torch.where(total > 0, similarity, torch.full_like(similarity, math.nan)).float()

    def aggregate(self, reduction: str | None = None):
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("the data to aggregate must be a PyTorch Tensor.")
        value, _ = do_metric_reduction(data, reduction or self.reduction)
        return value


class PerStructureReport:
    """Ignite handler writing the per-structure means (NaN-aware) of several metrics as JSON and CSV when evaluation ends.

    Reads ``engine.state.metric_details[name]``, shape [N_images, K], as saved by MONAI metric handlers
    (``save_details=True``), for every name in ``metric_names``.

    Args:
        metric_names: names of metrics in the evaluator, e.g. ``["dice", "hd95", "nsd", "volume_similarity"]``.
        class_names: the K structure names, in channel order.
        output_dir: folder for ``per_structure.json`` (``{structure: {metric: {"mean", "std", "cases"}}}``)
            and ``per_structure.csv`` (one row per structure, ``<metric>`` and ``<metric>_cases`` columns).
    """

    def __init__(self, metric_names: Sequence[str], class_names: Sequence[str], output_dir: str | os.PathLike):
        if isinstance(metric_names, str):
            metric_names = [metric_names]
        self.metric_names = list(metric_names)
        self.class_names = list(class_names)
        self.output_dir = Path(output_dir)

    def attach(self, engine: Workflow) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def report(self, metric_details: dict) -> dict:
        """``{structure: {metric: {"mean", "std", "cases"}}}`` from ``metric_details`` (see the class docstring)."""
        report: dict = {name: {} for name in self.class_names}
        for metric in self.metric_names:
            details = metric_details.get(metric)
            if details is None:
                raise KeyError(f"metric {metric!r} saved no details; known: {sorted(metric_details)}")
            values = torch.as_tensor(details, dtype=torch.float64).reshape(-1, len(self.class_names))
            for k, name in enumerate(self.class_names):
                column = values[:, k]
                valid = column[torch.isfinite(column)]
                report[name][metric] = {
                    "mean": float(valid.mean()) if len(valid) else math.nan,
                    "std": float(valid.std(unbiased=False)) if len(valid) else math.nan,
                    "cases": int(len(valid)),
                }
        return report

    def __call__(self, engine: Workflow) -> None:
        report = self.report(engine.state.metric_details)
        write_atomic(self.output_dir / "per_structure.json", json.dumps(report, indent=2))
        header = ["structure"] + [c for m in self.metric_names for c in (m, f"{m}_cases")]
        rows = [header]
        for name, metrics in report.items():
            rows.append([name] + [v for m in self.metric_names for v in (f"{metrics[m]['mean']:.4f}", metrics[m]["cases"])])
        buffer = io.StringIO()
        csv.writer(buffer).writerows(rows)
        write_atomic(self.output_dir / "per_structure.csv", buffer.getvalue())
