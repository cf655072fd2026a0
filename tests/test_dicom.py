"""textseg.dicom: a NIfTI volume written as a DICOM series reads back with the same world geometry."""

import nibabel as nib
import numpy as np
import pytest

from textseg.dicom import nifti_to_ct_series, write_ct_series


@pytest.mark.parametrize("flip", [False, True])
def test_series_round_trip_keeps_world_geometry(tmp_path, flip):
    from monai.transforms import LoadImage

    rng = np.random.default_rng(0)
    image = rng.integers(-1000, 1000, size=(12, 10, 8)).astype(np.float32)
    affine = np.diag([2.0, 1.5, 3.0, 1.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    if flip:  # an LAS-stored volume
        affine[0] *= -1
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), str(path))
    files = nifti_to_ct_series(path, tmp_path / "dicom")
    assert len(files) == 8
    loaded = LoadImage(image_only=True, reader="ITKReader")(str(tmp_path / "dicom"))
    world = lambda aff, ijk: (np.asarray(aff) @ np.r_[ijk, 1.0])[:3]
    back = np.asarray(loaded)
    # every voxel lands at the same world position with the same value
    for ijk in [(0, 0, 0), (11, 9, 7), (3, 4, 5)]:
        p = world(affine, ijk)
        q = np.linalg.solve(np.asarray(loaded.affine), np.r_[p, 1.0])[:3]
        q = tuple(int(round(v)) for v in q)
        assert back[q] == image[ijk]


def test_refuses_non_3d_and_nan(tmp_path):
    with pytest.raises(ValueError, match="3D"):
        write_ct_series(np.zeros((4, 4)), np.eye(4), tmp_path)
    bad = np.zeros((4, 4, 4))
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_ct_series(bad, np.eye(4), tmp_path)


def test_dicom_lab_to_rgb_inverts_the_standard_cielab_of_srgb_colours():
    from textseg.dicom import dicom_lab_to_rgb

    def dicom_lab(L, a, b):  # PS3.3 C.10.7.1.1 scaling
        return [round(L * 65535 / 100), round((a + 128) * 65535 / 255), round((b + 128) * 65535 / 255)]

    assert dicom_lab_to_rgb(dicom_lab(100, 0, 0)) == (255, 255, 255)
    assert dicom_lab_to_rgb(dicom_lab(0, 0, 0)) == (0, 0, 0)
    # published CIELab (D65) of the sRGB primaries
    assert dicom_lab_to_rgb(dicom_lab(53.2408, 80.0925, 67.2032)) == (255, 0, 0)
    assert dicom_lab_to_rgb(dicom_lab(87.7347, -86.1827, 83.1793)) == (0, 255, 0)
    assert dicom_lab_to_rgb(dicom_lab(32.2970, 79.1875, -107.8602)) == (0, 0, 255)
