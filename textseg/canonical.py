"""Orientation handling: estimate and remove a patient's residual rotation in the scanner.

``ct_transforms`` already reorients every image to RAS from its affine. That does not help when the
*patient* lies rotated in the scanner (or the affine is wrong): a network trained on upright anatomy
then sees a rotated abdomen. Following the symmetry-aware canonicalization of FLanS, this module
estimates that rotation from the image itself and resamples the image onto a grid aligned with the
patient:

* **about z** (in-plane): the angle of the mid-sagittal line that makes the axial projections of the
  body outline and of the bones most mirror-symmetric (a search over angles). The body outline alone is
  symmetric about both of its axes; the bones (spine, pelvis, ribs) are symmetric only left-right, which
  removes the 90° ambiguity, and the spine lying posterior of the body centre removes the 180° one.
* **about x and y** (small tilts): in successive axial slabs, the body's centroid should not drift sideways
  (left-right symmetry) and its back, which lies on the flat table, should not drift forward or backward.

Conventions (shared with :func:`textseg.phantom.make_phantom`): angles ``(ax, ay, az)`` in degrees,
``R = Rz(az) @ Ry(ay) @ Rx(ax)``, and a patient rotated by ``R`` about the centre ``c`` puts the
anatomical point ``p`` at world position ``R @ (p - c) + c`` (world = RAS+ mm).

The canonical image keeps the input's voxel grid size and spacing; its affine is the input grid rotated
with the patient, ``T(c) R T(-c) A``, so world coordinates stay true and MONAI's ``Invertd`` maps
predictions back onto the original grid (:class:`CanonicalizeRotationd` records a ``SpatialResample``).
The estimate is kept in the image meta (:data:`ROTATION_META_KEY`), so position prompts ("the organ
left of the aorta") can be answered in the patient's frame with :func:`patient_frame_affine`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform, SpatialResample
from scipy import ndimage

from textseg.geometry import rotation_angles, rotation_matrix

__all__ = [
    "ROTATION_META_KEY",
    "CENTRE_META_KEY",
    "RotationEstimate",
    "rotation_matrix",
    "rotation_angles",
    "estimate_rotation",
    "canonical_affine",
    "patient_affine",
    "patient_frame_affine",
    "canonicalize",
    "CanonicalizeRotationd",
]

ROTATION_META_KEY = "canonical_rotation"
"""Image meta key holding the estimated 3x3 world rotation of the patient (identity if none was removed)."""
CENTRE_META_KEY = "canonical_centre"
"""Image meta key holding the world point (mm) the rotation is about."""


@dataclass
class RotationEstimate:
    """The patient's rotation in the scanner, as estimated from the image.

    Attributes:
        rotation: (3, 3) world rotation ``R``: anatomical point ``p`` lies at ``R @ (p - centre) + centre``.
        centre: (3,) world point in mm (the body centroid).
        ok: False when nothing could be estimated (``rotation`` is then the identity).
        message: why the estimate failed or what was uncertain; empty when all went well.
        symmetry: mirror-symmetry score of the chosen mid-sagittal line (body + bone, at most 2).
    """

    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    centre: np.ndarray = field(default_factory=lambda: np.zeros(3))
    ok: bool = True
    message: str = ""
    symmetry: float = float("nan")

    @property
    def angles_deg(self) -> tuple[float, float, float]:
        """``(ax, ay, az)`` in degrees, see :func:`rotation_angles`."""
        return rotation_angles(self.rotation)

    @property
    def angle_deg(self) -> float:
        """Total rotation angle in degrees (0 for the identity)."""
        return float(np.rad2deg(math.acos(float(np.clip((np.trace(self.rotation) - 1.0) / 2.0, -1.0, 1.0)))))

    def to_dict(self) -> dict:
        ax, ay, az = self.angles_deg
        return {
            "angles_deg": [ax, ay, az],
            "centre_mm": [float(v) for v in self.centre],
            "ok": self.ok,
            "message": self.message,
            "symmetry": self.symmetry,
        }


def _translation(offset: np.ndarray) -> np.ndarray:
    t = np.eye(4)
    t[:3, 3] = offset
    return t


def _about_centre(rotation: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """4x4 world transform rotating by ``rotation`` about ``centre``."""
    r = np.eye(4)
    r[:3, :3] = rotation
    return _translation(centre) @ r @ _translation(-np.asarray(centre, dtype=np.float64))


def canonical_affine(affine: np.ndarray, estimate: RotationEstimate) -> np.ndarray:
    """Affine (4x4 voxel -> world) of the grid rotated with the patient: ``T(c) R T(-c) @ affine``.

    Sampling the image on this grid gives the patient upright in voxel space, with true world coordinates.
    """
    return _about_centre(estimate.rotation, estimate.centre) @ np.asarray(affine, dtype=np.float64)


def patient_affine(affine: np.ndarray, rotation: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Affine mapping the voxels of a grid (``affine``, 4x4) to the *patient's* frame: ``T(c) R^T T(-c) @ affine``.

    Positions measured with it ("left of", "upper abdomen") follow the patient, not the scanner.
    """
    return _about_centre(np.asarray(rotation, dtype=np.float64).T, np.asarray(centre, dtype=np.float64)) @ np.asarray(
        affine, dtype=np.float64
    )


def patient_frame_affine(image: torch.Tensor | np.ndarray, affine: np.ndarray | None = None) -> np.ndarray:
    """The affine to measure patient positions with on an image: its own affine, composed with the rotation
    that :class:`CanonicalizeRotationd` recorded in its meta (if any).

    Args:
        image: a MetaTensor (after canonicalization and, possibly, inversion: the record survives ``Invertd``)
            or any array (then ``affine`` is returned unchanged).
        affine: the grid's affine; default ``image.affine``.
    """
    if affine is None:
        affine = image.affine if isinstance(image, MetaTensor) else np.eye(4)
    affine = np.asarray(torch.as_tensor(affine).cpu(), dtype=np.float64)
    meta = image.meta if isinstance(image, MetaTensor) else {}
    if ROTATION_META_KEY not in meta or CENTRE_META_KEY not in meta:
        return affine
    rotation = np.asarray(torch.as_tensor(meta[ROTATION_META_KEY]).cpu(), dtype=np.float64).reshape(-1, 3, 3)[0]
    centre = np.asarray(torch.as_tensor(meta[CENTRE_META_KEY]).cpu(), dtype=np.float64).reshape(-1, 3)[0]
    return patient_affine(affine, rotation, centre)


# ----------------------------------------------------------------------------------------------------------------
# estimation


def _projection(points_xy: np.ndarray, weights: np.ndarray | None, angle_deg: float, half_width: float, bin_mm: float) -> np.ndarray:
    """2D histogram of points (N, 2), relative to the centre, in a frame rotated by ``-angle``; x bins symmetric about 0."""
    a = np.deg2rad(angle_deg)
    c, s = math.cos(a), math.sin(a)
    x = c * points_xy[:, 0] + s * points_xy[:, 1]
    y = -s * points_xy[:, 0] + c * points_xy[:, 1]
    n = int(math.ceil(half_width / bin_mm))
    edges = np.arange(-n, n + 1) * bin_mm
    hist, _, _ = np.histogram2d(x, y, bins=(edges, edges), weights=weights)
    return ndimage.gaussian_filter(hist, 1.0)


def _mirror_score(hist: np.ndarray) -> float:
    """Share of the mass that a left-right mirror maps onto mass (1 = perfectly symmetric)."""
    total = hist.sum()
    return float(np.minimum(hist, hist[::-1]).sum() / total) if total > 0 else 0.0


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def _spacing(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def _line_slope(z: np.ndarray, v: np.ndarray, w: np.ndarray) -> float:
    """Weighted least-squares slope dv/dz."""
    zm, vm = np.average(z, weights=w), np.average(v, weights=w)
    var = np.average((z - zm) ** 2, weights=w)
    return float(np.average((z - zm) * (v - vm), weights=w) / var) if var > 0 else 0.0


def estimate_rotation(
    image: np.ndarray | torch.Tensor,
    affine: np.ndarray | torch.Tensor,
    body_threshold: float = -500.0,
    bone_threshold: float = 300.0,
    estimate_tilt: bool = True,
    max_tilt_deg: float = 15.0,
    resolution_mm: float = 4.0,
    min_body_fraction: float = 0.01,
) -> RotationEstimate:
    """Estimate the patient's rotation in the scanner from a CT volume (HU).

    Args:
        image: CT in Hounsfield units, shape (X, Y, Z) or (1, X, Y, Z).
        affine: 4x4 voxel -> world (RAS+ mm). Any orientation works (positions are taken in world coordinates),
            but the body must run roughly along world z (axial scans).
        body_threshold: HU above which a voxel is body (air and lung are below).
        bone_threshold: HU above which a body voxel is bone (for the left-right and front-back decisions).
        estimate_tilt: also estimate the rotations about x and y (else only about z).
        max_tilt_deg: tilts estimated beyond this are taken as unreliable and dropped (with a message).
        resolution_mm: the volume is subsampled to about this voxel size first (speed).
        min_body_fraction: below this fraction of body voxels the estimate fails (e.g. empty volume).

    Returns:
        the estimate; ``ok`` is False (identity rotation, a ``message`` saying why) when no body was found.
    """
    volume = np.asarray(torch.as_tensor(image).detach().cpu(), dtype=np.float32)
    if volume.ndim == 4 and volume.shape[0] == 1:
        volume = volume[0]
    if volume.ndim != 3:
        raise ValueError(f"estimate_rotation expects a 3D volume (X, Y, Z) or (1, X, Y, Z), got shape {volume.shape}.")
    affine = np.asarray(torch.as_tensor(affine).detach().cpu(), dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {affine.shape}.")
    if not np.isfinite(volume).all():
        return RotationEstimate(ok=False, message="the image contains NaN or infinite values")
    step = np.maximum(1, np.ceil(resolution_mm / np.maximum(_spacing(affine), 1e-6) - 1e-6)).astype(int)
    small = volume[:: step[0], :: step[1], :: step[2]]
    small_affine = affine.copy()
    small_affine[:3, :3] = affine[:3, :3] * step[None, :]
    body = small > body_threshold
    if body.mean() < min_body_fraction:
        return RotationEstimate(ok=False, message=f"no body found (under {min_body_fraction:.0%} of voxels above {body_threshold:g} HU)")
    body = _largest_component(ndimage.binary_opening(body, iterations=1) if body.sum() > 1000 else body)
    body = ndimage.binary_fill_holes(body)
    bone = body & (small > bone_threshold)
    voxel = lambda mask: small_affine[:3, :3] @ np.argwhere(mask).T.astype(np.float64) + small_affine[:3, 3:4]  # noqa: E731
    body_pts = voxel(body)
    bone_pts = voxel(bone) if bone.any() else np.zeros((3, 0))
    centre = body_pts.mean(axis=1)
    messages = []
    bin_mm = max(resolution_mm, 2.0)

    def axial_projection(pts: np.ndarray, half: float) -> tuple[np.ndarray, np.ndarray]:
        """Points (3, N) -> the non-empty cells of their projection along z, as (M, 2) centres and (M,) weights."""
        fine = bin_mm / 2.0
        edges = np.arange(-math.ceil(half / fine), math.ceil(half / fine) + 1) * fine
        hist, _, _ = np.histogram2d(pts[0], pts[1], bins=(edges, edges))
        cells = np.argwhere(hist > 0)
        centres = edges[cells] + fine / 2.0
        return centres, hist[cells[:, 0], cells[:, 1]]

    def yaw_search(pts_body: np.ndarray, pts_bone: np.ndarray, candidates: np.ndarray) -> tuple[float, float]:
        half = float(np.abs(pts_body[:2]).max()) + 2 * bin_mm
        projections = [axial_projection(pts_body, half)]
        if pts_bone.shape[1] >= 10:
            projections.append(axial_projection(pts_bone, half))
        best, best_score = 0.0, -1.0
        for angle in candidates:
            score = sum(_mirror_score(_projection(xy, w, angle, half, bin_mm)) for xy, w in projections)
            if score > best_score + 1e-9:
                best, best_score = float(angle), score
        return best, best_score

    rel_body = body_pts - centre[:, None]
    rel_bone = bone_pts - centre[:, None]
    # 1. about z: the mid-sagittal line (a mirror line, so angles modulo 180), coarse then fine
    coarse, _ = yaw_search(rel_body, rel_bone, np.arange(-90.0, 90.0, 3.0))
    yaw, symmetry = yaw_search(rel_body, rel_bone, coarse + np.arange(-3.0, 3.01, 0.25))
    # 2. front/back: the spine (bone near the midline) lies posterior (-y) of the body centre
    if rel_bone.shape[1] >= 10:
        r = rotation_matrix((0.0, 0.0, -yaw))
        q = r @ rel_bone
        midline = np.abs(q[0]) < 40.0
        ap = q[1][midline].mean() if midline.sum() >= 5 else q[1].mean()
        if ap > 0:
            yaw += 180.0
    else:
        messages.append("no bone found: front/back taken from the affine")
    yaw = (yaw + 180.0) % 360.0 - 180.0
    rotation = rotation_matrix((0.0, 0.0, yaw))
    # 3. tilts about x and y: the body's axis (centroids of axial slabs) should run along z
    if estimate_tilt:
        q = rotation.T @ rel_body
        slab = max(2 * resolution_mm, 8.0)
        index = np.floor(q[2] / slab).astype(int)
        slabs, inverse, counts = np.unique(index, return_inverse=True, return_counts=True)
        keep = counts >= 0.5 * np.median(counts)
        if keep.sum() >= 4:
            cx = np.bincount(inverse, q[0])[keep] / counts[keep]
            cz = np.bincount(inverse, q[2])[keep] / counts[keep]
            # the back lies on the (flat) table: its posterior extent, not the belly, sets the front-back tilt
            order = np.argsort(inverse, kind="stable")
            groups = np.split(q[1][order], np.cumsum(counts)[:-1])
            back = np.array([np.percentile(g, 2.0) for g in groups])[keep]
            w = counts[keep].astype(np.float64)
            ay = math.degrees(math.atan(_line_slope(cz, cx, w)))
            ax = -math.degrees(math.atan(_line_slope(cz, back, w) * math.cos(math.radians(ay))))
            if max(abs(ax), abs(ay)) > max_tilt_deg:
                messages.append(f"tilt estimate ({ax:.1f}°, {ay:.1f}°) beyond {max_tilt_deg:g}°: ignored")
            else:
                rotation = rotation @ rotation_matrix((ax, ay, 0.0))
        else:
            messages.append("too few axial slabs to estimate tilts")
    return RotationEstimate(rotation=rotation, centre=centre, ok=True, message="; ".join(messages), symmetry=float(symmetry))


# ----------------------------------------------------------------------------------------------------------------
# applying it


def canonicalize(
    image: np.ndarray,
    affine: np.ndarray,
    estimate: RotationEstimate | None = None,
    order: int = 1,
    pad_value: float = -1024.0,
    **estimate_kwargs,
) -> tuple[np.ndarray, np.ndarray, RotationEstimate]:
    """Resample a volume onto the grid rotated with the patient (function API, numpy/scipy).

    Args:
        image: volume, shape (X, Y, Z) (HU for estimation; any values when ``estimate`` is given, e.g. a label map).
        affine: its 4x4 voxel -> world affine.
        estimate: a rotation estimate (e.g. from the image, to apply to its label map); estimated when None.
        order: spline order (0 for label maps, 1 for images).
        pad_value: value outside the original field of view (air).
        estimate_kwargs: passed to :func:`estimate_rotation`.

    Returns:
        ``(canonical image (X, Y, Z), its affine (4, 4), estimate)``; a failed estimate leaves the image as it is
        (with a warning).
    """
    image = np.asarray(image)
    affine = np.asarray(affine, dtype=np.float64)
    if estimate is None:
        estimate = estimate_rotation(image, affine, **estimate_kwargs)
        if not estimate.ok:
            warnings.warn(f"rotation estimate failed ({estimate.message}); keeping the affine-only orientation.", stacklevel=2)
    new_affine = canonical_affine(affine, estimate)
    if np.allclose(new_affine, affine):
        return image.copy(), new_affine, estimate
    # voxel of the new grid -> world -> voxel of the old grid
    mapping = np.linalg.inv(affine) @ new_affine
    out = ndimage.affine_transform(
        image.astype(np.float32) if order > 0 else image,
        mapping[:3, :3],
        offset=mapping[:3, 3],
        output_shape=image.shape,
        order=order,
        mode="constant",
        cval=pad_value,
    )
    return out.astype(image.dtype, copy=False), new_affine, estimate


class CanonicalizeRotationd(MapTransform, InvertibleTransform):
    """Estimate the patient's rotation on one image and resample ``keys`` onto the grid rotated with it.

    Place it after ``Orientationd``/``Spacingd`` and before intensity scaling (it estimates on HU). The
    output keeps the grid size and spacing; its affine records the rotation (world coordinates stay true),
    and the resampling is recorded for ``Invertd``, which maps predictions back to the input grid. The
    estimate goes into each key's meta (:data:`ROTATION_META_KEY`, :data:`CENTRE_META_KEY`; the identity
    when nothing was removed). A failed estimate (empty volume, no body) warns and leaves the data as it is.

    Args:
        keys: keys to resample, channel-first MetaTensors [C, X, Y, Z] on one grid.
        estimate_key: key the rotation is estimated on (HU image); default the first key.
        mode: interpolation per key (``bilinear`` for images, ``nearest`` for label maps).
        pad_value: value per key outside the original field of view (``-1024`` HU for images, 0 for labels).
        min_angle_deg: rotations smaller than this are not removed (saves an interpolation).
        body_threshold, bone_threshold, estimate_tilt, max_tilt_deg, resolution_mm: see :func:`estimate_rotation`.
        allow_missing_keys: don't fail on missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        estimate_key: str | None = None,
        mode: str | Sequence[str] = "bilinear",
        pad_value: float | Sequence[float] = -1024.0,
        min_angle_deg: float = 1.0,
        body_threshold: float = -500.0,
        bone_threshold: float = 300.0,
        estimate_tilt: bool = True,
        max_tilt_deg: float = 15.0,
        resolution_mm: float = 4.0,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.estimate_key = estimate_key or self.keys[0]
        n = len(self.keys)
        self.mode = [mode] * n if isinstance(mode, str) else list(mode)
        self.pad_value = [float(pad_value)] * n if isinstance(pad_value, (int, float)) else [float(v) for v in pad_value]
        if len(self.mode) != n or len(self.pad_value) != n:
            raise ValueError(f"mode and pad_value need one entry per key ({n}), got {self.mode} and {self.pad_value}.")
        self.min_angle_deg = float(min_angle_deg)
        self.estimate_kwargs = dict(
            body_threshold=body_threshold,
            bone_threshold=bone_threshold,
            estimate_tilt=estimate_tilt,
            max_tilt_deg=max_tilt_deg,
            resolution_mm=resolution_mm,
        )
        self.resampler = SpatialResample(padding_mode="zeros", dtype=np.float32)

    def estimate(self, image: torch.Tensor) -> RotationEstimate:
        """The rotation to remove from a channel-first MetaTensor [1, X, Y, Z] (identity below ``min_angle_deg``)."""
        if not isinstance(image, MetaTensor):
            raise TypeError(
                f"CanonicalizeRotationd needs a MetaTensor with an affine for {self.estimate_key!r}, got {type(image).__name__}."
            )
        if image.shape[0] != 1:
            raise ValueError(f"{self.estimate_key!r}: expected one channel to estimate the rotation on, got {image.shape[0]}.")
        estimate = estimate_rotation(image[0], image.affine, **self.estimate_kwargs)
        if not estimate.ok:
            name = image.meta.get("filename_or_obj", self.estimate_key)
            warnings.warn(f"{name}: rotation estimate failed ({estimate.message}); keeping the affine-only orientation.", stacklevel=3)
        elif estimate.angle_deg < self.min_angle_deg:
            estimate = RotationEstimate(
                centre=estimate.centre, ok=True, message=f"rotation below {self.min_angle_deg:g}° left as it is", symmetry=estimate.symmetry
            )
        return estimate

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        estimate = self.estimate(d[self.estimate_key])
        for key, mode, pad in self.key_iterator(d, self.mode, self.pad_value):
            img = d[key]
            dst_affine = torch.as_tensor(canonical_affine(np.asarray(img.affine, dtype=np.float64), estimate), dtype=torch.float64)
            dtype = img.dtype
            shifted = img.float() - pad if pad else img.float()
            out = self.resampler(shifted, dst_affine=dst_affine, spatial_size=img.shape[1:], mode=mode)
            if pad:
                out = out + pad
            out = out.to(dtype)
            out.meta[ROTATION_META_KEY] = torch.as_tensor(estimate.rotation, dtype=torch.float64)
            out.meta[CENTRE_META_KEY] = torch.as_tensor(estimate.centre, dtype=torch.float64)
            d[key] = out
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resampler.inverse(d[key])
        return d
