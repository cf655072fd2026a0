import json
import math

import pytest
import torch
from monai.metrics import DiceMetric

from textseg.metrics import HausdorffDistance95Metric, NormalizedSurfaceDiceMetric, PerStructureReport, VolumeSimilarityMetric


def _cube(size=20, start=5, width=8, shift=0):
    mask = torch.zeros(size, size, size)
    mask[start + shift : start + shift + width, start : start + width, start : start + width] = 1
    return mask


def _pair(shift):
    """Prediction = reference cube shifted by ``shift`` voxels along the first axis; [1, 1, S, S, S] each."""
    return _cube(shift=shift)[None, None], _cube()[None, None]


@pytest.mark.parametrize("spacing,shift,expected", [(1.0, 0, 0.0), (1.0, 2, 2.0), (2.5, 2, 5.0), ((3.0, 1.0, 1.0), 1, 3.0)])
def test_hd95_is_in_millimetres(spacing, shift, expected):
    pred, ref = _pair(shift)
    value = HausdorffDistance95Metric(spacing=spacing)(pred, ref)
    assert value.item() == pytest.approx(expected, abs=1e-4)


def test_nsd_counts_boundary_within_tolerance():
    pred, ref = _pair(2)
    assert NormalizedSurfaceDiceMetric(tolerance=2.0, spacing=1.0)(pred, ref).item() == pytest.approx(1.0)
    assert NormalizedSurfaceDiceMetric(tolerance=2.0, spacing=2.0)(pred, ref).item() < 1.0
    assert NormalizedSurfaceDiceMetric(tolerance=0.5, spacing=1.0)(pred, ref).item() < 0.9


def test_volume_similarity():
    ref = _cube()[None, None]
    half = ref.clone()
    half[..., :9] = 0  # cuts the cube's width 8 to 4 along the last axis: half the volume
    metric = VolumeSimilarityMetric()
    assert metric(ref, ref).item() == pytest.approx(1.0)
    assert metric(half, ref).item() == pytest.approx(1 - 256 / 768)
    assert metric(_pair(3)[0], ref).item() == pytest.approx(1.0), "volume similarity ignores position"
    both_empty = metric(torch.zeros_like(ref), torch.zeros_like(ref))
    assert math.isnan(both_empty.item())
    with pytest.raises(ValueError, match="same shape"):
        metric(ref, ref[..., :10])


def test_empty_channels_drop_out_of_every_metric():
    """A channel empty in prediction and reference (unannotated, masked) is NaN, not a perfect or zero score."""
    pred = torch.stack([_cube(), torch.zeros(20, 20, 20)])[None]
    ref = pred.clone()
    for metric in (
        HausdorffDistance95Metric(spacing=1.0),
        NormalizedSurfaceDiceMetric(spacing=1.0),
        VolumeSimilarityMetric(),
        DiceMetric(include_background=True, ignore_empty=True),
    ):
        values = metric(pred, ref)
        assert not math.isnan(values[0, 0].item()) and math.isnan(values[0, 1].item()), type(metric).__name__


def test_per_structure_report_writes_json_and_csv(tmp_path):
    details = {
        "dice": torch.tensor([[0.8, float("nan")], [0.6, 0.5]]),
        "hd95": torch.tensor([[2.0, float("nan")], [4.0, float("inf")]]),
    }
    handler = PerStructureReport(["dice", "hd95"], ["liver", "spleen"], tmp_path)

    class State:
        metric_details = details

    class Engine:
        state = State()

    handler(Engine())
    report = json.loads((tmp_path / "per_structure.json").read_text(encoding="utf-8"))
    assert report["liver"]["dice"] == {"mean": pytest.approx(0.7), "std": pytest.approx(0.1), "cases": 2}
    assert report["spleen"]["dice"]["cases"] == 1 and report["spleen"]["hd95"]["cases"] == 0
    assert (tmp_path / "per_structure.csv").read_text(encoding="utf-8").splitlines()[1] == "liver,0.7000,2,3.0000,2"
    with pytest.raises(KeyError, match="'nsd' saved no details"):
        PerStructureReport(["nsd"], ["liver", "spleen"], tmp_path)(Engine())
