"""Spatial prompts (positive/negative points, boxes) as guidance maps, corrective-click simulation, and
zoom-out-zoom-in inference (SegVol, Du et al. 2023).

A prompt's spatial input is a guidance volume ``[3, *S]`` on the network's input grid:

- channel 0: positive points, each a Gaussian ball (peak 1, ``sigma`` voxels);
- channel 1: negative points, the same;
- channel 2: boxes, 1 inside the box and 0 outside.

:class:`textseg.networks.TextSwinUNETR` built with ``spatial_prompts=True`` adds a learned projection of
the guidance, resampled to every conditioned stage, to that prompt's modulation, so points and boxes
work alone (with a generic text such as the structure's class) or with text, through the same heads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = [
    "GUIDANCE_CHANNELS",
    "SpatialPromptError",
    "encode_spatial_prompts",
    "next_corrective_click",
    "box_from_mask",
    "zoom_out_zoom_in",
]

GUIDANCE_CHANNELS = ("positive_points", "negative_points", "box")
"""The guidance volume's channels, in order."""


class SpatialPromptError(ValueError):
    """A point or box that cannot be used: the message names it and the volume's size."""


def _check_point(point: Sequence[float], shape: Sequence[int], what: str) -> tuple[float, ...]:
    point = tuple(float(c) for c in point)
    if len(point) != len(shape):
        raise SpatialPromptError(f"{what} {point} has {len(point)} coordinates; the volume has {len(shape)} dimensions {tuple(shape)}.")
    if any(not 0 <= c <= s - 1 for c, s in zip(point, shape)):
        raise SpatialPromptError(f"{what} {point} lies outside the volume of size {tuple(shape)} (voxel indices 0..size-1).")
    return point


def _check_box(box: Sequence[float], shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    dims = len(shape)
    box = [float(c) for c in box]
    if len(box) != 2 * dims:
        raise SpatialPromptError(f"box {box} must be [start_0..start_{dims - 1}, end_0..end_{dims - 1}] ({2 * dims} numbers).")
    start, end = box[:dims], box[dims:]
    if any(e < s for s, e in zip(start, end)):
        raise SpatialPromptError(f"box {box} has a negative size: every end must be at least its start.")
    if any(e == s for s, e in zip(start, end)):
        raise SpatialPromptError(f"box {box} is empty: every side must be longer than 0.")
    if any(e <= 0 or s >= n for s, e, n in zip(start, end, shape)):
        raise SpatialPromptError(f"box {box} lies outside the volume of size {tuple(shape)}.")
    lo = tuple(max(0, int(np.floor(s))) for s in start)
    hi = tuple(min(n, int(np.ceil(e))) for e, n in zip(end, shape))
    return lo, hi


def encode_spatial_prompts(
    shape: Sequence[int],
    positive_points: Sequence[Sequence[float]] = (),
    negative_points: Sequence[Sequence[float]] = (),
    boxes: Sequence[Sequence[float]] = (),
    sigma: float = 2.0,
) -> torch.Tensor:
    """Guidance volume for one prompt.

    Args:
        shape: spatial size S of the network input, e.g. ``(64, 64, 64)``.
        positive_points: voxel coordinates (in ``shape``'s index space) inside the structure.
        negative_points: voxel coordinates outside it.
        boxes: ``[start..., end...]`` in voxel coordinates (end exclusive), around the structure.
        sigma: radius of each point's Gaussian, in voxels.

    Returns:
        float32 tensor [3, *S] (channels :data:`GUIDANCE_CHANNELS`).

    Raises:
        SpatialPromptError: a point outside the volume, a box that is empty, has a negative size or lies
            outside the volume, coordinates of the wrong length.
    """
    shape = tuple(int(s) for s in shape)
    if sigma <= 0:
        raise SpatialPromptError(f"sigma must be positive, got {sigma}.")
    guidance = torch.zeros((len(GUIDANCE_CHANNELS), *shape), dtype=torch.float32)
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    for channel, points, what in ((0, positive_points, "positive point"), (1, negative_points, "negative point")):
        for point in points:
            point = _check_point(point, shape, what)
            squared = sum((g - c) ** 2 for g, c in zip(grids, point))
            guidance[channel] = torch.maximum(guidance[channel], torch.exp(-squared / (2 * sigma**2)))
    for box in boxes:
        lo, hi = _check_box(box, shape)
        guidance[2][tuple(slice(a, b) for a, b in zip(lo, hi))] = 1.0
    return guidance


def box_from_mask(mask: np.ndarray | torch.Tensor, margin: int = 0) -> list[int] | None:
    """The bounding box ``[start..., end...]`` (end exclusive) of a binary mask, grown by ``margin`` voxels
    and clipped to the volume; ``None`` for an empty mask."""
    mask = np.asarray(mask) > 0
    if not mask.any():
        return None
    coords = np.nonzero(mask)
    start = [max(0, int(c.min()) - margin) for c in coords]
    end = [min(n, int(c.max()) + 1 + margin) for c, n in zip(coords, mask.shape)]
    return start + end


def next_corrective_click(prediction: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> tuple[tuple[int, ...], bool] | None:
    """Where an annotator would click next: the voxel deepest inside the largest error region.

    Args:
        prediction: binary mask [*S].
        target: binary reference mask [*S].

    Returns:
        ``(voxel, is_positive)``: a positive click in a missed region (false negative) or a negative click
        in a false-positive region, whichever region is larger; ``None`` when prediction equals target.
    """
    prediction = np.asarray(prediction) > 0
    target = np.asarray(target) > 0
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ in shape.")
    best = None
    for errors, positive in ((target & ~prediction, True), (prediction & ~target, False)):
        if not errors.any():
            continue
        labels, count = ndimage.label(errors)
        sizes = ndimage.sum_labels(errors, labels, index=np.arange(1, count + 1))
        region = labels == (int(np.argmax(sizes)) + 1)
        if best is None or region.sum() > best[0]:
            depth = ndimage.distance_transform_edt(np.pad(region, 1))[tuple(slice(1, -1) for _ in region.shape)]
            voxel = tuple(int(i) for i in np.unravel_index(int(np.argmax(depth)), region.shape))
            best = (int(region.sum()), voxel, positive)
    return None if best is None else (best[1], best[2])


def zoom_out_zoom_in(
    image: torch.Tensor,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    roi_size: Sequence[int],
    threshold: float = 0.5,
    margin: float = 0.15,
) -> torch.Tensor:
    """Zoom-out-zoom-in inference for one prompt: a coarse pass on the whole volume resized to ``roi_size``
    finds the region of interest; a second pass at full resolution on that region (grown by ``margin`` of
    its size) refines it.

    Args:
        image: [1, C, *S] at full resolution.
        predictor: maps an input [1, C, *R] to probabilities [1, 1, *R] of the prompt (for example a
            sliding-window inferer around the network with its prompt; called with ``roi_size`` inputs
            in the coarse pass and with region crops, padded to multiples of 32, in the fine pass).
        roi_size: the coarse pass's input size (the network's patch size).
        threshold: probability of foreground.
        margin: share of the region's size added on each side.

    Returns:
        probabilities [1, 1, *S]; zero outside the region (all zero when the coarse pass finds nothing).
    """
    if image.ndim < 3 or image.shape[0] != 1:
        raise ValueError(f"expected an image [1, C, *S], got {tuple(image.shape)}.")
    spatial = image.shape[2:]
    mode = "trilinear" if len(spatial) == 3 else "bilinear"
    coarse_input = F.interpolate(image, size=tuple(roi_size), mode=mode, align_corners=False)
    coarse = F.interpolate(predictor(coarse_input), size=tuple(spatial), mode=mode, align_corners=False)
    output = torch.zeros((1, 1, *spatial), dtype=coarse.dtype, device=coarse.device)
    box = box_from_mask((coarse[0, 0] >= threshold).cpu().numpy())
    if box is None:
        return output
    dims = len(spatial)
    start, end = box[:dims], box[dims:]
    grown = [int(np.ceil(margin * (e - s))) for s, e in zip(start, end)]
    start = [max(0, s - g) for s, g in zip(start, grown)]
    end = [min(n, e + g) for e, g, n in zip(end, grown, spatial)]
    region = (slice(None), slice(None)) + tuple(slice(s, e) for s, e in zip(start, end))
    crop = image[region]
    padded_size = [max(64, int(np.ceil(n / 32)) * 32) for n in crop.shape[2:]]
    padding = [p for n, target in zip(reversed(crop.shape[2:]), reversed(padded_size)) for p in (0, target - n)]
    fine = predictor(F.pad(crop, padding))
    output[region] = fine[(slice(None), slice(None)) + tuple(slice(0, n) for n in crop.shape[2:])]
    return output
