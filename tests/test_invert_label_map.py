"""InvertLabelMapd: the network-grid label map back on the input grid, as Invertd (nearest) puts it, without
Invertd's dense sampling grid; oblique grids take Invertd itself."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd

from textseg.transforms import InvertLabelMapd, ct_transforms

REAL_CT = "examples/ct/example_ct.nii.gz"
REAL_LABELS = "examples/ct/example_seg_fast_force_split.nii.gz"


def _rotation(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _write(tmp_path, name, array, affine):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def _cases(tmp_path):
    """(image, labels) files: the real CT as stored (RAS, 3 mm); transposed, flipped to LPS with anisotropic
    spacing; and oblique (rotated 20 degrees about z)."""
    image, labels = nib.load(REAL_CT), nib.load(REAL_LABELS)
    ct, seg = np.asarray(image.dataobj, dtype=np.int16), np.asarray(labels.dataobj, dtype=np.uint8)
    yield "ras", REAL_CT, REAL_LABELS
    # voxel axes (z, y, x) reversed in x and y; spacing 0.9 x 2.5 x 1.7 mm
    permuted = np.ascontiguousarray(np.flip(np.transpose(ct, (2, 1, 0)), axis=(1, 2)))
    permuted_seg = np.ascontiguousarray(np.flip(np.transpose(seg, (2, 1, 0)), axis=(1, 2)))
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 1], affine[2, 0], affine[3, 3] = -1.7, -2.5, 0.9, 1.0
    affine[:3, 3] = (40.0, 120.0, -30.0)
    yield "lps_anisotropic", _write(tmp_path, "p.nii.gz", permuted, affine), _write(tmp_path, "p_seg.nii.gz", permuted_seg, affine)
    oblique = image.affine.copy()
    oblique[:3, :3] = _rotation(20) @ oblique[:3, :3]
    yield "oblique", _write(tmp_path, "o.nii.gz", ct, oblique), _write(tmp_path, "o_seg.nii.gz", seg, oblique)


def _invert_both_ways(labels: torch.Tensor, data: dict, preprocessing) -> tuple[MetaTensor, MetaTensor]:
    """A network-grid label map [1, *S] with the preprocessed image's metadata, inverted by Invertd (nearest) and
    by InvertLabelMapd: (reference, fast)."""
    pred = MetaTensor(labels.clone(), meta=dict(data["image"].meta))
    pred.applied_operations = list(data["image"].applied_operations)
    reference = Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=True, to_tensor=True)(
        {"pred": pred.clone(), "image": data["image"]}
    )["pred"]
    fast = InvertLabelMapd("pred", transform=preprocessing)({"pred": pred.clone(), "image": data["image"]})["pred"]
    return reference, fast


@pytest.mark.parametrize("pixdim", [(4.0, 4.0, 4.0), (1.5, 1.5, 2.0)])
def test_every_voxel_takes_its_nearest_network_voxel_as_invertd_does(tmp_path, pixdim):
    """Probe label maps holding each network-grid axis index: every input voxel gets the index nearest to its centre
    (computed densely here in world coordinates), Invertd's choice up to ties exactly between two cells (Invertd
    breaks those by float round-off). An oblique scan keeps its rotation in the network grid, so it is aligned too."""
    for name, image, _ in _cases(tmp_path):
        preprocessing = Compose(ct_transforms(keys=["image"], pixdim=pixdim))
        data = preprocessing({"image": image})
        grid = data["image"].shape[1:]
        source = nib.load(image)
        voxels = np.stack(np.meshgrid(*[np.arange(n) for n in source.shape], indexing="ij"), axis=-1).reshape(-1, 3)
        world = voxels @ source.affine[:3, :3].T + source.affine[:3, 3]
        net = np.asarray(data["image"].affine, dtype=np.float64)
        exact = (world - net[:3, 3]) @ np.linalg.inv(net[:3, :3]).T
        for p in range(3):
            probe = torch.arange(1, grid[p] + 1, dtype=torch.int16).reshape([-1 if a == p else 1 for a in range(3)]).expand(*grid)
            reference, fast = _invert_both_ways(probe[None], data, preprocessing)
            assert tuple(fast.shape) == (1, *source.shape), name
            np.testing.assert_allclose(np.asarray(fast.affine), source.affine, atol=1e-4, err_msg=name)
            fast, reference = np.asarray(fast).reshape(-1).astype(int) - 1, np.asarray(reference).reshape(-1).astype(int) - 1
            inside = (exact[:, p] > -0.5) & (exact[:, p] < grid[p] - 0.5)
            tie = np.abs(np.abs(exact[:, p] - np.floor(exact[:, p])) - 0.5) < 1e-4
            assert (np.abs(fast[inside] - exact[inside, p]) <= 0.5 + 1e-4).all(), (name, p)
            assert (fast[~inside] == -1).all(), (name, p)  # outside the network grid: background
            differ = fast != reference
            assert not (differ & ~tie).any(), (name, p, int((differ & ~tie).sum()))


def test_real_labels_come_back_where_they_were(tmp_path):
    """The real label map, resampled to the network grid and inverted, lands on the structures as Invertd's does."""
    preprocessing = Compose(ct_transforms(keys=["image"], pixdim=(4.0, 4.0, 4.0)))
    data = preprocessing({"image": REAL_CT})
    seg = Compose(ct_transforms(keys=["image"], label_key="label", pixdim=(4.0, 4.0, 4.0)))({"image": REAL_CT, "label": REAL_LABELS})
    truth = np.asarray(nib.load(REAL_LABELS).dataobj)
    inverted = _invert_both_ways(torch.as_tensor(seg["label"]).to(torch.int16), data, preprocessing)
    scores = {name: (np.asarray(labels)[0][truth > 0] == truth[truth > 0]).mean() for name, labels in zip(("invertd", "fast"), inverted)}
    assert scores["fast"] > 0.9 and abs(scores["fast"] - scores["invertd"]) < 0.01, scores


def test_axis_alignment_is_detected():
    assert InvertLabelMapd.axis_indices(np.diag([4.0, 4, 4, 1]), np.diag([3.0, 3, 3, 1]), (10, 10, 10), (12, 12, 12)) is not None
    oblique = np.eye(4)
    oblique[:3, :3] = _rotation(20) * 3
    assert InvertLabelMapd.axis_indices(np.diag([4.0, 4, 4, 1]), oblique, (10, 10, 10), (12, 12, 12)) is None


def test_a_rotated_network_grid_goes_through_invertd(tmp_path):
    """With canonicalize the network grid is rotated against the input's: Invertd's own answer, voxel for voxel."""
    _, (_, image, _), (_, oblique, _) = _cases(tmp_path)
    preprocessing = Compose(ct_transforms(keys=["image"], pixdim=(4.0, 4.0, 4.0), canonicalize=True))
    data = preprocessing({"image": oblique})
    aligned = InvertLabelMapd.axis_indices(
        data["image"].affine, data["image"].meta["original_affine"], data["image"].shape[1:], data["image"].meta["spatial_shape"]
    )
    assert aligned is None
    grid = data["image"].shape[1:]
    probe = torch.arange(1, grid[0] + 1, dtype=torch.int16).reshape(-1, 1, 1).expand(*grid)
    reference, fast = _invert_both_ways(probe[None], data, preprocessing)
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(reference))
