import json

import nibabel as nib
import numpy as np
import pytest

from textseg.phantom import PHANTOM_LABELS, make_phantom, make_phantom_dataset

IDS = {name: i for i, name in PHANTOM_LABELS.items()}


def world_centroid(label, affine, name):
    voxels = np.argwhere(label == IDS[name])
    assert len(voxels), f"{name} missing"
    return nib.affines.apply_affine(affine, voxels.mean(0))


def patient_right_of(a, b):
    """In RAS+ world coordinates, x grows toward the patient's right."""
    return a[0] > b[0]


@pytest.fixture(scope="module")
def case():
    return make_phantom(3)


def test_deterministic_by_seed(case):
    again = make_phantom(3)
    assert np.array_equal(case.image, again.image) and np.array_equal(case.label, again.label)
    assert not np.array_equal(case.label, make_phantom(4).label)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_anatomy_in_world_coordinates(seed):
    c = make_phantom(seed)
    assert nib.aff2axcodes(c.affine) == ("R", "A", "S")
    centre = {n: world_centroid(c.label, c.affine, n) for n in PHANTOM_LABELS.values()}
    assert patient_right_of(centre["liver"], centre["spleen"])
    assert patient_right_of(centre["kidney_right"], centre["kidney_left"])
    assert patient_right_of(centre["inferior_vena_cava"], centre["aorta"])
    assert centre["urinary_bladder"][2] < centre["liver"][2] - 100  # inferior (z grows superiorly)
    assert centre["aorta"][1] < centre["pancreas"][1]  # posterior (y grows anteriorly)


def test_anatomy_survives_saving_and_reorientation(case, tmp_path):
    case.save(tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz")
    label = nib.load(str(tmp_path / "lab.nii.gz"))
    assert np.allclose(label.affine, case.affine)
    lps = label.as_reoriented(np.array([[0, -1], [1, -1], [2, 1]]))  # flip x and y: RAS -> LPS
    assert nib.aff2axcodes(lps.affine) == ("L", "P", "S")
    data = np.asarray(lps.dataobj)
    assert patient_right_of(world_centroid(data, lps.affine, "liver"), world_centroid(data, lps.affine, "spleen"))


def test_rotated_phantom_keeps_sides():
    c = make_phantom(5, rotation_deg=(0, 0, 20))
    plain = make_phantom(5)
    assert patient_right_of(world_centroid(c.label, c.affine, "liver"), world_centroid(c.label, c.affine, "spleen"))
    assert not np.array_equal(c.label, plain.label)


def test_plausible_volumes_and_intensities(case):
    voxel_ml = abs(np.linalg.det(case.affine[:3, :3])) / 1000
    volumes = {n: (case.label == i).sum() * voxel_ml for i, n in PHANTOM_LABELS.items()}
    assert max(volumes, key=volumes.get) == "liver"
    assert 500 < volumes["liver"] < 2500 and 50 < volumes["kidney_left"] < 400 and 10 < volumes["gallbladder"] < 150
    assert 30 < case.image[case.label == IDS["liver"]].mean() < 90
    assert case.image[case.label == IDS["aorta"]].mean() > 120
    assert case.image.min() >= -1024 and case.image.dtype == np.float32


def test_drop_classes():
    c = make_phantom(3, drop=["spleen", "aorta"])
    assert not (c.label == IDS["spleen"]).any() and not (c.label == IDS["aorta"]).any()
    assert "spleen" not in c.annotated and "liver" in c.annotated
    with pytest.raises(ValueError, match="cannot drop"):
        make_phantom(3, drop=["flux_capacitor"])


@pytest.mark.parametrize("kwargs", [dict(shape=(10, 0, 10)), dict(spacing=(1, -1, 1)), dict(shape=(10, 10))])
def test_bad_geometry(kwargs):
    with pytest.raises(ValueError):
        make_phantom(0, **kwargs)


def test_dataset_layout_and_reuse(tmp_path):
    manifest = make_phantom_dataset(tmp_path, num_train=2, num_test=1, seed=1, drop_fraction=0.5, progress=False, shape=(48, 40, 48))
    dataset = json.loads(manifest.read_text(encoding="utf-8"))
    assert dataset["numTraining"] == 2 and dataset["numTest"] == 1
    assert dataset["labels"]["5"] == "liver"
    for entry in dataset["training"] + dataset["test"]:
        assert (tmp_path / entry["image"]).exists() and (tmp_path / entry["label"]).exists()
    assert all(1 <= len(e["annotated"]) <= 10 for e in dataset["training"])
    before = manifest.stat().st_mtime_ns
    make_phantom_dataset(tmp_path, num_train=2, num_test=1, seed=1, drop_fraction=0.5, progress=False, shape=(48, 40, 48))
    assert manifest.stat().st_mtime_ns == before, "same arguments must reuse the dataset"
    make_phantom_dataset(tmp_path, num_train=2, num_test=1, seed=2, progress=False, shape=(48, 40, 48))
    assert json.loads(manifest.read_text(encoding="utf-8"))["generator"]["params"]["seed"] == 2
