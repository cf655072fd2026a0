"""The app's helpers without a server: id and label checks, partial-label bookkeeping, the image_path stash."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import monai
import nibabel as nib
import numpy as np
import pytest

from textseg.app_support import annotated_structures, check_image_id, check_label_file, label_info_for_map

APP_LIB = Path(__file__).resolve().parents[2] / "apps" / "textseg_app" / "lib"


def _run_python_in_app(code: str, app_dir: Path, timeout: float) -> str:
    """Run ``code`` in a fresh Python whose working directory and path hold the app folder ``app_dir`` (so that
    ``import main`` and ``import lib...`` find it); returns the last line it printed."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=app_dir,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(app_dir), "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def _app_module(name: str):
    spec = importlib.util.spec_from_file_location(f"textseg_app_{name}", APP_LIB / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("bad", ["../x", "a/b", "/etc/passwd", "..", ".hidden", "", "a\\b", "x..y"])
def test_image_ids_with_path_components_are_refused(bad):
    with pytest.raises(ValueError, match="image id"):
        check_image_id(bad)


def test_plain_ids_pass():
    assert check_image_id("case_21") == "case_21"
    assert check_image_id("1.2.826.0.1.3680043.8.498.1") == "1.2.826.0.1.3680043.8.498.1"


def test_label_checks(tmp_path):
    image = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), str(image))
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), 5, np.int16), np.eye(4)), str(good))
    assert check_label_file(good, image, [5]).shape == (8, 8, 8)
    with pytest.raises(ValueError, match="not among the model's label ids"):
        check_label_file(good, image, [1, 2])
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 8, 8), np.int16), np.eye(4)), str(small))
    with pytest.raises(ValueError, match="differs from the image's shape"):
        check_label_file(small, image)
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable NIfTI"):
        check_label_file(corrupt, image)


def test_partial_labels_declared_or_present():
    classes = ["spleen", "kidney_right", "liver"]
    # declared by the client (names, OHIF's label_info, or label_names) - absent ones stay unknown otherwise
    assert annotated_structures({"annotated": ["liver", "spleen"]}, [5], classes) == ["spleen", "liver"]
    assert annotated_structures({"label_info": [{"name": "liver"}]}, [], classes) == ["liver"]
    assert annotated_structures({"label_names": {"right kidney": 2}}, [], classes) == ["kidney_right"]
    assert annotated_structures({}, [0, 5, 2], classes) == ["kidney_right", "liver"]


def test_dicom_seg_segment_info_follows_sorted_ids():
    rows = label_info_for_map([0, 5, 2, 5])
    assert [r["name"] for r in rows] == ["kidney_right", "liver"]


def test_stash_lets_spacingd_run_on_monailabel_data(tmp_path):
    """MONAI Label puts the string ``image_path`` in the data; MONAI 1.6's Spacingd updates ``image_*`` keys."""
    from monai.transforms import Compose

    from textseg.transforms import ct_transforms

    transforms = _app_module("transforms")
    path = tmp_path / "ct.nii.gz"
    ct = np.full((16, 16, 16), -1000, np.int16)  # air around a soft-tissue block: passes CheckCTd
    ct[4:12, 4:12, 4:12] = 40
    nib.save(nib.Nifti1Image(ct, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    data = {"image": str(path), "image_path": str(path)}
    chain = ct_transforms(pixdim=(4.0, 4.0, 4.0))
    if tuple(int(v) for v in monai.__version__.split(".")[:2]) >= (1, 6):
        with pytest.raises((AttributeError, RuntimeError)) as error:  # Compose wraps it in a RuntimeError
            Compose(chain)(dict(data))
        assert "'str' object has no attribute 'update'" in repr(error.value.__cause__ or error.value)
    out = Compose([transforms.StashStringImageKeysd(), *chain, transforms.RestoreStringImageKeysd()])(dict(data))
    assert out["image_path"] == str(path)
    assert tuple(out["image"].shape) == (1, 8, 8, 8)


def test_served_studies_start_with_the_real_example_ct_under_its_own_name(tmp_path):
    """`make serve` studies: the shipped real CT first (and in Orthanc as a DICOM series named as a real patient), then
    the phantoms; existing files are kept."""
    import pydicom

    from textseg.demo import EXAMPLE_CT
    from textseg.serve import prepare_studies

    paths = prepare_studies(tmp_path / "studies", num=1, dicom_dir=tmp_path / "dicom")
    assert [p.name for p in paths] == ["example_ct.nii.gz", "phantom_0900.nii.gz"]
    assert paths[0].read_bytes() == EXAMPLE_CT.read_bytes()
    series = sorted((tmp_path / "dicom" / "example_ct").glob("*.dcm"))
    assert len(series) == nib.load(str(EXAMPLE_CT)).shape[2]
    header = pydicom.dcmread(str(series[0]), stop_before_pixels=True)
    assert str(header.PatientName) == "TotalSegmentator^Example" and "TotalSegmentator example" in header.StudyDescription
    phantom = pydicom.dcmread(str(next((tmp_path / "dicom" / "phantom_0900").glob("*.dcm"))), stop_before_pixels=True)
    assert phantom.PatientID == "PHANTOM0900"
    mtime = paths[0].stat().st_mtime_ns
    prepare_studies(tmp_path / "studies", num=1, dicom_dir=tmp_path / "dicom")
    assert paths[0].stat().st_mtime_ns == mtime


def test_a_new_model_is_one_file_in_lib_configs(tmp_path):
    """The app finds its models from the TaskConfig classes in lib/configs (named after their files), as MONAI
    Label's radiology app does: a copy of the app with one more file serves one more model, text_prompt first."""
    import shutil

    app = tmp_path / "app"
    shutil.copytree(APP_LIB.parent, app, ignore=shutil.ignore_patterns("logs", "model", "__pycache__"))
    (app / "lib" / "configs" / "liver_only.py").write_text(
        "from monailabel.interfaces.config import TaskConfig\n\nfrom .text_prompt import TextPrompt\n\n\n"
        "class LiverOnly(TextPrompt, TaskConfig):\n    pass\n",
        encoding="utf-8",
    )
    names = _run_python_in_app("import main; print(','.join(main.model_configs()))", app, timeout=300)
    assert names == "text_prompt,all_structures,interactive,liver_only"


def test_an_infer_request_resolves_its_prompt_once(tiny_phantom, trained_bundle, tmp_path):
    """The app's path for one /infer request: the prompt is checked (``targets_of``, 400 on a bad prompt), MONAI Label
    deep-copies the request, the task runs the bundle and answers; the resolver is called once, for the request's
    prompt only (building the task resolves no default prompt). Run in a child process holding the app's ``lib``."""
    image = sorted((tiny_phantom / "imagesTs").glob("*.nii.gz"))[0]
    code = f"""
import copy, json
from lib.infers import TextPromptInferTask
from lib.settings import AppSettings
from textseg.prompts import PromptResolver

calls = []
original = PromptResolver.resolve
PromptResolver.resolve = lambda self, prompt: (calls.append(prompt), original(self, prompt))[1]
conf = {{"bundle_overlay": "tiny", "checkpoint": {str(trained_bundle / "model_tiny.pt")!r}, "device": "cpu"}}
settings = AppSettings.from_conf({str(APP_LIB.parent)!r}, conf)
task = TextPromptInferTask(settings)
request = {{"image": {str(image)!r}, "prompt": "the left kidney and the liver", "result_extension": ".nii.gz"}}
task.targets_of(request)
path, result = task(copy.deepcopy(request))
print(json.dumps({{"calls": calls, "targets": result["targets"]}}))
"""
    report = json.loads(_run_python_in_app(code, APP_LIB.parent, timeout=600))
    assert report == {"calls": ["the left kidney and the liver"], "targets": ["kidney_left", "liver"]}
