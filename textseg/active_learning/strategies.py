"""Active-learning query strategies for 3D segmentation: which patches (or images) to label next.

Every strategy is one function ``strategy(ctx, budget, **params) -> list[Patch]`` registered by name in
:data:`STRATEGIES`; :func:`get_strategy` resolves a name (clear error for unknown names). The unit of
annotation is a 3D patch, as in nnActive; scoring whole images is the same code with the patch size set
to the image size (see :func:`whole_image_patch_size`).

Sources (read them for the reasoning; formulas are restated in each docstring):

* **nnActive** -- C. Lüth, J. Traub et al., "nnActive: A Framework for Evaluation of Active Learning in 3D
  Biomedical Segmentation", arXiv 2511.19183 (code: github.com/MIC-DKFZ/nnActive, ``nnactive/strategies``):
  patch queries without overlap, uniform random and *foreground-aware random* ("random-label")
  baselines, predictive entropy and BALD aggregated by a patch-sized mean filter, foreground efficiency.
* **ClaSP PE** -- C. Lüth, J. Traub et al., "Finally Outshining the Random Baseline: A Simple and Effective
  Solution for Active Learning in 3D Biomedical Imaging", arXiv 2601.13677 (TMLR): class-stratified,
  scheduled power predictive entropy.
* **Power acquisition** -- A. Kirsch et al., "Stochastic Batch Acquisition: A Simple Baseline for Deep
  Active Learning", TMLR 2023: sample by ``log(score) + Gumbel(0, 1/beta)`` instead of greedy top-k.
* **BALD / MC dropout** -- N. Houlsby et al., "Bayesian Active Learning for Classification and Preference
  Learning", 2011; Y. Gal, Z. Ghahramani, "Dropout as a Bayesian Approximation", ICML 2016.

Probabilities. The text-conditioned network answers K prompts with K independent sigmoids, while the
formulas above are written for one softmax over C classes. :func:`sigmoid_to_categorical` turns the K
sigmoids into a (K+1)-class distribution (channel 0 = "none of the prompted structures"): under the
independence the sigmoids assume, ``q_0 = prod_k (1 - p_k)`` is the probability that no structure is
present, and the rest ``1 - q_0`` is shared among the structures in proportion to ``p_k``. For one prompt
this is exactly the binary distribution ``(1 - p, p)``; a structure predicted absent everywhere gives
``q = (1, 0, ..., 0)`` and zero entropy; an undecided voxel (all ``p_k = 0.5``) gets high entropy. All
entropies below are natural-log entropies of that distribution.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "STRATEGIES",
    "Patch",
    "QueryContext",
    "StrategySpec",
    "aggregate_patches",
    "bald_query",
    "class_entropy",
    "clasp_pe_query",
    "exponential_schedule",
    "expected_entropy",
    "foreground_random_query",
    "get_strategy",
    "mutual_information",
    "power_bald_query",
    "power_entropy_query",
    "power_noising",
    "predictive_entropy",
    "predictive_entropy_query",
    "random_query",
    "sigmoid_schedule",
    "sigmoid_to_categorical",
    "whole_image_patch_size",
]

EPS = 1e-12


# ----------------------------------------------------------------------------------------------------
# patches and the query context
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Patch:
    """An axis-aligned box of voxels to annotate: ``image``'s voxels ``start <= index < start + size``."""

    image: str
    start: tuple[int, ...]
    size: tuple[int, ...]

    @property
    def stop(self) -> tuple[int, ...]:
        return tuple(s + n for s, n in zip(self.start, self.size))

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(s, s + n) for s, n in zip(self.start, self.size))

    @property
    def num_voxels(self) -> int:
        return int(np.prod(self.size))

    def bbox(self) -> list[list[int]]:
        """``[[x0, y0, z0], [x1, y1, z1]]`` (start inclusive, stop exclusive), as the app returns it."""
        return [list(self.start), list(self.stop)]

    def to_dict(self) -> dict:
        return {"image": self.image, "start": list(self.start), "size": list(self.size)}

    @classmethod
    def from_dict(cls, d: Mapping) -> Patch:
        return cls(str(d["image"]), tuple(int(v) for v in d["start"]), tuple(int(v) for v in d["size"]))


@dataclass
class QueryContext:
    """What a strategy may look at when choosing patches.

    Attributes:
        shapes: image id -> spatial shape ``(X, Y, Z)`` of every pool image.
        annotated: image id -> bool array of the same shape, True where voxels are already labelled
            (missing ids count as unlabelled). Queried patches never overlap labelled voxels.
        patch_size: size of a query patch; clamped to the image where the image is smaller.
        rng: the only source of randomness, so that a seed reproduces a query.
        probs: image id -> class probabilities ``[M, C + 1, X, Y, Z]`` (M MC samples, M = 1 without MC
            dropout; channel 0 = background, see :func:`sigmoid_to_categorical`); needed by the
            uncertainty strategies, computed on demand.
        labels: image id -> integer label map ``[X, Y, Z]`` (0 background, 1..C classes); needed by the
            foreground-aware random baseline. In a simulation these are the oracle's labels (as in
            nnActive); in an application a prediction can stand in for them.
        num_classes: C, the number of foreground classes (prompts).
        stride: stride of the candidate patch grid for the uncertainty strategies (default: half the
            patch size, at least 1).
        round_index: 0-based index of the current query round (for scheduled strategies).
        num_rounds: number of query rounds of the whole experiment (for scheduled strategies).
    """

    shapes: Mapping[str, Sequence[int]]
    patch_size: Sequence[int]
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    annotated: Mapping[str, np.ndarray] = field(default_factory=dict)
    probs: Callable[[str], torch.Tensor] | None = None
    labels: Mapping[str, np.ndarray] | None = None
    num_classes: int | None = None
    stride: Sequence[int] | None = None
    round_index: int = 0
    num_rounds: int = 1

    def patch_for(self, image: str) -> tuple[int, ...]:
        shape = tuple(int(s) for s in self.shapes[image])
        return tuple(min(int(p), s) for p, s in zip(self.patch_size, shape))

    def stride_for(self, image: str) -> tuple[int, ...]:
        patch = self.patch_for(image)
        if self.stride is None:
            return tuple(max(1, p // 2) for p in patch)
        return tuple(max(1, int(s)) for s in self.stride)

    def occupied(self, image: str) -> np.ndarray:
        """A fresh bool mask of the voxels already labelled in ``image``."""
        shape = tuple(int(s) for s in self.shapes[image])
        mask = self.annotated.get(image)
        if mask is None:
            return np.zeros(shape, dtype=bool)
        if tuple(mask.shape) != shape:
            raise ValueError(f"annotated mask of image {image!r} has shape {tuple(mask.shape)}, the image {shape}.")
        return np.array(mask, dtype=bool, copy=True)


def whole_image_patch_size(shapes: Mapping[str, Sequence[int]]) -> tuple[int, ...]:
    """Patch size that makes every query a whole image (image-level active learning)."""
    if not shapes:
        raise ValueError("the pool is empty: there is no image to score.")
    return tuple(int(max(s[d] for s in shapes.values())) for d in range(len(next(iter(shapes.values())))))


def _check_query(ctx: QueryContext, budget: int) -> None:
    """Bad input fails here with a message naming the problem."""
    if not ctx.shapes:
        raise ValueError("the pool is empty: there is no image to query patches from.")
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget must be a positive number of patches, got {budget!r}.")
    if any(int(p) < 1 for p in ctx.patch_size):
        raise ValueError(f"patch_size must be positive, got {tuple(ctx.patch_size)}.")
    free = 0
    for image in ctx.shapes:
        patch = ctx.patch_for(image)
        free += int((~ctx.occupied(image)).sum()) // int(np.prod(patch))
    if budget > free:
        raise ValueError(
            f"budget of {budget} patches exceeds the pool: its {len(ctx.shapes)} image(s) have room for at most "
            f"{free} more patch(es) of size {tuple(int(p) for p in ctx.patch_size)} outside the labelled voxels."
        )


# ----------------------------------------------------------------------------------------------------
# uncertainty measures (voxel-wise)
# ----------------------------------------------------------------------------------------------------


def sigmoid_to_categorical(sigmoid_probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """K per-prompt sigmoid probabilities -> a (K+1)-class distribution (background first).

    ``q_0 = prod_k (1 - p_k)``, ``q_k = (1 - q_0) * p_k / sum_j p_j`` (see the module docstring).

    Args:
        sigmoid_probs: ``[..., K, *S]`` probabilities in [0, 1] with the prompts along ``dim``.
        dim: the prompt dimension.

    Returns:
        ``[..., K + 1, *S]`` probabilities summing to 1 along ``dim``.
    """
    p = sigmoid_probs.clamp(0.0, 1.0)
    background = torch.prod(1.0 - p, dim=dim, keepdim=True)
    total = p.sum(dim=dim, keepdim=True)
    share = torch.where(total > EPS, p / total.clamp_min(EPS), torch.zeros_like(p))
    return torch.cat([background, (1.0 - background) * share], dim=dim)


def _entropy(q: torch.Tensor, dim: int) -> torch.Tensor:
    return -(q * torch.log(q.clamp_min(EPS))).sum(dim=dim)


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Predictive entropy ``H[E_m p_m] = -sum_c pbar_c log pbar_c`` with ``pbar = mean_m p_m``.

    Args:
        probs: ``[M, C, *S]`` class probabilities of M samples (M = 1: the plain softmax entropy).

    Returns:
        ``[*S]`` entropy per voxel (nats).
    """
    _check_probs(probs)
    return _entropy(probs.mean(dim=0), dim=0)


def expected_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Expected entropy ``E_m H[p_m] = -mean_m sum_c p_mc log p_mc``; ``probs`` ``[M, C, *S]`` -> ``[*S]``."""
    _check_probs(probs)
    return _entropy(probs, dim=1).mean(dim=0)


def mutual_information(probs: torch.Tensor) -> torch.Tensor:
    """BALD score (epistemic uncertainty): ``I = H[E_m p_m] - E_m H[p_m]`` (Houlsby et al. 2011; nnActive
    ``mutual_information``), zero when all samples agree.

    Args:
        probs: ``[M, C, *S]`` class probabilities of M MC-dropout samples (or ensemble members).

    Returns:
        ``[*S]`` mutual information per voxel, >= 0 (clamped against round-off).
    """
    return (predictive_entropy(probs) - expected_entropy(probs)).clamp_min(0.0)


def class_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Class-specific predictive entropy used by ClaSP PE (nnActive ``class_pred_entropy``):
    ``U_c = H[pbar] * pbar_c`` -- the voxel's entropy weighted by how much the model believes it is class c.

    Args:
        probs: ``[M, C, *S]`` class probabilities.

    Returns:
        ``[C, *S]``: one uncertainty map per class (channel 0 is the background's).
    """
    mean = probs.mean(dim=0)
    return _entropy(mean, dim=0).unsqueeze(0) * mean


def _check_probs(probs: torch.Tensor) -> None:
    if probs.ndim < 3:
        raise ValueError(f"expected class probabilities [M, C, *S], got shape {tuple(probs.shape)}.")


def aggregate_patches(score_map: torch.Tensor, patch_size: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """Mean of a voxel score over every candidate patch (nnActive's patch-sized mean filter).

    Candidate ``i`` along an axis starts at ``i * stride``; the last candidate is aligned with the image
    end when the stride does not reach it exactly, so every voxel can be covered.

    Args:
        score_map: ``[*S]`` or ``[C, *S]`` voxel scores (3D).
        patch_size: patch size (<= the image size).
        stride: distance between candidate starts.

    Returns:
        ``[*G]`` or ``[C, *G]`` patch means, ``G`` the candidate grid; use :func:`_grid_starts` for starts.
    """
    single = score_map.ndim == 3
    x = (score_map.unsqueeze(0) if single else score_map).double()  # [C, *S]
    shape = x.shape[1:]
    patch = tuple(min(int(p), int(s)) for p, s in zip(patch_size, shape))
    # summed-area table: any box sum in 8 look-ups, O(voxels) whatever the patch size
    table = F.pad(x.cumsum(1).cumsum(2).cumsum(3), (1, 0, 1, 0, 1, 0))
    lo = [torch.as_tensor(_grid_starts(int(s), p, int(st))) for s, p, st in zip(shape, patch, stride)]
    hi = [a + p for a, p in zip(lo, patch)]
    total = torch.zeros((x.shape[0], len(lo[0]), len(lo[1]), len(lo[2])), dtype=torch.float64)
    for corner in range(8):
        idx = [hi[d] if (corner >> d) & 1 else lo[d] for d in range(3)]
        sign = (-1) ** (3 - bin(corner).count("1"))
        total += sign * table[:, idx[0]][:, :, idx[1]][:, :, :, idx[2]]
    out = (total / float(np.prod(patch))).float()
    return out[0] if single else out


def _grid_starts(size: int, patch: int, stride: int) -> list[int]:
    last = max(size - patch, 0)
    starts = list(range(0, last + 1, max(1, stride)))
    if starts[-1] != last:
        starts.append(last)
    return starts


def power_noising(scores: torch.Tensor | np.ndarray, beta: float, rng: np.random.Generator) -> torch.Tensor:
    """Power acquisition (Kirsch et al. 2023; nnActive ``power_noising``): ``s' = log(s) + g``,
    ``g ~ Gumbel(0, 1/beta)``. Taking the top-k of ``s'`` samples k candidates without replacement with
    probability proportional to ``s^beta``: small beta = diverse, large beta -> greedy top-k.

    Args:
        scores: non-negative patch scores, any shape.
        beta: inverse noise scale, > 0.
        rng: random generator.

    Returns:
        perturbed log-scores, same shape, float64 tensor.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}.")
    s = torch.as_tensor(np.asarray(scores) if isinstance(scores, np.ndarray) else scores).double()
    noise = torch.from_numpy(rng.gumbel(0.0, 1.0 / beta, size=tuple(s.shape)))
    return torch.log(s.clamp_min(EPS)) + noise


def exponential_schedule(num_steps: int, start: float = 1.0, end: float = 100.0) -> np.ndarray:
    """ClaSP PE's beta schedule (nnActive ``exponential_schedule``): ``beta_t = a (b / a)^(t / (T - 1))``,
    t = 0..T-1, from ``a = start`` (strong noise, diversity) to ``b = end`` (weak noise, exploitation).
    The Gumbel noise scale ``1 / beta_t`` therefore decays geometrically over the rounds."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    if num_steps == 1:
        return np.array([float(start)])
    return start * (end / start) ** np.linspace(0.0, 1.0, num_steps)


def sigmoid_schedule(num_steps: int, start: float = 1.0, end: float = 100.0, temperature: float = 2.0) -> np.ndarray:
    """Alternative beta schedule of the ClaSP PE ablation (nnActive ``sigmoid_schedule``): a logistic curve
    over ``x in linspace(-6, 6, T)`` with temperature ``T`` rescaled to run from ``start`` to ``end``."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    if num_steps == 1:
        return np.array([float(start)])
    x = np.linspace(-6.0, 6.0, num_steps)
    s = 1.0 / (1.0 + np.exp(-x / temperature))
    return start + (end - start) * (s - s.min()) / (s.max() - s.min())


SCHEDULES = {"exponential": exponential_schedule, "sigmoid": sigmoid_schedule}


# ----------------------------------------------------------------------------------------------------
# selection helpers
# ----------------------------------------------------------------------------------------------------


def _overlaps(occupied: np.ndarray, patch: Patch) -> bool:
    return bool(occupied[patch.slices].any())


def _take(occupied: Mapping[str, np.ndarray], patch: Patch) -> None:
    occupied[patch.image][patch.slices] = True


def _candidate_scores(ctx: QueryContext, image: str, score_maps: torch.Tensor) -> tuple[torch.Tensor, list[list[int]]]:
    patch, stride = ctx.patch_for(image), ctx.stride_for(image)
    shape = [int(s) for s in ctx.shapes[image]]
    grid = aggregate_patches(score_maps, patch, stride)
    starts = [_grid_starts(s, p, st) for s, p, st in zip(shape, patch, stride)]
    return grid, starts


class _Ranking:
    """All candidate patches of the pool for one score, best first; hands out those that are still free."""

    def __init__(self, ctx: QueryContext, scores: Mapping[str, torch.Tensor], starts: Mapping[str, list[list[int]]]):
        self.ctx = ctx
        self.images = sorted(scores)
        self.grid_shapes = [tuple(scores[i].shape) for i in self.images]
        self.starts = [starts[i] for i in self.images]
        values = [np.nan_to_num(scores[i].reshape(-1).double().cpu().numpy(), nan=-np.inf) for i in self.images]
        which = np.concatenate([np.full(len(v), k) for k, v in enumerate(values)])
        where = np.concatenate([np.arange(len(v)) for v in values])
        # score descending; ties broken by image then position, so a query is reproducible
        self.order = np.lexsort((where, which, -np.concatenate(values)))
        self.which, self.where = which, where
        self.position = 0

    def take(self, n: int, occupied: dict[str, np.ndarray]) -> list[Patch]:
        chosen: list[Patch] = []
        while len(chosen) < n and self.position < len(self.order):
            k = self.order[self.position]
            self.position += 1
            i = int(self.which[k])
            image = self.images[i]
            index = np.unravel_index(int(self.where[k]), self.grid_shapes[i])
            start = tuple(int(self.starts[i][d][index[d]]) for d in range(len(index)))
            patch = Patch(image, start, self.ctx.patch_for(image))
            if not _overlaps(occupied[image], patch):
                _take(occupied, patch)
                chosen.append(patch)
        return chosen


def _fill_randomly(ctx: QueryContext, n: int, occupied: dict[str, np.ndarray]) -> list[Patch]:
    """Fallback when a ranked list runs dry: free grid candidates in random order."""
    free = []
    for image in sorted(ctx.shapes):
        patch = ctx.patch_for(image)
        shape = [int(s) for s in ctx.shapes[image]]
        starts = [_grid_starts(s, p, p) for s, p in zip(shape, patch)]
        for x in starts[0]:
            for y in starts[1]:
                for z in starts[2]:
                    free.append(Patch(image, (x, y, z), patch))
    order = ctx.rng.permutation(len(free))
    chosen = []
    for i in order:
        if len(chosen) == n:
            break
        if not _overlaps(occupied[free[i].image], free[i]):
            _take(occupied, free[i])
            chosen.append(free[i])
    return chosen


def _finish(ctx: QueryContext, chosen: list[Patch], budget: int, occupied: dict[str, np.ndarray]) -> list[Patch]:
    if len(chosen) < budget:
        chosen = chosen + _fill_randomly(ctx, budget - len(chosen), occupied)
    if len(chosen) < budget:
        raise RuntimeError(
            f"could place only {len(chosen)} of {budget} patches without overlapping labelled voxels; lower the budget or the patch size."
        )
    return chosen


def _occupied_all(ctx: QueryContext) -> dict[str, np.ndarray]:
    return {image: ctx.occupied(image) for image in ctx.shapes}


def _uncertainty_maps(
    ctx: QueryContext, image: str, measure: Callable[[torch.Tensor], torch.Tensor], need_samples: int = 1
) -> torch.Tensor:
    if ctx.probs is None:
        raise ValueError("this strategy needs model predictions: the query context has no `probs` function.")
    probs = ctx.probs(image)
    if probs.ndim != 5:
        raise ValueError(f"probs for image {image!r} must be [M, C+1, X, Y, Z], got {tuple(probs.shape)}.")
    if tuple(probs.shape[2:]) != tuple(int(s) for s in ctx.shapes[image]):
        raise ValueError(f"probs for image {image!r} have spatial shape {tuple(probs.shape[2:])}, the image {tuple(ctx.shapes[image])}.")
    if probs.shape[0] < need_samples:
        raise ValueError(f"this strategy needs at least {need_samples} MC-dropout samples per image, got {probs.shape[0]}.")
    return measure(probs)


def _greedy_query(ctx: QueryContext, budget: int, measure, beta: float | None = None, need_samples: int = 1) -> list[Patch]:
    _check_query(ctx, budget)
    scores, starts = {}, {}
    for image in sorted(ctx.shapes):
        grid, st = _candidate_scores(ctx, image, _uncertainty_maps(ctx, image, measure, need_samples))
        scores[image] = power_noising(grid, beta, ctx.rng) if beta is not None else grid
        starts[image] = st
    occupied = _occupied_all(ctx)
    return _finish(ctx, _Ranking(ctx, scores, starts).take(budget, occupied), budget, occupied)


# ----------------------------------------------------------------------------------------------------
# strategies
# ----------------------------------------------------------------------------------------------------


def _random_patch(ctx: QueryContext, image: str, centre: Sequence[int] | None) -> Patch:
    shape = [int(s) for s in ctx.shapes[image]]
    patch = ctx.patch_for(image)
    if centre is None:
        start = tuple(int(ctx.rng.integers(0, s - p + 1)) for s, p in zip(shape, patch))
    else:
        # centred on the voxel, shifted inside the image where it would stick out (nnActive)
        start = tuple(int(min(max(int(c) - p // 2, 0), s - p)) for c, s, p in zip(centre, shape, patch))
    return Patch(image, start, patch)


def _draw_patches(
    ctx: QueryContext,
    budget: int,
    next_image: Callable[[], str],
    centres: Callable[[str], np.ndarray | None | bool],
    trials_per_image: int,
) -> list[Patch]:
    """The random baselines' loop: take an image, draw a patch (uniform, or centred on one of ``centres``),
    redraw while it overlaps labelled voxels, up to ``trials_per_image`` times, then move on.

    ``centres(image)`` returns candidate centre voxels ``[N, 3]``, None for a uniform position, or False
    to skip the image.
    """
    occupied = _occupied_all(ctx)
    chosen: list[Patch] = []
    attempts = 0
    while len(chosen) < budget and attempts < budget * trials_per_image * 2:
        image = next_image()
        locations = centres(image)
        if locations is False:
            attempts += 1
            continue
        for _ in range(trials_per_image):
            attempts += 1
            centre = None if locations is None else locations[int(ctx.rng.integers(len(locations)))]
            patch = _random_patch(ctx, image, centre)
            if not _overlaps(occupied[image], patch):
                _take(occupied, patch)
                chosen.append(patch)
                break
    return _finish(ctx, chosen, budget, occupied)


def random_query(ctx: QueryContext, budget: int, trials_per_image: int = 50) -> list[Patch]:
    """Uniform random patches (nnActive ``random``): an image drawn uniformly, a patch position drawn
    uniformly inside it, rejected and redrawn if it overlaps labelled voxels.

    Args:
        ctx: query context (only ``shapes``, ``annotated``, ``patch_size``, ``rng`` are used).
        budget: number of patches.
        trials_per_image: redraws before another image is tried.

    Returns:
        ``budget`` non-overlapping patches.
    """
    _check_query(ctx, budget)
    images = sorted(ctx.shapes)
    return _draw_patches(ctx, budget, lambda: images[int(ctx.rng.integers(len(images)))], lambda image: None, trials_per_image)


def _border(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a 6-neighbour outside it (mask minus its erosion by a unit ball)."""
    inner = mask.copy()
    for axis in range(mask.ndim):
        for shift in (1, -1):
            rolled = np.roll(mask, shift, axis=axis)
            edge = [slice(None)] * mask.ndim
            edge[axis] = 0 if shift == 1 else -1
            rolled[tuple(edge)] = False
            inner &= rolled
    return mask & ~inner


def foreground_random_query(ctx: QueryContext, budget: int, foreground_ratio: float = 2.0 / 3.0, trials_per_image: int = 50) -> list[Patch]:
    """Foreground-aware random patches (nnActive ``random-label``).

    For each patch: with probability ``foreground_ratio`` the patch is centred on a random foreground
    voxel -- a class c drawn uniformly among the classes present in the image, then a voxel drawn
    uniformly from class c (half of those draws: from c's border, i.e. c minus its erosion) -- otherwise
    its position is uniform as in :func:`random_query`. nnActive draws the area from ``{all, seg,
    border}`` uniformly, i.e. ``foreground_ratio = 2/3`` ("random-label"); ``1/3`` is its
    "random-label2". Images are visited in a random order; a patch overlapping labelled voxels is redrawn.

    Args:
        ctx: query context; ``labels`` (oracle label maps, 0 = background) are required.
        budget: number of patches.
        foreground_ratio: share of patches centred on foreground, in [0, 1].
        trials_per_image: redraws before another image is tried.

    Returns:
        ``budget`` non-overlapping patches.
    """
    _check_query(ctx, budget)
    if not 0.0 <= foreground_ratio <= 1.0:
        raise ValueError(f"foreground_ratio must be in [0, 1], got {foreground_ratio}.")
    if ctx.labels is None:
        raise ValueError("foreground-aware random needs label maps (ctx.labels): the oracle's, or a prediction.")
    images = sorted(ctx.shapes)
    order = {"images": list(ctx.rng.permutation(images)), "cursor": 0}

    def next_image() -> str:  # the images in a random order, reshuffled after each pass
        if order["cursor"] == len(order["images"]):
            order["images"], order["cursor"] = list(ctx.rng.permutation(images)), 0
        order["cursor"] += 1
        return str(order["images"][order["cursor"] - 1])

    def centres(image: str) -> np.ndarray | None | bool:
        label = np.asarray(ctx.labels[image])
        area = "all" if ctx.rng.random() >= foreground_ratio else ("seg" if ctx.rng.random() < 0.5 else "border")
        if area == "all":
            return None
        present = [int(c) for c in np.unique(label) if c > 0]
        if not present:
            return False  # no foreground in this image: try the next one (as nnActive)
        region = label == present[int(ctx.rng.integers(len(present)))]
        return np.argwhere(_border(region) if area == "border" else region)

    return _draw_patches(ctx, budget, next_image, centres, trials_per_image)


def predictive_entropy_query(ctx: QueryContext, budget: int) -> list[Patch]:
    """Predictive entropy, greedy (nnActive ``pred_entropy``): score each candidate patch P by
    ``S(P) = mean_{v in P} H[pbar(v)]``, ``H[p] = -sum_c p_c log p_c`` over the (K+1)-class distribution,
    and take the ``budget`` best patches that overlap neither labelled voxels nor each other.
    With MC samples, ``pbar`` is their mean.
    """
    return _greedy_query(ctx, budget, predictive_entropy)


def bald_query(ctx: QueryContext, budget: int) -> list[Patch]:
    """MC-dropout BALD, greedy (nnActive ``mutual_information``): ``S(P) = mean_{v in P} I(v)`` with
    ``I = H[E_m p_m] - E_m H[p_m]`` over M >= 2 MC-dropout samples (see :func:`mutual_information`)."""
    return _greedy_query(ctx, budget, mutual_information, need_samples=2)


def power_entropy_query(ctx: QueryContext, budget: int, beta: float = 1.0) -> list[Patch]:
    """Power predictive entropy (PowerPE; Kirsch et al. 2023, as in nnActive/ClaSP PE): the patch scores
    of :func:`predictive_entropy_query` perturbed as ``log S(P) + Gumbel(0, 1/beta)`` (noise added to the
    aggregated patch scores, not to voxels), then top-k. ``beta = 1`` as in nnActive."""
    return _greedy_query(ctx, budget, predictive_entropy, beta=beta)


def power_bald_query(ctx: QueryContext, budget: int, beta: float = 1.0) -> list[Patch]:
    """PowerBALD (Kirsch et al. 2023; nnActive ``power_bald``): BALD patch scores perturbed as
    ``log S(P) + Gumbel(0, 1/beta)``, then top-k; ``beta = 1`` as in nnActive."""
    return _greedy_query(ctx, budget, mutual_information, beta=beta, need_samples=2)


def clasp_pe_query(
    ctx: QueryContext,
    budget: int,
    class_share: float = 0.66,
    beta_start: float = 1.0,
    beta_end: float = 100.0,
    schedule: str = "exponential",
) -> list[Patch]:
    """ClaSP PE: class-stratified scheduled power predictive entropy (Lüth, Traub et al., arXiv
    2601.13677; nnActive ``class_power_pe66_exp``).

    1. Uncertainty maps from the mean prediction ``pbar``: the overall entropy ``H(v)`` and one
       class-specific map per foreground class, ``U_c(v) = H(v) * pbar_c(v)`` (:func:`class_entropy`).
    2. Each map is aggregated over candidate patches (mean) and power-noised with a scheduled beta:
       ``S'_c(P) = log S_c(P) + Gumbel(0, 1/beta_t)``, ``beta_t = a (b/a)^(t/(T-1))`` from ``a = 1`` in the
       first round (diverse) to ``b = 100`` in the last (nearly greedy) -- :func:`exponential_schedule`.
    3. Class-stratified budget: ``n_cls = floor(class_share * budget)`` patches (``class_share = 0.66``)
       are split evenly over the C foreground classes (``n_cls // C`` each, the remainder to randomly
       chosen classes); class c takes its best free patches by ``S'_c``. The remaining ``budget - n_cls``
       patches are taken by the overall entropy ``S'``. Classes are served in a random order and no patch
       overlaps labelled voxels or another chosen patch.

    nnActive first keeps the top patches per image and class and then composes the query; ranking all
    candidates of the pool at once, as here, gives the same selection without that memory-saving step.

    Args:
        ctx: query context with ``probs``; ``round_index`` and ``num_rounds`` drive the schedule.
        budget: number of patches.
        class_share: share of the budget that is class-stratified.
        beta_start: beta of the first round.
        beta_end: beta of the last round.
        schedule: ``"exponential"`` (ClaSP PE) or ``"sigmoid"``.

    Returns:
        ``budget`` non-overlapping patches.
    """
    _check_query(ctx, budget)
    if not 0.0 <= class_share <= 1.0:
        raise ValueError(f"class_share must be in [0, 1], got {class_share}.")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)}.")
    if not 0 <= ctx.round_index < max(ctx.num_rounds, 1):
        raise ValueError(f"round_index {ctx.round_index} is outside the {ctx.num_rounds} rounds of the schedule.")
    beta = float(SCHEDULES[schedule](max(ctx.num_rounds, 1), beta_start, beta_end)[ctx.round_index])

    def measure(probs: torch.Tensor) -> torch.Tensor:
        per_class = class_entropy(probs)  # [C+1, *S], channel 0 = background
        overall = _entropy(probs.mean(dim=0), dim=0).unsqueeze(0)
        return torch.cat([overall, per_class[1:]], dim=0)  # [1 + C, *S]: overall first, then classes 1..C

    grids, starts = {}, {}
    for image in sorted(ctx.shapes):
        grid, st = _candidate_scores(ctx, image, _uncertainty_maps(ctx, image, measure))
        grids[image] = power_noising(grid, beta, ctx.rng)
        starts[image] = st
    num_classes = next(iter(grids.values())).shape[0] - 1
    if ctx.num_classes is not None and ctx.num_classes != num_classes:
        raise ValueError(f"probs have {num_classes} foreground classes, the context says {ctx.num_classes}.")
    n_cls = int(budget * class_share) if num_classes else 0
    per_class = {c: n_cls // num_classes for c in range(1, num_classes + 1)} if num_classes else {}
    extra = n_cls - sum(per_class.values())
    classes = list(range(1, num_classes + 1))
    for c in ctx.rng.permutation(classes)[:extra]:
        per_class[int(c)] += 1
    occupied = _occupied_all(ctx)
    chosen: list[Patch] = []
    for c in ctx.rng.permutation(classes):
        c = int(c)
        if per_class[c]:
            ranking = _Ranking(ctx, {i: g[c] for i, g in grids.items()}, starts)
            chosen += ranking.take(per_class[c], occupied)
    overall = _Ranking(ctx, {i: g[0] for i, g in grids.items()}, starts)
    chosen += overall.take(budget - len(chosen), occupied)
    return _finish(ctx, chosen, budget, occupied)


# ----------------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy.

    Attributes:
        name: registry name.
        query: ``query(ctx, budget, **params) -> list[Patch]``.
        needs_model: the strategy reads model predictions (``ctx.probs``).
        mc_samples: MC-dropout samples it needs per image (0: one deterministic prediction).
        needs_labels: it reads label maps (``ctx.labels``; oracle in a simulation).
        scheduled: it reads ``ctx.round_index`` / ``ctx.num_rounds``.
        description: one line for listings.
    """

    name: str
    query: Callable[..., list[Patch]]
    needs_model: bool = False
    mc_samples: int = 0
    needs_labels: bool = False
    scheduled: bool = False
    description: str = ""


STRATEGIES: dict[str, StrategySpec] = {
    s.name: s
    for s in [
        StrategySpec("random", random_query, description="uniform random patches (nnActive random)"),
        StrategySpec(
            "random_label",
            foreground_random_query,
            needs_labels=True,
            description="foreground-aware random, 2/3 of patches centred on foreground (nnActive random-label)",
        ),
        StrategySpec("entropy", predictive_entropy_query, needs_model=True, description="predictive entropy, greedy top-k"),
        StrategySpec("bald", bald_query, needs_model=True, mc_samples=8, description="MC-dropout BALD (mutual information), greedy"),
        StrategySpec("power_entropy", power_entropy_query, needs_model=True, description="power predictive entropy (beta = 1)"),
        StrategySpec("power_bald", power_bald_query, needs_model=True, mc_samples=8, description="PowerBALD (beta = 1)"),
        StrategySpec(
            "clasp_pe",
            clasp_pe_query,
            needs_model=True,
            scheduled=True,
            description="class-stratified scheduled power predictive entropy (ClaSP PE)",
        ),
    ]
}
_ALIASES = {
    "random-label": "random_label",
    "fg_random": "random_label",
    "foreground_random": "random_label",
    "predictive_entropy": "entropy",
    "pe": "entropy",
    "mutual_information": "bald",
    "mc_dropout": "bald",
    "powerbald": "power_bald",
    "power_pe": "power_entropy",
    "claspe": "clasp_pe",
    "clasp": "clasp_pe",
    "class_power_pe66_exp": "clasp_pe",
}


def get_strategy(name: str) -> StrategySpec:
    """The registered strategy called ``name`` (case, ``-``/``_`` and a few aliases from the papers are
    accepted, e.g. ``random-label``, ``PowerBALD``, ``ClaSP-PE``).

    Raises:
        ValueError: unknown name; the message lists the registered ones.
    """
    if not isinstance(name, str):
        raise ValueError(f"strategy name must be a string, got {name!r}.")
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, _ALIASES.get(name.strip().lower(), key))
    if key not in STRATEGIES:
        raise ValueError(f"unknown active-learning strategy {name!r}; choose one of {', '.join(STRATEGIES)}.")
    return STRATEGIES[key]
