"""Strategies: uncertainty measures, patch selection, ClaSP PE, foreground-aware random, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from textseg.active_learning import (
    STRATEGIES,
    Patch,
    QueryContext,
    aggregate_patches,
    class_entropy,
    exponential_schedule,
    get_strategy,
    mutual_information,
    power_noising,
    predictive_entropy,
    sigmoid_schedule,
    sigmoid_to_categorical,
    whole_image_patch_size,
)
from textseg.active_learning.strategies import clasp_pe_query, foreground_random_query, predictive_entropy_query

SHAPE = (64, 64, 64)


def _categorical(sigmoids: torch.Tensor) -> torch.Tensor:
    """[K, *S] sigmoid maps -> [1, K+1, *S] probabilities (one deterministic sample)."""
    return sigmoid_to_categorical(sigmoids[None], dim=1)


def _ctx(probs: dict, patch=(16, 16, 16), **kw) -> QueryContext:
    return QueryContext(shapes={i: tuple(p.shape[2:]) for i, p in probs.items()}, patch_size=patch, probs=lambda i: probs[i], **kw)


# ------------------------------------------------------------------ probabilities and uncertainty


@pytest.mark.parametrize("num_prompts", [1, 2, 5])
def test_sigmoid_to_categorical_is_a_distribution(num_prompts):
    p = torch.rand(2, num_prompts, 5, 6, 7)
    q = sigmoid_to_categorical(p, dim=1)
    assert q.shape == (2, num_prompts + 1, 5, 6, 7)
    assert torch.allclose(q.sum(1), torch.ones(2, 5, 6, 7), atol=1e-6)
    assert (q >= 0).all()
    assert torch.allclose(q[:, 0], torch.prod(1 - p, dim=1), atol=1e-6)
    if num_prompts == 1:  # one prompt: exactly the binary distribution (1 - p, p)
        assert torch.allclose(q[:, 1], p[:, 0], atol=1e-6)


@pytest.mark.parametrize("num_prompts", [1, 3, 10])
def test_entropy_ranks_uniform_above_confident(num_prompts):
    uncertain = _categorical(torch.full((num_prompts, *SHAPE), 0.5))
    confident = _categorical(torch.full((num_prompts, *SHAPE), 1e-4))
    assert predictive_entropy(uncertain).min() > predictive_entropy(confident).max() + 0.5
    # the same at the patch level: the budget goes to the undecided image
    ctx = _ctx({"confident": confident, "uncertain": uncertain})
    chosen = predictive_entropy_query(ctx, 3)
    assert [p.image for p in chosen] == ["uncertain"] * 3
    # and within one image to the undecided region
    mixed = torch.full((num_prompts, *SHAPE), 1e-4)
    mixed[:, 40:60, 8:28, 30:50] = 0.5
    (patch,) = predictive_entropy_query(_ctx({"a": _categorical(mixed)}), 1)
    assert patch.start == (40, 8, 32)


@pytest.mark.parametrize("samples,num_prompts", [(2, 1), (4, 3), (8, 10)])
def test_bald_is_zero_for_identical_samples_and_positive_when_they_disagree(samples, num_prompts):
    one = _categorical(torch.rand(num_prompts, 8, 8, 8))
    same = one.repeat(samples, 1, 1, 1, 1)
    assert torch.allclose(mutual_information(same), torch.zeros(8, 8, 8), atol=1e-6)
    # confident samples that disagree: predictive entropy high, expected entropy low -> BALD high
    votes = torch.stack([torch.full((num_prompts, 8, 8, 8), 0.999 if m % 2 else 0.001) for m in range(samples)])
    disagree = sigmoid_to_categorical(votes, dim=1)
    assert mutual_information(disagree).min() > 0.3


def test_class_entropy_weights_entropy_by_class_probability():
    q = _categorical(torch.tensor([0.5, 0.1]).reshape(2, 1, 1, 1).expand(2, 4, 4, 4).clone())
    u = class_entropy(q)
    h = predictive_entropy(q)
    assert u.shape == (3, 4, 4, 4)
    assert torch.allclose(u, h[None] * q[0], atol=1e-6)
    assert (u[1] > u[2]).all()  # the more likely class carries more of the entropy


@pytest.mark.parametrize("patch,stride", [((16, 16, 16), (8, 8, 8)), ((20, 12, 64), (7, 5, 1)), ((64, 64, 64), (32, 32, 32))])
def test_patch_aggregation_is_the_mean_over_each_candidate(patch, stride):
    x = torch.rand(2, *SHAPE)
    agg = aggregate_patches(x, patch, stride)
    starts = [list(range(0, s - p + 1, st)) for s, p, st in zip(SHAPE, patch, stride)]
    starts = [s if s[-1] == S - p else s + [S - p] for s, S, p in zip(starts, SHAPE, patch)]
    assert agg.shape == (2, *[len(s) for s in starts])
    for i, j, k in [(0, 0, 0), (-1, -1, -1), (len(starts[0]) // 2, 0, len(starts[2]) - 1)]:
        a, b, c = starts[0][i], starts[1][j], starts[2][k]
        ref = x[:, a : a + patch[0], b : b + patch[1], c : c + patch[2]].mean(dim=(1, 2, 3))
        assert torch.allclose(agg[:, i, j, k], ref, atol=1e-5)


def test_whole_image_scoring_picks_the_uncertain_image():
    probs = {f"img{i}": _categorical(torch.full((2, *SHAPE), v)) for i, v in enumerate([0.01, 0.4, 0.05])}
    ctx = _ctx(probs, patch=whole_image_patch_size({i: SHAPE for i in probs}))
    chosen = predictive_entropy_query(ctx, 2)
    assert [p.image for p in chosen] == ["img1", "img2"]
    assert all(p.size == SHAPE and p.start == (0, 0, 0) for p in chosen)


# ------------------------------------------------------------------ power noising and its schedule


@pytest.mark.parametrize("rounds", [3, 5, 10])
def test_power_noising_decays_with_the_schedule(rounds):
    betas = exponential_schedule(rounds, 1.0, 100.0)
    assert betas[0] == pytest.approx(1.0) and betas[-1] == pytest.approx(100.0)
    assert np.all(np.diff(betas) > 0)
    rng = np.random.default_rng(0)
    scores = torch.full((20000,), 0.3)
    spreads = [float((power_noising(scores, b, rng) - math.log(0.3)).std()) for b in betas]
    # Gumbel(0, 1/beta) has standard deviation pi / (beta sqrt 6)
    for spread, beta in zip(spreads, betas):
        assert spread == pytest.approx(math.pi / (beta * math.sqrt(6)), rel=0.05)
    assert all(a > b for a, b in zip(spreads, spreads[1:]))
    smooth = sigmoid_schedule(rounds, 1.0, 100.0)
    assert smooth[0] == pytest.approx(1.0) and smooth[-1] == pytest.approx(100.0) and np.all(np.diff(smooth) >= 0)


def test_clasp_pe_turns_from_diverse_to_greedy_over_the_rounds():
    """Early rounds draw from the whole score distribution, the last round almost reproduces greedy top-k."""
    x, y, z = torch.meshgrid(*[torch.linspace(0, 1, n) for n in SHAPE], indexing="ij")
    sig = (0.5 * x * (0.4 + 0.6 * y) * (0.7 + 0.3 * z))[None]  # a smooth ramp: patch scores well apart
    probs = {"a": _categorical(sig)}
    greedy = {p.start for p in predictive_entropy_query(_ctx(probs), 6)}
    rounds = 5
    overlap = []
    for r in range(rounds):
        hits = []
        for seed in range(8):
            ctx = _ctx(probs, rng=np.random.default_rng(seed), round_index=r, num_rounds=rounds)
            chosen = clasp_pe_query(ctx, 6, class_share=0.0)  # only the scheduled power entropy part
            hits.append(len(greedy & {p.start for p in chosen}))
        overlap.append(np.mean(hits))
    assert overlap[-1] > overlap[0]
    assert overlap[-1] >= 4


# ------------------------------------------------------------------ ClaSP PE class coverage


def _imbalanced_pool(num_classes: int, absent: float = 1e-4):
    """One big, very uncertain class and small, moderately uncertain ones; labels for checking coverage.
    ``absent`` is the sigmoid of a prompt where its structure is not (how confident the model is)."""
    sig = torch.full((num_classes, *SHAPE), absent)
    label = np.zeros(SHAPE, dtype=np.uint8)
    sig[0, 0:40, 0:40, 0:40] = 0.5
    label[0:40, 0:40, 0:40] = 1
    corners = [(48, 48, 48), (48, 4, 48), (4, 48, 48), (48, 48, 4), (48, 4, 4), (4, 48, 4)]
    for c in range(1, num_classes):
        x, y, z = corners[c - 1]
        sig[c, x : x + 8, y : y + 8, z : z + 8] = 0.25
        label[x : x + 8, y : y + 8, z : z + 8] = c + 1
    return {"a": _categorical(sig)}, {"a": label}


@pytest.mark.parametrize("absent,min_rate", [(1e-4, 0.6), (1e-6, 0.9)])
@pytest.mark.parametrize("num_classes", [3, 6])
def test_clasp_pe_covers_every_class_in_early_rounds(num_classes, absent, min_rate):
    """First of 5 rounds (beta = 1, the noisiest): a budget of C / 0.66 patches covers every class in most
    draws, while plain and power entropy spend it on the big uncertain class. Power sampling picks a patch
    with probability ~ score, so coverage is a rate, and it rises as the model gets confident about where
    a class is not."""
    probs, labels = _imbalanced_pool(num_classes, absent)
    budget = math.ceil(num_classes / 0.66)
    everything = set(range(1, num_classes + 1))

    def covered(patches):
        return {int(c) for p in patches for c in np.unique(labels[p.image][p.slices]) if c > 0}

    draws = 12
    clasp, power = [], []
    for seed in range(draws):
        ctx = _ctx(probs, rng=np.random.default_rng(seed), round_index=0, num_rounds=5, num_classes=num_classes)
        chosen = clasp_pe_query(ctx, budget)
        assert len(chosen) == budget
        clasp.append(covered(chosen) == everything)
        ctx = _ctx(probs, rng=np.random.default_rng(seed))
        power.append(covered(get_strategy("power_entropy").query(ctx, budget)) == everything)
    assert np.mean(clasp) >= min_rate, np.mean(clasp)
    assert np.mean(power) <= 0.2
    # greedy entropy spends the whole budget on the big class: the stratification is what covers the rest
    assert covered(predictive_entropy_query(_ctx(probs), budget)) == {1}


# ------------------------------------------------------------------ random baselines


@pytest.mark.parametrize("ratio", [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0])
def test_foreground_random_centres_patches_on_foreground_at_the_documented_rate(ratio):
    labels = {}
    for i in range(4):
        label = np.zeros(SHAPE, dtype=np.uint8)
        for c, (x, y, z) in enumerate([(10, 10, 10), (30, 40, 20), (45, 15, 40)], start=1):
            label[x : x + 10, y : y + 10, z : z + 10] = c
        labels[f"img{i}"] = label
    fg_fraction = np.mean([(lab > 0).mean() for lab in labels.values()])
    budget = 300
    ctx = QueryContext(shapes={i: SHAPE for i in labels}, patch_size=(3, 3, 3), labels=labels, rng=np.random.default_rng(1))
    chosen = foreground_random_query(ctx, budget, foreground_ratio=ratio)
    assert len(chosen) == budget
    centred = np.mean([labels[p.image][tuple(s + 1 for s in p.start)] > 0 for p in chosen])
    expected = ratio + (1 - ratio) * fg_fraction
    sigma = math.sqrt(max(expected * (1 - expected), 1e-4) / budget)
    assert abs(centred - expected) < 4 * sigma + 0.01, (centred, expected)


@pytest.mark.parametrize("name", ["random", "random_label", "entropy", "power_entropy", "clasp_pe"])
def test_queries_never_overlap_labelled_voxels_or_each_other(name):
    spec = get_strategy(name)
    gen = torch.Generator().manual_seed(3)
    probs = {i: _categorical(torch.rand(3, *SHAPE, generator=gen)) for i in ("a", "b")}
    labels = {i: (torch.rand(SHAPE, generator=gen) * 4).long().numpy().astype(np.uint8) for i in probs}
    annotated = {"a": np.zeros(SHAPE, dtype=bool)}
    annotated["a"][:32] = True
    ctx = _ctx(probs, labels=labels, annotated=annotated, rng=np.random.default_rng(0), num_classes=3)
    chosen = spec.query(ctx, 10)
    assert len(chosen) == 10
    taken = {i: annotated.get(i, np.zeros(SHAPE, dtype=bool)).copy() for i in probs}
    for p in chosen:
        assert all(0 <= s and s + n <= S for s, n, S in zip(p.start, p.size, SHAPE))
        assert not taken[p.image][p.slices].any(), f"{name} chose an overlapping patch {p}"
        taken[p.image][p.slices] = True


def test_foreground_random_without_any_foreground_falls_back_to_free_patches():
    ctx = QueryContext(
        shapes={"a": SHAPE}, patch_size=(16, 16, 16), labels={"a": np.zeros(SHAPE, dtype=np.uint8)}, rng=np.random.default_rng(0)
    )
    chosen = foreground_random_query(ctx, 4, foreground_ratio=1.0)
    assert len(chosen) == 4 and len(set(chosen)) == 4


def test_same_seed_same_query():
    probs = {"a": _categorical(torch.rand(2, *SHAPE))}
    for name in ("random", "clasp_pe", "power_entropy"):
        a = get_strategy(name).query(_ctx(probs, rng=np.random.default_rng(5), num_rounds=3), 4)
        b = get_strategy(name).query(_ctx(probs, rng=np.random.default_rng(5), num_rounds=3), 4)
        assert a == b


# ------------------------------------------------------------------ bad input


def _pool_ctx(num_images=1, **kw):
    probs = {f"i{n}": _categorical(torch.rand(2, *SHAPE)) for n in range(num_images)}
    labels = {i: np.ones(SHAPE, dtype=np.uint8) for i in probs}
    return _ctx(probs, labels=labels, **kw)


@pytest.mark.parametrize("name", list(STRATEGIES))
@pytest.mark.parametrize(
    "make,budget,message",
    [
        (lambda: _pool_ctx(1), 65, "exceeds the pool"),  # 64 patches of 16^3 fit in one 64^3 image
        (lambda: QueryContext(shapes={}, patch_size=(16, 16, 16)), 1, "pool is empty"),
        (lambda: _pool_ctx(1), 0, "positive number"),
        (lambda: _pool_ctx(1, annotated={"i0": np.ones(SHAPE, dtype=bool)}), 1, "exceeds the pool"),
    ],
    ids=["budget>pool", "empty-pool", "zero-budget", "all-labelled"],
)
def test_bad_queries_fail_with_a_clear_message(name, make, budget, message):
    with pytest.raises(ValueError, match=message):
        STRATEGIES[name].query(make(), budget)


@pytest.mark.parametrize("name", ["foo", "", "entropyy", "ClaSP PE v2"])
def test_unknown_strategy_names_list_the_known_ones(name):
    with pytest.raises(ValueError, match="unknown active-learning strategy.*clasp_pe"):
        get_strategy(name)


@pytest.mark.parametrize(
    "alias,name",
    [
        ("ClaSP-PE", "clasp_pe"),
        ("random-label", "random_label"),
        ("PowerBALD", "power_bald"),
        ("mc_dropout", "bald"),
        ("ENTROPY", "entropy"),
    ],
)
def test_aliases_from_the_papers(alias, name):
    assert get_strategy(alias).name == name


def test_strategies_needing_what_they_lack_say_so():
    ctx = QueryContext(shapes={"a": SHAPE}, patch_size=(16, 16, 16))
    with pytest.raises(ValueError, match="needs model predictions"):
        get_strategy("entropy").query(ctx, 1)
    with pytest.raises(ValueError, match="needs label maps"):
        get_strategy("random_label").query(ctx, 1)
    one_sample = _pool_ctx(1)
    with pytest.raises(ValueError, match="at least 2 MC-dropout samples"):
        get_strategy("bald").query(one_sample, 1)
    with pytest.raises(ValueError, match="round_index"):
        get_strategy("clasp_pe").query(_pool_ctx(1, round_index=5, num_rounds=5), 1)


def test_patch_round_trip():
    p = Patch("x", (1, 2, 3), (4, 5, 6))
    assert Patch.from_dict(p.to_dict()) == p
    assert p.bbox() == [[1, 2, 3], [5, 7, 9]] and p.num_voxels == 120
