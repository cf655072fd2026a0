"""Small numpy-only geometry shared by the phantom generator, canonicalization and active learning.

Kept free of torch and MONAI so that light commands (``textseg make-phantom``) start fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["bbox_to_grid", "box_world_corners", "rotation_angles", "rotation_matrix"]


def rotation_matrix(angles_deg: Sequence[float]) -> np.ndarray:
    """``Rz(az) @ Ry(ay) @ Rx(ax)`` for angles ``(ax, ay, az)`` in degrees; shape (3, 3)."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def rotation_angles(rotation: np.ndarray) -> tuple[float, float, float]:
    """Angles ``(ax, ay, az)`` in degrees with ``rotation_matrix(angles) == rotation`` (ay in [-90, 90])."""
    r = np.asarray(rotation, dtype=np.float64)
    ay = math.asin(float(np.clip(-r[2, 0], -1.0, 1.0)))
    ax = math.atan2(r[2, 1], r[2, 2])
    az = math.atan2(r[1, 0], r[0, 0])
    return tuple(float(np.rad2deg(a)) for a in (ax, ay, az))


def box_world_corners(bbox: Sequence[Sequence[float]], affine: np.ndarray) -> np.ndarray:
    """World coordinates ``[2^D, D]`` of the corners of a voxel box ``[[x0, y0, z0], [x1, y1, z1]]`` (start
    inclusive, stop exclusive): voxel centres are integer indices, so the box's edges are at start - 0.5 and
    stop - 0.5."""
    start, stop = np.asarray(bbox[0], dtype=float), np.asarray(bbox[1], dtype=float)
    dims = len(start)
    corners = np.array([[stop[d] if (k >> d) & 1 else start[d] for d in range(dims)] for k in range(2**dims)]) - 0.5
    edges = np.concatenate([corners, np.ones((len(corners), 1))], axis=1)
    return (edges @ np.asarray(affine, dtype=float).T)[:, :dims]


def bbox_to_grid(
    bbox: Sequence[Sequence[float]],
    from_affine: np.ndarray,
    to_affine: np.ndarray,
    to_shape: Sequence[int],
) -> list[list[int]]:
    """Map a voxel bounding box from one grid to another through world coordinates.

    The 8 corners of ``[[x0, y0, z0], [x1, y1, z1]]`` (voxel edges: start inclusive, stop exclusive) go
    to world coordinates with ``from_affine`` and to the other grid with ``inv(to_affine)``; the result is
    the smallest box of whole voxels that holds them, clipped to ``to_shape``.

    Args:
        bbox: start and stop voxel indices on the source grid.
        from_affine: ``[4, 4]`` voxel-to-world matrix of the source grid (e.g. the network's input).
        to_affine: ``[4, 4]`` voxel-to-world matrix of the target grid (e.g. the image as stored).
        to_shape: spatial shape of the target grid.

    Returns:
        ``[[x0, y0, z0], [x1, y1, z1]]`` on the target grid.

    Raises:
        ValueError: the box lies entirely outside the target grid.
    """
    dims = len(bbox[0])
    world = box_world_corners(bbox, from_affine)
    homogeneous = np.concatenate([world, np.ones((len(world), 1))], axis=1)
    target = (homogeneous @ np.linalg.inv(np.asarray(to_affine, dtype=float)).T)[:, :dims] + 0.5
    lo = np.clip(np.floor(target.min(0) + 1e-6), 0, None).astype(int)
    hi = np.minimum(np.ceil(target.max(0) - 1e-6), np.asarray(to_shape)).astype(int)
    if np.any(hi <= lo):
        raise ValueError(f"box {np.asarray(bbox).tolist()} lies outside the target grid of shape {tuple(to_shape)}.")
    return [lo.tolist(), hi.tolist()]
