"""The app serves a bundle downloaded as a release zip (``--conf bundle <extracted folder>``), and refuses a broken one."""

from __future__ import annotations

import json
import zipfile

import nibabel as nib
import numpy as np
import pytest
from conftest import BUNDLE_DIR, REPO_ROOT

from textseg.bundle_zip import BUNDLE_NAME, export_bundle

EXAMPLE_CT = REPO_ROOT / "examples" / "ct" / "example_ct.nii.gz"


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory):
    """The release zip extracted where a user's ``monai.bundle download`` puts it, and a studies folder holding a 40-slice
    slab of the shipped real CT through the kidneys and spleen."""
    root = tmp_path_factory.mktemp("downloaded")
    with zipfile.ZipFile(export_bundle(root / "dist", BUNDLE_DIR)) as archive:
        archive.extractall(root / "bundles")
    studies = root / "studies"
    studies.mkdir()
    image = nib.load(str(EXAMPLE_CT))
    z0 = image.shape[2] // 2 + 5
    nib.save(image.slicer[:, :, z0 : z0 + 40], str(studies / "slab_ct.nii.gz"))
    return {"bundle": root / "bundles" / BUNDLE_NAME, "studies": studies}


@pytest.mark.slow
def test_the_app_serves_a_downloaded_bundle(start_app_server, downloaded, tmp_path):
    from monailabel.client import MONAILabelClient

    conf = {"bundle": str(downloaded["bundle"]), "bundle_overlay": "real_ct", "models": "text_prompt,all_structures"}
    with start_app_server(downloaded["studies"], tmp_path, **conf) as server:
        client = MONAILabelClient(server.url, tmpdir=str(tmp_path / "client"))
        info = client.info()
        assert set(info["models"]) == {"text_prompt", "all_structures"}
        assert len(info["models"]["text_prompt"]["labels"]) == 63  # the released model's classes
        path, params = client.infer("text_prompt", "slab_ct", {"prompt": "left kidney and spleen"})
        assert params["label_names"] == {"kidney_left": 3, "spleen": 1}
        out, source = nib.load(path), nib.load(str(downloaded["studies"] / "slab_ct.nii.gz"))
        assert out.shape == source.shape and np.allclose(out.affine, source.affine, atol=1e-4)
        assert set(np.unique(np.asarray(out.dataobj)).tolist()) <= {0, 1, 3} and (np.asarray(out.dataobj) > 0).any()
        path, params = client.infer("all_structures", "slab_ct", {})
        assert len(params["targets"]) == 63
        assert set(np.unique(np.asarray(nib.load(path).dataobj)).tolist()) - {0} <= set(params["label_names"].values())


@pytest.mark.slow
def test_the_app_refuses_an_older_or_damaged_bundle(start_app_server, downloaded, tmp_path):
    broken = tmp_path / BUNDLE_NAME
    broken.mkdir()
    for item in downloaded["bundle"].iterdir():
        (broken / item.name).symlink_to(item)
    (broken / "configs").unlink()
    (broken / "configs").mkdir()
    for config in (downloaded["bundle"] / "configs").iterdir():
        (broken / "configs" / config.name).write_bytes(config.read_bytes())
    metadata = json.loads((broken / "configs" / "metadata.json").read_text(encoding="utf-8"))
    metadata["version"] = "0.5.0"
    (broken / "configs" / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    with pytest.raises(RuntimeError, match="server exited"), start_app_server(downloaded["studies"], tmp_path / "old", bundle=str(broken)):
        pass
    assert "version 0.5.0; this textseg needs 0.6.0 or later" in (tmp_path / "old" / "server.log").read_text(encoding="utf-8")
