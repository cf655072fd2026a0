"""Real-world input on the inference path: compressed DICOM series, thin slabs, any orientation and spacing, and
the refusal of images that are not CT. All through the one shared chain ``ct_transforms`` on a crop of the real CT
(examples/ct/example_ct.nii.gz); small and CPU only."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from conftest import REPO_ROOT
from monai.data import MetaTensor
from monai.transforms import Compose
from scipy import ndimage

from textseg.dicom import LOSSLESS_TRANSFER_SYNTAXES, compress_series, dicom_modality, write_ct_series
from textseg.transforms import CheckCTd, ct_transforms

EXAMPLE_CT = REPO_ROOT / "examples" / "ct" / "example_ct.nii.gz"
PIXDIM = (3.0, 3.0, 3.0)  # the example CT's own spacing: resampling a 3 mm RAS image to it changes nothing
WIDE = (-4096.0, 4096.0)  # a window that clips nothing, so the chain's output maps back to HU exactly
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _chain(**kwargs) -> Compose:
    return Compose(ct_transforms(keys=["image"], pixdim=PIXDIM, hu_range=WIDE, **kwargs))


def _hu(image) -> np.ndarray:
    """The chain's [0, 1] output back in HU (``WIDE`` is linear and clips nothing)."""
    return np.asarray(image.detach().cpu())[0] * (WIDE[1] - WIDE[0]) + WIDE[0]


def _error_text(call) -> str:
    """Run ``call``, which must raise; the messages of the error and its causes (MONAI's Compose wraps ours)."""
    with pytest.raises(Exception) as raised:
        call()
    messages, error = [], raised.value
    while error is not None:
        messages.append(f"{type(error).__name__}: {error}")
        error = error.__cause__
    return "\n".join(messages)


def _translate(offset) -> np.ndarray:
    shift = np.eye(4)
    shift[:3, 3] = offset
    return shift


@pytest.fixture(scope="module")
def example_ct():
    """The real CT (122 x 101 x 112 voxels of 3 mm, RAS), as int16 HU and its affine."""
    image = nib.load(str(EXAMPLE_CT))
    return np.asarray(image.dataobj).astype(np.int16), image.affine


def _slab(example_ct, slices: int, first: int = 50):
    """``slices`` axial slices of the real CT from ``first`` on, with the affine of where they are."""
    data, affine = example_ct
    return np.ascontiguousarray(data[:, :, first : first + slices]), affine @ _translate((0, 0, first))


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


@pytest.fixture(scope="module")
def slab16(example_ct):
    return _slab(example_ct, 16)


@pytest.fixture(scope="module")
def plain_series(slab16, tmp_path_factory) -> Path:
    """The 16-slice slab as an uncompressed CT series (Explicit VR Little Endian)."""
    folder = tmp_path_factory.mktemp("plain_series")
    write_ct_series(*slab16, folder)
    return folder


# ---------------------------------------------------------------- compressed DICOM series


@pytest.mark.parametrize("syntax", ["jpeg2000", "jpegls", "rle", "jpeglossless"])
def test_compressed_series_load_with_the_source_hu_and_geometry(syntax, slab16, plain_series, tmp_path):
    if syntax == "jpegls" and shutil.which("gdcmconv") is None:
        if os.environ.get("CI"):
            pytest.fail("gdcmconv is missing: CI must install Debian's libgdcm-tools (JPEG-LS encoder)")
        pytest.skip("gdcmconv (Debian's libgdcm-tools) is needed to write JPEG-LS")
    files = compress_series(plain_series, tmp_path / syntax, syntax)
    assert len(files) == 16
    uid = LOSSLESS_TRANSFER_SYNTAXES[syntax]
    for f in files:
        ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == uid, f"{f.name}: {ds.file_meta.TransferSyntaxUID.name}"
        assert ds.file_meta.TransferSyntaxUID.is_compressed and ds.Modality == "CT"
    plain = pydicom.dcmread(str(next(plain_series.iterdir())), stop_before_pixels=True)
    assert plain.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian

    compressed = _chain()({"image": str(tmp_path / syntax)})["image"]
    reference = _chain()({"image": str(plain_series)})["image"]
    source = _chain()({"image": _save(tmp_path / "slab.nii.gz", *slab16)})["image"]
    assert compressed.meta["filename_or_obj"] == str(tmp_path / syntax)
    # lossless: exactly the HU of the uncompressed series and of the NIfTI it was written from
    assert compressed.shape == reference.shape == source.shape == (1, 122, 101, 16)
    assert np.abs(_hu(compressed) - _hu(reference)).max() < 1e-2
    assert np.abs(_hu(compressed) - slab16[0]).max() < 1e-2
    # the same world geometry: as read (written from the RAS NIfTI, rows and columns keep its voxel order) and
    # after orientation to RAS and resampling
    assert np.allclose(compressed.meta["original_affine"], reference.meta["original_affine"], atol=1e-6)
    assert np.allclose(compressed.meta["original_affine"], slab16[1], atol=1e-3)
    assert np.allclose(compressed.affine, reference.affine, atol=1e-6)
    assert np.allclose(compressed.affine, slab16[1], atol=1e-3)
    assert np.allclose(source.affine, slab16[1], atol=1e-4)


# ---------------------------------------------------------------- thin slabs, orientations, spacing


@pytest.mark.parametrize("slices", [16, 5, 4])
def test_thin_slab_goes_through_the_chain_unchanged(slices, example_ct, tmp_path):
    data, affine = _slab(example_ct, slices)
    out = _chain()({"image": _save(tmp_path / f"slab{slices}.nii.gz", data, affine)})["image"]
    assert out.shape == (1, 122, 101, slices)
    assert np.allclose(out.affine, affine, atol=1e-4)
    assert np.abs(_hu(out) - data).max() < 1e-2


def _lps(data: np.ndarray, affine: np.ndarray):
    """The same image stored LPS: array flipped on x and y, the affine saying so."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = np.array(data.shape[:2]) - 1
    return np.ascontiguousarray(data[::-1, ::-1]), affine @ flip


def _permuted(data: np.ndarray, affine: np.ndarray, order=(2, 0, 1)):
    """The same image with its array axes permuted (e.g. slices first), the affine's columns permuted to match."""
    return np.ascontiguousarray(np.transpose(data, order)), affine[:, [*order, 3]]


def _lpi_permuted(data: np.ndarray, affine: np.ndarray):
    data, affine = _lps(data, affine)
    flip_z = np.diag([1.0, 1.0, -1.0, 1.0])
    flip_z[2, 3] = data.shape[2] - 1
    return _permuted(np.ascontiguousarray(data[:, :, ::-1]), affine @ flip_z, order=(1, 2, 0))


@pytest.mark.parametrize("store", [_lps, _permuted, _lpi_permuted], ids=["LPS", "slices-first", "LPI-permuted"])
def test_any_stored_orientation_gives_the_same_ras_result(store, slab16, tmp_path):
    data, affine = store(*slab16)
    assert data.shape != slab16[0].shape or nib.aff2axcodes(affine) != ("R", "A", "S")
    ras = _chain()({"image": _save(tmp_path / "ras.nii.gz", *slab16)})["image"]
    other = _chain()({"image": _save(tmp_path / "other.nii.gz", data, affine)})["image"]
    assert other.shape == ras.shape == (1, 122, 101, 16)
    assert np.allclose(other.affine, ras.affine, atol=1e-4)
    assert np.abs(_hu(other) - _hu(ras)).max() < 1e-2


def test_anisotropic_spacing_resamples_to_the_target_spacing(slab16, tmp_path):
    data, affine = slab16
    aniso = np.diag([0.8, 0.8, 5.0, 1.0])
    aniso[:3, 3] = affine[:3, 3]
    out = _chain()({"image": _save(tmp_path / "aniso.nii.gz", data, aniso)})["image"]
    out_affine = np.asarray(out.affine)
    assert np.allclose(np.linalg.norm(out_affine[:3, :3], axis=0), PIXDIM, atol=1e-4)
    assert nib.aff2axcodes(out_affine) == ("R", "A", "S")
    # the same field of view (span of the voxel centres), to within a target voxel
    extent_in = (np.array(data.shape) - 1) * np.array([0.8, 0.8, 5.0])
    extent_out = (np.array(out.shape[1:]) - 1) * np.array(PIXDIM)
    assert np.all(np.abs(extent_out - extent_in) <= np.array(PIXDIM)), (extent_in, extent_out)
    # each target voxel holds the source's trilinear interpolation at the same world point
    hu = _hu(out)
    grid = np.stack(np.meshgrid(*[np.arange(2, n - 2) for n in hu.shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = grid @ out_affine[:3, :3].T + out_affine[:3, 3]
    source_index = (world - aniso[:3, 3]) @ np.linalg.inv(aniso[:3, :3]).T
    inside = np.all((source_index >= 0) & (source_index <= np.array(data.shape) - 1), axis=1)
    expected = ndimage.map_coordinates(data.astype(np.float64), source_index[inside].T, order=1)
    got = hu[tuple(grid[inside].T)]
    assert inside.sum() > 1000
    assert np.abs(got - expected).max() < 0.5


# ---------------------------------------------------------------- non-CT refusal


def _mr_like(ct: np.ndarray) -> np.ndarray:
    """Non-negative signal 0..~2000 with no air at -1000, as an MR (a monotone remap of the CT's values)."""
    return np.clip((ct.astype(np.float32) + 1000.0) * 0.5, 0, None).astype(np.int16)


@pytest.fixture(scope="module")
def mr_series(slab16, tmp_path_factory) -> Path:
    """The slab as an MR series: Modality MR, MR Image Storage, MR-like values."""
    folder = tmp_path_factory.mktemp("mr_series")
    for path in write_ct_series(_mr_like(slab16[0]), slab16[1], folder, series_description="MR phantom"):
        ds = pydicom.dcmread(str(path))
        ds.Modality = "MR"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        del ds.RescaleType
        ds.save_as(str(path), write_like_original=False)
    return folder


def test_mr_dicom_is_refused_by_its_modality(mr_series, slab16):
    assert dicom_modality(mr_series) == "MR"
    text = _error_text(lambda: _chain()({"image": str(mr_series)}))
    assert f"{mr_series}: DICOM Modality is 'MR', not CT; textseg segments CT." in text, text
    assert "--allow-non-ct (allow_non_ct=True)" in text
    with pytest.warns(UserWarning, match="DICOM Modality is 'MR'"):
        out = _chain(allow_non_ct=True)({"image": str(mr_series)})["image"]
    assert out.shape == (1, 122, 101, 16)
    assert np.abs(_hu(out) - _mr_like(slab16[0])).max() < 1e-2


def test_ct_dicom_is_accepted_by_its_modality(plain_series):
    assert dicom_modality(plain_series) == "CT"
    assert dicom_modality(next(plain_series.iterdir())) == "CT"
    CheckCTd("image")({"image": MetaTensor(torch.zeros(1, 4, 4, 4), meta={"filename_or_obj": str(plain_series)})})


@pytest.mark.parametrize(
    "kind, match",
    [
        ("mr", "non-negative values as in MR"),
        ("unit", "values within [0, 1]"),
        ("zscore", "no air"),
        ("air only", "no tissue"),
    ],
)
def test_non_ct_nifti_is_refused_and_can_be_forced(kind, match, slab16, tmp_path):
    ct = slab16[0].astype(np.float32)
    image = {
        "mr": _mr_like(ct),
        "unit": (ct - ct.min()) / (ct.max() - ct.min()),
        "zscore": (ct - ct.mean()) / ct.std(),
        "air only": np.full_like(ct, -1000.0),
    }[kind]
    path = _save(tmp_path / "not_ct.nii.gz", image, slab16[1])
    text = _error_text(lambda: _chain()({"image": path}))
    assert f"{path}: intensities are not Hounsfield units of a CT" in text, text
    assert match in text and "Pass --allow-non-ct (allow_non_ct=True) to run anyway." in text, text
    with pytest.warns(UserWarning, match="running anyway"):
        out = _chain(allow_non_ct=True)({"image": path})["image"]
    assert out.shape == (1, 122, 101, 16)


@pytest.mark.parametrize("padding", [None, -1024, -2048, -3024])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_real_ct_with_padding_and_any_dtype_is_accepted(padding, dtype, example_ct, tmp_path):
    data, affine = _slab(example_ct, 16, first=40)
    data = data.copy()
    if padding is not None:  # the scanner's circular field of view, padded outside
        x, y = np.meshgrid(np.arange(data.shape[0]), np.arange(data.shape[1]), indexing="ij")
        outside = (x - data.shape[0] / 2) ** 2 + (y - data.shape[1] / 2) ** 2 > (0.45 * data.shape[0]) ** 2
        data[outside] = padding
    data = data.astype(dtype)
    out = _chain()({"image": _save(tmp_path / "ct.nii.gz", data, affine)})["image"]
    assert np.abs(_hu(out) - data).max() < 1e-2


def test_whole_real_ct_and_its_thinnest_slab_are_accepted(example_ct):
    data, affine = example_ct
    check = CheckCTd("image")
    for image in (data, data[:, :, 60:64], data[:, :, 60:62]):
        meta = {"filename_or_obj": str(EXAMPLE_CT)}
        check({"image": MetaTensor(torch.as_tensor(image.copy())[None], affine=torch.as_tensor(affine), meta=meta)})


def test_check_is_cheap_on_big_volumes_and_keeps_every_slice_of_a_slab():
    check = CheckCTd("image", max_samples=10_000)
    big = torch.zeros(1, 200, 200, 100, dtype=torch.int16)
    assert check.subsample(big).size <= 20_000
    slab = torch.arange(4, dtype=torch.int16).reshape(1, 1, 1, 4).repeat(1, 300, 300, 1)
    sample = check.subsample(slab)
    assert sample.size <= 60_000 and set(np.unique(sample).tolist()) == {0, 1, 2, 3}


@pytest.mark.slow
def test_shipped_model_segments_a_thin_compressed_dicom_slab(example_ct, tmp_path):
    """The user's path with a real-world input: 16 slices of the real CT (through the liver, spleen and kidneys,
    around the shipped model's held-out band) as a JPEG 2000 series -> ``segment`` with the shipped model -> a label map on
    the series' grid (same world corners as the slab) holding only the prompted structures' ids."""
    from textseg.dicom import compress_series
    from textseg.segment import segment
    from textseg.vocabulary import load_vocabulary

    first, slices = 85, 16
    data, affine = _slab(example_ct, slices, first)
    plain = tmp_path / "plain"
    write_ct_series(data, affine, plain)
    series = tmp_path / "j2k"
    compress_series(plain, series, "jpeg2000")
    result = segment(series, "liver and spleen", tmp_path / "out")
    label_map = nib.load(str(result.label_map))
    assert sorted(label_map.shape) == sorted(data.shape)
    corners = lambda a, shape: sorted(
        tuple(np.round((a @ np.array([i, j, k, 1.0]))[:3], 1))  # noqa: E731
        for i in (0, shape[0] - 1)
        for j in (0, shape[1] - 1)
        for k in (0, shape[2] - 1)
    )
    assert corners(label_map.affine, label_map.shape) == corners(affine, data.shape)
    vocabulary = load_vocabulary()
    assert set(np.unique(np.asarray(label_map.dataobj)).tolist()) <= {0, vocabulary["liver"].id, vocabulary["spleen"].id}
