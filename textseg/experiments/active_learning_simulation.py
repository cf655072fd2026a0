"""Active-learning simulation: label loops with an oracle, the tiny text-conditioned model trained each round.

One experiment = strategies x seeds. For every seed a shared *starting budget* is drawn (one patch centred on
each class, the rest uniform, as nnActive's "all classes" start) and a starting model is trained on it; then
every strategy runs ``rounds`` query rounds from that same start:

    query ``budget`` patches with the strategy (the current model scores the pool)
      -> the oracle reveals their labels -> fine-tune the model (warm start, ``iterations`` steps)
      -> Dice on held-out images.

Training is a plain PyTorch loop on whole pool images with :class:`~textseg.losses.PartialLabelDiceCELoss`
restricted to the labelled voxels (unlabelled voxels are ignored, as nnActive's partial annotations).

Outputs under ``output_dir``: ``results.json`` (learning curves: Dice vs annotated voxels and foreground
voxels, AUBC, final Dice, foreground efficiency, per strategy and seed, with means, spreads and the margins
of ClaSP PE over the random baselines), ``learning_curves.png`` and per-run state. State is written
atomically after every step of a round (patches as soon as they are queried, the model after training, the
metrics after evaluation), so an interrupted run loses no label and :func:`run_simulation` resumes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from textseg.active_learning.scoring import predict_probs
from textseg.active_learning.strategies import Patch, QueryContext, foreground_random_query, get_strategy, random_query
from textseg.bundle import DEFAULT_BUNDLE, network_overrides
from textseg.files import atomic_path, write_atomic
from textseg.losses import PartialLabelDiceCELoss
from textseg.transforms import DEFAULT_HU_RANGE, IGNORE_CHANNEL

__all__ = [
    "CHEAPER_THAN_TINY",
    "PoolImage",
    "SimulationConfig",
    "aubc",
    "build_network",
    "default_network",
    "evaluate",
    "foreground_efficiency",
    "format_summary",
    "load_dataset_pool",
    "make_phantom_pool",
    "plot_curves",
    "report_finished",
    "run_simulation",
    "summarize",
    "train_network",
]

CHEAPER_THAN_TINY = {"conditioned_stages": [2, 3], "depths": [1, 1, 1, 1], "drop_rate": 0.1}
"""How the simulation's network differs from the tiny bundle's: the decoder conditioned at 1/4 and 1/8 resolution
only and one Swin block per stage (~10x cheaper per training step on a CPU), with dropout for MC-dropout."""


def default_network(bundle_dir: str | os.PathLike = DEFAULT_BUNDLE) -> dict:
    """The simulation's network arguments: the tiny bundle's sizes (``tiny.json``) with :data:`CHEAPER_THAN_TINY`."""
    return {**network_overrides(bundle_dir, "tiny.json"), **CHEAPER_THAN_TINY}


PHANTOM_FOV_MM = (340.0, 280.0, 360.0)


@dataclass
class SimulationConfig:
    """Everything that defines an experiment (saved as ``config.json``; a resumed run must match it).

    Attributes:
        output_dir: where state, results and the plot go.
        strategies: registered strategy names (see :data:`~textseg.active_learning.strategies.STRATEGIES`);
            the default compares ClaSP PE with the two random baselines (does ClaSP PE beat random?) at a CPU cost of
            about 10 minutes per seed; add ``entropy``, ``bald``, ``power_entropy``, ``power_bald`` at will
            (to the same output folder: finished runs are kept).
        seeds: one run per strategy and seed; a seed fixes the starting budget, the initial weights and the
            strategies' randomness.
        dataset: ``"phantom"`` (generated in memory unless ``dataset_root`` is given) or a ``datasets.yaml`` entry.
        dataset_root: local copy of a ``datasets.yaml`` entry (for ``"phantom"``: a folder written by
            ``textseg make-phantom``).
        class_names: vocabulary names to prompt (default: the dataset's labels).
        pool_size: images in the unlabelled pool.
        test_size: held-out images for the Dice curve.
        data_seed: seed of the phantoms / of the case split (the same data for every seed).
        image_size: every image is brought to this grid (phantoms are generated on it; dataset images are
            resampled with ``pixdim`` and resized).
        pixdim: spacing for ``datasets.yaml`` images before resizing.
        patch_size: query patch in voxels; ``None`` = whole images.
        stride: candidate grid stride for the uncertainty strategies (default half the patch).
        start_budget: patches of the shared starting set.
        budget: patches per query round.
        rounds: query rounds after the start.
        start_iterations: training steps of the starting model.
        iterations: fine-tuning steps per round (warm start from the previous round's model).
        learning_rate: AdamW learning rate.
        mc_samples: MC-dropout samples for BALD-type strategies.
        class_share: ClaSP PE's class-stratified share of the budget.
        foreground_ratio: share of foreground-centred patches of ``random_label`` (nnActive: 2/3).
        text_encoder: ``"minilm"`` (or another encoder name of :func:`textseg.text.create_encoder`), or
            ``"random"`` for fixed random prompt vectors (tests).
        network: keyword arguments of the network (``TextSwinUNETR``).
        threads: torch CPU threads (``None``: torch's default).
    """

    output_dir: str = "outputs/active_learning"
    strategies: Sequence[str] = ("random", "random_label", "clasp_pe")
    seeds: Sequence[int] = (0, 1, 2)
    dataset: str = "phantom"
    dataset_root: str | None = None
    class_names: Sequence[str] | None = None
    pool_size: int = 6
    test_size: int = 2
    data_seed: int = 1000
    image_size: Sequence[int] = (64, 64, 64)
    pixdim: Sequence[float] = (4.0, 4.0, 4.0)
    patch_size: Sequence[int] | None = (16, 16, 16)
    stride: Sequence[int] | None = None
    start_budget: int = 12
    budget: int = 6
    rounds: int = 4
    start_iterations: int = 60
    iterations: int = 15
    learning_rate: float = 3e-3
    mc_samples: int = 4
    class_share: float = 0.66
    foreground_ratio: float = 2.0 / 3.0
    text_encoder: str = "minilm"
    network: dict = field(default_factory=default_network)
    threads: int | None = None

    def experiment_key(self) -> str:
        """Hash of the fields that make runs comparable (not output_dir, strategies, seeds, threads)."""
        d = dataclasses.asdict(self)
        for k in ("output_dir", "strategies", "seeds", "threads"):
            d.pop(k)
        return hashlib.sha1(json.dumps(_jsonable(d), sort_keys=True).encode()).hexdigest()[:16]

    def validate(self) -> None:
        """Bad settings fail before any work, with the setting named."""
        if not self.strategies:
            raise ValueError("no strategy given.")
        for name in self.strategies:
            get_strategy(name)
        if not self.seeds:
            raise ValueError("no seed given.")
        if self.pool_size < 1:
            raise ValueError(f"the pool is empty: pool_size must be >= 1, got {self.pool_size}.")
        if self.test_size < 1:
            raise ValueError(f"test_size must be >= 1, got {self.test_size}.")
        for name in ("budget", "rounds", "start_budget"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.iterations < 0 or self.start_iterations < 0:
            raise ValueError("iterations must be >= 0.")
        if len(self.image_size) != 3 or any(s % 32 or s < 64 for s in self.image_size):
            raise ValueError(
                f"image_size must be 3 sizes, multiples of 32 and >= 64 (the network's constraint), got {tuple(self.image_size)}."
            )
        patch = self.patch or tuple(self.image_size)
        if len(patch) != 3 or any(int(p) < 1 for p in patch):
            raise ValueError(f"patch_size must be 3 positive sizes, got {self.patch_size}.")
        patch = tuple(min(int(p), int(s)) for p, s in zip(patch, self.image_size))
        per_image = int(np.prod(self.image_size)) // int(np.prod(patch))
        needed = self.start_budget + self.budget * self.rounds
        if needed > per_image * self.pool_size:
            raise ValueError(
                f"budget larger than the pool: start_budget + budget x rounds = {needed} patches of {patch} voxels, "
                f"but the {self.pool_size} pool image(s) of {tuple(self.image_size)} hold at most {per_image * self.pool_size}."
            )

    @property
    def patch(self) -> tuple[int, ...] | None:
        return tuple(int(p) for p in self.patch_size) if self.patch_size is not None else None


@dataclass
class PoolImage:
    """One image of the pool (or test set) with its oracle.

    Attributes:
        id: image id.
        image: float32 ``[X, Y, Z]`` intensities scaled to [0, 1] as in training.
        label: uint8 ``[X, Y, Z]``: 0 background, ``k`` = class ``class_names[k - 1]``.
        annotated: bool ``[K]``: which classes the oracle knows for this image (partial datasets).
    """

    id: str
    image: np.ndarray
    label: np.ndarray
    annotated: np.ndarray


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return x


def _dump(obj) -> str:
    return json.dumps(_jsonable(obj), indent=1, allow_nan=True)


# ----------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------


def _scale_hu(image: np.ndarray) -> np.ndarray:
    lo, hi = DEFAULT_HU_RANGE
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def make_phantom_pool(num: int, class_names: Sequence[str], image_size: Sequence[int], data_seed: int, prefix: str) -> list[PoolImage]:
    """Phantoms generated directly on ``image_size`` (whole field of view), windowed as in training."""
    from textseg.phantom import PHANTOM_LABELS, make_phantom

    ids = {name: i for i, name in PHANTOM_LABELS.items()}
    unknown = [n for n in class_names if n not in ids]
    if unknown:
        raise ValueError(f"the phantom has no {unknown}; its structures are {list(PHANTOM_LABELS.values())}.")
    spacing = tuple(f / s for f, s in zip(PHANTOM_FOV_MM, image_size))
    pool = []
    for i in range(num):
        case = make_phantom(data_seed * 1009 + i + (0 if prefix == "pool" else 50000), shape=tuple(image_size), spacing=spacing)
        label = np.zeros(case.label.shape, dtype=np.uint8)
        for k, name in enumerate(class_names, start=1):
            label[case.label == ids[name]] = k
        pool.append(PoolImage(f"{prefix}_{i:03d}", _scale_hu(case.image), label, np.ones(len(class_names), dtype=bool)))
    return pool


def load_dataset_pool(config: SimulationConfig, class_names: Sequence[str]) -> tuple[list[PoolImage], list[PoolImage]]:
    """Pool and test images from a ``datasets.yaml`` entry (needs a local copy at ``dataset_root``)."""
    from monai.transforms import Compose, Resized

    from textseg.datasets import label_maps, load_datalist
    from textseg.transforms import ct_transforms

    cases = load_datalist(config.dataset, config.dataset_root)
    cases = [c for c in cases if c.get("label")]
    need = config.pool_size + config.test_size
    if len(cases) < need:
        raise ValueError(f"dataset {config.dataset!r} has {len(cases)} labelled case(s); pool_size + test_size = {need}.")
    order = np.random.default_rng(config.data_seed).permutation(len(cases))[:need]
    id_to_name = label_maps()[config.dataset]
    transform = Compose(
        ct_transforms(("image",), "label", pixdim=config.pixdim)
        + [Resized(keys=["image", "label"], spatial_size=tuple(config.image_size), mode=("trilinear", "nearest"))]
    )
    images = []
    for n, j in enumerate(order):
        case = cases[int(j)]
        data = transform({"image": case["image"], "label": case["label"]})
        raw = np.asarray(data["label"][0]).round().astype(np.int64)
        label = np.zeros(raw.shape, dtype=np.uint8)
        annotated = np.array([name in case["annotated"] for name in class_names], dtype=bool)
        for k, name in enumerate(class_names, start=1):
            for i, mapped in id_to_name.items():
                if mapped == name and annotated[k - 1]:
                    label[raw == int(i)] = k
        prefix = "pool" if n < config.pool_size else "test"
        images.append(PoolImage(f"{prefix}_{n:03d}", np.asarray(data["image"][0], dtype=np.float32), label, annotated))
    return images[: config.pool_size], images[config.pool_size :]


def _class_names(config: SimulationConfig) -> list[str]:
    if config.class_names:
        return list(config.class_names)
    if config.dataset == "phantom":
        from textseg.phantom import PHANTOM_LABELS

        return list(PHANTOM_LABELS.values())
    from textseg.datasets import label_maps

    return sorted(set(label_maps()[config.dataset].values()))


def _prompt_embeddings(class_names: Sequence[str], encoder: str) -> torch.Tensor:
    if encoder == "random":
        g = torch.Generator().manual_seed(12345)
        return torch.randn(len(class_names), 386, generator=g) / math.sqrt(386)
    from textseg.text import prompt_features, vocabulary_embedding_table

    return prompt_features(vocabulary_embedding_table(encoder), list(class_names)).float()


def build_network(num_classes: int, embeddings: torch.Tensor, network_kwargs: dict) -> torch.nn.Module:
    """The text-conditioned network of the simulation (unknown keyword arguments are refused by name)."""
    from textseg.networks import TextSwinUNETR as cls

    params = inspect.signature(cls).parameters
    unknown = [k for k in network_kwargs if k not in params]
    if unknown:
        raise ValueError(f"{cls.__name__} has no parameter(s) {unknown}.")
    return cls(in_channels=1, num_classes=num_classes, text_dim=int(embeddings.shape[1]), **network_kwargs).set_class_embeddings(embeddings)


# ----------------------------------------------------------------------------------------------------
# training and evaluation
# ----------------------------------------------------------------------------------------------------


def _targets(item: PoolImage, num_classes: int) -> torch.Tensor:
    label = torch.from_numpy(item.label.astype(np.int64))
    channels = []
    for k in range(1, num_classes + 1):
        if item.annotated[k - 1]:
            channels.append((label == k).float())
        else:
            channels.append(torch.full(label.shape, IGNORE_CHANNEL))
    return torch.stack(channels)


def train_network(
    network: torch.nn.Module,
    pool: Sequence[PoolImage],
    masks: dict[str, np.ndarray],
    embeddings: torch.Tensor,
    iterations: int,
    learning_rate: float,
    seed: int,
) -> float:
    """Fine-tune ``network`` in place on the labelled voxels; returns the mean loss of the last steps.

    Each step takes one pool image with labelled voxels (uniformly), runs the whole image and applies
    :class:`~textseg.losses.PartialLabelDiceCELoss` to the labelled voxels only: logits ``[1, K, N]`` and
    targets ``[1, K, N]`` gathered at the N voxels of the image's annotation mask.
    """
    labelled = [p for p in pool if masks.get(p.id) is not None and masks[p.id].any()]
    if not labelled or iterations == 0:
        return float("nan")
    num_classes = int(embeddings.shape[0])
    loss_fn = PartialLabelDiceCELoss()
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-5)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    network.train()
    losses = []
    for _ in range(iterations):
        item = labelled[int(rng.integers(len(labelled)))]
        mask = torch.from_numpy(masks[item.id])
        x = torch.from_numpy(item.image)[None, None]
        logits = network(x, embeddings)
        target = _targets(item, num_classes)[None]
        loss = loss_fn(logits[:, :, mask], target[:, :, mask])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    network.eval()
    return float(np.mean(losses[-10:]))


@torch.no_grad()
def evaluate(network: torch.nn.Module, test: Sequence[PoolImage], embeddings: torch.Tensor) -> dict:
    """Dice per class on the test images (sigmoid > 0.5 per prompt); mean over images, then over classes."""
    network.eval()
    num_classes = int(embeddings.shape[0])
    per_class = [[] for _ in range(num_classes)]
    for item in test:
        pred = torch.sigmoid(network(torch.from_numpy(item.image)[None, None], embeddings))[0] > 0.5
        truth = torch.from_numpy(item.label.astype(np.int64))
        for k in range(num_classes):
            if not item.annotated[k]:
                continue
            g = truth == k + 1
            p = pred[k]
            denom = int(g.sum() + p.sum())
            if denom == 0:
                continue
            per_class[k].append(2.0 * float((g & p).sum()) / denom)
    dice = [float(np.mean(v)) if v else float("nan") for v in per_class]
    valid = [d for d in dice if not math.isnan(d)]
    return {"dice": float(np.mean(valid)) if valid else float("nan"), "dice_per_class": dice}


# ----------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------


def aubc(dice: Sequence[float], annotated: Sequence[float] | None = None) -> float:
    """Area under the budget curve, normalised to [0, 1] in x (nnActive ``compute_auc``: trapezoids, so a
    constant curve at d has AUBC d). ``annotated`` gives the x positions (annotated voxels), default evenly
    spaced."""
    y = np.asarray(dice, dtype=float)
    if len(y) == 0:
        raise ValueError("aubc needs at least one point.")
    if len(y) == 1:
        return float(y[0])
    if annotated is None:
        x = np.linspace(0.0, 1.0, len(y))
    else:
        x = np.asarray(annotated, dtype=float)
        if x[-1] == x[0]:
            raise ValueError("aubc: the budget does not grow.")
        x = (x - x[0]) / (x[-1] - x[0])
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def foreground_efficiency(
    fg_voxels: Sequence[float], dice: Sequence[float], reference_dice: float, start_dice: float, start_fg: float
) -> float:
    """nnActive's foreground efficiency: the rate ``b`` of ``Dice(x) = c - a exp(-b (x - x0))`` fitted to the
    curve, x = annotated foreground voxels (in thousands), ``c`` = reference Dice (the best Dice reached in the
    experiment, unless given), ``a = c - Dice at the start``, ``x0`` = foreground voxels at the start.
    Higher = more Dice per annotated foreground voxel. NaN when the fit fails."""
    from scipy.optimize import curve_fit

    x = np.asarray(fg_voxels, dtype=float) / 1000.0
    y = np.asarray(dice, dtype=float)
    a = reference_dice - start_dice
    x0 = start_fg / 1000.0
    if a <= 0 or len(x) < 2:
        return float("nan")

    def curve(xx, b):
        return reference_dice - a * np.exp(-b * (xx - x0))

    try:
        (b,), _ = curve_fit(curve, x, y, p0=[0.1], bounds=(0.0, np.inf), maxfev=5000)
    except (RuntimeError, ValueError):
        return float("nan")
    return float(b)


def _stats(values: Sequence[float]) -> dict:
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    if len(v) == 0:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        "n": int(len(v)),
    }


def summarize(runs: dict[str, dict[int, dict]], reference_dice: float | None = None) -> dict:
    """Per-strategy AUBC, final Dice and foreground efficiency (mean, std over seeds, min, max) and the paired
    AUBC margins of ClaSP PE over ``random`` and ``random_label`` (difference per seed).

    Args:
        runs: strategy -> seed -> run record with ``curve`` (list of points with ``annotated_voxels``,
            ``foreground_voxels``, ``dice``).
        reference_dice: ``c`` of the foreground-efficiency fit (default: best Dice of any point).
    """
    points = [p["dice"] for r in runs.values() for run in r.values() for p in run["curve"] if not math.isnan(p["dice"])]
    if reference_dice is None:
        reference_dice = max(points) if points else float("nan")
    summary: dict = {"strategies": {}, "reference_dice": reference_dice}
    per_seed_aubc: dict[str, dict[int, float]] = {}
    for name, seeds in runs.items():
        aubcs, finals, effs = [], [], []
        per_seed_aubc[name] = {}
        for seed, run in seeds.items():
            curve = run["curve"]
            x = [p["annotated_voxels"] for p in curve]
            fg = [p["foreground_voxels"] for p in curve]
            y = [p["dice"] for p in curve]
            run["aubc"] = aubc(y, x)
            run["final_dice"] = y[-1]
            run["foreground_efficiency"] = foreground_efficiency(fg, y, reference_dice, y[0], fg[0])
            per_seed_aubc[name][seed] = run["aubc"]
            aubcs.append(run["aubc"])
            finals.append(run["final_dice"])
            effs.append(run["foreground_efficiency"])
        summary["strategies"][name] = {
            "aubc": _stats(aubcs),
            "final_dice": _stats(finals),
            "foreground_efficiency": _stats(effs),
            "seeds": sorted(seeds),
        }
    if "random_label" in summary["strategies"]:
        ref = summary["strategies"]["random_label"]["foreground_efficiency"]["mean"]
        for s in summary["strategies"].values():
            s["foreground_efficiency_vs_random_label"] = (
                s["foreground_efficiency"]["mean"] / ref if ref and not math.isnan(ref) else float("nan")
            )
    margins = {}
    for baseline in ("random", "random_label"):
        if "clasp_pe" in per_seed_aubc and baseline in per_seed_aubc:
            common = sorted(set(per_seed_aubc["clasp_pe"]) & set(per_seed_aubc[baseline]))
            diffs = [per_seed_aubc["clasp_pe"][s] - per_seed_aubc[baseline][s] for s in common]
            margins[f"clasp_pe_minus_{baseline}"] = {
                **_stats(diffs),
                "per_seed": dict(zip(common, diffs)),
                "wins": int(sum(d > 0 for d in diffs)),
            }
    summary["aubc_margins"] = margins
    return summary


def plot_curves(runs: dict[str, dict[int, dict]], path: Path) -> Path:
    """Dice vs annotated voxels and vs annotated foreground voxels: mean over seeds with a min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, seeds in runs.items():
        curves = [run["curve"] for run in seeds.values()]
        n = min(len(c) for c in curves)
        y = np.array([[p["dice"] for p in c[:n]] for c in curves])
        for ax, key, scale in ((axes[0], "annotated_voxels", 1e3), (axes[1], "foreground_voxels", 1e3)):
            x = np.array([[p[key] for p in c[:n]] for c in curves]).mean(0) / scale
            (line,) = ax.plot(x, y.mean(0), marker="o", ms=3, label=f"{name} (n={len(curves)})")
            if len(curves) > 1:
                ax.fill_between(x, y.min(0), y.max(0), color=line.get_color(), alpha=0.15)
    axes[0].set_xlabel("annotated voxels (thousands)")
    axes[1].set_xlabel("annotated foreground voxels (thousands)")
    for ax in axes:
        ax.set_ylabel("mean Dice (held-out)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Active learning on the phantom: mean over seeds, band = min-max")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------------


def _masks_from(patches: Sequence[Patch], pool: Sequence[PoolImage]) -> dict[str, np.ndarray]:
    masks = {p.id: np.zeros(p.label.shape, dtype=bool) for p in pool}
    for patch in patches:
        if patch.image not in masks:
            raise ValueError(f"saved patch refers to image {patch.image!r}, which is not in the pool.")
        masks[patch.image][patch.slices] = True
    return masks


def _point(pool: Sequence[PoolImage], masks: dict[str, np.ndarray], metrics: dict, patches: Sequence[Patch], num_classes: int) -> dict:
    annotated = sum(int(m.sum()) for m in masks.values())
    fg = 0
    classes_seen = np.zeros(num_classes, dtype=int)
    by_id = {p.id: p for p in pool}
    for p in pool:
        fg += int(((p.label > 0) & masks[p.id]).sum())
    for patch in patches:
        present = np.unique(by_id[patch.image].label[patch.slices])
        for c in present:
            if c > 0:
                classes_seen[int(c) - 1] += 1
    return {"annotated_voxels": annotated, "foreground_voxels": fg, "patches_per_class": classes_seen.tolist(), **metrics}


def _start_patches(pool: Sequence[PoolImage], config: SimulationConfig, rng: np.random.Generator) -> list[Patch]:
    """nnActive's "all classes" start: one patch centred on each class (in a random image that has it), then
    uniform random patches for the rest of ``start_budget``."""
    shapes = {p.id: p.label.shape for p in pool}
    patch = config.patch or tuple(config.image_size)
    chosen: list[Patch] = []
    num_classes = int(pool[0].annotated.shape[0])
    classes = list(rng.permutation(num_classes) + 1)[: config.start_budget]
    for c in classes:
        holders = {p.id: p.label for p in pool if (p.label == c).any()}
        if not holders:
            continue
        masks = _masks_from(chosen, pool)
        ctx = QueryContext(
            shapes={i: shapes[i] for i in holders},
            patch_size=patch,
            rng=rng,
            annotated={i: masks[i] for i in holders},
            labels={i: np.where(lab == c, lab, 0) for i, lab in holders.items()},
        )
        try:
            chosen += foreground_random_query(ctx, 1, foreground_ratio=1.0)
        except (ValueError, RuntimeError):
            continue  # no room left around this class: the uniform draw below takes its place
    rest = config.start_budget - len(chosen)
    if rest:
        ctx = QueryContext(shapes=shapes, patch_size=patch, rng=rng, annotated=_masks_from(chosen, pool))
        chosen += random_query(ctx, rest)
    return chosen


class _Experiment:
    def __init__(self, config: SimulationConfig, progress: bool):
        config.validate()
        self.config = config
        self.out = Path(config.output_dir)
        self.progress = progress
        self.class_names = _class_names(config)
        self.embeddings = _prompt_embeddings(self.class_names, config.text_encoder)
        if config.dataset == "phantom" and config.dataset_root is None:
            self.pool = make_phantom_pool(config.pool_size, self.class_names, config.image_size, config.data_seed, "pool")
            self.test = make_phantom_pool(config.test_size, self.class_names, config.image_size, config.data_seed, "test")
        else:
            self.pool, self.test = load_dataset_pool(config, self.class_names)
        self.key = config.experiment_key()
        manifest = self.out / "experiment.json"
        if manifest.exists():
            saved = json.loads(manifest.read_text(encoding="utf-8"))
            if saved.get("experiment_key") != self.key:
                raise ValueError(
                    f"{self.out} holds an experiment with other settings ({manifest}); resume it with the same "
                    "settings, or choose another --output-dir."
                )
        write_atomic(manifest, _dump({"experiment_key": self.key, "config": dataclasses.asdict(config), "class_names": self.class_names}))

    def network(self) -> torch.nn.Module:
        return build_network(len(self.class_names), self.embeddings, dict(self.config.network))

    # ---- shared start per seed
    def start(self, seed: int) -> tuple[list[Patch], dict, dict]:
        folder = self.out / f"seed_{seed}"
        state_path, model_path = folder / "start.json", folder / "start_model.pt"
        state = json.loads(state_path.read_text(encoding="utf-8")) if state_path.exists() else None
        if state is None:
            patches = _start_patches(self.pool, self.config, np.random.default_rng([seed, 0]))
            state = {"patches": [p.to_dict() for p in patches], "phase": "queried"}
            write_atomic(state_path, _dump(state))
        patches = [Patch.from_dict(d) for d in state["patches"]]
        masks = _masks_from(patches, self.pool)
        if state["phase"] == "done" and model_path.exists():
            weights = torch.load(model_path, map_location="cpu", weights_only=True)
            return patches, state["point"], weights
        torch.manual_seed(seed)
        net = self.network()
        if model_path.exists():
            net.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
        else:
            train_network(net, self.pool, masks, self.embeddings, self.config.start_iterations, self.config.learning_rate, seed * 1000)
            with atomic_path(model_path) as tmp:
                torch.save(net.state_dict(), tmp)
        point = _point(self.pool, masks, evaluate(net, self.test, self.embeddings), patches, len(self.class_names))
        point["round"] = 0
        state.update(phase="done", point=point)
        write_atomic(state_path, _dump(state))
        return patches, point, net.state_dict()

    # ---- one strategy from the shared start
    def run(self, strategy: str, seed: int, start_patches, start_point, start_weights, tick: Callable[[str], None]) -> dict:
        spec = get_strategy(strategy)
        cfg = self.config
        folder = self.out / f"seed_{seed}" / spec.name
        state_path, model_path = folder / "state.json", folder / "model.pt"
        state = (
            json.loads(state_path.read_text(encoding="utf-8"))
            if state_path.exists()
            else {"strategy": spec.name, "seed": seed, "rounds": []}
        )
        net = self.network()
        model_round = 0
        if model_path.exists():
            saved = torch.load(model_path, map_location="cpu", weights_only=True)
            net.load_state_dict(saved["state_dict"])
            model_round = int(saved["round"])
        else:
            net.load_state_dict(start_weights)
        strategy_index = STRATEGY_SALT.index(spec.name) if spec.name in STRATEGY_SALT else len(STRATEGY_SALT)
        params = {"random_label": {"foreground_ratio": cfg.foreground_ratio}, "clasp_pe": {"class_share": cfg.class_share}}.get(
            spec.name, {}
        )
        for r in range(1, cfg.rounds + 1):
            entry = state["rounds"][r - 1] if len(state["rounds"]) >= r else None
            if entry is not None and entry["phase"] == "done":
                tick(f"{spec.name} seed {seed} round {r} (saved)")
                continue
            earlier = list(start_patches) + [Patch.from_dict(d) for e in state["rounds"][: r - 1] for d in e["patches"]]
            masks = _masks_from(earlier, self.pool)
            if entry is None:
                rng = np.random.default_rng([seed, strategy_index, r])
                patches = self._query(spec, net, masks, rng, r - 1, params)
                entry = {"round": r, "patches": [p.to_dict() for p in patches], "phase": "queried"}
                state["rounds"].append(entry)
                write_atomic(state_path, _dump(state))  # the labels are safe from here on
            new = [Patch.from_dict(d) for d in entry["patches"]]
            all_patches = earlier + new
            masks = _masks_from(all_patches, self.pool)
            if model_round != r:
                train_network(net, self.pool, masks, self.embeddings, cfg.iterations, cfg.learning_rate, seed * 1000 + r)
                with atomic_path(model_path) as tmp:
                    torch.save({"round": r, "state_dict": net.state_dict()}, tmp)
                model_round = r
            point = _point(self.pool, masks, evaluate(net, self.test, self.embeddings), all_patches, len(self.class_names))
            point["round"] = r
            entry.update(phase="done", point=point)
            write_atomic(state_path, _dump(state))
            tick(f"{spec.name} seed {seed} round {r}: Dice {point['dice']:.3f}")
        return {"curve": [start_point] + [e["point"] for e in state["rounds"][: cfg.rounds]]}

    def _query(self, spec, net, masks, rng, round_index, params) -> list[Patch]:
        cfg = self.config
        cache: dict[str, torch.Tensor] = {}
        samples = cfg.mc_samples if spec.mc_samples else 0
        images = {p.id: p for p in self.pool}

        def probs(image_id: str) -> torch.Tensor:
            if image_id not in cache:
                cache.clear()  # strategies visit each image once: keep one in memory
                cache[image_id] = predict_probs(net, images[image_id].image, self.embeddings, mc_samples=samples)
            return cache[image_id]

        ctx = QueryContext(
            shapes={p.id: p.label.shape for p in self.pool},
            patch_size=cfg.patch or tuple(cfg.image_size),
            rng=rng,
            annotated=masks,
            probs=probs if spec.needs_model else None,
            labels={p.id: p.label for p in self.pool} if spec.needs_labels else None,
            num_classes=len(self.class_names),
            stride=cfg.stride,
            round_index=round_index,
            num_rounds=cfg.rounds,
        )
        return spec.query(ctx, cfg.budget, **params)


# fixed order for per-strategy random streams, so adding a strategy to an experiment changes no other run
STRATEGY_SALT = ("random", "random_label", "entropy", "bald", "power_entropy", "power_bald", "clasp_pe")


def run_simulation(config: SimulationConfig, progress: bool = True, log: Callable[[str], None] | None = print) -> dict:
    """Run (or resume) the experiment; returns the results written to ``output_dir/results.json``.

    Raises:
        ValueError: bad settings (unknown strategy, empty pool, budget larger than the pool, ...), or an
            output folder holding an experiment with other settings.
    """
    if config.threads:
        torch.set_num_threads(int(config.threads))
    started = time.time()
    exp = _Experiment(config, progress)
    strategies = [get_strategy(s).name for s in config.strategies]
    total = len(config.seeds) * (1 + len(strategies) * config.rounds)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="active learning", unit="round")

    def tick(message: str) -> None:
        if bar is not None:
            bar.set_postfix_str(message[-60:])
            bar.update(1)

    runs: dict[str, dict[int, dict]] = {s: {} for s in strategies}
    try:
        for seed in config.seeds:
            start_patches, start_point, start_weights = exp.start(seed)
            tick(f"seed {seed} start: Dice {start_point['dice']:.3f}")
            for name in strategies:
                runs[name][seed] = exp.run(name, seed, start_patches, start_point, start_weights, tick)
    finally:
        if bar is not None:
            bar.close()
    return _write_results(exp.out, config, exp.key, exp.class_names, runs, time.time() - started, log)


def _write_results(out: Path, config: SimulationConfig, key: str, class_names, runs, seconds, log) -> dict:
    runs = {s: r for s, r in runs.items() if r}
    if not runs:
        raise ValueError(f"{out} holds no finished run yet.")
    summary = summarize(runs)
    results = {
        "experiment_key": key,
        "config": dataclasses.asdict(config),
        "class_names": class_names,
        "summary": summary,
        "runs": {s: {str(k): v for k, v in r.items()} for s, r in runs.items()},
        "seconds": None if seconds is None else round(seconds, 1),
    }
    write_atomic(out / "results.json", _dump(results))
    plot_curves(runs, out / "learning_curves.png")
    if log is not None:
        log(format_summary(summary))
        log(f"results: {out / 'results.json'}, plot: {out / 'learning_curves.png'}")
    return results


def report_finished(config: SimulationConfig, log: Callable[[str], None] | None = print) -> dict:
    """Write ``results.json`` and the plot from the runs of ``config`` that have finished every round, without
    training anything (e.g. while the experiment still runs elsewhere, or after it was stopped).

    Raises:
        ValueError: the folder holds another experiment, or no finished run.
    """
    out = Path(config.output_dir)
    manifest = out / "experiment.json"
    if not manifest.exists():
        raise ValueError(f"{out} holds no experiment (no experiment.json).")
    saved = json.loads(manifest.read_text(encoding="utf-8"))
    if saved.get("experiment_key") != config.experiment_key():
        raise ValueError(f"{out} holds an experiment with other settings ({manifest}).")
    runs: dict[str, dict[int, dict]] = {}
    for name in (get_strategy(s).name for s in config.strategies):
        runs[name] = {}
        for seed in config.seeds:
            start_path, state_path = out / f"seed_{seed}" / "start.json", out / f"seed_{seed}" / name / "state.json"
            if not (start_path.exists() and state_path.exists()):
                continue
            start, state = json.loads(start_path.read_text(encoding="utf-8")), json.loads(state_path.read_text(encoding="utf-8"))
            rounds = state["rounds"][: config.rounds]
            if start.get("phase") != "done" or len(rounds) < config.rounds or any(r["phase"] != "done" for r in rounds):
                continue
            runs[name][seed] = {"curve": [start["point"]] + [r["point"] for r in rounds]}
    return _write_results(out, config, config.experiment_key(), saved.get("class_names"), runs, None, log)


def format_summary(summary: dict) -> str:
    """A plain-text table of the summary (what the CLI prints)."""
    lines = [f"{'strategy':<14} {'AUBC mean ± std':>18} {'[min, max]':>16} {'final Dice':>16} {'FG-eff':>10}"]
    for name, s in summary["strategies"].items():
        a, f, e = s["aubc"], s["final_dice"], s["foreground_efficiency"]
        lines.append(
            f"{name:<14} {a['mean']:>9.4f} ± {a['std']:<6.4f} [{a['min']:.3f}, {a['max']:.3f}] "
            f"{f['mean']:>8.4f} ± {f['std']:<5.3f} {e['mean']:>8.4f}"
        )
    for key, m in summary.get("aubc_margins", {}).items():
        lines.append(f"{key}: {m['mean']:+.4f} ± {m['std']:.4f} (min {m['min']:+.4f}, wins {m['wins']}/{m['n']} seeds)")
    return "\n".join(lines)
