"""Active learning in the app against a real MONAI Label server: background scoring, every strategy, the
default-strategy flag, patches on the image grid, bad strategy names."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request

import nibabel as nib
import numpy as np
import pytest

from textseg.active_learning import STRATEGIES

from .conftest import APP_DIR, PHANTOM_SHAPE, PHANTOM_SPACING

pytestmark = pytest.mark.slow

RECORDS = ".textseg_active_learning"
TINY_PIXDIM = 4.0  # tiny.json
PATCH = 16


@pytest.fixture(scope="module")
def al_studies(tmp_path_factory):
    from textseg.phantom import make_phantom

    studies, refs = tmp_path_factory.mktemp("al-studies"), tmp_path_factory.mktemp("al-refs")
    for seed in (31, 32):
        make_phantom(seed, shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING).save(studies / f"case_{seed}.nii.gz", refs / f"case_{seed}.nii.gz")
    return studies


@pytest.fixture(scope="module")
def al_server(start_app_server, al_studies, trained_bundle, tmp_path_factory):
    """A server whose default strategy is power_entropy, with 2 MC-dropout samples and 16-voxel patches."""
    work = tmp_path_factory.mktemp("al-server")
    checkpoint = work / "model_tiny.pt"
    shutil.copy2(trained_bundle / "model_tiny.pt", checkpoint)
    with start_app_server(
        al_studies,
        work,
        background_scoring=True,
        models="text_prompt",
        checkpoint=str(checkpoint),
        active_learning_strategy="power_entropy",
        mc_dropout_samples="2",
        active_learning_patch_size=str(PATCH),
        active_learning_rounds="4",
    ) as server:
        yield server


@pytest.fixture(scope="module")
def al_client(al_server, tmp_path_factory):
    from monailabel.client import MONAILabelClient

    return MONAILabelClient(al_server.url, tmpdir=str(tmp_path_factory.mktemp("al-client")))


def _post(url: str, body: dict | None = None) -> tuple[int, dict | str]:
    req = urllib.request.Request(url, data=json.dumps(body or {}).encode(), method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.status, json.loads(r.read().decode())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_info_lists_every_strategy_with_the_configured_default_first(al_client):
    info = al_client.info()
    strategies = info["strategies"]
    assert list(strategies)[0] == "power_entropy"
    assert set(strategies) == set(STRATEGIES)
    assert strategies["power_entropy"]["default"] is True and strategies["clasp_pe"]["default"] is False
    assert "textseg_uncertainty" in info["scoring"]


def _wait_background_scoring(url: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/scoring/?check_if_running=true", timeout=30)
        except urllib.error.HTTPError as e:
            if e.code == 404:  # no scoring task running
                return
            raise
        time.sleep(1)
    raise TimeoutError("background scoring did not finish")


def test_background_scoring_stores_one_record_per_unlabelled_image(al_server, al_studies):
    # MONAI Label starts the scoring task in a background process when the app is up
    _wait_background_scoring(al_server.url)
    ids = sorted(p.name[: -len(".nii.gz")] for p in al_studies.glob("case_*.nii.gz"))
    for image_id in ids:
        record = json.loads((al_studies / RECORDS / f"{image_id}.json").read_text(encoding="utf-8"))
        assert record["image_shape"] == list(PHANTOM_SHAPE)
        assert {"entropy", "mutual_information", "class:liver", "class:kidney_left"} <= set(record["grids"])
        assert record["patch_size"] == [PATCH] * 3
        assert np.isfinite(np.asarray(record["grids"]["entropy"])).all()
    # current records are not recomputed; forced ones are
    status, result = _post(f"{al_server.url}/scoring/textseg_uncertainty?run_sync=true")
    assert status == 200, result
    assert sorted(result["skipped"]) == ids and result["scored"] == []
    status, result = _post(f"{al_server.url}/scoring/textseg_uncertainty?run_sync=true", {"force": True, "images": ["case_32"]})
    assert status == 200, result
    assert result["scored"] == ["case_32"]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_answers_an_unlabelled_image_and_a_patch_on_its_grid(al_client, al_studies, strategy):
    unlabelled = [k for k, v in al_client.datastore()["objects"].items() if not v["labels"].get("final")]
    sample = al_client.next_sample(strategy, {})
    assert sample["id"] in unlabelled and sample["chosen_by"] == strategy
    (x0, y0, z0), (x1, y1, z1) = sample["patch_bbox"]
    assert 0 <= x0 < x1 <= PHANTOM_SHAPE[0] and 0 <= y0 < y1 <= PHANTOM_SHAPE[1] and 0 <= z0 < z1 <= PHANTOM_SHAPE[2]
    # 16 voxels of 4 mm on the network's grid are 64 mm: about 64 / spacing voxels of the stored image
    size = np.subtract(sample["patch_bbox"][1], sample["patch_bbox"][0])
    expected = np.array([PATCH * TINY_PIXDIM / s for s in PHANTOM_SPACING])
    assert np.all(np.abs(size - expected) <= 2.0), (size, expected)
    world = np.asarray(sample["patch_bbox_world"])
    assert np.allclose(world[1] - world[0], size * np.asarray(PHANTOM_SPACING), atol=1e-3)
    if "class" in sample:
        assert strategy in ("clasp_pe", "random_label")
        if strategy == "clasp_pe":
            assert sample["measure"] == f"class:{sample['class']}"


def test_clasp_pe_history_serves_classes_and_anneals_beta(al_client):
    answers = [al_client.next_sample("clasp_pe", {}) for _ in range(3)]
    indices = [a["query_index"] for a in answers]
    assert indices == list(range(indices[0], indices[0] + 3))
    betas = [a["beta"] for a in answers]
    assert all(a <= b for a, b in zip(betas, betas[1:])) and betas[-1] > betas[0]


def test_default_strategy_and_labelled_images_are_skipped(al_client, al_studies, tmp_path):
    assert al_client.next_sample("default", {})["chosen_by"] == "power_entropy"
    image = nib.load(str(al_studies / "case_31.nii.gz"))
    label = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.int16), image.affine), str(label))
    al_client.save_label("case_31", str(label), "final")
    for strategy in ("entropy", "random", "clasp_pe"):
        for _ in range(3):
            assert al_client.next_sample(strategy, {})["id"] != "case_31"


def test_unknown_strategy_answers_404_naming_the_served_ones(al_server):
    status, detail = _post(f"{al_server.url}/activelearning/most_fun")
    assert status == 404
    assert "most_fun" in detail and "clasp_pe" in detail


def test_bad_active_learning_conf_stops_the_app_with_a_message():
    import importlib.util
    import sys

    name = "textseg_app_settings_under_test"
    spec = importlib.util.spec_from_file_location(name, APP_DIR / "lib" / "settings.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    with pytest.raises(ValueError, match="active_learning_strategy.*unknown active-learning strategy"):
        module.AppSettings.from_conf(APP_DIR, {"active_learning_strategy": "best"})
    with pytest.raises(ValueError, match="mc_dropout_samples"):
        module.AppSettings.from_conf(APP_DIR, {"mc_dropout_samples": "1"})
    with pytest.raises(ValueError, match="active_learning_patch_size must be a number"):
        module.AppSettings.from_conf(APP_DIR, {"active_learning_patch_size": "big"})
