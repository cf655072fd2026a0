"""The textseg MONAI Label app through monailabel.client (what 3D Slicer's plugin calls), against a real server."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

import nibabel as nib
import numpy as np
import pytest
from monailabel.client.client import MONAILabelClientException

from textseg.vocabulary import load_vocabulary

pytestmark = pytest.mark.slow  # a real server (and Orthanc, Chromium): minutes

CLASS_NAMES = [
    "spleen",
    "kidney_right",
    "kidney_left",
    "gallbladder",
    "liver",
    "stomach",
    "pancreas",
    "aorta",
    "inferior_vena_cava",
    "urinary_bladder",
]


def _status(error: MONAILabelClientException) -> int:
    """The HTTP status the client reports in its message ("Status: 404; Response: ...")."""
    match = re.search(r"Status: (\d+)", error.msg)
    assert match, error.msg
    return int(match.group(1))


def test_info_lists_both_models_with_vocabulary_labels(client):
    info = client.info()
    vocabulary = load_vocabulary()
    assert set(info["models"]) == {"text_prompt", "all_structures", "interactive"}
    for model in info["models"].values():
        assert model["labels"] == {n: vocabulary[n].id for n in CLASS_NAMES}
        assert model["label_colors"] == {n: list(vocabulary[n].color) for n in CLASS_NAMES}
    assert info["models"]["text_prompt"]["config"]["prompt"]
    assert "text_prompt" in info["trainers"]
    assert "random" in info["strategies"]


def test_datastore_lists_the_studies(client, app_studies):
    ds = client.datastore()
    assert set(app_studies["ids"]) <= set(ds["objects"])


def _check_label_map(path, image_path, allowed_ids):
    result, image = nib.load(path), nib.load(str(image_path))
    assert result.shape[:3] == image.shape[:3]
    assert np.allclose(result.affine, image.affine, atol=1e-3)
    values = set(np.unique(np.asarray(result.dataobj)).astype(int).tolist())
    assert values <= {0, *allowed_ids}, values


def test_infer_prompt_returns_the_prompt_labels_on_the_image_grid(client, app_studies):
    path, params = client.infer("text_prompt", "case_21", {"prompt": "segment the liver and kidneys"})
    assert params["label_names"] == {"liver": 5, "kidney_right": 2, "kidney_left": 3}
    assert params["targets"] == ["liver", "kidney_right", "kidney_left"]
    assert [row["color"] for row in params["labels"]] == [list(load_vocabulary()[n].color) for n in params["targets"]]
    _check_label_map(path, app_studies["studies"] / "case_21.nii.gz", {2, 3, 5})


def test_structure_selection_and_all_structures_model(client, app_studies):
    _, params = client.infer("text_prompt", "case_22", {"structures": ["spleen", "aorta"]})
    assert params["label_names"] == {"spleen": 1, "aorta": 52}
    path, params = client.infer("all_structures", "case_22", {})
    vocabulary = load_vocabulary()
    assert params["label_names"] == {n: vocabulary[n].id for n in CLASS_NAMES}
    _check_label_map(path, app_studies["studies"] / "case_22.nii.gz", {vocabulary[n].id for n in CLASS_NAMES})


def test_size_query_reports_only_the_answer_it_kept(client, app_studies):
    """'the largest organ' needs every organ segmented, but only the answer stays in the map and the response."""
    try:
        path, params = client.infer("text_prompt", "case_21", {"prompt": "the largest organ"})
    except MONAILabelClientException as error:  # a barely trained model may find no organ at all
        assert _status(error) == 422 and ("no structure was segmented" in error.msg or "no segmented" in error.msg), error.msg
        return
    assert len(params["label_names"]) == 1, params["label_names"]
    _check_label_map(path, app_studies["studies"] / "case_21.nii.gz", set(params["label_names"].values()))


def test_next_sample_random_picks_a_datastore_image(client, app_studies):
    sample = client.next_sample("random", {})
    assert sample["id"] in app_studies["ids"]


def _post(url: str, data: bytes = b"", content_type: str = "application/x-www-form-urlencoded") -> tuple[int, str]:
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08 this is not a nifti file")
    nib.save(nib.Nifti1Image(np.zeros((32, 32), dtype=np.int16), np.eye(4)), str(d / "flat.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), dtype=np.int16), np.eye(4)), str(d / "small_label.nii.gz"))
    return d


@pytest.mark.parametrize(
    "case, status, message",
    [
        ("unknown_model", 404, "unknown model 'no_such_model'"),
        ("bad_prompt", 400, "unknown structure 'flux capacitor'; closest vocabulary terms"),
        ("path_id", 400, "path components"),
        ("absolute_path", 400, "path components"),
        ("missing_image", 404, "not in the datastore"),
        ("corrupt_upload", 400, "not a readable NIfTI"),
        ("2d_upload", 400, "2D"),
    ],
)
def test_bad_infer_requests_answer_4xx_with_a_message(client, app_server, bad_files, case, status, message):
    calls = {
        "unknown_model": lambda: client.infer("no_such_model", "case_21", {}),
        "bad_prompt": lambda: client.infer("text_prompt", "case_21", {"prompt": "segment the flux capacitor"}),
        "path_id": lambda: client.infer("text_prompt", "../studies/case_21", {}),
        "absolute_path": lambda: client.infer("text_prompt", "/etc/passwd", {}),
        "missing_image": lambda: client.infer("text_prompt", "case_99", {}),
        "corrupt_upload": lambda: client.infer("text_prompt", "", {}, file=str(bad_files / "corrupt.nii.gz")),
        "2d_upload": lambda: client.infer("text_prompt", "", {}, file=str(bad_files / "flat.nii.gz")),
    }
    with pytest.raises(MONAILabelClientException) as error:
        calls[case]()
    assert _status(error.value) == status, error.value.msg
    assert message in error.value.msg
    assert client.info()["models"]  # the server keeps serving


def test_uploads_are_checked(client, app_studies, bad_files):
    for name, message in (("corrupt.nii.gz", "not a readable NIfTI"), ("flat.nii.gz", "2D")):
        with pytest.raises(MONAILabelClientException) as error:
            client.upload_image(str(bad_files / name), image_id="bad_upload")
        assert _status(error.value) == 400 and message in error.value.msg, error.value.msg
    with pytest.raises(MONAILabelClientException) as error:
        client.upload_image(str(app_studies["studies"] / "case_21.nii.gz"), image_id="../escaped")
    assert _status(error.value) == 400 and "path components" in error.value.msg
    assert "bad_upload" not in client.datastore()["objects"]
    assert not (app_studies["root"] / "escaped.nii.gz").exists()


def test_labels_are_checked_and_versioned(client, app_studies, bad_files):
    with pytest.raises(MONAILabelClientException) as error:
        client.save_label("case_22", str(bad_files / "small_label.nii.gz"), "final")
    assert _status(error.value) == 422 and "differs from the image's shape" in error.value.msg
    with pytest.raises(MONAILabelClientException) as error:
        client.save_label("case_22", str(bad_files / "corrupt.nii.gz"), "final")
    assert _status(error.value) == 422 and "not a readable NIfTI" in error.value.msg
    with pytest.raises(MONAILabelClientException) as error:
        client.save_label("../case_22", str(app_studies["refs"] / "case_22.nii.gz"), "final")
    assert _status(error.value) == 400

    first = app_studies["refs"] / "case_22.nii.gz"
    client.save_label("case_22", str(first), "final", {"annotated": CLASS_NAMES})
    info = client.datastore()["objects"]["case_22"]["labels"]["final"]["info"]
    assert info["version"] == 1
    # a second save keeps the first as a version
    edited = nib.load(str(first))
    data = np.asarray(edited.dataobj).copy()
    data[data == 1] = 0  # the annotator erased the spleen
    second = app_studies["root"] / "case_22_edited.nii.gz"
    nib.save(nib.Nifti1Image(data, edited.affine), str(second))
    client.save_label("case_22", str(second), "final", {"annotated": CLASS_NAMES})
    info = client.datastore()["objects"]["case_22"]["labels"]["final"]["info"]
    assert info["version"] == 2
    (kept,) = info["previous_versions"]
    assert np.array_equal(np.asarray(nib.load(kept).dataobj), np.asarray(nib.load(str(first)).dataobj))
    current = app_studies["studies"] / "labels" / "final" / "case_22.nii.gz"
    assert np.array_equal(np.asarray(nib.load(str(current)).dataobj), data)


def _wait_training(client, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.train_status(check_if_running=False)
        if status and status.get("status") in ("DONE", "ERROR", "STOPPED"):
            return status
        time.sleep(2)
    raise TimeoutError("training did not finish")


def test_train_on_saved_labels_updates_the_checkpoint_infer_uses(client, app_studies, app_checkpoint):
    client.save_label("case_21", str(app_studies["refs"] / "case_21.nii.gz"), "final", {"annotated": ["liver", "spleen"]})
    before = app_checkpoint.stat().st_mtime
    client.train_start("text_prompt", {"max_epochs": 1})
    status = _wait_training(client)
    assert status["status"] == "DONE", status
    assert app_checkpoint.stat().st_mtime > before
    stats = client.info()["train_stats"]["text_prompt"]
    assert stats["epoch"] == 1 and stats["state"] == "FINISHED"
    _, params = client.infer("text_prompt", "case_21", {"prompt": "liver"})  # reloads the new checkpoint
    assert params["label_names"] == {"liver": 5}


def test_training_can_be_stopped_and_the_server_keeps_serving(client, app_checkpoint, app_server):
    """DELETE /train kills the training subprocess mid-run; the server keeps serving, and the next /train resumes
    from the last saved epoch (network, optimizer, scheduler) instead of starting over."""
    import torch

    state_file = app_checkpoint.parent / f"{app_checkpoint.stem}_training_state.pt"
    client.train_start("text_prompt", {"max_epochs": 200})
    try:
        deadline = time.time() + 300  # the training subprocess starts in MONAI Label's task thread
        while time.time() < deadline and not state_file.exists():
            time.sleep(0.5)
        assert client.train_status(check_if_running=False)["status"] == "RUNNING"
        assert state_file.exists(), "no epoch was saved"
    finally:
        client.train_stop()  # never leave a 200-epoch training behind, even when an assertion failed
    status = _wait_training(client, timeout=120)
    assert status["status"] == "STOPPED", status
    saved = torch.load(state_file, map_location="cpu", weights_only=False)
    done = saved["trainer"]["iteration"] // saved["trainer"]["epoch_length"]
    assert 1 <= done < 200
    _, params = client.infer("text_prompt", "case_21", {"prompt": "left kidney"})
    assert params["label_names"] == {"kidney_left": 3}

    client.train_start("text_prompt", {"max_epochs": done + 1})
    status = _wait_training(client)
    assert status["status"] == "DONE", status
    stats = client.info()["train_stats"]["text_prompt"]
    assert stats["epoch"] == done + 1 and stats["state"] == "FINISHED", stats
    assert f"resuming training from {state_file}: epoch {done} of {done + 1} done" in app_server.log.read_text(encoding="utf-8")
    assert not state_file.exists(), "a completed run removes its training state"
