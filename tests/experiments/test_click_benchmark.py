"""The click benchmark: corrective-click loop, summary arithmetic, and scripts/bench_clicks.py end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dry_run  # tests/ is on sys.path (rootdir conftest)

from textseg.experiments.click_benchmark import click_curves, is_monotonic, markdown_table, summarize_clicks
from textseg.networks import TextSwinUNETR

REPO = Path(__file__).resolve().parents[2]


def _click_dominant_network(make_clicks_dominant) -> TextSwinUNETR:
    """A real TextSwinUNETR whose text alone segments nothing and whose positive clicks add a mask around themselves."""
    torch.manual_seed(0)
    net = TextSwinUNETR(
        in_channels=1,
        num_classes=2,
        text_dim=8,
        feature_size=12,
        window_size=4,
        head_channels=8,
        conditioned_stages=(1, 2, 3),
        spatial_prompts=True,
    )
    net.load_state_dict(make_clicks_dominant(net.state_dict()))
    return net.eval()


@pytest.mark.parametrize("mode", ["sliding_window", "zoom"])
def test_corrective_clicks_fill_the_missed_structure(mode, make_clicks_dominant):
    shape = (64, 64, 64)
    big, small = np.zeros(shape, bool), np.zeros(shape, bool)
    big[10:40, 12:44, 20:50] = True
    small[48:58, 46:56, 8:18] = True
    image = torch.rand(1, *shape)
    curves = click_curves(
        _click_dominant_network(make_clicks_dominant),
        image,
        {"big": big, "small": small},
        torch.randn(2, 8),
        (64, 64, 64),
        num_clicks=3,
        mode=mode,
    )
    for name in ("big", "small"):
        dice = [p["dice"] for p in curves[name]]
        assert [p["clicks"] for p in curves[name]] == [0, 1, 2, 3]
        assert dice[0] == 0.0, "text alone segments nothing with this network"
        assert dice[1] > 0.0, f"{name}: the first click (positive, in the missed structure) adds a mask on it"
        assert all(b >= a for a, b in zip(dice[1:], dice[2:])), f"{name}: {dice}"
        assert curves[name][-1]["positive"] + curves[name][-1]["negative"] == 3
    assert curves["big"][3]["dice"] > curves["big"][1]["dice"], "more clicks cover more of a large structure"
    with pytest.raises(ValueError, match="unknown mode"):
        click_curves(_click_dominant_network(make_clicks_dominant), image, {"big": big}, torch.randn(1, 8), (64, 64, 64), mode="bogus")


def test_summary_monotonic_flag_and_table():
    rows = [
        {"mode": "sliding_window", "case": c, "structure": s, "clicks": k, "dice": d}
        for c, s, k, d in [
            ("a", "liver", 0, 0.5),
            ("a", "spleen", 0, 0.3),
            ("a", "liver", 1, 0.6),
            ("a", "spleen", 1, 0.4),
            ("a", "liver", 2, 0.7),
            ("a", "spleen", 2, float("nan")),
            ("a", "liver", 3, 0.65),
            ("a", "spleen", 3, 0.8),
        ]
    ]
    summary = summarize_clicks(rows)
    cell = {s["clicks"]: s for s in summary}
    assert cell[1]["mean"] == pytest.approx(0.5) and cell[1]["std"] == pytest.approx(0.1)
    assert cell[2]["mean"] == pytest.approx(0.7) and cell[2]["n"] == 1  # NaN skipped
    assert is_monotonic(summary, "sliding_window"), "means 0.5 -> 0.7 -> 0.725 over clicks 1..3"
    dip = [dict(r, dice=0.5) if (r["structure"], r["clicks"]) == ("liver", 3) else r for r in rows]  # click 3: 0.65 < 0.7
    assert not is_monotonic(summarize_clicks(dip), "sliding_window")
    text_only_dip = [dict(r, dice=0.9) if r["clicks"] == 0 else r for r in rows]
    assert is_monotonic(summarize_clicks(text_only_dip), "sliding_window"), "the goal counts from 1 click"
    table = markdown_table(summary)
    assert "| 0 (text only) | 0.400 ± 0.100 |" in table and "| 2 | 0.700 ± 0.000 |" in table


@pytest.mark.slow
def test_click_benchmark_script_end_to_end(trained_interactive_bundle, tmp_path, capsys):
    """Tiny setting: one small phantom, 2 clicks, both modes, the 2-iteration interactive checkpoint; writes the
    table, JSON and curve and prints the verdict."""
    spec = importlib.util.spec_from_file_location("bench_clicks", REPO / "scripts" / "bench_clicks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "out"
    status = module.main(
        [
            "--checkpoint",
            str(trained_interactive_bundle / "model_interactive.pt"),
            "--no-train",
            "--seeds",
            "1001",
            "--clicks",
            "2",
            "--shape",
            "64",
            "56",
            "72",
            "--spacing",
            "5",
            "--work-dir",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "goal (sliding_window: mean Dice rises at every click 1 -> 2)" in printed and "goal (zoom:" in printed
    result = json.loads((out / "click_benchmark.json").read_text(encoding="utf-8"))
    assert {r["mode"] for r in result["rows"]} == {"sliding_window", "zoom"}
    assert {r["clicks"] for r in result["rows"]} == {0, 1, 2}
    structures = {r["structure"] for r in result["rows"]}
    assert {"liver", "kidney_left", "spleen"} <= structures
    assert all(0.0 <= r["dice"] <= 1.0 for r in result["rows"])
    assert (out / "click_benchmark.png").stat().st_size > 1000
    assert "| 0 (text only) |" in (out / "click_benchmark.md").read_text(encoding="utf-8")
    assert set(result["monotonic"]) == {"sliding_window", "zoom"}


def test_click_benchmark_script_refuses_to_run_without_a_model(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_clicks", REPO / "scripts" / "bench_clicks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--checkpoint", str(tmp_path / "missing.pt"), "--no-train", "--out", str(tmp_path / "out")]) == 2
    assert "no checkpoint" in capsys.readouterr().out


def test_make_robustness_runs_the_rotation_table_and_the_click_curves():
    """The robustness benchmarks' one command: ``make robustness`` = bench_rotation.py then bench_clicks.py, args passed."""
    dry = make_dry_run("robustness", "ROTATION_ARGS=--no-real-ct", "CLICKS_ARGS=--clicks 3")
    rotation = next(line for line in dry.splitlines() if "scripts/bench_rotation.py" in line)
    clicks = next(line for line in dry.splitlines() if "scripts/bench_clicks.py" in line)
    assert rotation.endswith("--no-real-ct") and clicks.endswith("--clicks 3")
    assert dry.index("bench_rotation.py") < dry.index("bench_clicks.py")
