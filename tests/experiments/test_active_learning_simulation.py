"""Simulation harness: a tiny end-to-end run, crash and resume, metrics, bad settings; scoring API."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import textseg.experiments.active_learning_simulation as simulation
from textseg.active_learning import enable_mc_dropout, predict_probs, score_image
from textseg.experiments.active_learning_simulation import SimulationConfig, aubc, foreground_efficiency, report_finished, run_simulation

TINY_NET = {
    "feature_size": 12,
    "window_size": 4,
    "head_channels": 8,
    "conditioned_stages": [2, 3],
    "depths": [1, 1, 1, 1],
    "drop_rate": 0.1,
}


def tiny_config(out, **kw) -> SimulationConfig:
    settings = dict(
        output_dir=str(out),
        strategies=("random", "clasp_pe"),
        seeds=(0,),
        pool_size=2,
        test_size=1,
        class_names=("liver", "kidney_left", "gallbladder"),
        start_budget=4,
        budget=2,
        rounds=2,
        start_iterations=2,
        iterations=1,
        text_encoder="random",
        network=dict(TINY_NET),
        mc_samples=2,
    )
    settings.update(kw)
    return SimulationConfig(**settings)


def _state(out, strategy="clasp_pe", seed=0):
    return json.loads((out / f"seed_{seed}" / strategy / "state.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_interrupted_simulation_resumes_with_its_labels(tmp_path, monkeypatch):
    """A crash while training round 2 keeps the round-2 patches; the rerun trains only what is missing and
    ends with the same labels, then writes the curves, AUBC, plot."""
    out = tmp_path / "run"
    config = tiny_config(out)
    real_train = simulation.train_network
    calls = []

    def crashing(network, pool, masks, embeddings, iterations, learning_rate, seed):
        calls.append(seed)
        if seed == 1000 * 0 + 2:  # round 2 of seed 0, first strategy that gets there
            raise KeyboardInterrupt("simulated crash mid-round")
        return real_train(network, pool, masks, embeddings, iterations, learning_rate, seed)

    monkeypatch.setattr(simulation, "train_network", crashing)
    with pytest.raises(KeyboardInterrupt):
        run_simulation(config, progress=False, log=None)
    state = _state(out, "random")
    assert [r["phase"] for r in state["rounds"]] == ["done", "queried"]
    saved_patches = [r["patches"] for r in state["rounds"]]
    assert len(saved_patches[1]) == config.budget
    start_model = out / "seed_0" / "start_model.pt"
    start_mtime = start_model.stat().st_mtime_ns

    calls.clear()
    monkeypatch.setattr(simulation, "train_network", lambda *a, **k: (calls.append(a[-1]), real_train(*a, **k))[1])
    results = run_simulation(config, progress=False, log=None)
    # nothing labelled before the crash was lost or re-drawn; the start and round 1 were not retrained
    state = _state(out, "random")
    assert [r["patches"] for r in state["rounds"]] == saved_patches
    assert [r["phase"] for r in state["rounds"]] == ["done", "done"]
    assert start_model.stat().st_mtime_ns == start_mtime
    assert calls == [2, 1, 2]  # random: round 2 only; clasp_pe: rounds 1 and 2
    # results: curves grow by exactly budget x patch voxels per round, metrics and plot are written
    patch_voxels = 16**3
    for strategy in ("random", "clasp_pe"):
        curve = results["runs"][strategy]["0"]["curve"]
        assert [p["annotated_voxels"] for p in curve] == [patch_voxels * n for n in (4, 6, 8)]
        assert all(0.0 <= p["dice"] <= 1.0 for p in curve)
        run = results["runs"][strategy]["0"]
        assert run["aubc"] == pytest.approx(aubc([p["dice"] for p in curve], [p["annotated_voxels"] for p in curve]))
    summary = results["summary"]
    assert set(summary["strategies"]) == {"random", "clasp_pe"}
    assert "clasp_pe_minus_random" in summary["aubc_margins"]
    assert (out / "learning_curves.png").stat().st_size > 1000
    assert json.loads((out / "results.json").read_text(encoding="utf-8"))["summary"]["strategies"]["clasp_pe"]["aubc"]["n"] == 1
    # a third call finds everything done: no training at all; the report alone gives the same summary
    calls.clear()
    run_simulation(config, progress=False, log=None)
    assert calls == []
    (out / "results.json").unlink()
    reported = report_finished(config, log=None)
    assert json.dumps(reported["summary"], sort_keys=True) == json.dumps(results["summary"], sort_keys=True)


def test_output_folder_of_another_experiment_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "experiment.json").write_text(json.dumps({"experiment_key": "something else"}))
    with pytest.raises(ValueError, match="other settings"):
        run_simulation(tiny_config(out), progress=False, log=None)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"budget": 70, "rounds": 2}, "budget larger than the pool"),
        ({"pool_size": 0}, "pool is empty"),
        ({"strategies": ("random", "qbc")}, "unknown active-learning strategy 'qbc'"),
        ({"image_size": (48, 48, 48)}, "multiples of 32"),
        ({"seeds": ()}, "no seed"),
        ({"rounds": 0}, "rounds must be >= 1"),
    ],
)
def test_bad_settings_fail_before_any_work(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        run_simulation(tiny_config(tmp_path / "x", **change), progress=False, log=None)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "dice,x,expected",
    [
        ([0.4, 0.4, 0.4], None, 0.4),
        ([0.0, 0.5, 1.0], None, 0.5),
        ([0.0, 1.0], [10, 30], 0.5),
        ([0.2, 0.6, 0.6], [0, 1, 3], (0.4 + 2 * 0.6) / 3),
    ],
)
def test_aubc_is_the_normalised_area(dice, x, expected):
    assert aubc(dice, x) == pytest.approx(expected)


@pytest.mark.parametrize("rate", [0.05, 0.3, 1.0])
def test_foreground_efficiency_recovers_the_rate_of_the_curve(rate):
    x = np.array([2000, 4000, 6000, 9000, 15000], dtype=float)
    c, start = 0.9, 0.3
    y = c - (c - start) * np.exp(-rate * (x - x[0]) / 1000.0)
    assert foreground_efficiency(x, y, c, start, x[0]) == pytest.approx(rate, rel=1e-3)


# ------------------------------------------------------------------ scoring API and MC dropout


class _UncertainBox(nn.Module):
    """Stub network: confident everywhere except an undecided box; a dropout layer for MC sampling."""

    in_channels = 1

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm3d(1)
        self.drop = nn.Dropout(0.5)

    def forward(self, x, text_embedding):
        k = text_embedding.shape[-2]
        logits = torch.full((x.shape[0], k, *x.shape[2:]), -12.0)
        logits[:, :, 40:60, 8:28, 20:40] = 0.0
        return logits + 0.0 * self.drop(self.norm(x))


def test_mc_dropout_enables_only_dropout_and_restores_modes():
    net = _UncertainBox()
    net.train()
    with enable_mc_dropout(net):
        assert net.drop.training and not net.norm.training
    assert net.training and net.norm.training and net.drop.training
    with pytest.raises(ValueError, match="drop_rate > 0"):
        with enable_mc_dropout(nn.Sequential(nn.Conv3d(1, 1, 1), nn.Dropout(0.0))):
            pass


@pytest.mark.parametrize("strategy", ["entropy", "clasp_pe", "power_entropy", "bald", "random", "random_label"])
def test_score_image_suggests_the_uncertain_region(strategy):
    net = _UncertainBox()
    image = torch.rand(64, 64, 64)
    result = score_image(
        net,
        image,
        torch.rand(3, 8),
        strategy=strategy,
        patch_size=(16, 16, 16),
        rng=0,
        num_rounds=3,
        mc_samples=None if strategy != "bald" else 2,
    )
    (x0, y0, z0), (x1, y1, z1) = result["patch_bbox"]
    assert (x1 - x0, y1 - y0, z1 - z0) == (16, 16, 16)
    assert set(result) >= {"score", "rank_score", "patch_bbox", "patch_score", "strategy"}
    if strategy == "entropy":  # greedy: the patch lies inside the undecided box
        assert 40 <= x0 and x1 <= 60 and 8 <= y0 and y1 <= 28 and 20 <= z0 and z1 <= 40
    if strategy in ("entropy", "clasp_pe", "power_entropy"):  # power sampling: at least on the box
        assert x0 < 60 and x1 > 40 and y0 < 28 and y1 > 8 and z0 < 40 and z1 > 20
        assert result["patch_score"] > result["score"] > 0
    if strategy == "bald":  # the stub's samples are identical: no epistemic uncertainty anywhere
        assert result["score"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"strategy": "nope"}, "unknown active-learning strategy"),
        ({"image": torch.full((64, 64, 64), float("nan"))}, "NaN"),
        ({"image": torch.rand(2, 64, 64, 64)}, "1 image channel"),
        ({"annotated": np.zeros((8, 8, 8), dtype=bool)}, "annotated mask has shape"),
        ({"annotated": np.ones((64, 64, 64), dtype=bool)}, "exceeds the pool"),
        ({"strategy": "bald", "mc_samples": 0}, "at least 2 MC-dropout samples"),
    ],
)
def test_score_image_bad_input(kwargs, message):
    args = {"network": _UncertainBox(), "image": torch.rand(64, 64, 64), "prompts_embedding": torch.rand(2, 8), "patch_size": (16, 16, 16)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        score_image(**args)


@pytest.mark.slow
def test_predict_probs_with_the_text_network_mc_samples_differ():
    from textseg.experiments.active_learning_simulation import build_network

    emb = torch.rand(3, 386)
    net = build_network(3, emb, dict(TINY_NET, drop_rate=0.3)).eval()
    image = torch.rand(64, 64, 64)
    det = predict_probs(net, image, emb)
    assert det.shape == (1, 4, 64, 64, 64)
    assert torch.allclose(det.sum(1), torch.ones(1, 64, 64, 64), atol=1e-5)
    mc = predict_probs(net, image, emb, mc_samples=2)
    assert mc.shape == (2, 4, 64, 64, 64)
    assert not torch.allclose(mc[0], mc[1])
    assert not net.training and not any(m.training for m in net.modules())  # modes restored after MC sampling
    # sliding window for a grid the network cannot take whole
    odd = predict_probs(net, torch.rand(70, 64, 40), emb)
    assert odd.shape == (1, 4, 70, 64, 40) and not math.isnan(float(odd.sum()))


def test_pool_from_a_datasets_yaml_entry(tiny_phantom):
    """The oracle for a datasets.yaml entry: images resampled onto the simulation grid, labels mapped to the
    prompted classes (here the phantom written as files, like any local dataset copy)."""
    from textseg.experiments.active_learning_simulation import load_dataset_pool

    config = tiny_config("unused", dataset="phantom", dataset_root=str(tiny_phantom), pool_size=2, test_size=1)
    pool, test = load_dataset_pool(config, list(config.class_names))
    assert len(pool) == 2 and len(test) == 1
    for item in pool + test:
        assert item.image.shape == (64, 64, 64) and item.label.shape == (64, 64, 64)
        assert 0.0 <= item.image.min() and item.image.max() <= 1.0
        assert set(np.unique(item.label)) <= {0, 1, 2, 3} and (item.label == 1).sum() > (item.label == 3).sum() > 0
        assert item.annotated.all()
    config = tiny_config("unused", dataset="phantom", dataset_root=str(tiny_phantom), pool_size=3, test_size=2)
    with pytest.raises(ValueError, match="labelled case"):
        load_dataset_pool(config, list(config.class_names))
