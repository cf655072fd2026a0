"""Synthetic abdominal CT phantoms in Hounsfield units: the embedded default dataset.

Organs are randomly deformed ellipsoids and tubes placed anatomically in patient (world) coordinates,
RAS+ (x grows toward the patient's Right, y toward Anterior, z toward Superior, in mm), then sampled
onto a voxel grid whose affine maps voxels to those coordinates.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from textseg.files import atomic_path, write_atomic
from textseg.geometry import rotation_matrix

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
_IDS = {name: i for i, name in PHANTOM_LABELS.items()}

# field of view (world mm, RAS+): x right, y anterior, z superior
_FOV_LOW = np.array([-170.0, -140.0, -200.0])
_FOV_HIGH = np.array([170.0, 140.0, 160.0])

# organ: (centre xyz mm, semi-axes mm, mean HU, HU spread between cases)
_ELLIPSOIDS = {
    "liver": ((70.0, 10.0, 90.0), (70.0, 78.0, 68.0), 60.0, 8.0),
    "spleen": ((-88.0, -32.0, 95.0), (28.0, 42.0, 55.0), 48.0, 6.0),
    "kidney_right": ((68.0, -48.0, 25.0), (28.0, 24.0, 52.0), 155.0, 15.0),
    "kidney_left": ((-68.0, -48.0, 40.0), (28.0, 24.0, 52.0), 155.0, 15.0),
    "gallbladder": ((55.0, 48.0, 42.0), (16.0, 16.0, 34.0), 12.0, 6.0),
    "stomach": ((-45.0, 35.0, 110.0), (45.0, 32.0, 48.0), 30.0, 8.0),
    "urinary_bladder": ((0.0, 40.0, -160.0), (42.0, 35.0, 30.0), 8.0, 5.0),
}
# tubes: (start xyz, end xyz, radius mm, mean HU, spread)
_TUBES = {
    "pancreas": ((35.0, 2.0, 55.0), (-75.0, -18.0, 72.0), 12.0, 45.0, 6.0),
    "aorta": ((-14.0, -30.0, 160.0), (-14.0, -26.0, -110.0), 11.0, 190.0, 25.0),
    "inferior_vena_cava": ((24.0, -24.0, 130.0), (20.0, -26.0, -110.0), 12.0, 130.0, 20.0),
}
# later entries win where shapes overlap (vessels over organs they pass)
_PAINT_ORDER = [
    "liver",
    "spleen",
    "stomach",
    "kidney_right",
    "kidney_left",
    "gallbladder",
    "urinary_bladder",
    "pancreas",
    "inferior_vena_cava",
    "aorta",
]


@dataclass
class PhantomCase:
    """One synthetic CT volume with its label map.

    Attributes:
        image: float32 HU, shape (X, Y, Z).
        label: uint8 ids of :data:`PHANTOM_LABELS` (0 background), same shape.
        affine: 4x4 voxel -> world (RAS+, mm).
        annotated: vocabulary names annotated in ``label`` (all ten unless some were dropped).
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    annotated: list[str] = field(default_factory=lambda: list(PHANTOM_LABELS.values()))

    def save(self, image_path: str | os.PathLike, label_path: str | os.PathLike) -> None:
        """Write both volumes as NIfTI, each through a temporary file and a rename."""
        for path, data in ((image_path, self.image.astype(np.int16)), (label_path, self.label.astype(np.uint8))):
            img = nib.Nifti1Image(data, self.affine)
            img.set_qform(self.affine, code=1)
            img.set_sform(self.affine, code=1)
            with atomic_path(path, suffix=".nii.gz") as tmp:
                nib.save(img, str(tmp))


def _wobble(rng: np.random.Generator, unit: np.ndarray, amplitude: float) -> np.ndarray:
    """Smooth random radial factor 1 + sum of low-frequency waves over directions ``unit`` [3, N]."""
    factor = np.ones(unit.shape[1])
    for _ in range(3):
        k = rng.normal(size=3)
        k *= rng.uniform(1.0, 2.5) / np.linalg.norm(k)
        factor += amplitude * rng.uniform(0.3, 1.0) * np.sin(k @ unit + rng.uniform(0, 2 * np.pi))
    return factor


def _ellipsoid(points: np.ndarray, centre, semi_axes, rng: np.random.Generator, tilt_deg: float = 12.0) -> np.ndarray:
    local = rotation_matrix(rng.uniform(-tilt_deg, tilt_deg, size=3)).T @ (points - np.asarray(centre)[:, None])
    scaled = local / np.asarray(semi_axes)[:, None]
    radius = np.linalg.norm(scaled, axis=0)
    unit = scaled / np.maximum(radius, 1e-6)
    return radius <= _wobble(rng, unit, 0.12)


def _tube(points: np.ndarray, start, end, radius: float, rng: np.random.Generator) -> np.ndarray:
    start, end = np.asarray(start), np.asarray(end)
    axis = end - start
    length = np.linalg.norm(axis)
    axis = axis / length
    rel = points - start[:, None]
    t = np.clip(axis @ rel, 0.0, length)
    # gentle random bend along the tube
    phase, amp = rng.uniform(0, 2 * np.pi, 2), rng.uniform(2.0, 8.0, 2)
    ortho1 = np.cross(axis, [0.0, 0.0, 1.0] if abs(axis[2]) < 0.9 else [1.0, 0.0, 0.0])
    ortho1 /= np.linalg.norm(ortho1)
    ortho2 = np.cross(axis, ortho1)
    centre = start[:, None] + axis[:, None] * t
    centre = centre + ortho1[:, None] * amp[0] * np.sin(t / length * np.pi * 1.5 + phase[0])
    centre = centre + ortho2[:, None] * amp[1] * np.sin(t / length * np.pi * 1.2 + phase[1])
    distance = np.linalg.norm(points - centre, axis=0)
    inside_length = (axis @ rel >= 0) & (axis @ rel <= length)
    return inside_length & (distance <= radius)


def _check_triplet(name: str, value, kind=float) -> tuple:
    values = tuple(value)
    if len(values) != 3 or any(kind(v) <= 0 for v in values):
        raise ValueError(f"{name} must be 3 positive numbers, got {value!r}")
    return tuple(kind(v) for v in values)


def make_phantom(
    seed: int,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    drop: Sequence[str] = (),
    rotation_deg: Sequence[float] = (0.0, 0.0, 0.0),
    noise_hu: float = 20.0,
) -> PhantomCase:
    """Generate one phantom CT, deterministic for a seed.

    Args:
        seed: random seed.
        shape: voxel grid size; default covers the abdomen and pelvis (340 x 280 x 360 mm) at ``spacing``.
        spacing: voxel size in mm; default random, 2.5-4 mm in-plane, 3-5 mm between slices.
        drop: vocabulary names removed from the label (their voxels become 0, the image keeps them).
        rotation_deg: rotation of the anatomy about the world x, y, z axes (the grid and affine stay axis-aligned).
        noise_hu: standard deviation of the Gaussian image noise.
    """
    unknown = [d for d in drop if d not in _IDS]
    if unknown:
        raise ValueError(f"cannot drop {unknown}: phantom structures are {list(PHANTOM_LABELS.values())}")
    rng = np.random.default_rng(seed)
    if spacing is None:
        in_plane = rng.uniform(2.5, 4.0)
        spacing = (in_plane, in_plane, rng.uniform(3.0, 5.0))
    spacing = np.asarray(_check_triplet("spacing", spacing))
    extent = _FOV_HIGH - _FOV_LOW
    shape = np.asarray(_check_triplet("shape", shape, int) if shape is not None else np.ceil(extent / spacing).astype(int))
    origin = (_FOV_LOW + _FOV_HIGH) / 2 - (shape - 1) * spacing / 2
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin

    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), 0).reshape(3, -1).astype(np.float64)
    world = spacing[:, None] * grid + origin[:, None]
    # anatomy coordinates: undo the requested rotation about the FOV centre
    centre = ((_FOV_LOW + _FOV_HIGH) / 2)[:, None]
    points = rotation_matrix(rotation_deg).T @ (world - centre) + centre

    scale = rng.uniform(0.9, 1.1)
    x, y, z = points
    body_a, body_b = 150.0 * scale, 112.0 * scale
    body_r = np.sqrt((x / body_a) ** 2 + ((y + 5.0) / body_b) ** 2)
    image = np.full(points.shape[1], -1000.0)
    image[body_r <= 1.0] = -95.0 + rng.normal(0, 5)  # subcutaneous fat
    image[body_r <= 0.93] = 40.0  # abdominal wall muscle
    image[body_r <= 0.87] = -80.0 + rng.normal(0, 8)  # visceral fat
    # spine (posterior midline) with a denser cortex, and iliac wings in the pelvis
    spine_r = np.hypot(x / 20.0, (y + 72.0) / 18.0)
    image[spine_r <= 1.0] = 700.0
    image[spine_r <= 0.75] = 260.0
    for side in (-1.0, 1.0):
        wing = np.sqrt(((x - side * 95.0) / 45.0) ** 2 + ((y + 40.0) / 15.0) ** 2 + ((z + 120.0) / 40.0) ** 2)
        image[wing <= 1.0] = 450.0
    # bowel-like clutter in the lower abdomen
    for _ in range(14):
        c = (rng.uniform(-90, 90), rng.uniform(-10, 70), rng.uniform(-120, 20))
        blob = _ellipsoid(points, c, rng.uniform(12, 28, size=3), rng, tilt_deg=40)
        image[blob & (body_r <= 0.85)] = rng.uniform(15, 45)

    label = np.zeros(points.shape[1], dtype=np.uint8)
    for name in _PAINT_ORDER:
        if name in _ELLIPSOIDS:
            c, s, hu, spread = _ELLIPSOIDS[name]
            c = np.asarray(c) * scale + rng.uniform(-8, 8, size=3)
            mask = _ellipsoid(points, c, np.asarray(s) * scale * rng.uniform(0.85, 1.15, size=3), rng)
        else:
            start, end, radius, hu, spread = _TUBES[name]
            jitter = rng.uniform(-6, 6, size=3)
            mask = _tube(
                points, np.asarray(start) * scale + jitter, np.asarray(end) * scale + jitter, radius * rng.uniform(0.85, 1.15), rng
            )
        mask &= body_r <= 0.86
        label[mask] = _IDS[name]
        image[mask] = hu + rng.normal(0, spread)
    # renal sinus fat and stomach gas give the organs texture the network must see through
    for name in ("kidney_right", "kidney_left"):
        c, _, _, _ = _ELLIPSOIDS[name]
        hilum = _ellipsoid(points, np.asarray(c) * scale + np.array([-np.sign(c[0]) * 12, 0, 0]), (8, 8, 18), rng)
        image[hilum & (label == _IDS[name])] = -20.0
    gas = (label == _IDS["stomach"]) & (y > np.percentile(y[label == _IDS["stomach"]], 80) if (label == _IDS["stomach"]).any() else False)
    image[gas] = -800.0

    image = image + rng.normal(0, noise_hu, size=image.shape)
    image = np.clip(image, -1024, 3071).reshape(tuple(shape)).astype(np.float32)
    label = label.reshape(tuple(shape))
    for name in drop:
        label[label == _IDS[name]] = 0
    annotated = [n for n in PHANTOM_LABELS.values() if n not in set(drop)]
    return PhantomCase(image=image, label=label, affine=affine, annotated=annotated)


def make_phantom_dataset(
    out_dir: str | os.PathLike,
    num_train: int = 24,
    num_test: int = 2,
    seed: int = 0,
    drop_fraction: float = 0.0,
    max_rotation_deg: float = 0.0,
    progress: bool = True,
    **phantom_kwargs,
) -> Path:
    """Write a phantom dataset in the Medical Segmentation Decathlon layout; returns ``dataset.json``.

    ``imagesTr/``, ``labelsTr/``, ``imagesTs/``, ``labelsTs/`` (test labels kept for scoring) and
    ``dataset.json`` with the label names and, per training case, the ``annotated`` structures.
    A complete dataset made with the same arguments is reused as it is.

    Args:
        out_dir: destination folder.
        num_train: training cases.
        num_test: held-out cases (never partially labelled).
        seed: base seed; case ``i`` uses ``seed * 100003 + i``.
        drop_fraction: probability of dropping each structure from a training case's label (partial
            labels; at least one structure is kept).
        max_rotation_deg: each case is rotated about z by a random angle in [-max, max].
        progress: show a progress bar.
        phantom_kwargs: passed to :func:`make_phantom` (``shape``, ``spacing``, ``noise_hu``).
    """
    from textseg import __version__

    if num_train < 0 or num_test < 0 or num_train + num_test == 0:
        raise ValueError(f"need at least one case, got num_train={num_train}, num_test={num_test}")
    if not 0.0 <= drop_fraction < 1.0:
        raise ValueError(f"drop_fraction must be in [0, 1), got {drop_fraction}")
    out_dir = Path(out_dir)
    params = {
        "num_train": num_train,
        "num_test": num_test,
        "seed": seed,
        "drop_fraction": drop_fraction,
        "max_rotation_deg": max_rotation_deg,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in phantom_kwargs.items()},
    }
    manifest = out_dir / "dataset.json"
    if manifest.exists():
        try:
            existing = json.loads(manifest.read_text(encoding="utf-8"))
            files = [out_dir / e[k] for e in existing["training"] + existing["test"] for k in ("image", "label")]
            if existing.get("generator", {}).get("params") == params and all(f.exists() for f in files):
                return manifest
        except (ValueError, KeyError):
            pass  # unreadable or foreign manifest: regenerate
    rng = np.random.default_rng(seed)
    names = list(PHANTOM_LABELS.values())
    cases = [("Tr", i) for i in range(num_train)] + [("Ts", num_train + i) for i in range(num_test)]
    iterator = cases
    if progress:
        from tqdm import tqdm

        iterator = tqdm(cases, desc="phantoms", unit="case")
    training, test = [], []
    for split, index in iterator:
        drop = []
        if split == "Tr" and drop_fraction > 0:
            drop = [n for n in names if rng.random() < drop_fraction]
            if len(drop) == len(names):
                drop.remove(names[rng.integers(len(names))])
        angle = rng.uniform(-max_rotation_deg, max_rotation_deg) if max_rotation_deg else 0.0
        case = make_phantom(seed * 100003 + index, drop=drop, rotation_deg=(0.0, 0.0, angle), **phantom_kwargs)
        name = f"phantom_{index:03d}.nii.gz"
        entry = {"image": f"./images{split}/{name}", "label": f"./labels{split}/{name}"}
        case.save(out_dir / entry["image"], out_dir / entry["label"])
        if split == "Tr":
            training.append(dict(entry, annotated=case.annotated))
        else:
            test.append(entry)
    dataset = {
        "name": "phantom",
        "description": "textseg synthetic abdominal CT phantoms (HU), RAS+ affines",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", **{str(i): n for i, n in PHANTOM_LABELS.items()}},
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
        "generator": {"textseg_version": __version__, "params": params},
    }
    return write_atomic(manifest, json.dumps(dataset, indent=2))
