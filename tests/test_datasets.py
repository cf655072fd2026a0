import json

import nibabel as nib
import numpy as np
import pytest

from textseg.datasets import DatasetError, label_maps, load_datalist, load_dataset_specs
from textseg.vocabulary import load_vocabulary

REQUIRED = ["phantom", "msd_task03_liver", "msd_task07_pancreas", "msd_task09_spleen", "btcv", "flare22", "amos22", "word", "totalsegmentator"]


def test_entries_map_into_the_vocabulary():
    specs = load_dataset_specs()
    vocab = load_vocabulary()
    assert set(REQUIRED) <= set(specs)
    for spec in specs.values():
        assert spec.modality and spec.source and spec.licence
        assert all(name in vocab for name in spec.labels_map.values())
    assert len(specs["btcv"].labels_map) == 13 and len(specs["amos22"].labels_map) == 15 and len(specs["word"].labels_map) == 16
    assert specs["totalsegmentator"].labels_map[5] == "liver" and len(specs["totalsegmentator"].labels_map) == 117
    assert label_maps()["flare22"][13] == "kidney_left"


def test_phantom_entry_matches_generator():
    from textseg.phantom import PHANTOM_LABELS

    assert label_maps()["phantom"] == PHANTOM_LABELS


def _write_datasets(tmp_path, labels_map):
    path = tmp_path / "datasets.yaml"
    path.write_text(f"datasets:\n  mini:\n    layout: msd\n    modality: CT\n    source: test\n    licence: test\n    labels_map: {labels_map}\n")
    return path


def _write_msd(root, with_label=True, annotated=None):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), str(root / "imagesTr" / "c0.nii.gz"))
    if with_label:
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), str(root / "labelsTr" / "c0.nii.gz"))
    entry = {"image": "./imagesTr/c0.nii.gz", "label": "./labelsTr/c0.nii.gz"}
    if annotated:
        entry["annotated"] = annotated
    (root / "dataset.json").write_text(json.dumps({"training": [entry]}))


def test_unknown_label_name_is_named(tmp_path):
    path = _write_datasets(tmp_path, "{1: liver, 2: flux_capacitor}")
    with pytest.raises(DatasetError, match="label 2 'flux_capacitor' is not in the vocabulary"):
        load_dataset_specs(path)


def test_load_msd_datalist(tmp_path):
    path = _write_datasets(tmp_path, "{1: liver, 2: spleen}")
    _write_msd(tmp_path / "data", annotated=["spleen"])
    (case,) = load_datalist("mini", tmp_path / "data", path=path)
    assert case["image"].endswith("c0.nii.gz") and case["image"].startswith(str(tmp_path))
    assert case["dataset"] == "mini" and case["annotated"] == ["spleen"]


def test_missing_label_file_and_root_are_named(tmp_path):
    path = _write_datasets(tmp_path, "{1: liver}")
    _write_msd(tmp_path / "data", with_label=False)
    with pytest.raises(DatasetError, match="label file not found: .*c0.nii.gz"):
        load_datalist("mini", tmp_path / "data", path=path)
    with pytest.raises(DatasetError, match="folder not found"):
        load_datalist("mini", tmp_path / "nowhere", path=path)
    with pytest.raises(DatasetError, match="unknown dataset 'nope'; datasets.yaml has: mini"):
        load_datalist("nope", tmp_path, path=path)


def test_paired_folder_layout(tmp_path):
    root = tmp_path / "btcv"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case in ("img0001", "img0002"):
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), str(root / "imagesTr" / f"{case}.nii.gz"))
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), str(root / "labelsTr" / f"{case}.nii.gz"))
    cases = load_datalist("btcv", root)
    assert len(cases) == 2 and len(cases[0]["annotated"]) == 13


def test_phantom_datalist(tiny_phantom):
    train = load_datalist("phantom", tiny_phantom)
    test = load_datalist("phantom", tiny_phantom, section="test")
    assert len(train) == 3 and len(test) == 1 and "label" in test[0]
