"""Uncertainty from the text-conditioned network, MC dropout, and the one-call API for applications.

:func:`score_image` is what a MONAI Label active-learning strategy calls: it runs the current network on one
image for the label set's prompts, scores the image with a registered strategy and returns the image's
score and the suggested patch as a bounding box::

    from textseg.active_learning import score_image

    result = score_image(network, image, prompts_embedding, strategy="clasp_pe", patch_size=(32, 32, 32))
    # {"strategy": "clasp_pe", "score": 0.31, "rank_score": -1.02, "patch_bbox": [[x0, y0, z0], [x1, y1, z1]], ...}

Rank images by ``rank_score`` (descending) to pick the next one; show ``patch_bbox`` (voxel indices of the
image given, start inclusive, stop exclusive) as the region to annotate first.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from .strategies import (
    QueryContext,
    exponential_schedule,
    get_strategy,
    mutual_information,
    power_noising,
    predictive_entropy,
    sigmoid_to_categorical,
)

__all__ = ["enable_mc_dropout", "predict_probs", "score_image"]


def _dropout_modules(network: nn.Module) -> list[nn.Module]:
    return [m for m in network.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


@contextmanager
def enable_mc_dropout(network: nn.Module) -> Iterator[list[nn.Module]]:
    """Inference mode with only the dropout layers active (MC dropout, Gal & Ghahramani 2016).

    Everything else (normalisation layers, drop-path) stays in eval mode; each module's previous mode is
    restored on exit.

    Raises:
        ValueError: the network has no dropout layer with ``p > 0`` (e.g. ``TextSwinUNETR(drop_rate=0)``),
            so every MC sample would be identical.
    """
    dropouts = _dropout_modules(network)
    if not dropouts:
        raise ValueError(
            "MC dropout needs dropout layers with p > 0, and this network has none: build it with drop_rate > 0 "
            "(e.g. TextSwinUNETR(..., drop_rate=0.1)) or use a strategy without MC samples."
        )
    modes = {m: m.training for m in network.modules()}
    network.eval()
    for m in dropouts:
        m.train()
    try:
        yield dropouts
    finally:
        for m, mode in modes.items():
            m.training = mode


def _as_batch(image: torch.Tensor | np.ndarray, in_channels: int | None) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(image) if isinstance(image, np.ndarray) else image).float()
    if x.ndim == 3:
        x = x[None, None]
    elif x.ndim == 4:
        x = x[None]
    elif x.ndim != 5 or x.shape[0] != 1:
        raise ValueError(f"expected one 3D image [X, Y, Z], [C, X, Y, Z] or [1, C, X, Y, Z], got shape {tuple(x.shape)}.")
    if in_channels is not None and x.shape[1] != in_channels:
        raise ValueError(f"the network takes {in_channels} image channel(s), the image has {x.shape[1]}.")
    if not torch.isfinite(x).all():
        raise ValueError("the image contains NaN or infinite values.")
    return x


def _fits_network(shape: Sequence[int]) -> bool:
    return all(s % 32 == 0 and s >= 64 for s in shape)


@torch.no_grad()
def predict_probs(
    network: nn.Module,
    image: torch.Tensor | np.ndarray,
    text_embedding: torch.Tensor,
    mc_samples: int = 0,
    roi_size: Sequence[int] | None = None,
    sw_batch_size: int = 1,
) -> torch.Tensor:
    """Class probabilities of one image for the given prompts, optionally as MC-dropout samples.

    The network's K sigmoid maps are turned into a (K+1)-class distribution by
    :func:`~textseg.active_learning.strategies.sigmoid_to_categorical` (channel 0 = no prompted structure).

    Args:
        network: a text-conditioned network, ``network(x [B, C_in, *S], text_embedding [K, D]) -> logits [B, K, *S]``.
        image: ``[X, Y, Z]``, ``[C_in, X, Y, Z]`` or ``[1, C_in, X, Y, Z]``, already preprocessed (intensity
            scaled as in training).
        text_embedding: ``[K, D]`` prompt embeddings of the label set.
        mc_samples: 0 for one deterministic prediction (eval mode), else the number of MC-dropout samples.
        roi_size: sliding-window size; default: the whole image when its sizes are multiples of 32 and at
            least 64, else 64^3 windows.
        sw_batch_size: windows per forward pass.

    Returns:
        ``[M, K + 1, X, Y, Z]`` float32 on the CPU, ``M = max(mc_samples, 1)``. Memory is
        ``M * (K + 1) * X * Y * Z * 4`` bytes: resample large scans to the model's spacing first.
    """
    if mc_samples < 0:
        raise ValueError(f"mc_samples must be >= 0, got {mc_samples}.")
    x = _as_batch(image, getattr(network, "in_channels", None))
    param = next(network.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = x.to(device)
    emb = torch.as_tensor(text_embedding).to(device=device, dtype=x.dtype)
    if emb.ndim != 2:
        raise ValueError(f"text_embedding must be [K, D], got shape {tuple(emb.shape)}.")

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return network(batch, emb)

    def one_pass() -> torch.Tensor:
        if roi_size is None and _fits_network(x.shape[2:]):
            logits = forward(x)
        else:
            from monai.inferers import sliding_window_inference

            roi = tuple(roi_size) if roi_size is not None else (64,) * (x.ndim - 2)
            logits = sliding_window_inference(x, roi, sw_batch_size, forward, overlap=0.25)
        return sigmoid_to_categorical(torch.sigmoid(logits.float()), dim=1)[0].cpu()

    if mc_samples == 0:
        was_training = network.training
        network.eval()
        try:
            return one_pass()[None]
        finally:
            network.train(was_training)
    with enable_mc_dropout(network):
        return torch.stack([one_pass() for _ in range(mc_samples)])


def score_image(
    network: nn.Module,
    image: torch.Tensor | np.ndarray,
    prompts_embedding: torch.Tensor,
    strategy: str = "clasp_pe",
    patch_size: Sequence[int] = (32, 32, 32),
    mc_samples: int | None = None,
    annotated: np.ndarray | None = None,
    rng: np.random.Generator | int | None = None,
    round_index: int = 0,
    num_rounds: int = 1,
    roi_size: Sequence[int] | None = None,
    **strategy_params,
) -> dict:
    """Score one image for active learning and suggest the patch to annotate first.

    The image's uncertainty is computed with the current network for the label set's prompts
    (:func:`predict_probs`); the registered strategy then picks the best patch of this image, exactly as it
    would in a pool of patches (``budget = 1``). Without a model (``random``) no forward pass is run;
    ``random_label`` uses the network's own prediction as the foreground map (no oracle in an application).

    Args:
        network: text-conditioned network (``forward(x, text_embedding) -> logits [B, K, *S]``).
        image: ``[X, Y, Z]``, ``[C_in, X, Y, Z]`` or ``[1, C_in, X, Y, Z]``, preprocessed as in training.
        prompts_embedding: ``[K, D]`` embeddings of the label set's prompts.
        strategy: a name of :data:`~textseg.active_learning.strategies.STRATEGIES`.
        patch_size: suggested patch size in voxels (clamped to the image).
        mc_samples: MC-dropout samples (default: the strategy's own, 0 for deterministic strategies).
        annotated: optional bool mask ``[X, Y, Z]`` of voxels already labelled; the patch avoids them.
        rng: random generator or seed (random strategies and power noising).
        round_index: current round, for scheduled strategies (ClaSP PE's beta schedule).
        num_rounds: planned rounds, for scheduled strategies.
        roi_size: sliding-window size (see :func:`predict_probs`).
        strategy_params: passed to the strategy (e.g. ``class_share`` for ClaSP PE).

    Returns:
        ``{"strategy", "score", "rank_score", "patch_bbox", "patch_score", "patch_size", "image_shape",
        "mc_samples"}``: ``score`` is the mean voxel uncertainty of the image under the strategy's measure
        (predictive entropy; mutual information for BALD variants; a uniform random number for the random
        baselines), ``rank_score`` what to sort images by (``log(score) + Gumbel(0, 1/beta)`` for the power
        strategies and ClaSP PE, else ``score``), ``patch_bbox`` ``[[x0, y0, z0], [x1, y1, z1]]`` and
        ``patch_score`` the mean uncertainty inside it.

    Raises:
        ValueError: unknown strategy, bad image/embedding shape, NaN in the image, an ``annotated`` mask of
            another shape, no room left for a patch, MC dropout on a network without dropout.
    """
    spec = get_strategy(strategy)
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    x = _as_batch(image, getattr(network, "in_channels", None))
    shape = tuple(int(s) for s in x.shape[2:])
    if annotated is not None and tuple(np.shape(annotated)) != shape:
        raise ValueError(f"annotated mask has shape {tuple(np.shape(annotated))}, the image {shape}.")
    samples = spec.mc_samples if mc_samples is None else int(mc_samples)
    probs = None
    if spec.needs_model or spec.needs_labels:
        probs = predict_probs(network, x, prompts_embedding, mc_samples=samples if spec.needs_model else 0, roi_size=roi_size)
    ctx = QueryContext(
        shapes={"image": shape},
        patch_size=tuple(int(p) for p in patch_size),
        rng=generator,
        annotated={} if annotated is None else {"image": np.asarray(annotated, dtype=bool)},
        probs=(lambda _id: probs) if probs is not None else None,
        labels={"image": probs.mean(0).argmax(0).numpy()} if spec.needs_labels else None,
        round_index=round_index,
        num_rounds=num_rounds,
    )
    patch = spec.query(ctx, 1, **strategy_params)[0]
    if spec.needs_model:
        voxel = mutual_information(probs) if spec.mc_samples else predictive_entropy(probs)
        score = float(voxel.mean())
        patch_score = float(voxel[patch.slices].mean())
        rank_score = score
        if spec.name.startswith("power") or spec.scheduled:
            beta = strategy_params.get("beta", 1.0)
            if spec.scheduled:
                beta = float(
                    exponential_schedule(
                        max(num_rounds, 1), strategy_params.get("beta_start", 1.0), strategy_params.get("beta_end", 100.0)
                    )[round_index]
                )
            rank_score = float(power_noising(torch.tensor([score]), beta, generator)[0])
    else:
        score = patch_score = rank_score = float(generator.random())
    return {
        "strategy": spec.name,
        "score": score,
        "rank_score": rank_score,
        "patch_bbox": patch.bbox(),
        "patch_score": patch_score,
        "patch_size": list(patch.size),
        "image_shape": list(shape),
        "mc_samples": samples if spec.needs_model else 0,
    }
