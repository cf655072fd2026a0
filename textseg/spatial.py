"""Spatial prompts (positive/negative points, boxes) as guidance maps, corrective-click simulation, and
zoom-out-zoom-in inference (SegVol, Du et al. 2023).

A prompt's spatial input is a guidance volume ``[3, *S]`` on the network's input grid:

- channel 0: positive points, each a Gaussian ball (peak 1, ``sigma`` voxels);
- channel 1: negative points, the same;
- channel 2: boxes, 1 inside the box and 0 outside.

:class:`textseg.networks.TextSwinUNETR` built with ``spatial_prompts=True`` mixes the guidance, max-pooled
to every conditioned stage, into that prompt's modulated features (:class:`textseg.networks.GuidanceBlock`:
small convolutions, so a click spreads to similar voxels around it), so points and boxes
work alone (with a generic text such as the structure's class) or with text, through the same heads.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.engines.utils import PrepareBatchExtraInput
from monai.inferers import Inferer, SlidingWindowInferer
from monai.transforms import MapTransform, Randomizable
from scipy import ndimage

from textseg.networks.text_swinunetr import GUIDANCE_CHANNELS

__all__ = [
    "GUIDANCE_CHANNELS",
    "check_box",
    "check_point",
    "SpatialPromptError",
    "encode_spatial_prompts",
    "next_corrective_click",
    "box_from_mask",
    "zoom_out_zoom_in",
    "RandSpatialPromptsd",
    "CorrectiveClickTraining",
    "GuidedSlidingWindowInferer",
    "infer_with_guidance",
    "PrepareBatchGuidance",
    "points_to_grid",
    "constrain_to_clicks",
]


class SpatialPromptError(ValueError):
    """A point or box that cannot be used: the message names it and the volume's size."""


def check_point(point: Sequence[float], shape: Sequence[int], what: str) -> tuple[float, ...]:
    """Validate a voxel point ``(i, j, k)`` against a volume of size ``shape``; returns it as floats.

    Raises:
        SpatialPromptError: wrong number of coordinates or outside the volume; the message starts with ``what``.
    """
    point = tuple(float(c) for c in point)
    if len(point) != len(shape):
        raise SpatialPromptError(f"{what} {point} has {len(point)} coordinates; the volume has {len(shape)} dimensions {tuple(shape)}.")
    if any(not 0 <= c <= s - 1 for c, s in zip(point, shape)):
        raise SpatialPromptError(f"{what} {point} lies outside the volume of size {tuple(shape)} (voxel indices 0..size-1).")
    return point


def check_box(box: Sequence[float], shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Validate a box ``[start_0..start_n, end_0..end_n]`` (voxels) against ``shape``; returns the clipped
    integer ``(start, end)`` corners.

    Raises:
        SpatialPromptError: wrong length, negative or empty size, or entirely outside the volume.
    """
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
    reach = int(np.ceil(4 * sigma))  # beyond 4 sigma the Gaussian is below 4e-4: only a window around each point is computed
    for channel, points, what in ((0, positive_points, "positive point"), (1, negative_points, "negative point")):
        for point in points:
            point = check_point(point, shape, what)
            window = tuple(slice(max(0, int(np.floor(c)) - reach), min(n, int(np.floor(c)) + reach + 2)) for c, n in zip(point, shape))
            axes = [torch.arange(w.start, w.stop, dtype=torch.float32) - c for w, c in zip(window, point)]
            squared = sum(a.reshape([-1 if i == d else 1 for i in range(len(shape))]) ** 2 for d, a in enumerate(axes))
            guidance[channel][window] = torch.maximum(guidance[channel][window], torch.exp(-squared / (2 * sigma**2)))
    for box in boxes:
        lo, hi = check_box(box, shape)
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
    include_points: Sequence[Sequence[float]] = (),
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
        margin: share of the region's size added on each side (the region is grown to at least ``roi_size``).
        include_points: voxels (full resolution) the region must contain, e.g. positive clicks: a click on a
            structure the coarse pass missed still gets its high-resolution pass.

    Returns:
        probabilities [1, 1, *S]; zero outside the region (all zero when the coarse pass finds nothing and no
        point is given).

    Spatial prompts ride along as extra image channels (``[1, 1 + 3, *S]``; the predictor splits them off), so
    they are resized and cropped exactly like the image.
    """
    if image.ndim < 3 or image.shape[0] != 1:
        raise ValueError(f"expected an image [1, C, *S], got {tuple(image.shape)}.")
    spatial = image.shape[2:]
    mode = "trilinear" if len(spatial) == 3 else "bilinear"
    coarse_input = F.interpolate(image, size=tuple(roi_size), mode=mode, align_corners=False)
    coarse = F.interpolate(predictor(coarse_input), size=tuple(spatial), mode=mode, align_corners=False)
    output = torch.zeros((1, 1, *spatial), dtype=coarse.dtype, device=coarse.device)
    region_mask = (coarse[0, 0] >= threshold).cpu().numpy()
    for point in include_points:
        region_mask[tuple(int(round(c)) for c in check_point(point, spatial, "point"))] = True
    box = box_from_mask(region_mask)
    if box is None:
        return output
    dims = len(spatial)
    start, end = box[:dims], box[dims:]
    grown = [int(np.ceil(margin * (e - s))) for s, e in zip(start, end)]
    start = [max(0, s - g) for s, g in zip(start, grown)]
    end = [min(n, e + g) for e, g, n in zip(end, grown, spatial)]
    for d, r in enumerate(roi_size):  # at least one patch of context around a small region (e.g. a single click)
        short = min(int(r), spatial[d]) - (end[d] - start[d])
        if short > 0:
            start[d] = max(0, min(start[d] - short // 2, spatial[d] - min(int(r), spatial[d])))
            end[d] = start[d] + max(end[d] - start[d], min(int(r), spatial[d]))
    region = (slice(None), slice(None)) + tuple(slice(s, e) for s, e in zip(start, end))
    crop = image[region]
    padded_size = [max(64, int(np.ceil(n / 32)) * 32) for n in crop.shape[2:]]
    padding = [p for n, target in zip(reversed(crop.shape[2:]), reversed(padded_size)) for p in (0, target - n)]
    fine = predictor(F.pad(crop, padding))
    output[region] = fine[(slice(None), slice(None)) + tuple(slice(0, n) for n in crop.shape[2:])]
    return output


class RandSpatialPromptsd(Randomizable, MapTransform):
    """Simulate an annotator's spatial prompts for every sampled prompt of a training crop, from its label.

    Runs after :class:`textseg.transforms.SamplePromptsd`: the crop has K target channels ``[K, *S]`` (1 inside
    the structure, 0 outside, :data:`textseg.transforms.IGNORE_CHANNEL` when not annotated) and writes
    ``guidance_key`` ``[K, 3, *S]`` (:func:`encode_spatial_prompts`; channels :data:`GUIDANCE_CHANNELS`) for
    ``PrepareBatchExtraInput`` to pass to :class:`textseg.networks.TextSwinUNETR` (``spatial_prompts=True``).

    For a structure present in the crop: with probability ``no_prompt_prob`` no spatial prompt (text only, so
    the model keeps working without clicks); otherwise points with probability ``points_prob`` and a box with
    probability ``box_prob`` (at least one of the two): 1..``max_positive`` positive points drawn inside the
    structure and 0..``max_negative`` negative points drawn outside it within ``negative_margin`` voxels of it
    (where corrective clicks on over-segmentation land), and/or the structure's bounding box
    (:func:`box_from_mask`) grown by 0..``box_margin`` voxels. Absent or unannotated structures get no
    spatial prompt.

    Args:
        label_key: per-prompt targets [K, *S].
        guidance_key: key to write, [K, 3, *S] float32.
        no_prompt_prob: probability of text only for a present structure.
        points_prob: probability of points (when the prompt is spatial).
        box_prob: probability of a box (when the prompt is spatial).
        max_positive: most positive points.
        max_negative: most negative points.
        negative_margin: how far (voxels) from the structure negative points may lie.
        box_margin: most voxels a box is grown by on each side.
        sigma: Gaussian radius of a point, in voxels.
    """

    def __init__(
        self,
        label_key: str = "label",
        guidance_key: str = "guidance",
        no_prompt_prob: float = 0.3,
        points_prob: float = 0.8,
        box_prob: float = 0.3,
        max_positive: int = 5,
        max_negative: int = 3,
        negative_margin: int = 4,
        box_margin: int = 3,
        sigma: float = 2.0,
    ) -> None:
        MapTransform.__init__(self, keys=[label_key])
        for name, value in (("no_prompt_prob", no_prompt_prob), ("points_prob", points_prob), ("box_prob", box_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}.")
        if max_positive < 1 or max_negative < 0 or negative_margin < 1 or box_margin < 0:
            raise ValueError(
                f"need max_positive >= 1, max_negative >= 0, negative_margin >= 1, box_margin >= 0; got {max_positive}, "
                f"{max_negative}, {negative_margin}, {box_margin}."
            )
        self.label_key = label_key
        self.guidance_key = guidance_key
        self.no_prompt_prob = no_prompt_prob
        self.points_prob = points_prob
        self.box_prob = box_prob
        self.max_positive = max_positive
        self.max_negative = max_negative
        self.negative_margin = negative_margin
        self.box_margin = box_margin
        self.sigma = sigma

    def randomize(self, data: Any = None) -> None:
        pass  # every draw happens per prompt in :meth:`prompts_for`, from ``self.R``

    def _sample(self, mask: np.ndarray, count: int) -> list[tuple[int, ...]]:
        coords = np.argwhere(mask)
        if count <= 0 or len(coords) == 0:
            return []
        picks = self.R.choice(len(coords), size=min(count, len(coords)), replace=False)
        return [tuple(int(c) for c in coords[i]) for i in picks]

    def prompts_for(self, target: np.ndarray) -> dict[str, list]:
        """Simulated prompts for one binary target [*S]: ``{"positive_points", "negative_points", "boxes"}`` (maybe all empty)."""
        target = np.asarray(target) > 0
        prompts: dict[str, list] = {"positive_points": [], "negative_points": [], "boxes": []}
        if not target.any() or self.R.rand() < self.no_prompt_prob:
            return prompts
        use_points = self.R.rand() < self.points_prob
        use_box = self.R.rand() < self.box_prob
        if not (use_points or use_box):
            use_points = True
        if use_points:
            prompts["positive_points"] = self._sample(target, int(self.R.randint(1, self.max_positive + 1)))
            num_negative = int(self.R.randint(0, self.max_negative + 1))
            if num_negative:
                box = box_from_mask(target, margin=self.negative_margin)
                region = tuple(slice(a, b) for a, b in zip(box[: target.ndim], box[target.ndim :]))
                ring = np.zeros_like(target)
                ring[region] = ndimage.binary_dilation(target[region], iterations=self.negative_margin) & ~target[region]
                prompts["negative_points"] = self._sample(ring, num_negative)
        if use_box:
            prompts["boxes"] = [box_from_mask(target, margin=int(self.R.randint(0, self.box_margin + 1)))]
        return prompts

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        label = torch.as_tensor(d[self.label_key])
        spatial = tuple(label.shape[1:])
        guidance = torch.zeros((label.shape[0], len(GUIDANCE_CHANNELS), *spatial), dtype=torch.float32)
        array = label.detach().cpu().numpy()
        for k in range(label.shape[0]):
            if (array[k] < 0).any():  # not annotated (IGNORE_CHANNEL): nothing to click on
                continue
            prompts = self.prompts_for(array[k])
            if any(prompts.values()):
                guidance[k] = encode_spatial_prompts(spatial, sigma=self.sigma, **prompts)
        d[self.guidance_key] = guidance
        return d


class CorrectiveClickTraining(Randomizable):
    """``SupervisedTrainer(iteration_update=...)``: train on the clicks an annotator would make on the network's own errors.

    Before a training step, with probability ``probability``, the network (eval mode, no gradient) segments the batch
    with its current guidance 1..``max_clicks`` times (drawn per iteration); after each pass every annotated prompt
    gets a corrective click (:func:`next_corrective_click`: positive deep inside the largest missed region, negative
    deep inside the largest false positive), added to its guidance. Then the engine's own ``_iteration`` trains on
    the batch. This is the pattern of MONAI's deepgrow/DeepEdit ``Interaction``, for this package's guidance format;
    the clicks :class:`RandSpatialPromptsd` draws from the label alone cannot show the network where it errs.

    Args:
        probability: share of iterations with simulated corrective clicks.
        max_clicks: most corrective clicks per prompt in one iteration.
        guidance_key: batch key of the guidance [B, K, 3, *S] (written by :class:`RandSpatialPromptsd`).
        label_key: batch key of the targets [B, K, *S] (1 inside, 0 outside, negative when not annotated).
        sigma: Gaussian radius of a click, in voxels.
        threshold: probability above which a voxel counts as segmented.
        seed: seed of the draws (which iterations, how many clicks).
    """

    def __init__(
        self,
        probability: float = 0.5,
        max_clicks: int = 2,
        guidance_key: str = "guidance",
        label_key: str = "label",
        sigma: float = 2.0,
        threshold: float = 0.5,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {probability}.")
        if max_clicks < 1:
            raise ValueError(f"max_clicks must be at least 1, got {max_clicks}.")
        self.probability = probability
        self.max_clicks = max_clicks
        self.guidance_key = guidance_key
        self.label_key = label_key
        self.sigma = sigma
        self.logit_threshold = float(np.log(threshold / (1.0 - threshold)))
        self.set_random_state(seed)

    def randomize(self, data: Any = None) -> None:
        self._rounds = self.R.randint(1, self.max_clicks + 1) if self.R.rand() < self.probability else 0

    def add_corrective_clicks(self, batchdata: dict, logits: torch.Tensor) -> int:
        """Add one corrective click per annotated prompt to ``batchdata[guidance_key]`` (in place) from the network's
        ``logits`` [B, K, *S]; returns how many clicks were added."""
        if self.guidance_key not in batchdata:
            raise KeyError(f"the batch has no {self.guidance_key!r}: put RandSpatialPromptsd in the training transforms.")
        guidance, targets = batchdata[self.guidance_key], torch.as_tensor(batchdata[self.label_key])
        if tuple(logits.shape) != tuple(targets.shape) or tuple(guidance.shape) != (
            *targets.shape[:2],
            len(GUIDANCE_CHANNELS),
            *targets.shape[2:],
        ):
            raise ValueError(
                f"logits {tuple(logits.shape)}, targets {tuple(targets.shape)} and guidance {tuple(guidance.shape)} do not fit."
            )
        predictions = (logits.detach() > self.logit_threshold).cpu().numpy()
        targets = targets.detach().cpu().numpy()
        added = 0
        for b, k in np.ndindex(*targets.shape[:2]):
            if (targets[b, k] < 0).any():  # not annotated
                continue
            click = next_corrective_click(predictions[b, k], targets[b, k])
            if click is None:
                continue
            voxel, positive = click
            points = {"positive_points" if positive else "negative_points": [voxel]}
            new = encode_spatial_prompts(targets.shape[2:], sigma=self.sigma, **points).to(guidance.device, guidance.dtype)
            guidance[b, k] = torch.maximum(guidance[b, k], new)
            added += 1
        return added

    def __call__(self, engine: Any, batchdata: dict) -> dict:
        self.randomize()
        if self._rounds:
            network = engine.network
            network.eval()
            try:
                with (
                    torch.no_grad(),
                    torch.autocast(device_type=torch.device(engine.state.device).type, enabled=bool(getattr(engine, "amp", False))),
                ):
                    for _ in range(self._rounds):
                        inputs, _, args, kwargs = engine.prepare_batch(
                            batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs
                        )
                        self.add_corrective_clicks(batchdata, engine.inferer(inputs, network, *args, **kwargs).float())
            finally:
                network.train()
        return engine._iteration(engine, batchdata)


def infer_with_guidance(
    inferer: Inferer, inputs: torch.Tensor, network: Callable[..., torch.Tensor], guidance: torch.Tensor | None, *args: Any, **kwargs: Any
) -> torch.Tensor:
    """Run any MONAI inferer that cuts the input into windows (``SlidingWindowInferer``, ``SimpleInferer``) with
    per-prompt guidance cut from the same place.

    The guidance is appended to the image as extra channels, so every window carries its own guidance (padded
    with zeros, i.e. no prompt, like the image), and split off again before ``network(window, *args,
    guidance=window_guidance, **kwargs)``.

    Args:
        inferer: the inferer.
        inputs: image [B, C, *S].
        network: e.g. :class:`textseg.networks.TextSwinUNETR` (``spatial_prompts=True``).
        guidance: [B, K, 3, *S], or ``None`` for a plain ``inferer(inputs, network, *args, **kwargs)``.

    Returns:
        what the inferer returns: logits [B, K, *S].
    """
    if guidance is None:
        return inferer(inputs, network, *args, **kwargs)
    batch, channels, spatial = inputs.shape[0], inputs.shape[1], tuple(inputs.shape[2:])
    guidance = torch.as_tensor(guidance)
    if guidance.ndim != inputs.ndim + 1 or guidance.shape[0] != batch or tuple(guidance.shape[3:]) != spatial:
        raise ValueError(f"guidance must have shape [{batch}, K, 3, {', '.join(map(str, spatial))}], got {tuple(guidance.shape)}.")
    num_prompts, guidance_channels = guidance.shape[1], guidance.shape[2]
    stacked = torch.cat(
        [torch.as_tensor(inputs), guidance.to(device=inputs.device, dtype=inputs.dtype).reshape(batch, -1, *spatial)], dim=1
    )

    def predictor(window: torch.Tensor, *a: Any, **kw: Any) -> torch.Tensor:
        window_guidance = window[:, channels:].reshape(window.shape[0], num_prompts, guidance_channels, *window.shape[2:])
        return network(window[:, :channels], *a, guidance=window_guidance, **kw)

    return inferer(stacked, predictor, *args, **kwargs)


class GuidedSlidingWindowInferer(SlidingWindowInferer):
    """``SlidingWindowInferer`` that also windows per-prompt guidance volumes along with the image.

    ``inferer(inputs, network, text_embedding=t, guidance=g)`` with inputs ``[B, C, *S]`` and guidance
    ``[B, K, 3, *S]`` (or ``None``: plain sliding window) calls ``network(window, text_embedding=t,
    guidance=window_guidance)`` with ``window_guidance`` [b, K, 3, *roi] cut from the same place as the image
    window (see :func:`infer_with_guidance`). Takes every ``SlidingWindowInferer`` argument.
    """

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, guidance: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        if guidance is None:
            return super().__call__(inputs, network, *args, **kwargs)
        return infer_with_guidance(
            lambda x, net, *a, **kw: super(GuidedSlidingWindowInferer, self).__call__(x, net, *a, **kw),
            inputs,
            network,
            guidance,
            *args,
            **kwargs,
        )


class PrepareBatchGuidance(PrepareBatchExtraInput):
    """``PrepareBatchExtraInput`` that also passes ``guidance=batch[guidance_key]`` to the network when the batch has it.

    Training crops carry simulated spatial prompts (:class:`RandSpatialPromptsd`, [B, K, 3, *S]); validation and
    inference batches without the key run text only, so one config serves both.

    Args:
        extra_keys: as ``PrepareBatchExtraInput`` (a dict, e.g. ``{"text_embedding": "text_embedding"}``).
        guidance_key: batch key of the guidance.
    """

    def __init__(self, extra_keys: dict[str, str], guidance_key: str = "guidance") -> None:
        if not isinstance(extra_keys, Mapping):
            raise ValueError(f"extra_keys must be a dict (network argument -> batch key), got {extra_keys!r}.")
        super().__init__(dict(extra_keys))
        self.guidance_key = guidance_key

    def __call__(
        self, batchdata: dict[str, torch.Tensor], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ):
        image, label, args, extra = super().__call__(batchdata, device, non_blocking, **kwargs)
        if self.guidance_key in batchdata:
            extra = {**extra, "guidance": torch.as_tensor(batchdata[self.guidance_key]).to(device=device, non_blocking=non_blocking)}
        return image, label, args, extra


def points_to_grid(
    points: Sequence[Sequence[float]], source_affine: np.ndarray | torch.Tensor, target_affine: np.ndarray | torch.Tensor
) -> list[tuple[float, ...]]:
    """Map voxel coordinates from one grid to another through world space (``target⁻¹ · source``).

    For clicks given on the original image (MONAI Label's ``foreground``/``background``, voxel indices of the
    image as stored) that must land on the network's grid after orientation, resampling and any
    canonicalization: pass the image's original affine and the preprocessed image's affine.

    Args:
        points: N points of D voxel coordinates each.
        source_affine, target_affine: (D+1, D+1) voxel -> world matrices.

    Returns:
        the N points in the target grid's (fractional) voxel coordinates.
    """
    source = np.asarray(torch.as_tensor(source_affine, dtype=torch.float64).cpu())
    target = np.asarray(torch.as_tensor(target_affine, dtype=torch.float64).cpu())
    mapping = np.linalg.inv(target) @ source
    out = []
    for point in points:
        point = [float(c) for c in point]
        if len(point) != mapping.shape[0] - 1:
            raise SpatialPromptError(f"point {point} has {len(point)} coordinates; the image has {mapping.shape[0] - 1} dimensions.")
        out.append(tuple(float(c) for c in (mapping @ np.asarray(point + [1.0]))[:-1]))
    return out


def constrain_to_clicks(
    scores: torch.Tensor,
    positive_points: Sequence[Sequence[float]] = (),
    negative_points: Sequence[Sequence[float]] = (),
    radius: float = 3.0,
    foreground: float = 1.0,
    background: float = 0.0,
) -> torch.Tensor:
    """Clicks as hard constraints on one prompt's prediction, as an annotator expects them to act: every voxel
    within ``radius`` voxels of a positive click becomes ``foreground``, of a negative click ``background``
    (negative clicks win where both reach).

    Args:
        scores: probabilities or logits [*S] (a copy is returned).
        positive_points, negative_points: voxel coordinates in ``scores``' grid.
        radius: ball radius in voxels (0: no change).
        foreground, background: the values set (e.g. 1 and 0 for probabilities, +20 and -20 for logits).

    Returns:
        tensor like ``scores``.

    Raises:
        SpatialPromptError: a point outside the volume.
    """
    out = scores.clone()
    if radius <= 0:
        return out
    shape = tuple(scores.shape)
    reach = int(np.ceil(radius))
    for points, value, what in ((positive_points, foreground, "positive point"), (negative_points, background, "negative point")):
        for point in points:
            point = check_point(point, shape, what)
            window = tuple(slice(max(0, int(round(c)) - reach), min(n, int(round(c)) + reach + 1)) for c, n in zip(point, shape))
            axes = [torch.arange(w.start, w.stop, dtype=torch.float32, device=scores.device) - c for w, c in zip(window, point)]
            squared = sum(a.reshape([-1 if i == d else 1 for i in range(len(shape))]) ** 2 for d, a in enumerate(axes))
            region = out[window]
            region[squared <= radius**2] = value
    return out
