"""Augmentations that make a model trained on few real patients meet other patients, scanners and phases.

They run on training crops after :class:`textseg.transforms.LabelToChannelsd`: the image is windowed to
[0, 1] (``hu_range``) and the label is one channel per model class (1 inside, 0 outside,
:data:`~textseg.transforms.IGNORE_CHANNEL` where the case does not annotate the class). Spatial
augmentations (rotation, per-axis scale) are MONAI's ``RandAffined`` in the bundle config. Left-right
flips are never used: laterality is part of the label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, Randomizable

from textseg.transforms import IGNORE_CHANNEL

__all__ = ["CONTRAST_PHASES", "CropSlabd", "RandContrastPhased", "RandSliceThicknessd", "RandFieldOfViewd"]

CONTRAST_PHASES: dict[str, dict[str, tuple[float, float]]] = {
    "native": {},
    "arterial": {
        "aorta": (150.0, 300.0),
        "iliac_artery_left": (150.0, 300.0),
        "iliac_artery_right": (150.0, 300.0),
        "kidney_left": (60.0, 150.0),
        "kidney_right": (60.0, 150.0),
        "spleen": (40.0, 90.0),
        "liver": (5.0, 25.0),
        "portal_vein_and_splenic_vein": (30.0, 90.0),
        "inferior_vena_cava": (10.0, 60.0),
        "pancreas": (40.0, 80.0),
    },
    "portal_venous": {
        "aorta": (90.0, 160.0),
        "iliac_artery_left": (90.0, 160.0),
        "iliac_artery_right": (90.0, 160.0),
        "inferior_vena_cava": (80.0, 150.0),
        "iliac_vena_left": (80.0, 150.0),
        "iliac_vena_right": (80.0, 150.0),
        "portal_vein_and_splenic_vein": (100.0, 170.0),
        "liver": (40.0, 70.0),
        "spleen": (50.0, 80.0),
        "kidney_left": (80.0, 150.0),
        "kidney_right": (80.0, 150.0),
        "pancreas": (40.0, 70.0),
    },
}
"""HU added to each structure for a contrast phase, relative to a native scan: (low, high), drawn per
structure. Typical enhancement of abdominal CT (arterial ~25-35 s, portal-venous ~70 s after injection)."""


class CropSlabd(MapTransform):
    """Keep the slab ``data[slab_key] = [low, high]`` (fractions of the last, superior-inferior axis).

    Used to hold a band of slices of a training patient out of training (``[0, 0.55]`` and ``[0.75, 1]``
    train, ``[0.55, 0.75]`` validates). Cases without ``slab_key`` pass unchanged. Runs on channel-first
    volumes after orientation (RAS: the last axis runs inferior to superior).
    """

    def __init__(self, keys, slab_key: str = "slab", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.slab_key = slab_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        slab = d.pop(self.slab_key, None)
        if slab is None:
            return d
        low, high = (float(v) for v in slab)
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"slab {slab} must be fractions 0 <= low < high <= 1.")
        for key in self.key_iterator(d):
            depth = d[key].shape[-1]
            start = int(round(low * depth))
            d[key] = d[key][..., start : max(int(round(high * depth)), start + 1)]
        return d


class RandContrastPhased(Randomizable, MapTransform):
    """Simulate another contrast phase: add per-structure HU offsets inside each annotated structure.

    With probability ``prob`` a phase is drawn from :data:`CONTRAST_PHASES` (native included) and each of its
    structures that the crop annotates gets an offset drawn from its range, scaled by a common factor in
    ``[-0.3, 1]`` (negative: a contrast scan made to look more native). Offsets are converted to the
    windowed intensity scale and the image is clipped to [0, 1] again. Voxels of structures that the case
    does not annotate are left alone.

    Args:
        image_key: windowed image [1, *S].
        label_key: per-class target channels [K, *S].
        class_names: the K model classes (vocabulary names), in channel order.
        hu_range: the window that mapped HU to [0, 1].
        prob: probability of changing the phase.
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str = "label",
        class_names: Sequence[str] = (),
        hu_range: Sequence[float] = (-175.0, 250.0),
        prob: float = 0.5,
    ):
        MapTransform.__init__(self, keys=[image_key, label_key])
        self.image_key, self.label_key = image_key, label_key
        self.class_names = list(class_names)
        self.hu_width = float(hu_range[1]) - float(hu_range[0])
        if self.hu_width <= 0:
            raise ValueError(f"hu_range must be increasing, got {hu_range}.")
        self.prob = prob

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if self.R.rand() >= self.prob:
            return d
        phase = CONTRAST_PHASES[self.R.choice(sorted(CONTRAST_PHASES))]
        factor = self.R.uniform(-0.3, 1.0)
        image, label = d[self.image_key], d[self.label_key]
        shift = torch.zeros_like(image[0])
        for k, name in enumerate(self.class_names):
            if name not in phase:
                continue
            inside = label[k] > 0  # IGNORE_CHANNEL (-1) and 0 stay unchanged
            if inside.any():
                low, high = phase[name]
                shift[inside] = factor * self.R.uniform(low, high) / self.hu_width
        d[self.image_key] = (image + shift[None]).clamp(0.0, 1.0)
        return d


class RandSliceThicknessd(Randomizable, MapTransform):
    """Simulate thicker slices: average the image along the last axis over ``factor`` voxels and interpolate back.

    ``factor`` is drawn in ``factor_range`` (e.g. ``(1, 2.5)`` on a 3 mm grid spans 3-7.5 mm slices).

    Args:
        keys: image key(s), [C, *S].
        factor_range: (min, max) thickness factor.
        prob: probability of applying.
    """

    def __init__(self, keys, factor_range: Sequence[float] = (1.0, 2.5), prob: float = 0.3, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.factor_range = (float(factor_range[0]), float(factor_range[1]))
        self.prob = prob

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if self.R.rand() >= self.prob:
            return d
        factor = self.R.uniform(*self.factor_range)
        for key in self.key_iterator(d):
            image = d[key]
            depth = image.shape[-1]
            thick = max(1, int(round(depth / factor)))
            if thick >= depth:
                continue
            volume = torch.as_tensor(image)[None].float()  # [1, C, X, Y, Z]
            low = F.interpolate(volume, size=(*volume.shape[2:4], thick), mode="area")
            back = F.interpolate(low, size=tuple(volume.shape[2:]), mode="trilinear", align_corners=False)[0]
            out = torch.as_tensor(image).clone()
            out.copy_(back)
            d[key] = out
        return d


class RandFieldOfViewd(Randomizable, MapTransform):
    """Simulate a short scan: keep ``num_slices`` (drawn in ``slice_range``) of the last axis, blank the rest.

    Outside the kept slab the image takes ``fill`` (the sliding-window padding value, 0 on the windowed
    scale) and every supervised target channel becomes 0: nothing is visible there. Unsupervised channels
    (:data:`~textseg.transforms.IGNORE_CHANNEL`) stay ignored.

    Args:
        image_key: windowed image [1, *S].
        label_key: per-class target channels [K, *S].
        slice_range: (min, max) slices kept, on the training grid.
        prob: probability of applying.
        fill: image value outside the slab.
    """

    def __init__(
        self, image_key: str = "image", label_key: str = "label", slice_range: Sequence[int] = (4, 32), prob: float = 0.2, fill: float = 0.0
    ):
        MapTransform.__init__(self, keys=[image_key, label_key])
        self.image_key, self.label_key = image_key, label_key
        self.slice_range = (int(slice_range[0]), int(slice_range[1]))
        self.prob = prob
        self.fill = fill

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if self.R.rand() >= self.prob:
            return d
        image, label = d[self.image_key], d[self.label_key]
        depth = image.shape[-1]
        kept = int(self.R.randint(self.slice_range[0], self.slice_range[1] + 1))
        if kept >= depth:
            return d
        start = int(self.R.randint(0, depth - kept + 1))
        outside = torch.ones(depth, dtype=torch.bool)
        outside[start : start + kept] = False
        image = image.clone()
        image[..., outside] = self.fill
        label = label.clone()
        supervised = ~(label == IGNORE_CHANNEL).flatten(1).all(dim=1)
        for k in np.flatnonzero(supervised.cpu().numpy()):
            label[int(k)][..., outside] = 0.0
        d[self.image_key], d[self.label_key] = image, label
        return d
