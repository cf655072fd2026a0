"""Synthetic abdominal CT phantoms in Hounsfield units: textseg's embedded default dataset.

A phantom is built analytically in patient (world) coordinates, NIfTI RAS+ in mm: ``+x`` points to
the patient's Right, ``+y`` to Anterior and ``+z`` to Superior (``nibabel.aff2axcodes`` of an
identity affine is ``('R', 'A', 'S')``). Organs are superellipsoids with smooth random lumps, vessels
and the pancreas are bent capsules; a per-case random scale, shift and low-frequency deformation make
every case different. The anatomy is then sampled at the voxel centres of an axis-aligned grid whose
affine maps voxel indices to those world coordinates.

Typical use::

    from textseg.phantom import make_phantom, make_phantom_dataset

    case = make_phantom(seed=0)  # PhantomCase: image (HU), label, affine, annotated
    case.save("ct.nii.gz", "labels.nii.gz")
    make_phantom_dataset("data/phantom", num_train=24, num_test=4)  # MSD layout + dataset.json
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = ["PHANTOM_LABELS", "PhantomCase", "make_phantom", "make_phantom_dataset"]

PHANTOM_LABELS: dict[int, str] = {
    1: "spleen",
    2: "kidney_right",
    3: "kidney_left",
    4: "gallbladder",
    5: "liver",
    6: "stomach",
    7: "pancreas",
    8: "aorta",
    9: "inferior_vena_cava",
    10: "urinary_bladder",
}
_IDS: dict[str, int] = {name: i for i, name in PHANTOM_LABELS.items()}

# Bumped whenever the same arguments would give different phantoms, so stored datasets are regenerated.
_GENERATOR_VERSION = 2

# World box (RAS+, mm) the default grid covers: abdomen and pelvis, 340 x 280 x 360 mm.
_FOV_CENTRE = np.array([0.0, 0.0, -20.0])
_FOV_SIZE = np.array([340.0, 280.0, 360.0])

# Body outline in canonical coordinates: an elliptic cylinder; organs stay inside its inner fraction.
_BODY_SEMI = (148.0, 108.0)
_BODY_Y = -6.0
_VISCERA_R = 0.86

_DATASET_KWARGS = ("shape", "spacing", "noise_hu")
_CASE_FILE = re.compile(r"phantom_\d+\.nii\.gz")


@dataclass(frozen=True)
class _Blob:
    """A lumpy superellipsoid (canonical mm): centre, semi-axes, exponent, HU = base + enhancement * contrast."""

    centre: tuple[float, float, float]
    semi: tuple[float, float, float]
    base_hu: float
    enhancement: float = 0.0
    hu_sd: float = 5.0
    exponent: float = 2.0
    tilt: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class _Capsule:
    """A bent tube (canonical mm) from ``start`` to ``end``, radius tapering from ``r_start`` to ``r_end``."""

    start: tuple[float, float, float]
    end: tuple[float, float, float]
    r_start: float
    r_end: float
    base_hu: float
    enhancement: float = 0.0
    hu_sd: float = 5.0
    flatten: float = 1.0  # cross-section scale along the anterior-posterior direction


# Canonical anatomy (mm, RAS+): the patient's right is +x, so the liver and right kidney have x > 0.
_ANATOMY: dict[str, _Blob | _Capsule] = {
    "liver": _Blob((68.0, 2.0, 78.0), (66.0, 76.0, 66.0), 50.0, 15.0, 5.0, 2.3, (0.0, 0.0, -8.0)),
    "spleen": _Blob((-88.0, -30.0, 92.0), (26.0, 44.0, 52.0), 40.0, 15.0, 5.0, 2.1, (0.0, 0.0, 25.0)),
    "kidney_right": _Blob((70.0, -46.0, 12.0), (27.0, 22.0, 50.0), 40.0, 125.0, 10.0, 2.0, (0.0, -12.0, -20.0)),
    "kidney_left": _Blob((-70.0, -46.0, 28.0), (27.0, 22.0, 50.0), 40.0, 125.0, 10.0, 2.0, (0.0, 12.0, 20.0)),
    "gallbladder": _Blob((50.0, 52.0, 26.0), (15.0, 16.0, 32.0), 10.0, 0.0, 4.0, 2.0, (25.0, 0.0, 0.0)),
    "stomach": _Blob((-52.0, 22.0, 100.0), (40.0, 30.0, 50.0), 25.0, 10.0, 5.0, 2.0, (0.0, 25.0, 30.0)),
    "urinary_bladder": _Blob((0.0, 42.0, -150.0), (40.0, 32.0, 30.0), 8.0, 0.0, 4.0, 2.2),
    "pancreas": _Capsule((24.0, -6.0, 42.0), (-82.0, -18.0, 70.0), 14.0, 9.0, 40.0, 20.0, 5.0, 0.8),
    "aorta": _Capsule((-18.0, -28.0, 175.0), (-14.0, -24.0, -95.0), 12.0, 9.5, 40.0, 160.0, 12.0),
    "inferior_vena_cava": _Capsule((22.0, -22.0, 130.0), (18.0, -26.0, -100.0), 12.0, 11.0, 40.0, 95.0, 10.0, 0.75),
}
# The liver's left lobe, reaching across the midline in front of the stomach.
_LIVER_LEFT_LOBE = _Blob((6.0, 42.0, 96.0), (52.0, 30.0, 34.0), 0.0, 0.0, 0.0, 2.2, (0.0, 0.0, 10.0))
# Later structures win where shapes overlap (each label keeps its own, intact shape).
_PAINT_ORDER = (
    "liver", "spleen", "kidney_right", "kidney_left", "stomach", "gallbladder", "urinary_bladder",
    "pancreas", "inferior_vena_cava", "aorta",
)


@dataclass
class PhantomCase:
    """One synthetic CT volume and its label map.

    Attributes:
        image: float32 Hounsfield units, shape (X, Y, Z).
        label: uint8 ids of :data:`PHANTOM_LABELS` (0 background), same shape.
        affine: 4x4 float64 voxel -> world (RAS+, mm) matrix; diagonal spacing plus translation.
        annotated: vocabulary names annotated in ``label`` (all ten unless some were dropped).
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    annotated: list[str] = field(default_factory=lambda: list(PHANTOM_LABELS.values()))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three array axes."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    def save(self, image_path: str | os.PathLike, label_path: str | os.PathLike) -> None:
        """Write the image (int16 HU) and the label (uint8) as NIfTI files with this affine.

        Each file is written to a temporary file in its destination folder and renamed into place, so
        readers never see a partly written volume.

        Args:
            image_path: destination of the image, e.g. ``imagesTr/phantom_000.nii.gz``.
            label_path: destination of the label map.
        """
        image = np.clip(np.rint(self.image), -32768, 32767).astype(np.int16)
        for path, data in ((image_path, image), (label_path, self.label.astype(np.uint8))):
            img = nib.Nifti1Image(data, self.affine)
            img.set_qform(self.affine, code=1)
            img.set_sform(self.affine, code=1)
            img.header.set_xyzt_units("mm")
            _write_atomic(Path(path), lambda tmp, img=img: nib.save(img, tmp))


def _write_atomic(path: Path, write) -> None:
    """Call ``write(tmp_path)`` for a temporary sibling of ``path`` (same suffixes), then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _rotation(degrees: Sequence[float]) -> np.ndarray:
    """Rotation matrix applying rotations about x, then y, then z (degrees, right-handed)."""
    ax, ay, az = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    rx = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(ax), -math.sin(ax)], [0.0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0.0, math.sin(ay)], [0.0, 1.0, 0.0], [-math.sin(ay), 0.0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0.0], [math.sin(az), math.cos(az), 0.0], [0.0, 0.0, 1.0]])
    return rz @ ry @ rx


def _waves(rng: np.random.Generator, count: int, wavenumber: tuple[float, float]) -> list[tuple]:
    """Random plane waves ``(k, phase, weight)`` with |k| in ``wavenumber``."""
    waves = []
    for _ in range(count):
        k = rng.normal(size=3)
        k *= rng.uniform(*wavenumber) / np.linalg.norm(k)
        waves.append((k, rng.uniform(0.0, 2.0 * np.pi), rng.uniform(0.4, 1.0)))
    return waves


def _dot(vector, components) -> np.ndarray:
    """``sum_i vector[i] * components[i]`` for a 3-vector and three (broadcastable) float32 arrays."""
    x, y, z = (np.float32(v) for v in vector)
    return x * components[0] + y * components[1] + z * components[2]


class _Shape:
    """A structure of one case: its canonical geometry with this case's random variation drawn."""

    def __init__(self, spec: _Blob | _Capsule, rng: np.random.Generator, contrast: float, jitter: float):
        self.spec = spec
        self.hu = spec.base_hu + spec.enhancement * contrast + rng.normal(0.0, spec.hu_sd)
        self.offset = rng.uniform(-jitter, jitter, size=3)
        if isinstance(spec, _Blob):
            self.semi = np.asarray(spec.semi) * rng.uniform(0.88, 1.12, size=3)
            self.rot = _rotation(np.asarray(spec.tilt) + rng.uniform(-8.0, 8.0, size=3))
            self.lumps = _waves(rng, 3, (1.0, 2.5))
            self.lump_amplitude = rng.uniform(0.05, 0.11)
            self.centre = np.asarray(spec.centre) + self.offset
            self.reach = float(self.semi.max()) * (1.0 + 3 * self.lump_amplitude)
        else:
            self.radius = rng.uniform(0.88, 1.12) * np.array([spec.r_start, spec.r_end])
            # (amplitude mm, phase, half-cycles) of the centreline's sideways and front-back bends
            self.bend = (
                rng.uniform(2.0, 7.0, size=2), rng.uniform(0.0, 2.0 * np.pi, size=2), rng.uniform(0.8, 1.6, size=2)
            )
            self.start = np.asarray(spec.start) + self.offset
            self.end = np.asarray(spec.end) + self.offset
            self.centre = (self.start + self.end) / 2

    def inside(self, q: np.ndarray, inner: float = 1.0) -> np.ndarray:
        """Boolean mask of canonical points ``q`` [3, ...] inside the structure (shrunk by ``inner`` < 1)."""
        if isinstance(self.spec, _Blob):
            return self._blob_radius(q) <= inner
        return self._capsule_radius(q) <= inner

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Canonical axis-aligned box holding the structure."""
        if isinstance(self.spec, _Blob):
            return self.centre - self.reach, self.centre + self.reach
        margin = float(self.radius.max()) + float(self.bend[0].max()) + 1.0
        return np.minimum(self.start, self.end) - margin, np.maximum(self.start, self.end) + margin

    def _blob_radius(self, q: np.ndarray) -> np.ndarray:
        rel = [q[i] - np.float32(self.centre[i]) for i in range(3)]
        scaled = [_dot(self.rot[:, j], rel) / np.float32(self.semi[j]) for j in range(3)]
        p = self.spec.exponent
        if p == 2.0:
            radius = np.sqrt(scaled[0] ** 2 + scaled[1] ** 2 + scaled[2] ** 2)
        else:
            radius = (np.abs(scaled[0]) ** p + np.abs(scaled[1]) ** p + np.abs(scaled[2]) ** p) ** (1.0 / p)
        norm = np.maximum(np.sqrt(scaled[0] ** 2 + scaled[1] ** 2 + scaled[2] ** 2), np.float32(1e-6))
        lumps = np.ones_like(radius)
        for k, phase, weight in self.lumps:  # smooth radial modulation over the directions
            lumps += np.float32(self.lump_amplitude * weight) * np.sin(_dot(k, scaled) / norm + np.float32(phase))
        return radius / lumps

    def _capsule_radius(self, q: np.ndarray) -> np.ndarray:
        axis = self.end - self.start
        length = float(np.linalg.norm(axis))
        axis = axis / length
        helper = np.array([0.0, 1.0, 0.0]) if abs(axis[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
        side = np.cross(axis, helper)
        side /= np.linalg.norm(side)
        front = np.cross(side, axis)  # roughly anterior-posterior for the vertical vessels and the pancreas
        rel = [q[i] - np.float32(self.start[i]) for i in range(3)]
        along = _dot(axis, rel)
        t = np.clip(along, 0.0, length)
        u = t / np.float32(length)
        bend = [
            np.float32(a) * np.sin(np.float32(np.pi * c) * u + np.float32(f)) for a, f, c in zip(*self.bend)
        ]
        d_side = _dot(side, rel) - bend[0]
        d_front = _dot(front, rel) - bend[1]
        d_axis = along - t  # non-zero only beyond the ends: rounded caps
        radius = np.float32(self.radius[0]) + np.float32(self.radius[1] - self.radius[0]) * u
        return np.sqrt(d_side**2 + (d_front / np.float32(self.spec.flatten)) ** 2 + d_axis**2) / radius


class _Case:
    """All random draws of one phantom, independent of the voxel grid."""

    def __init__(self, rng: np.random.Generator):
        self.scale = np.array([rng.uniform(0.92, 1.08)] * 2 + [rng.uniform(0.92, 1.08)])
        self.shift = rng.uniform(-8.0, 8.0, size=3)
        # smooth deformation: three plane waves (wavelength 250-630 mm) displacing up to 6 mm each
        waves = _waves(rng, 3, (0.01, 0.025))
        self.warp = [(k, phase, rng.uniform(2.0, 6.0) * weight, rng.normal(size=3)) for k, phase, weight in waves]
        self.contrast = rng.uniform(0.8, 1.2)
        self.fat_hu = rng.uniform(-110.0, -85.0)
        self.muscle_hu = rng.uniform(40.0, 60.0)
        self.bone_hu = rng.uniform(180.0, 300.0)
        self.vertebra_phase = rng.uniform(0.0, 38.0)
        self.shapes = {
            name: _Shape(spec, rng, self.contrast, jitter=4.0 if isinstance(spec, _Capsule) else 8.0)
            for name, spec in _ANATOMY.items()
        }
        right, left = self.shapes["kidney_right"], self.shapes["kidney_left"]
        right.centre[2] = left.centre[2] - rng.uniform(10.0, 24.0)  # the right kidney sits lower (under the liver)
        self.left_lobe = _Shape(_LIVER_LEFT_LOBE, rng, 0.0, 0.0)
        self.left_lobe.centre = self.left_lobe.centre + self.shapes["liver"].offset
        self.bowel = []
        for _ in range(16):  # small bowel loops, some gas-filled
            centre = (rng.uniform(-95, 95), rng.uniform(-15, 70), rng.uniform(-125, 15))
            spec = _Blob(centre, tuple(rng.uniform(12.0, 26.0, size=3)), rng.uniform(10.0, 45.0))
            blob = _Shape(spec, rng, 0.0, 0.0)
            blob.rot = _rotation(rng.uniform(-60.0, 60.0, size=3))
            self.bowel.append((blob, rng.random() < 0.25))
        for x in (95.0, -95.0):  # ascending and descending colon, gas-filled
            spec = _Capsule((x, -10.0, 30.0), (x * 0.9, 0.0, -110.0), 20.0, 18.0, -20.0)
            self.bowel.append((_Shape(spec, rng, 0.0, 6.0), True))
        self.noise_rng = rng


def _canonical(case: _Case, axes: list[np.ndarray], rotation: np.ndarray) -> np.ndarray:
    """Canonical anatomy coordinates [3, X, Y, Z] of the grid with world ``axes``: undo the rotation,
    then the case's shift and scale, and add its smooth deformation."""
    # p = R^T (world - c) + c, summed from per-axis terms broadcast over the grid
    terms = [(a - c).astype(np.float32) for a, c in zip(axes, _FOV_CENTRE)]
    terms = [t.reshape([-1 if j == i else 1 for j in range(3)]) for i, t in enumerate(terms)]
    p = np.stack([_dot(rotation[:, j], terms) + np.float32(_FOV_CENTRE[j]) for j in range(3)])
    q = (p - case.shift.astype(np.float32).reshape(3, 1, 1, 1)) / case.scale.astype(np.float32).reshape(3, 1, 1, 1)
    for k, phase, amplitude, direction in case.warp:
        wave = np.sin(_dot(k, p) + np.float32(phase))
        for i in range(3):
            q[i] += np.float32(amplitude * direction[i] / np.linalg.norm(direction)) * wave
    return q


def _block(
    case: _Case, shape_obj: _Shape, axes: list[np.ndarray], rotation: np.ndarray
) -> tuple[slice, slice, slice] | None:
    """Voxel slices bounding a structure, or None when it misses the grid."""
    low, high = shape_obj.bounds()
    corners = np.array([[(low, high)[(c >> i) & 1][i] for i in range(3)] for c in range(8)])
    world = (corners * case.scale + case.shift - _FOV_CENTRE) @ rotation.T + _FOV_CENTRE
    margin = sum(a for _, _, a, _ in case.warp) * case.scale.max() + 2.0
    slices = []
    for axis, lo, hi in zip(axes, world.min(0) - margin, world.max(0) + margin):
        idx = np.nonzero((axis >= lo) & (axis <= hi))[0]
        if idx.size == 0:
            return None
        slices.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(slices)


def _render(
    case: _Case, shape: np.ndarray, spacing: np.ndarray, origin: np.ndarray, rotation: np.ndarray, noise_hu: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sample the case on the grid: float32 HU image and uint8 label map."""
    axes = [origin[i] + spacing[i] * np.arange(shape[i]) for i in range(3)]
    q = _canonical(case, axes, rotation)
    x, y, z = q

    # body wall: skin and subcutaneous fat, muscle, then visceral fat; the spine and its muscles behind
    body_r = np.sqrt((x / _BODY_SEMI[0]) ** 2 + ((y - _BODY_Y) / _BODY_SEMI[1]) ** 2)
    image = np.full(x.shape, -1000.0, dtype=np.float32)
    image[body_r <= 1.0] = case.fat_hu
    image[body_r <= 0.995] = case.fat_hu - 5.0
    image[(body_r <= 0.93) & (body_r > 0.885)] = case.muscle_hu
    image[body_r <= 0.885] = case.fat_hu + 10.0
    angle = np.arctan2(y - _BODY_Y, x)
    ribs = (body_r > 0.895) & (body_r <= 0.925) & (z > 20.0) & (np.mod(z - case.vertebra_phase, 32.0) < 10.0)
    image[ribs & (np.sin(angle) < 0.55)] = case.bone_hu + 300.0
    for side in (1.0, -1.0):
        paraspinal = ((x - side * 32.0) / 26.0) ** 2 + ((y + 92.0) / 18.0) ** 2 <= 1.0
        image[paraspinal] = case.muscle_hu
        psoas_r = np.clip((40.0 - z) / 160.0, 0.0, 1.0) * 22.0 + 4.0
        psoas = (((x - side * 40.0) / psoas_r) ** 2 + ((y + 50.0) / (0.8 * psoas_r)) ** 2 <= 1.0) & (z < 45.0)
        image[psoas] = case.muscle_hu
        iliac = ((x - side * 100.0) / 42.0) ** 2 + ((y + 45.0) / 13.0) ** 2 + ((z + 125.0) / 42.0) ** 2 <= 1.0
        image[iliac] = case.bone_hu + 250.0
    vertebra = (x / 22.0) ** 2 + ((y + 56.0) / 18.0) ** 2
    image[vertebra <= 1.0] = case.bone_hu + 500.0
    image[vertebra <= 0.7] = case.bone_hu
    image[(vertebra <= 1.0) & (np.mod(z - case.vertebra_phase, 38.0) < 7.0)] = 90.0  # intervertebral discs
    posterior = ((x / 9.0) ** 2 + ((y + 96.0) / 13.0) ** 2 <= 1.0) | ((np.abs(x) < 26.0) & (np.abs(y + 86.0) < 4.0))
    image[posterior] = case.bone_hu + 350.0
    image[(x / 8.0) ** 2 + ((y + 80.0) / 7.0) ** 2 <= 1.0] = 10.0  # spinal canal
    sacrum = (x / 42.0) ** 2 + ((y + 70.0) / 20.0) ** 2 + ((z + 150.0) / 40.0) ** 2 <= 1.0
    image[sacrum] = case.bone_hu + 150.0

    viscera = body_r <= _VISCERA_R
    for blob, gas in case.bowel:
        region = _block(case, blob, axes, rotation)
        if region is None:
            continue
        qb = q[(slice(None),) + region]
        mask = blob.inside(qb) & viscera[region]
        wall = mask & ~blob.inside(qb, 0.85)
        image[region][mask] = -750.0 if gas else blob.hu
        image[region][wall] = case.muscle_hu - 10.0

    label = np.zeros(x.shape, dtype=np.uint8)
    for name in _PAINT_ORDER:
        organ = case.shapes[name]
        parts = [organ, case.left_lobe] if name == "liver" else [organ]
        regions = [r for r in (_block(case, part, axes, rotation) for part in parts) if r is not None]
        if not regions:
            continue
        region = tuple(slice(min(r[i].start for r in regions), max(r[i].stop for r in regions)) for i in range(3))
        qb = q[(slice(None),) + region]
        mask = organ.inside(qb)
        for part in parts[1:]:
            mask |= part.inside(qb)
        mask &= viscera[region]
        label[region][mask] = _IDS[name]
        image[region][mask] = organ.hu
        if name in ("kidney_right", "kidney_left"):
            _kidney_detail(case, organ, qb, image[region], label[region], mask)
        elif name == "stomach":
            _stomach_detail(case, organ, qb, image[region], mask)

    image = ndimage.gaussian_filter(image, sigma=0.5, truncate=3.0)  # partial volume at edges
    if noise_hu > 0:
        image += case.noise_rng.normal(0.0, noise_hu, size=image.shape).astype(np.float32)
    np.clip(image, -1024.0, 3071.0, out=image)
    return image, label


def _kidney_detail(
    case: _Case, organ: _Shape, qb: np.ndarray, image: np.ndarray, label: np.ndarray, mask: np.ndarray
) -> None:
    """Medulla slightly darker than the cortex, and the renal sinus: a fat-filled notch on the medial side."""
    image[mask & organ.inside(qb, 0.7)] = organ.hu - 25.0
    medial = -np.sign(organ.centre[0])
    hilum = organ.centre + np.array([medial * organ.semi[0] * 0.8, 4.0, 0.0])
    semi = (12.0, 9.0, organ.semi[2] * 0.45)
    notch = sum(((qb[i] - hilum[i]) / semi[i]) ** 2 for i in range(3)) <= 1.0
    notch &= mask
    label[notch] = 0
    image[notch] = case.fat_hu + 30.0


def _stomach_detail(case: _Case, organ: _Shape, qb: np.ndarray, image: np.ndarray, mask: np.ndarray) -> None:
    """An enhancing wall and an air cap (supine patient: air rises anteriorly) over the fluid contents."""
    image[mask & ~organ.inside(qb, 0.88)] = case.muscle_hu + 15.0 * case.contrast
    cap = (qb[1] > organ.centre[1] + 0.4 * organ.semi[1]) & organ.inside(qb, 0.88) & mask
    image[cap] = -850.0


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _triplet(name: str, value, integer: bool) -> np.ndarray:
    try:
        values = list(value)
    except TypeError:
        values = []
    ok = len(values) == 3 and all(_is_number(v) and np.isfinite(v) and v > 0 for v in values)
    if ok and integer:
        ok = all(float(v).is_integer() for v in values)
    if not ok:
        kind = "integers" if integer else "numbers"
        raise ValueError(f"{name} must be 3 positive {kind}, got {value!r}")
    return np.array(values, dtype=np.int64 if integer else np.float64)


def _check_seed(seed) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, (bool, np.bool_)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_rotation(rotation_deg) -> np.ndarray:
    try:
        values = np.asarray(rotation_deg, dtype=np.float64)
    except (TypeError, ValueError):
        values = np.array([])
    if values.shape != (3,) or not np.isfinite(values).all():
        raise ValueError(f"rotation_deg must be 3 finite angles in degrees (about x, y, z), got {rotation_deg!r}")
    return values


def _check_drop(drop) -> list[str]:
    names = [drop] if isinstance(drop, str) else list(drop)
    unknown = [n for n in names if n not in _IDS]
    if unknown:
        valid = list(PHANTOM_LABELS.values())
        raise ValueError(f"cannot drop {unknown}: not phantom structures; valid names are {valid}")
    return names


def make_phantom(
    seed: int,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    drop: Sequence[str] = (),
    rotation_deg: Sequence[float] = (0.0, 0.0, 0.0),
    noise_hu: float = 20.0,
) -> PhantomCase:
    """Generate one synthetic abdominal CT with its ten-structure label map.

    The anatomy depends on ``seed`` only (not on the grid), so one seed sampled at two spacings or
    rotations shows the same patient. The grid is centred on the abdomen-pelvis box (340 x 280 x
    360 mm, RAS+) and its affine is diagonal: a rotation turns the anatomy relative to the grid.

    Args:
        seed: non-negative random seed; the same seed and arguments give identical arrays.
        shape: voxels along x, y, z. Default: enough to cover the box at ``spacing``.
        spacing: voxel size in mm along x, y, z. Default: random, 2.5-4 mm in-plane (isotropic) and
            3-5 mm between slices; when only ``shape`` is given, the spacing that fits the box into
            ``shape`` (in-plane isotropic), enlarged by a random 0-8 %.
        drop: vocabulary names to leave unannotated: their voxels are 0 in ``label`` (the image still
            shows the organ) and they are missing from ``annotated``.
        rotation_deg: rotation of the anatomy about the world x, y, z axes in degrees, about the box
            centre (applied in that order).
        noise_hu: standard deviation of the Gaussian image noise in HU (0: none).

    Returns:
        the :class:`PhantomCase`.

    Raises:
        ValueError: on an unknown name in ``drop`` or an invalid seed, shape, spacing, rotation or noise.
    """
    seed = _check_seed(seed)
    dropped = _check_drop(drop)
    rotation = _rotation(_check_rotation(rotation_deg))
    if not (_is_number(noise_hu) and np.isfinite(noise_hu) and noise_hu >= 0):
        raise ValueError(f"noise_hu must be a finite number >= 0, got {noise_hu!r}")
    shape = None if shape is None else _triplet("shape", shape, integer=True)
    spacing = None if spacing is None else _triplet("spacing", spacing, integer=False)

    anatomy_seed, grid_seed = np.random.SeedSequence(seed).spawn(2)
    grid_rng = np.random.default_rng(grid_seed)
    if spacing is None and shape is None:
        in_plane = grid_rng.uniform(2.5, 4.0)
        spacing = np.array([in_plane, in_plane, grid_rng.uniform(3.0, 5.0)])
    elif spacing is None:
        fit = _FOV_SIZE / shape
        spacing = np.array([max(fit[0], fit[1])] * 2 + [fit[2]]) * grid_rng.uniform(1.0, 1.08)
    if shape is None:
        shape = np.ceil(_FOV_SIZE / spacing - 1e-6).astype(np.int64)
    origin = _FOV_CENTRE - (shape - 1) * spacing / 2
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin

    case = _Case(np.random.default_rng(anatomy_seed))
    image, label = _render(case, shape, spacing, origin, rotation, float(noise_hu))
    for name in dropped:
        label[label == _IDS[name]] = 0
    annotated = [n for n in PHANTOM_LABELS.values() if n not in dropped]
    return PhantomCase(image=image, label=label, affine=affine, annotated=annotated)


def _jsonable(value):
    if isinstance(value, (tuple, list, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _existing_dataset(manifest: Path, generator: dict) -> bool:
    """Whether ``manifest`` describes a complete phantom dataset made by ``generator``; refuse foreign ones."""
    try:
        existing = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(existing, dict) or existing.get("name") != "phantom":
        raise FileExistsError(f"{manifest} exists and is not a textseg phantom dataset; choose another folder")
    if existing.get("generator") != generator:
        return False
    try:
        entries = list(existing["training"]) + list(existing["test"])
        return all((manifest.parent / e[k]).is_file() for e in entries for k in ("image", "label"))
    except (KeyError, TypeError):
        return False


def make_phantom_dataset(
    out_dir: str | os.PathLike,
    num_train: int = 24,
    num_test: int = 4,
    seed: int = 0,
    drop_fraction: float = 0.0,
    rotation_deg: Sequence[float] | None = None,
    max_rotation_deg: float = 0.0,
    progress: bool = True,
    **phantom_kwargs,
) -> Path:
    """Write a phantom dataset in the Medical Segmentation Decathlon layout and return its ``dataset.json``.

    Files: ``imagesTr/phantom_000.nii.gz`` ... with ``labelsTr/``, then the test cases numbered on
    (``imagesTs/``, with ``labelsTs/`` kept so predictions can be scored). ``dataset.json`` lists the
    label names, per training case the ``annotated`` structures, and under ``generator`` the arguments.
    A complete dataset in ``out_dir`` made with the same arguments (and generator version) is reused
    untouched; otherwise the cases are (re)generated and ``dataset.json`` is written last, atomically.

    Args:
        out_dir: destination folder (created if needed).
        num_train: number of training cases.
        num_test: number of held-out cases (never partially labelled).
        seed: base seed; every case draws its own seed from it and its index.
        drop_fraction: probability in [0, 1] that a structure is left unannotated in a training case,
            drawn independently per case and structure (partial labels); at least one is kept.
        rotation_deg: fixed rotation of every case about world x, y, z (degrees); default none.
        max_rotation_deg: each case is further rotated about z by a random angle in [-max, max].
        progress: show a tqdm progress bar.
        phantom_kwargs: ``shape``, ``spacing`` and ``noise_hu`` of :func:`make_phantom`, for every case.

    Returns:
        path of ``dataset.json``.

    Raises:
        ValueError: on invalid arguments.
        TypeError: on a keyword :func:`make_phantom` does not take per dataset.
        FileExistsError: when ``out_dir/dataset.json`` belongs to another dataset.
    """
    from textseg import __version__

    unknown = sorted(set(phantom_kwargs) - set(_DATASET_KWARGS))
    if unknown:
        raise TypeError(
            f"make_phantom_dataset got unexpected arguments {unknown}; per-case options are {list(_DATASET_KWARGS)}"
        )
    for name, value in (("num_train", num_train), ("num_test", num_test)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if num_train + num_test == 0:
        raise ValueError("num_train + num_test must be at least 1")
    seed = _check_seed(seed)
    if not (_is_number(drop_fraction) and 0.0 <= drop_fraction <= 1.0):
        raise ValueError(f"drop_fraction must be in [0, 1], got {drop_fraction!r}")
    if not (_is_number(max_rotation_deg) and np.isfinite(max_rotation_deg) and max_rotation_deg >= 0):
        raise ValueError(f"max_rotation_deg must be a finite angle >= 0, got {max_rotation_deg!r}")
    fixed_rotation = np.zeros(3) if rotation_deg is None else _check_rotation(rotation_deg)
    shape, spacing = phantom_kwargs.get("shape"), phantom_kwargs.get("spacing")
    noise_hu = phantom_kwargs.get("noise_hu", 20.0)
    # validate the per-case options before touching the folder
    shape = None if shape is None else _triplet("shape", shape, integer=True)
    spacing = None if spacing is None else _triplet("spacing", spacing, integer=False)
    if not (_is_number(noise_hu) and np.isfinite(noise_hu) and noise_hu >= 0):
        raise ValueError(f"noise_hu must be a finite number >= 0, got {noise_hu!r}")

    params = {
        "num_train": int(num_train), "num_test": int(num_test), "seed": seed, "drop_fraction": float(drop_fraction),
        "rotation_deg": fixed_rotation.tolist(), "max_rotation_deg": float(max_rotation_deg),
        "shape": _jsonable(shape), "spacing": _jsonable(spacing), "noise_hu": float(noise_hu),
    }
    generator = {"seed": seed, "textseg_version": __version__, "phantom_version": _GENERATOR_VERSION, "params": params}
    out_dir = Path(out_dir)
    manifest = out_dir / "dataset.json"
    if manifest.exists():
        if _existing_dataset(manifest, generator):
            return manifest
        manifest.unlink()  # an interrupted regeneration must not pass for a complete dataset
    out_dir.mkdir(parents=True, exist_ok=True)

    names = list(PHANTOM_LABELS.values())
    jobs = [("Tr", i) for i in range(num_train)] + [("Ts", num_train + i) for i in range(num_test)]
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc="phantom cases", unit="case")
    training, test, written = [], [], set()
    for split, index in jobs:
        rng = np.random.default_rng([seed, index])
        case_seed = int(rng.integers(2**31))
        angle = rng.uniform(-max_rotation_deg, max_rotation_deg)
        keep = rng.random(len(names)) >= drop_fraction
        if split == "Ts" or drop_fraction == 0:
            keep[:] = True
        elif not keep.any():
            keep[rng.integers(len(names))] = True
        drop = [n for n, k in zip(names, keep) if not k]
        rotation = fixed_rotation + np.array([0.0, 0.0, angle])
        case = make_phantom(
            case_seed, shape=shape, spacing=spacing, drop=drop, rotation_deg=rotation, noise_hu=float(noise_hu)
        )
        file = f"phantom_{index:03d}.nii.gz"
        entry = {"image": f"./images{split}/{file}", "label": f"./labels{split}/{file}"}
        case.save(out_dir / entry["image"], out_dir / entry["label"])
        written.update({(f"images{split}", file), (f"labels{split}", file)})
        if split == "Tr":
            training.append({**entry, "annotated": case.annotated})
        else:
            test.append(entry)
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):  # cases left over from a larger dataset
        if (out_dir / folder).is_dir():
            for stale in (out_dir / folder).glob("phantom_*.nii.gz"):
                if _CASE_FILE.fullmatch(stale.name) and (folder, stale.name) not in written:
                    stale.unlink()

    dataset = {
        "name": "phantom",
        "description": "textseg synthetic abdominal CT phantoms in HU (RAS+ affines), ten labelled structures",
        "tensorImageSize": "3D",
        "reference": "generated by textseg.phantom",
        "licence": "Apache-2.0",
        "modality": {"0": "CT"},
        "labels": {"0": "background", **{str(i): n for i, n in PHANTOM_LABELS.items()}},
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
        "generator": generator,
    }
    _write_atomic(manifest, lambda tmp: Path(tmp).write_text(json.dumps(dataset, indent=2) + "\n"))
    return manifest
