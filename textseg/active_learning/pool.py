"""Active learning in an application: one image at a time, chosen from stored per-image candidate records.

A MONAI Label server answers ``/activelearning/<strategy>`` with *one* image to label next (and here the
patch to start with), long after the images were scored in the background. So scoring and choosing are
split, as nnActive does for large pools (it keeps the top candidate patches per image and class, then
composes the query):

1. :func:`image_candidates` -- run once per image and model (a background task): the network's
   prediction reduced to small JSON-ready grids of candidate-patch scores (patch-mean predictive entropy,
   mutual information when MC-dropout samples are given, and ClaSP PE's class-specific entropy for every
   class), plus samples of predicted foreground voxels for the foreground-aware random baseline.
2. :func:`select_next` -- per request: the strategy's choice among the records of the unlabelled images,
   with budget 1, given the history of earlier queries (the query count drives ClaSP PE's schedule and
   class stratification).

The strategies keep their definitions from :mod:`.strategies` (same formulas, same sources); what changes
with budget 1 is documented in :func:`select_next`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from textseg.geometry import bbox_to_grid

from .strategies import (
    SCHEDULES,
    Patch,
    _border,
    _grid_starts,
    aggregate_patches,
    class_entropy,
    get_strategy,
    mutual_information,
    power_noising,
    predictive_entropy,
)

__all__ = [
    "CLASS_MEASURE_PREFIX",
    "bbox_to_grid",
    "class_query_due",
    "image_candidates",
    "select_next",
]

CLASS_MEASURE_PREFIX = "class:"
"""Measures ``class:<name>`` hold ClaSP PE's class-specific entropy ``U_c = H * pbar_c`` for class ``name``."""


def image_candidates(
    probs: torch.Tensor,
    class_names: Sequence[str],
    patch_size: Sequence[int],
    stride: Sequence[int] | None = None,
    mc_probs: torch.Tensor | None = None,
    foreground_samples: int = 64,
    rng: np.random.Generator | int | None = None,
) -> dict:
    """Summarise one image's uncertainty as candidate-patch score grids (a JSON-ready record).

    Args:
        probs: ``[M, C + 1, X, Y, Z]`` class probabilities (channel 0 = background; see
            :func:`~textseg.active_learning.predict_probs`), usually ``M = 1`` (deterministic).
        class_names: the C foreground classes, in channel order.
        patch_size: candidate patch size in voxels (clamped to the image).
        stride: distance between candidate starts (default: half the patch size).
        mc_probs: optional ``[M, C + 1, X, Y, Z]`` MC-dropout samples (``M >= 2``) for the BALD measures.
        foreground_samples: predicted-foreground voxels kept per class and area (``seg``, ``border``).
        rng: random generator or seed for the foreground samples.

    Returns:
        ``{"shape", "patch_size", "starts", "grids", "mean_entropy", "foreground"}``: ``grids`` maps a
        measure (``entropy``, ``mutual_information``, ``class:<name>``) to the nested list of patch means,
        ``starts[d]`` the candidate starts along axis ``d``, ``foreground[name]`` lists of ``[x, y, z]``
        voxels of the predicted structure (``seg``) and of its border (``border``).

    Raises:
        ValueError: probs not ``[M, C + 1, X, Y, Z]``, C not matching ``class_names``, MC samples of
            another shape.
    """
    if probs.ndim != 5:
        raise ValueError(f"probs must be [M, C+1, X, Y, Z], got shape {tuple(probs.shape)}.")
    if probs.shape[1] != len(class_names) + 1:
        raise ValueError(f"probs have {probs.shape[1] - 1} foreground classes, class_names {len(class_names)}.")
    shape = tuple(int(s) for s in probs.shape[2:])
    patch = tuple(min(int(p), s) for p, s in zip(patch_size, shape))
    steps = tuple(max(1, p // 2) for p in patch) if stride is None else tuple(max(1, int(s)) for s in stride)
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    entropy = predictive_entropy(probs)
    maps = {"entropy": entropy}
    per_class = class_entropy(probs)
    for i, name in enumerate(class_names, start=1):
        maps[CLASS_MEASURE_PREFIX + name] = per_class[i]
    if mc_probs is not None:
        if mc_probs.ndim != 5 or tuple(mc_probs.shape[1:]) != tuple(probs.shape[1:]) or mc_probs.shape[0] < 2:
            raise ValueError(f"mc_probs must be [M >= 2, {', '.join(map(str, probs.shape[1:]))}], got {tuple(mc_probs.shape)}.")
        maps["mutual_information"] = mutual_information(mc_probs)
    names = list(maps)
    grids = aggregate_patches(torch.stack([maps[n] for n in names]), patch, steps)
    label = probs.mean(0).argmax(0).numpy()
    foreground = {}
    for i, name in enumerate(class_names, start=1):
        region = label == i
        if not region.any():
            continue
        areas = {}
        for area, mask in (("seg", region), ("border", _border(region))):
            voxels = np.argwhere(mask)
            keep = generator.choice(len(voxels), size=min(foreground_samples, len(voxels)), replace=False)
            areas[area] = voxels[np.sort(keep)].tolist()
        foreground[name] = areas
    return {
        "shape": list(shape),
        "patch_size": list(patch),
        "starts": [_grid_starts(s, p, st) for s, p, st in zip(shape, patch, steps)],
        "grids": {n: grids[k].tolist() for k, n in enumerate(names)},
        "mean_entropy": float(entropy.mean()),
        "foreground": foreground,
    }


def class_query_due(query_index: int, class_share: float) -> bool:
    """Whether query ``query_index`` (0-based) of a one-at-a-time sequence is class-stratified.

    ClaSP PE spends ``class_share`` of every query batch on classes; with one query at a time the
    class-stratified queries are spread so that the first ``n`` queries hold ``ceil(n * class_share)`` of
    them (the first query is one, so rare classes are served from the start).
    """
    return math.ceil((query_index + 1) * class_share - 1e-9) > math.ceil(query_index * class_share - 1e-9)


def _patch_bbox(record: Mapping, start: Sequence[int]) -> list[list[int]]:
    return Patch("image", tuple(int(s) for s in start), tuple(int(p) for p in record["patch_size"])).bbox()


def _ranked(records: Mapping[str, Mapping], measure: str, beta: float | None, rng: np.random.Generator):
    """The best candidate patch of the pool for ``measure``: ``(image id, start, score)`` or None."""
    best = None
    for image_id in sorted(records):
        record = records[image_id]
        grid = record["grids"].get(measure)
        if grid is None:
            continue
        scores = torch.as_tensor(grid, dtype=torch.float64)
        ranked = power_noising(scores, beta, rng) if beta is not None else scores
        k = int(torch.argmax(ranked))
        value = float(ranked.reshape(-1)[k])
        if best is None or value > best[2]:
            index = np.unravel_index(k, tuple(scores.shape))
            start = [record["starts"][d][index[d]] for d in range(len(index))]
            best = (image_id, start, value, float(scores.reshape(-1)[k]))
    return best


def _random_choice(records: Mapping[str, Mapping], rng: np.random.Generator, foreground_ratio: float | None) -> dict:
    ids = sorted(records)
    for _ in range(4 * len(ids)):
        image_id = ids[int(rng.integers(len(ids)))]
        record = records[image_id]
        shape, patch = record["shape"], record["patch_size"]
        area = "all" if foreground_ratio is None or rng.random() >= foreground_ratio else ("seg" if rng.random() < 0.5 else "border")
        if area == "all":
            start = [int(rng.integers(0, s - p + 1)) for s, p in zip(shape, patch)]
            return {"id": image_id, "patch_bbox": _patch_bbox(record, start), "area": area}
        classes = sorted(record.get("foreground", {}))
        if not classes:
            continue  # nothing predicted in this image: another one (as nnActive)
        name = classes[int(rng.integers(len(classes)))]
        voxels = record["foreground"][name][area]
        centre = voxels[int(rng.integers(len(voxels)))]
        start = [int(min(max(c - p // 2, 0), s - p)) for c, s, p in zip(centre, shape, patch)]
        return {"id": image_id, "patch_bbox": _patch_bbox(record, start), "area": area, "class": name}
    image_id = ids[int(rng.integers(len(ids)))]
    record = records[image_id]
    start = [int(rng.integers(0, s - p + 1)) for s, p in zip(record["shape"], record["patch_size"])]
    return {"id": image_id, "patch_bbox": _patch_bbox(record, start), "area": "all"}


def select_next(
    records: Mapping[str, Mapping],
    strategy: str,
    history: Sequence[Mapping] = (),
    rng: np.random.Generator | int | None = None,
    num_rounds: int = 10,
    class_share: float = 0.66,
    beta: float = 1.0,
    beta_start: float = 1.0,
    beta_end: float = 100.0,
    schedule: str = "exponential",
    foreground_ratio: float = 2.0 / 3.0,
) -> dict:
    """The next image (and patch) to label, chosen by ``strategy`` among ``records`` (budget 1).

    - ``random``: a uniform image and a uniform patch position (needs only ``shape``/``patch_size``).
    - ``random_label``: as ``random``, but with probability ``foreground_ratio`` the patch is centred on a
      stored predicted-foreground voxel (of a uniformly drawn class; from its ``seg`` or ``border`` area,
      half each) -- nnActive's foreground-aware random with the model's prediction standing in for labels.
    - ``entropy`` / ``bald``: the pool's best candidate patch by predictive entropy / mutual information.
    - ``power_entropy`` / ``power_bald``: the best by ``log(score) + Gumbel(0, 1/beta)`` per candidate.
    - ``clasp_pe``: query ``t = len(history)`` is class-stratified when :func:`class_query_due` says so;
      it then serves the class served least often so far (ties: random) by its class-specific entropy,
      otherwise the overall entropy; scores are power-noised with ``beta_t`` of the schedule over
      ``num_rounds`` queries (the last value after that).

    Args:
        records: image id -> record of :func:`image_candidates` (unlabelled images only).
        strategy: a registered strategy name (aliases accepted).
        history: earlier selections of this strategy (dicts returned by this function), oldest first.
        rng: random generator or seed.
        num_rounds: queries over which ClaSP PE's beta goes from ``beta_start`` to ``beta_end``.
        class_share: ClaSP PE's class-stratified share of the queries.
        beta: beta of the power strategies.
        beta_start: ClaSP PE's first beta.
        beta_end: ClaSP PE's last beta.
        schedule: ``exponential`` (ClaSP PE) or ``sigmoid``.
        foreground_ratio: share of foreground-centred patches of ``random_label``.

    Returns:
        ``{"id", "strategy", "patch_bbox", "score", "measure", "query_index"}`` plus ``"class"`` (ClaSP PE's
        class queries, foreground-centred random patches) and ``"beta"`` for the power strategies;
        ``patch_bbox`` is ``[[x0, y0, z0], [x1, y1, z1]]`` on the record's grid (stop exclusive).

    Raises:
        ValueError: empty pool, unknown strategy, a model-based strategy whose measure no record holds
            (e.g. BALD without MC-dropout samples).
    """
    spec = get_strategy(strategy)
    if not records:
        raise ValueError("the pool is empty: every image is labelled (or none is scored yet).")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)}.")
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    query_index = len(history)
    out: dict = {"strategy": spec.name, "query_index": query_index}
    if spec.name in ("random", "random_label"):
        choice = _random_choice(records, generator, foreground_ratio if spec.name == "random_label" else None)
        return {**out, **choice, "score": None, "measure": None}
    power = spec.name.startswith("power") or spec.scheduled
    measure = "mutual_information" if spec.mc_samples else "entropy"
    if spec.scheduled:
        betas = SCHEDULES[schedule](max(int(num_rounds), 1), beta_start, beta_end)
        beta = float(betas[min(query_index, len(betas) - 1)])
        classes = sorted(
            {m[len(CLASS_MEASURE_PREFIX) :] for r in records.values() for m in r["grids"] if m.startswith(CLASS_MEASURE_PREFIX)}
        )
        if classes and class_query_due(query_index, class_share):
            served = {c: 0 for c in classes}
            for h in history:
                if h.get("class") in served:
                    served[h["class"]] += 1
            fewest = min(served.values())
            candidates = [c for c in classes if served[c] == fewest]
            out["class"] = candidates[int(generator.integers(len(candidates)))]
            measure = CLASS_MEASURE_PREFIX + out["class"]
    best = _ranked(records, measure, beta if power else None, generator)
    if best is None:
        hint = " (score the images with MC-dropout samples)" if spec.mc_samples else ""
        raise ValueError(f"strategy {spec.name!r} needs the measure {measure!r}, which no image record holds{hint}.")
    image_id, start, _, score = best
    out.update({"id": image_id, "patch_bbox": _patch_bbox(records[image_id], start), "score": score, "measure": measure})
    if power:
        out["beta"] = beta
    return out
