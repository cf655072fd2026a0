import json
import math

import pytest
from conftest import BUNDLE_DIR

from textseg.experiments.ablation import ablation_markdown, run_fusion_ablation


@pytest.mark.slow
def test_ablation_trains_and_scores_every_fusion(tmp_path):
    results = run_fusion_ablation(tmp_path / "out", data_dir=tmp_path / "data", num_train=3, num_test=1, epochs=1, bundle_dir=BUNDLE_DIR)
    assert set(results["fusions"]) == {"film", "concat", "cross_attention"}
    parameters = {f: r["parameters"] for f, r in results["fusions"].items()}
    assert len(set(parameters.values())) == 3, f"the fusions must be different networks: {parameters}"
    for fusion, r in results["fusions"].items():
        assert (tmp_path / "out" / fusion / "evaluation" / "per_structure.csv").exists()
        dice = r["mean"]["val_mean_dice"]
        assert math.isnan(dice) or 0.0 <= dice <= 1.0
        assert len(r["structures"]) == 10
    checkpoints = sorted(p.name for p in (tmp_path / "out").rglob("*.pt"))
    assert checkpoints == ["model_concat.pt", "model_cross_attention.pt", "model_film.pt"]
    import torch

    # each run trained the network of its fusion: the saved parameters differ in their names
    keys = {f: frozenset(torch.load(tmp_path / "out" / f / f"model_{f}.pt", map_location="cpu", weights_only=True)) for f in parameters}
    assert len(set(keys.values())) == 3
    assert json.loads((tmp_path / "out" / "ablation.json").read_text(encoding="utf-8")) == json.loads(json.dumps(results))
    table = (tmp_path / "out" / "ablation.md").read_text(encoding="utf-8")
    assert table == ablation_markdown(results) and "| cross_attention |" in table
    assert (tmp_path / "out" / "ablation.png").stat().st_size > 10_000


def test_ablation_refuses_unknown_fusion(tmp_path):
    with pytest.raises(ValueError, match="unknown fusion"):
        run_fusion_ablation(tmp_path, fusions=["sum"], data_dir=tmp_path / "data")


def test_ablation_markdown_names_settings_and_missing_values():
    structures = {"liver": {"val_mean_dice": 0.9, "val_nsd": 0.8, "val_hd95": float("nan"), "val_volume_similarity": 0.95}}
    results = {
        "settings": {
            "num_train": 4,
            "num_test": 1,
            "epochs": 2,
            "seed": 3,
            "overlays": ["tiny.json"],
            "overrides": {"network_def#depths": [1, 1, 1, 1]},
        },
        "fusions": {"film": {"structures": structures, "mean": structures["liver"], "parameters": 1234, "train_seconds": 5.0}},
    }
    table = ablation_markdown(results)
    assert "overrides network_def#depths=[1, 1, 1, 1]" in table and "seed 3" in table
    assert "| film | 0.900 | 0.800 | n/a | 0.950 | 1,234 | 5 |" in table
    assert "| liver | 0.900 |" in table
