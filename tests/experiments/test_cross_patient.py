"""The cross-patient study: its row choice, its table, and the shipped model measured on both real patients."""

import math
import shutil

import pytest
from conftest import BUNDLE_DIR, REPO_ROOT, relative_weight_change

from textseg.experiments.cross_patient import KEY_STRUCTURES, run_cross_patient, table_markdown, train_real_model

SHARED_TCIA = REPO_ROOT.parent / "shared" / "data" / "ct_tcia"


def test_unknown_rows_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        run_cross_patient(tmp_path, models=["everyone"])


def test_table_marks_what_the_data_or_the_model_do_not_label():
    rows = [
        {
            "trained_on": "both",
            "evaluated_on": ["a", "b"],
            "kind": "held-out slab",
            "scores": {"liver": {"dice": 0.5, "nsd": 0.25, "cases": 2}, "spleen": {"dice": float("nan"), "nsd": 0.0, "cases": 1}},
        }
    ]
    table = table_markdown(rows)
    line = table.splitlines()[2]
    assert line.startswith("| both | a, b | held-out slab | 0.500 / 0.250 | - |")
    assert line.count(" - ") == len(KEY_STRUCTURES) - 1  # spleen (NaN) and the unlabelled structures


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_TCIA.is_dir(), reason="needs ../shared/data/ct_tcia (the second patient)")
def test_the_shipped_model_is_measured_on_training_data_and_held_out_slabs(tmp_path):
    rows = run_cross_patient(tmp_path, models=["both"], bundle_dir=BUNDLE_DIR)
    assert [r["kind"] for r in rows] == ["training data", "held-out slab"]  # no other patient is left for "both"
    for row in rows:
        assert row["evaluated_on"] == ["totalseg_example", "ccth_a01"]
        assert "liver" in row["scores"]
        assert all(0.0 <= s["dice"] <= 1.0 for s in row["scores"].values() if not math.isnan(s["dice"]))
    assert (tmp_path / "cross_patient.md").read_text(encoding="utf-8").count("| both |") == 2


@pytest.mark.slow
def test_a_killed_two_stage_training_does_not_run_stage_1_again(tmp_path):
    """As after a kill in stage 2: ``stage1.pt`` is there (here the shipped weights), so stage 1 is skipped; stage 2 starts from
    it, writes model.pt and deletes stage1.pt. Had stage 1 run (one epoch from scratch), the weights would be far from the shipped."""
    shipped = BUNDLE_DIR / "models" / "model.pt"
    shutil.copy(shipped, tmp_path / "stage1.pt")
    small = {"repeats": 1, "crops_per_image": 1, "num_workers": 0}
    checkpoint = train_real_model(["totalseg_example"], tmp_path, 1, BUNDLE_DIR, finetune=True, finetune_epochs=1, **small)
    assert checkpoint == tmp_path / "model.pt" and checkpoint.is_file()
    assert not (tmp_path / "stage1.pt").exists() and not list(tmp_path.glob("*_training_state.pt"))
    change = relative_weight_change(shipped, checkpoint)
    assert 0 < change < 0.05, f"relative change {change:.3f}: stage 2 did not start from stage1.pt, or stage 1 ran again"
