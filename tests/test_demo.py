"""The phantom demo end to end on a tiny budget: phantom -> train -> segment -> Dice, overlay and report."""

import json
import shutil

import nibabel as nib
import pytest
from conftest import BUNDLE_DIR

from textseg.checkpoints import checkpoint_matches
from textseg.demo import TINY_CONFIGS, run_phantom_demo

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end_and_reuses_its_checkpoint(tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE_DIR, bundle, ignore=shutil.ignore_patterns("models", "eval"))
    kwargs = dict(output_dir=tmp_path / "out", bundle_dir=bundle, data_dir=tmp_path / "data", epochs=1, num_train=5, num_test=1)
    report = run_phantom_demo(**kwargs)
    checkpoint = bundle / "models" / "model_tiny.pt"
    assert checkpoint.exists() and checkpoint_matches(checkpoint, bundle, TINY_CONFIGS)
    (case,) = report["cases"]
    assert set(case["dice"]) == {"liver", "kidney_left", "kidney_right"}
    assert all(0.0 <= d <= 1.0 for d in case["dice"].values())
    assert 0.0 <= report["mean_dice"] <= 1.0
    saved = json.loads((tmp_path / "out" / "demo_report.json").read_text(encoding="utf-8"))
    assert saved["mean_dice"] == pytest.approx(report["mean_dice"])
    image = nib.load(case["image"])
    assert nib.load(case["label_map"]).shape == image.shape
    assert (tmp_path / "out" / "phantom_005_overlay.png").stat().st_size > 10_000

    mtime = checkpoint.stat().st_mtime_ns
    capsys.readouterr()
    run_phantom_demo(image=case["image"], prompt="spleen", **kwargs)
    assert "reusing" in capsys.readouterr().out and checkpoint.stat().st_mtime_ns == mtime

    # a checkpoint of another network (other parameter names/shapes) is not reused, even with the right embeddings
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    renamed = {("film." + k[len("fusion.") :] if k.startswith("fusion.") else k): v for k, v in state.items()}
    torch.save(renamed, tmp_path / "old_layout.pt")
    assert not checkpoint_matches(tmp_path / "old_layout.pt", bundle, TINY_CONFIGS)
    state["class_embeddings"] = state["class_embeddings"] + 0.1
    torch.save(state, tmp_path / "other_embeddings.pt")
    assert not checkpoint_matches(tmp_path / "other_embeddings.pt", bundle, TINY_CONFIGS)
