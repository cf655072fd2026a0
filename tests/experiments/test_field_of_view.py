"""The field-of-view study: bands checked before any model runs, and the shipped model measured on two bands of
the real example CT."""

import json
import math

import pytest
from conftest import BUNDLE_DIR

from textseg.experiments.field_of_view import run_field_of_view


@pytest.mark.parametrize("bands", [[(0.5, 0.5)], [(0.2, 1.2)], []])
def test_bands_outside_the_volume_are_refused(tmp_path, bands):
    with pytest.raises(ValueError, match="each band is"):
        run_field_of_view(tmp_path, bands=bands, bundle_dir=BUNDLE_DIR)
    assert not (tmp_path / "field_of_view.json").exists()


@pytest.mark.slow
def test_the_shipped_model_is_measured_on_each_band(tmp_path):
    rows = run_field_of_view(tmp_path, bands=[(0.9, 1.0), (0.0, 0.2)], bundle_dir=BUNDLE_DIR)
    assert [r["kind"] for r in rows] == ["slices 90%-100%", "slices 0%-20%"]
    top, bottom = (r["scores"] for r in rows)
    # only what lies in the band is scored: the spleen is in the top band, the bladder in the bottom one
    assert "spleen" in top and "spleen" not in bottom
    assert "urinary_bladder" in bottom and "urinary_bladder" not in top
    assert all(0.0 <= s["dice"] <= 1.0 for r in rows for s in r["scores"].values() if not math.isnan(s["dice"]))
    saved = json.loads((tmp_path / "field_of_view.json").read_text(encoding="utf-8"))
    assert [r["band"] for r in saved] == [[0.9, 1.0], [0.0, 0.2]]
    assert (tmp_path / "field_of_view.md").read_text(encoding="utf-8").count("| model.pt |") == 2


def test_overlays_reach_the_evaluated_network(tmp_path):
    """With head_linear.json (the linear head) the shipped model (the mlp head) is refused, not evaluated wrongly."""
    with pytest.raises(RuntimeError) as raised:
        run_field_of_view(tmp_path, bands=[(0.9, 1.0)], bundle_dir=BUNDLE_DIR, overlays=["head_linear.json"])
    messages, error = [], raised.value
    while error is not None:  # MONAI wraps the loading error in its config-expression error
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    assert any('Missing key(s) in state_dict: "linear_head"' in m for m in messages), messages
    assert not (tmp_path / "field_of_view.json").exists()
