import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from textseg.datasets import (
    DatasetError,
    combine_totalsegmentator_masks,
    label_maps,
    load_datalist,
    load_datalists,
    load_dataset_specs,
)
from textseg.vocabulary import Structure, Vocabulary, load_vocabulary

REQUIRED = [
    "phantom",
    "msd_task03_liver",
    "msd_task07_pancreas",
    "msd_task09_spleen",
    "btcv",
    "flare22",
    "amos22",
    "word",
    "totalsegmentator",
]


def _nifti(path: Path, value: int = 0, array=None) -> Path:
    """A tiny 4x4x4 uint8 NIfTI file (``array`` or filled with ``value``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.full((4, 4, 4), value, np.uint8) if array is None else array
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def _write_datasets(tmp_path, body: str) -> Path:
    """A datasets file with one entry 'mini'; ``body`` is its indented YAML keys."""
    path = tmp_path / "datasets.yaml"
    path.write_text("version: 1\ndatasets:\n  mini:\n    modality: CT\n    source: test\n    licence: test\n" + body)
    return path


def _write_msd(root, with_label=True, annotated=None, manifest=True):
    _nifti(root / "imagesTr" / "c0.nii.gz")
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    if with_label:
        _nifti(root / "labelsTr" / "c0.nii.gz")
    entry = {"image": "./imagesTr/c0.nii.gz", "label": "./labelsTr/c0.nii.gz"}
    if annotated:
        entry["annotated"] = annotated
    if manifest:
        (root / "dataset.json").write_text(json.dumps({"training": [entry], "test": ["./imagesTr/c0.nii.gz"]}))


def test_entries_map_into_the_vocabulary():
    specs = load_dataset_specs()
    vocab = load_vocabulary()
    assert set(REQUIRED) <= set(specs)
    for spec in specs.values():
        assert spec.modality and spec.source and spec.licence and spec.images and spec.labels
        assert all(name in vocab for name in spec.labels_map.values())
        assert set(spec.annotated) <= set(spec.labels_map.values())
    sizes = {"btcv": 13, "flare22": 13, "amos22": 15, "word": 16, "totalsegmentator": 117, "phantom": 10}
    assert {n: len(specs[n].labels_map) for n in sizes} == sizes
    assert specs["totalsegmentator"].labels_map[5] == "liver"
    maps = label_maps()
    assert maps["flare22"][13] == "kidney_left" and maps["amos22"][9] == "inferior_vena_cava" and maps["word"][11] == "small_bowel"
    assert maps["btcv"][10] == "portal_vein_and_splenic_vein" and maps["msd_task03_liver"] == {1: "liver", 2: "liver_tumor"}


def test_phantom_entry_matches_generator():
    from textseg.phantom import PHANTOM_LABELS

    assert label_maps()["phantom"] == PHANTOM_LABELS


@pytest.mark.parametrize(
    "body,match",
    [
        (
            "    layout: msd\n    labels_map: {1: liver, 2: flux_capacitor}\n",
            "label 2 'flux_capacitor' is not in the vocabulary; closest vocabulary terms: ",
        ),
        ("    layout: msd\n    labels_map: {1: liver, 2: liver}\n", r"gives \['liver'\] to more than one label id"),
        ("    layout: msd\n    labels_map: {0: liver}\n", "label ids start at 1"),
        ("    layout: zip\n    labels_map: {1: liver}\n", "layout 'zip' is not one of"),
        ("    layout: msd\n    label_map: {1: liver}\n", r"unknown keys \['label_map'\]"),
        (
            "    layout: msd\n    labels_map: {1: liver}\n    annotated: [spleen]\n",
            r"annotated names \['spleen'\] are not in its labels_map",
        ),
        ("    layout: case_folders\n    labels_map: {1: liver}\n", "needs images and labels"),
        ("    layout: msd\n", "no labels_map"),
    ],
)
def test_bad_entry_is_named(tmp_path, body, match):
    path = _write_datasets(tmp_path, body)
    with pytest.raises(DatasetError, match=match) as raised:
        load_dataset_specs(path)
    assert str(path) in str(raised.value) and "'mini'" in str(raised.value)


def test_missing_datasets_file_is_named(tmp_path):
    with pytest.raises(DatasetError, match="datasets file not found: .*nowhere.yaml"):
        load_dataset_specs(tmp_path / "nowhere.yaml")


def test_specs_follow_the_given_vocabulary(tmp_path):
    vocab = Vocabulary([Structure(1, "blob", "Blob", (), "abdomen", "organ", (1, 2, 3))])
    path = _write_datasets(tmp_path, "    layout: msd\n    labels_map: {1: blob}\n")
    assert label_maps(path, vocabulary=vocab) == {"mini": {1: "blob"}}
    with pytest.raises(DatasetError, match="'blob' is not in the vocabulary"):
        load_dataset_specs(path)  # the packaged vocabulary has no 'blob'


def test_load_msd_datalist(tmp_path):
    path = _write_datasets(tmp_path, "    layout: msd\n    labels_map: {1: liver, 2: spleen}\n")
    _write_msd(tmp_path / "data", annotated=["spleen"])
    (case,) = load_datalist("mini", tmp_path / "data", path=path)
    assert case == {
        "image": str((tmp_path / "data" / "imagesTr" / "c0.nii.gz").resolve()),
        "label": str((tmp_path / "data" / "labelsTr" / "c0.nii.gz").resolve()),
        "dataset": "mini",
        "annotated": ["spleen"],
    }
    (test_case,) = load_datalist("mini", tmp_path / "data", path=path, section="test")
    assert "label" not in test_case and test_case["annotated"] == ["liver", "spleen"]
    with pytest.raises(DatasetError, match="has no 'validation' list .*training, test"):
        load_datalist("mini", tmp_path / "data", path=path, section="validation")


def test_msd_without_manifest_uses_the_folders(tmp_path):
    path = _write_datasets(tmp_path, "    layout: msd\n    labels_map: {1: liver}\n")
    _write_msd(tmp_path / "data", manifest=False)
    _nifti(tmp_path / "data" / "imagesTr" / "._c0.nii.gz")  # macOS resource file in MSD archives
    (case,) = load_datalist("mini", tmp_path / "data", path=path)
    assert case["label"].endswith("labelsTr/c0.nii.gz") and case["annotated"] == ["liver"]


def test_annotated_outside_labels_map_is_an_error(tmp_path):
    path = _write_datasets(tmp_path, "    layout: msd\n    labels_map: {1: liver}\n")
    _write_msd(tmp_path / "data", annotated=["spleen"])
    with pytest.raises(DatasetError, match=r"lists annotated \['spleen'\]"):
        load_datalist("mini", tmp_path / "data", path=path)


def test_missing_label_file_root_and_dataset_are_named(tmp_path):
    path = _write_datasets(tmp_path, "    layout: msd\n    labels_map: {1: liver}\n")
    _write_msd(tmp_path / "data", with_label=False)
    with pytest.raises(DatasetError, match="label file not found: .*labelsTr/c0.nii.gz"):
        load_datalist("mini", tmp_path / "data", path=path)
    with pytest.raises(DatasetError, match="folder not found: .*nowhere"):
        load_datalist("mini", tmp_path / "nowhere", path=path)
    with pytest.raises(DatasetError, match="unknown dataset 'nope'; datasets.yaml has: mini"):
        load_datalist("nope", tmp_path, path=path)
    with pytest.raises(DatasetError, match="pass the folder of your local copy"):
        load_datalist("mini", path=path)


def test_no_images_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images match .*empty/images/\\*_0000.nii.gz"):
        load_datalist("flare22", tmp_path / "empty")


@pytest.mark.parametrize(
    "name,image,label,classes",
    [
        ("btcv", "Training/img/img0001.nii.gz", "Training/label/label0001.nii.gz", 13),
        ("flare22", "images/FLARE22_Tr_0001_0000.nii.gz", "labels/FLARE22_Tr_0001.nii.gz", 13),
        ("word", "imagesTr/word_0001.nii.gz", "labelsTr/word_0001.nii.gz", 16),
        ("kits23", "case_00000/imaging.nii.gz", "case_00000/segmentation.nii.gz", 1),
    ],
)
def test_public_layouts(tmp_path, name, image, label, classes):
    for k in range(2):  # two cases, named as the dataset names them
        _nifti(tmp_path / image.replace("0001", f"000{k + 1}").replace("00000", f"0000{k}"))
        _nifti(tmp_path / label.replace("0001", f"000{k + 1}").replace("00000", f"0000{k}"))
    cases = load_datalist(name, tmp_path)
    assert [c["image"] for c in cases] == sorted(c["image"] for c in cases) and len(cases) == 2
    assert cases[0]["image"] == str((tmp_path / image).resolve()) and cases[0]["label"] == str((tmp_path / label).resolve())
    assert len(cases[0]["annotated"]) == classes and cases[0]["dataset"] == name


def test_include_keeps_amos_ct_cases(tmp_path):
    training = []
    for case in ("amos_0001", "amos_0410", "amos_0507"):  # 0507 is an MRI case
        _nifti(tmp_path / "imagesTr" / f"{case}.nii.gz")
        _nifti(tmp_path / "labelsTr" / f"{case}.nii.gz")
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    (tmp_path / "dataset.json").write_text(json.dumps({"training": training}))
    cases = load_datalist("amos22", tmp_path)
    assert [Path(c["image"]).name for c in cases] == ["amos_0001.nii.gz", "amos_0410.nii.gz"]
    assert len(cases[0]["annotated"]) == 15


def test_totalsegmentator_layout_and_mask_combination(tmp_path):
    vocab = load_vocabulary()
    case = tmp_path / "s0001"
    _nifti(case / "ct.nii.gz")
    liver = np.zeros((4, 4, 4), np.uint8)
    liver[:2] = 1
    _nifti(case / "segmentations" / "liver.nii.gz", array=liver)
    _nifti(case / "segmentations" / "spleen.nii.gz", value=0)
    with pytest.raises(DatasetError, match="combine_totalsegmentator_masks"):
        load_datalist("totalsegmentator", tmp_path)
    out = combine_totalsegmentator_masks(case)
    combined = np.asanyarray(nib.load(str(out)).dataobj)
    assert combined.dtype == np.uint8 and set(np.unique(combined)) == {0, vocab["liver"].id}
    assert (combined[:2] == vocab["liver"].id).all() and (combined[2:] == 0).all()
    (entry,) = load_datalist("totalsegmentator", tmp_path)
    assert entry["label"] == str(out) and len(entry["annotated"]) == 117
    _nifti(case / "segmentations" / "flux_capacitor.nii.gz")
    with pytest.raises(DatasetError, match=r"masks \['flux_capacitor'\] are not vocabulary structures"):
        combine_totalsegmentator_masks(case)


def test_phantom_datalist(tiny_phantom):
    train = load_datalist("phantom", tiny_phantom)
    test = load_datalist("phantom", tiny_phantom, section="test")
    assert len(train) == 3 and len(test) == 1 and "label" in test[0]
    assert all(c["dataset"] == "phantom" and set(c["annotated"]) <= set(label_maps()["phantom"].values()) for c in train)


def test_load_datalists_mixes_datasets_round_robin(tmp_path):
    path = tmp_path / "datasets.yaml"
    path.write_text(
        "version: 1\ndatasets:\n"
        "  organs:\n    modality: CT\n    source: t\n    licence: t\n    layout: paired_folders\n    labels_map: {1: liver, 2: spleen}\n"
        "  kidneys:\n    modality: CT\n    source: t\n    licence: t\n    layout: paired_folders\n"
        "    labels_map: {1: kidney_left, 2: kidney_right}\n"
    )
    for name, count in (("organs", 3), ("kidneys", 1)):
        for i in range(count):
            _nifti(tmp_path / name / "imagesTr" / f"{name}{i}.nii.gz")
            _nifti(tmp_path / name / "labelsTr" / f"{name}{i}.nii.gz")
    sources = [{"name": "organs", "root": tmp_path / "organs"}, {"name": "kidneys", "root": tmp_path / "kidneys"}]
    cases = load_datalists(sources, path=path)
    assert [c["dataset"] for c in cases] == ["organs", "kidneys", "organs", "organs"]
    assert cases[1]["annotated"] == ["kidney_left", "kidney_right"] and cases[0]["annotated"] == ["liver", "spleen"]
    with pytest.raises(DatasetError, match="at least one"):
        load_datalists([], path=path)
    with pytest.raises(DatasetError, match="needs a 'name'"):
        load_datalists([{"root": tmp_path}], path=path)
    with pytest.raises(DatasetError, match="unknown dataset 'btcv2'"):
        load_datalists(["btcv2"], path=path)
