"""The synthetic CT phantom: determinism, anatomy in world (RAS+) coordinates, volumes and HU, partial
labels, input validation, the MSD dataset writer and its command line."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from textseg.phantom import PHANTOM_LABELS, PhantomCase, make_phantom, make_phantom_dataset

IDS = {name: i for i, name in PHANTOM_LABELS.items()}
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_phantom.py"


def world_centroids(image: nib.Nifti1Image) -> dict[str, np.ndarray]:
    """Centroid of every labelled structure in world mm, read from a label image in any orientation.

    The image is first brought to RAS+ (nibabel's canonical orientation), where world x grows toward
    the patient's Right, y toward Anterior and z toward Superior.
    """
    canonical = nib.as_closest_canonical(image)
    assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
    data = np.asarray(canonical.dataobj)
    return {
        name: nib.affines.apply_affine(canonical.affine, np.argwhere(data == i).mean(0))
        for name, i in IDS.items()
        if (data == i).any()
    }


def label_image(case: PhantomCase) -> nib.Nifti1Image:
    return nib.Nifti1Image(case.label, case.affine)


def patient_right_of(a: np.ndarray, b: np.ndarray) -> bool:
    return a[0] > b[0]  # RAS+: +x points to the patient's Right


def assert_anatomy(c: dict[str, np.ndarray]) -> None:
    assert patient_right_of(c["liver"], c["spleen"])
    assert c["liver"][0] > 0 > c["spleen"][0]
    assert patient_right_of(c["kidney_right"], c["kidney_left"])
    assert c["kidney_right"][2] < c["kidney_left"][2], "the right kidney lies lower"
    assert c["urinary_bladder"][2] < c["liver"][2] - 100, "bladder inferior to the liver"
    assert c["aorta"][1] < c["pancreas"][1], "aorta posterior to the pancreas"
    assert patient_right_of(c["inferior_vena_cava"], c["aorta"])
    assert c["gallbladder"][2] < c["liver"][2] and c["gallbladder"][1] > c["liver"][1], "gallbladder inferior-anterior"
    assert c["stomach"][0] < 0 and c["stomach"][2] > c["pancreas"][2]


@pytest.fixture(scope="module")
def case() -> PhantomCase:
    return make_phantom(3)


def test_ras_convention():
    # the convention the phantom and these tests rely on: an identity affine is RAS+
    assert nib.aff2axcodes(np.eye(4)) == ("R", "A", "S")
    assert nib.aff2axcodes(np.diag([-1.0, -1.0, 1.0, 1.0])) == ("L", "P", "S")


def test_deterministic_by_seed(case):
    again = make_phantom(3)
    assert np.array_equal(case.image, again.image) and np.array_equal(case.label, again.label)
    assert np.array_equal(case.affine, again.affine) and case.annotated == again.annotated
    other = make_phantom(4)
    assert case.image.shape != other.image.shape or not np.array_equal(case.label, other.label)
    same_grid = make_phantom(4, spacing=case.spacing, shape=case.image.shape)
    assert not np.array_equal(case.label, same_grid.label) and not np.array_equal(case.image, same_grid.image)


def test_case_arrays(case):
    assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
    assert case.image.shape == case.label.shape and case.image.ndim == 3
    assert case.affine.shape == (4, 4) and case.affine.dtype == np.float64
    assert np.allclose(case.affine[:3, :3], np.diag(case.spacing))
    assert set(np.unique(case.label)) == {0, *PHANTOM_LABELS}
    assert case.annotated == list(PHANTOM_LABELS.values())
    # default grid: random spacing in the documented ranges, the abdomen-pelvis box covered
    sx, sy, sz = case.spacing
    assert 2.5 <= sx == sy <= 4.0 and 3.0 <= sz <= 5.0
    extent = np.array(case.image.shape) * np.array(case.spacing)
    assert (extent >= np.array([340.0, 280.0, 360.0]) - 1e-6).all()


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_anatomy_in_world_coordinates(seed):
    c = make_phantom(seed)
    assert nib.aff2axcodes(c.affine) == ("R", "A", "S")
    assert_anatomy(world_centroids(label_image(c)))
    # the spine: dense bone on the posterior midline, behind the aorta
    bone = nib.affines.apply_affine(c.affine, np.argwhere(c.image > 400).mean(0))
    aorta = world_centroids(label_image(c))["aorta"]
    assert abs(bone[0]) < 15 and bone[1] < aorta[1] - 10


def test_anatomy_survives_nifti_and_reorientation(case, tmp_path):
    case.save(tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz")
    image, label = nib.load(tmp_path / "img.nii.gz"), nib.load(tmp_path / "lab.nii.gz")
    assert np.allclose(label.affine, case.affine) and np.allclose(image.affine, case.affine)
    assert np.array_equal(np.asarray(label.dataobj), case.label)
    assert np.abs(np.asarray(image.dataobj) - case.image).max() <= 0.5  # stored as int16 HU
    assert not list(tmp_path.glob(".*")), "no temporary files left behind"
    expected = world_centroids(label)
    assert_anatomy(expected)
    # the same patient in LPS voxel order (as from DICOM): world coordinates, and so sides, are unchanged
    lps = label.as_reoriented(np.array([[0, -1], [1, -1], [2, 1]]))
    assert nib.aff2axcodes(lps.affine) == ("L", "P", "S")
    moved = world_centroids(lps)
    for name in PHANTOM_LABELS.values():
        assert np.allclose(moved[name], expected[name], atol=1e-3)
    assert_anatomy(moved)


def test_rotated_phantom_keeps_sides():
    plain = make_phantom(5)
    rotated = make_phantom(5, rotation_deg=(0, 0, 20))
    assert np.array_equal(rotated.affine, plain.affine), "the grid stays axis-aligned"
    assert not np.array_equal(rotated.label, plain.label)
    c, p = world_centroids(label_image(rotated)), world_centroids(label_image(plain))
    assert patient_right_of(c["liver"], c["spleen"]) and patient_right_of(c["kidney_right"], c["kidney_left"])
    # the anatomy turned about world z by +20 degrees around the box centre (0, 0, -20)
    theta = np.deg2rad(20.0)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    for name in ("liver", "spleen", "kidney_left", "urinary_bladder"):
        assert np.allclose(rot @ p[name][:2], c[name][:2], atol=4.0), name
        assert abs(c[name][2] - p[name][2]) < 2.0


@pytest.mark.parametrize("seed", [0, 11])
def test_plausible_volumes_and_intensities(seed):
    c = make_phantom(seed)
    voxel_ml = float(np.prod(c.spacing)) / 1000.0
    volumes = {name: (c.label == i).sum() * voxel_ml for name, i in IDS.items()}
    assert max(volumes, key=volumes.get) == "liver"
    plausible_ml = {
        "liver": (900, 2500), "spleen": (80, 500), "kidney_right": (50, 300), "kidney_left": (50, 300),
        "gallbladder": (10, 100), "stomach": (100, 600), "pancreas": (20, 120), "aorta": (30, 200),
        "inferior_vena_cava": (30, 200), "urinary_bladder": (60, 400),
    }
    for name, (low, high) in plausible_ml.items():
        assert low < volumes[name] < high, (name, volumes[name])
    mean_hu = {name: float(c.image[c.label == i].mean()) for name, i in IDS.items()}
    assert 40 < mean_hu["liver"] < 90
    assert 30 < mean_hu["spleen"] < 80
    assert 100 < mean_hu["kidney_right"] < 220 and 100 < mean_hu["kidney_left"] < 220
    assert mean_hu["aorta"] > 120 and mean_hu["inferior_vena_cava"] > 80
    assert -20 < mean_hu["gallbladder"] < 30 and -20 < mean_hu["urinary_bladder"] < 30
    # air outside the body, fat in it, noise about noise_hu
    assert np.median(c.image[0, 0, :]) < -900
    assert -150 < np.median(c.image[c.label == 0][c.image[c.label == 0] > -500]) < 100
    assert c.image.min() >= -1024 and c.image.max() <= 3071
    quiet = make_phantom(seed, noise_hu=0.0)
    assert np.array_equal(quiet.label, c.label)
    assert 15 < float(np.std(c.image - quiet.image)) < 25


def test_drop_classes():
    full = make_phantom(3, spacing=(4, 4, 5))
    c = make_phantom(3, spacing=(4, 4, 5), drop=["spleen", "aorta"])
    assert not (c.label == IDS["spleen"]).any() and not (c.label == IDS["aorta"]).any()
    assert "spleen" not in c.annotated and "aorta" not in c.annotated and len(c.annotated) == 8
    assert np.array_equal(c.image, full.image), "dropped organs stay in the image"
    kept = ~np.isin(full.label, [IDS["spleen"], IDS["aorta"]])
    assert np.array_equal(c.label[kept], full.label[kept])
    single = make_phantom(3, spacing=(4, 4, 5), drop="liver")  # one name, not its letters
    assert single.annotated == [n for n in PHANTOM_LABELS.values() if n != "liver"]
    with pytest.raises(ValueError, match="flux_capacitor.*valid names.*spleen"):
        make_phantom(3, drop=["flux_capacitor"])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(shape=(10, 0, 10)), dict(shape=(10, 10)), dict(shape=(10.5, 10, 10)), dict(shape="abc"),
        dict(spacing=(1, -1, 1)), dict(spacing=(1, float("nan"), 1)), dict(spacing=(1, 1)),
        dict(rotation_deg=(0, 0)), dict(rotation_deg=(0, 0, float("inf"))), dict(noise_hu=-1.0), dict(seed=-1),
    ],
)
def test_bad_arguments(kwargs):
    args = {"seed": 0, **kwargs}
    with pytest.raises(ValueError):
        make_phantom(**args)


def test_explicit_grid():
    c = make_phantom(1, shape=(40, 32, 36), spacing=(8.5, 8.75, 10.0))
    assert c.image.shape == (40, 32, 36) and c.spacing == pytest.approx((8.5, 8.75, 10.0))
    assert np.allclose(nib.affines.apply_affine(c.affine, (np.array(c.image.shape) - 1) / 2), (0.0, 0.0, -20.0))
    fitted = make_phantom(1, shape=(40, 32, 36))  # spacing chosen so the box fits the grid
    assert set(np.unique(fitted.label)) == {0, *PHANTOM_LABELS}
    assert fitted.spacing[0] == fitted.spacing[1] and fitted.spacing[0] * 40 >= 340 and fitted.spacing[2] * 36 >= 360


def test_dataset_layout_and_reuse(tmp_path):
    kwargs = dict(num_train=2, num_test=1, seed=1, progress=False, shape=(40, 32, 36))
    manifest = make_phantom_dataset(tmp_path, **kwargs)
    assert manifest == tmp_path / "dataset.json"
    dataset = json.loads(manifest.read_text())
    assert dataset["name"] == "phantom" and dataset["tensorImageSize"] == "3D" and dataset["modality"] == {"0": "CT"}
    assert dataset["labels"] == {"0": "background", **{str(i): n for i, n in PHANTOM_LABELS.items()}}
    assert dataset["numTraining"] == 2 and dataset["numTest"] == 1
    assert [e["image"] for e in dataset["training"]] == [f"./imagesTr/phantom_00{i}.nii.gz" for i in (0, 1)]
    assert [e["label"] for e in dataset["training"]] == [f"./labelsTr/phantom_00{i}.nii.gz" for i in (0, 1)]
    assert dataset["test"] == [{"image": "./imagesTs/phantom_002.nii.gz", "label": "./labelsTs/phantom_002.nii.gz"}]
    assert all(e["annotated"] == list(PHANTOM_LABELS.values()) for e in dataset["training"])
    assert dataset["generator"]["seed"] == 1 and dataset["generator"]["params"]["shape"] == [40, 32, 36]
    files = [tmp_path / e[k] for e in dataset["training"] + dataset["test"] for k in ("image", "label")]
    for f in files:
        img = nib.load(f)
        assert img.shape == (40, 32, 36) and nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert set(np.unique(np.asarray(nib.load(files[-1]).dataobj))) == {0, *PHANTOM_LABELS}

    stamps = {f: f.stat().st_mtime_ns for f in [manifest, *files]}
    assert make_phantom_dataset(tmp_path, **kwargs) == manifest
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps, "same arguments reuse the dataset untouched"

    (tmp_path / dataset["test"][0]["image"]).unlink()  # incomplete: regenerated
    make_phantom_dataset(tmp_path, **kwargs)
    assert (tmp_path / dataset["test"][0]["image"]).is_file()

    make_phantom_dataset(tmp_path, **{**kwargs, "num_train": 1, "seed": 2})  # other arguments: regenerated
    again = json.loads(manifest.read_text())
    assert again["generator"]["params"]["seed"] == 2 and again["numTraining"] == 1
    assert sorted(p.name for p in (tmp_path / "imagesTr").iterdir()) == ["phantom_000.nii.gz"], "stale cases removed"
    assert not list(tmp_path.rglob(".*tmp*")), "no temporary files left behind"


def test_dataset_partial_labels_and_rotation(tmp_path):
    manifest = make_phantom_dataset(
        tmp_path, num_train=4, num_test=1, seed=3, drop_fraction=0.5, max_rotation_deg=30.0, progress=False,
        shape=(40, 32, 36),
    )
    dataset = json.loads(manifest.read_text())
    lists = [e["annotated"] for e in dataset["training"]]
    assert all(1 <= len(a) <= 10 and set(a) <= set(PHANTOM_LABELS.values()) for a in lists)
    assert any(len(a) < 10 for a in lists), "with p=0.5 some structures are dropped"
    for entry in dataset["training"]:
        present = set(np.unique(np.asarray(nib.load(tmp_path / entry["label"]).dataobj))) - {0}
        assert present == {IDS[n] for n in entry["annotated"]}
    test_label = np.asarray(nib.load(tmp_path / dataset["test"][0]["label"]).dataobj)
    assert set(np.unique(test_label)) == {0, *PHANTOM_LABELS}, "test cases keep every structure"
    assert "annotated" not in dataset["test"][0]


def test_dataset_refuses_foreign_folder_and_bad_arguments(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "Task09_Spleen", "training": []}))
    with pytest.raises(FileExistsError):
        make_phantom_dataset(tmp_path, num_train=1, num_test=0, progress=False, shape=(8, 8, 8))
    with pytest.raises(TypeError, match="drop"):
        make_phantom_dataset(tmp_path / "a", num_train=1, drop=["liver"])
    for bad in (dict(num_train=0, num_test=0), dict(drop_fraction=1.5), dict(max_rotation_deg=-1), dict(shape=(8, 8))):
        with pytest.raises(ValueError):
            make_phantom_dataset(tmp_path / "b", progress=False, **bad)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists(), "nothing written before validation"


def test_command_line(tmp_path, capsys):
    main = runpy.run_path(str(SCRIPT))["main"]
    out = tmp_path / "cli"
    argv = ["--out", str(out), "--num-train", "1", "--num-test", "1", "--seed", "4", "--shape", "24", "24", "24",
            "--drop-fraction", "0.3", "--max-rotation", "10", "--no-progress"]
    assert main(argv) == 0
    assert str(out / "dataset.json") in capsys.readouterr().out
    dataset = json.loads((out / "dataset.json").read_text())
    params = dataset["generator"]["params"]
    assert params["shape"] == [24, 24, 24] and params["drop_fraction"] == 0.3 and params["max_rotation_deg"] == 10.0
    assert nib.load(out / "imagesTs" / "phantom_001.nii.gz").shape == (24, 24, 24)
    with pytest.raises(SystemExit):  # bad input: a usage error, not a traceback
        main(["--out", str(tmp_path / "bad"), "--shape", "1", "2", "-3", "--no-progress"])
    assert "shape must be 3 positive integers" in capsys.readouterr().err
