"""Label competition: the three masks on a hand-made probability volume, and the shipped model on the real example CT."""

import json

import numpy as np
import pytest
from conftest import BUNDLE_DIR

from textseg.experiments.label_competition import METHODS, competing_masks, run_label_competition, run_threshold_sweep, threshold_dice
from textseg.transforms import IGNORE_CHANNEL


def test_competition_only_removes_voxels():
    # 3 classes, 4 voxels: class 0 is asked; class 1 (asked) wins voxel 1, class 2 (not asked) wins voxel 2
    probabilities = np.array(
        [
            [0.9, 0.6, 0.7, 0.2],
            [0.1, 0.8, 0.1, 0.1],
            [0.0, 0.1, 0.9, 0.1],
        ]
    )
    masks = competing_masks(probabilities, asked=[0, 1])
    assert masks["independent"][0].tolist() == [True, True, True, False]
    assert masks["asked"][0].tolist() == [True, False, True, False]
    assert masks["all_classes"][0].tolist() == [True, False, False, False]
    assert masks["asked"][1].tolist() == masks["all_classes"][1].tolist() == [False, True, False, False]


@pytest.mark.parametrize("asked", [[], [0, 0], [3]])
def test_asked_channels_are_checked(asked):
    with pytest.raises(ValueError, match="distinct indices"):
        competing_masks(np.zeros((3, 4)), asked)


def test_unknown_structures_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not classes of the model"):
        run_label_competition(tmp_path, structures=["liver", "brain_stem_of_a_fish"], bundle_dir=BUNDLE_DIR)
    assert not (tmp_path / "label_competition.json").exists()


@pytest.mark.slow
def test_the_shipped_model_on_the_example_ct(tmp_path):
    structures = ["liver", "spleen", "kidney_right", "urinary_bladder"]
    result = run_label_competition(tmp_path, structures=structures, bundle_dir=BUNDLE_DIR)
    (case,) = result["cases"]
    assert case["case"] == "example_ct.nii.gz"
    assert set(case["dice"]) == set(METHODS)
    for name in structures:
        voxels = [case["voxels"][m][name] for m in METHODS]
        assert voxels[0] >= voxels[1] >= voxels[2] and voxels[1] > 0, (name, voxels)
        assert all(0.0 <= case["dice"][m][name] <= 1.0 for m in METHODS)
    assert result["mean"]["asked"]["liver"] > 0.6  # the shipped model finds the liver of its training patient
    saved = json.loads((tmp_path / "label_competition.json").read_text(encoding="utf-8"))
    assert saved["mean"] == result["mean"]
    table = (tmp_path / "label_competition.md").read_text(encoding="utf-8")
    assert all(f"| {m} |" in table for m in METHODS)


def test_threshold_dice_scores_labelled_structures_only():
    # channel 0: two voxels inside; channel 1: annotated but absent; channel 2: not annotated
    label = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [IGNORE_CHANNEL] * 4])
    probabilities = np.array([[0.9, 0.6, 0.7, 0.2], [0.8, 0.0, 0.0, 0.0], [0.9, 0.9, 0.9, 0.9]])
    dice = threshold_dice(probabilities, label, [0.5, 0.8])
    assert set(dice) == {0.5, 0.8} and all(set(v) == {0} for v in dice.values())
    assert dice[0.5][0] == pytest.approx(2 * 2 / (3 + 2))  # voxels 0, 1, 2 above 0.5; 0 and 1 inside
    assert dice[0.8][0] == pytest.approx(2 * 1 / (1 + 2))
    with pytest.raises(ValueError, match="thresholds must be probabilities"):
        threshold_dice(probabilities, label, [0.5, 1.0])
    with pytest.raises(ValueError, match="differ in shape"):
        threshold_dice(probabilities[:2], label, [0.5])


@pytest.mark.slow
def test_threshold_sweep_of_the_shipped_model(tmp_path):
    result = run_threshold_sweep(tmp_path, patients=["totalseg_example"], thresholds=[0.5, 0.95], bundle_dir=BUNDLE_DIR)
    (case,) = result["cases"]
    at_half, at_95 = case["dice"]["0.5"], case["dice"]["0.95"]
    assert len(at_half) == 61 and set(at_half) == set(at_95)  # every structure the example CT labels
    assert at_half["liver"] > 0.6
    assert sum(at_95.values()) < sum(at_half.values()), "a threshold near 1 loses most structures"
    table = (tmp_path / "threshold_sweep.md").read_text(encoding="utf-8")
    assert "| example_ct.nii.gz | 0.95 |" in table and "(61) |" in table
    assert json.loads((tmp_path / "threshold_sweep.json").read_text(encoding="utf-8"))["cases"] == result["cases"]
