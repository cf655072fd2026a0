"""Overlay pictures: CT slices with one colour per structure and a legend."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from textseg.files import atomic_path

__all__ = ["overlay_png"]


def _canonical(path: str | os.PathLike | nib.Nifti1Image) -> np.ndarray:
    image = path if isinstance(path, nib.Nifti1Image) else nib.load(str(path))
    return np.asarray(nib.as_closest_canonical(image).dataobj, dtype=np.float32)


def overlay_png(
    image: str | os.PathLike | nib.Nifti1Image,
    label: str | os.PathLike | nib.Nifti1Image,
    labels: Sequence[dict],
    output: str | os.PathLike,
    title: str = "",
    hu_window: tuple[float, float] = (-160.0, 240.0),
    alpha: float = 0.45,
) -> Path:
    """Save axial and coronal slices through the segmented structures with a colour legend.

    Both volumes are shown in RAS orientation in radiological convention (patient's right on the
    left of the picture, anterior up in axial views, superior up in coronal views).

    Args:
        image: CT volume (NIfTI path or image).
        label: label map of vocabulary ids on the same grid.
        labels: ``[{"id", "name", "display", "color"}]`` of the structures to show.
        output: PNG path, written atomically.
        title: figure title (e.g. the prompt).
        hu_window: grey-level window in HU.
        alpha: opacity of the label colours.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ct = _canonical(image)
    seg = np.rint(_canonical(label)).astype(np.int32)
    if ct.shape != seg.shape:
        raise ValueError(f"image {ct.shape} and label {seg.shape} are on different grids.")
    colours = np.zeros((int(max([0, seg.max()] + [r["id"] for r in labels])) + 1, 4), dtype=np.float32)
    for row in labels:
        colours[row["id"], :3] = np.asarray(row["color"], dtype=np.float32) / 255.0
        colours[row["id"], 3] = alpha

    def best_slice(axis: int) -> int:
        """The slice showing the most structures (then the most labelled voxels); the middle if none."""
        moved = np.moveaxis(seg, axis, 0).reshape(seg.shape[axis], -1)
        present = np.stack([(moved == row["id"]).any(1) for row in labels], 1).sum(1) if labels else np.zeros(len(moved))
        area = (moved > 0).sum(1)
        if area.max() == 0:
            return seg.shape[axis] // 2
        return int(np.lexsort((area, present))[-1])

    def panel(ax, ct_slice, seg_slice, name):
        # slices are [column, row-from-bottom]: transpose, then flip so the last row is at the bottom
        grey = np.clip((ct_slice - hu_window[0]) / (hu_window[1] - hu_window[0]), 0, 1)
        ax.imshow(np.flipud(grey.T), cmap="gray", interpolation="nearest")
        ax.imshow(np.flipud(colours[np.clip(seg_slice, 0, len(colours) - 1)].transpose(1, 0, 2)), interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.8))
    # RAS arrays: x grows toward the patient's right; reversing x puts the patient's right on the picture's left
    z, y = best_slice(2), best_slice(1)
    panel(axes[0], ct[::-1, :, z], seg[::-1, :, z], f"axial slice {z}")
    panel(axes[1], ct[::-1, y, :], seg[::-1, y, :], f"coronal slice {y}")
    handles = [Patch(facecolor=np.asarray(r["color"]) / 255.0, label=r.get("display", r["name"])) for r in labels]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(5, len(handles)), frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    with atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(output)
