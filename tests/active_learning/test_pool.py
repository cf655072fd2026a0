"""One-at-a-time selection from stored per-image records (textseg.active_learning.pool)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from textseg.active_learning import bbox_to_grid, class_query_due, image_candidates, select_next
from textseg.active_learning.pool import CLASS_MEASURE_PREFIX

CLASSES = ["liver", "spleen", "pancreas"]
SHAPE = (16, 16, 16)


def confident_probs(label: np.ndarray, certainty: float = 0.98) -> torch.Tensor:
    """[1, C+1, *S] probabilities: ``certainty`` on the label's class, the rest shared."""
    num = len(CLASSES) + 1
    probs = np.full((num, *label.shape), (1 - certainty) / (num - 1), dtype=np.float32)
    for c in range(num):
        probs[c][label == c] = certainty
    return torch.from_numpy(probs)[None]


def labelled_volume() -> np.ndarray:
    label = np.zeros(SHAPE, dtype=np.int64)
    label[2:8, 2:8, 2:8] = 1
    label[10:14, 10:14, 10:14] = 2
    label[10:12, 2:4, 2:4] = 3
    return label


def test_record_is_json_ready_and_has_every_measure():
    probs = confident_probs(labelled_volume())
    mc = torch.cat([probs, confident_probs(labelled_volume(), 0.6)])
    record = image_candidates(probs, CLASSES, (8, 8, 8), mc_probs=mc, rng=0)
    record = json.loads(json.dumps(record))
    assert set(record["grids"]) == {"entropy", "mutual_information", *(CLASS_MEASURE_PREFIX + c for c in CLASSES)}
    assert record["starts"] == [[0, 4, 8]] * 3
    assert np.asarray(record["grids"]["entropy"]).shape == (3, 3, 3)
    assert set(record["foreground"]) == set(CLASSES)
    label = labelled_volume()
    for x, y, z in record["foreground"]["spleen"]["seg"]:
        assert label[x, y, z] == 2


def test_entropy_picks_the_uncertain_region_of_the_uncertain_image():
    label = labelled_volume()
    confident = confident_probs(label)
    unsure = confident.clone()
    unsure[0, :, 8:, 8:, 8:] = 1.0 / (len(CLASSES) + 1)  # uniform prediction in one corner
    records = {"a": image_candidates(confident, CLASSES, (8, 8, 8), rng=0), "b": image_candidates(unsure, CLASSES, (8, 8, 8), rng=0)}
    choice = select_next(records, "entropy", rng=0)
    assert choice["id"] == "b"
    assert choice["patch_bbox"] == [[8, 8, 8], [16, 16, 16]]
    assert choice["score"] == pytest.approx(np.log(len(CLASSES) + 1), rel=1e-4)


def test_clasp_pe_serves_every_class_early():
    rng = np.random.default_rng(0)
    records = {}
    for i in range(4):
        probs = torch.from_numpy(rng.dirichlet(np.ones(len(CLASSES) + 1), size=SHAPE).astype(np.float32)).permute(3, 0, 1, 2)[None]
        records[f"img{i}"] = image_candidates(probs, CLASSES, (8, 8, 8), rng=i)
    history = []
    for _ in range(5):
        history.append(select_next(records, "clasp_pe", history, rng=rng, num_rounds=5))
    served = [h["class"] for h in history if "class" in h]
    assert set(served[: len(CLASSES)]) == set(CLASSES)
    assert [h["measure"] for h in history if "class" not in h] == ["entropy"] * (5 - len(served))
    betas = [h["beta"] for h in history]
    assert betas[0] == pytest.approx(1.0) and betas[-1] == pytest.approx(100.0)
    assert all(a < b for a, b in zip(betas, betas[1:]))


@pytest.mark.parametrize("share, first_six", [(0.66, [1, 1, 0, 1, 1, 0]), (0.5, [1, 0, 1, 0, 1, 0]), (0.0, [0] * 6), (1.0, [1] * 6)])
def test_class_query_due_spreads_the_share(share, first_six):
    assert [int(class_query_due(i, share)) for i in range(6)] == first_six


def test_random_label_centres_on_predicted_foreground():
    label = labelled_volume()
    records = {"a": image_candidates(confident_probs(label), CLASSES, (4, 4, 4), rng=0)}
    hits = 0
    for seed in range(60):
        choice = select_next(records, "random_label", rng=seed, foreground_ratio=1.0)
        (x0, y0, z0), (x1, y1, z1) = choice["patch_bbox"]
        hits += bool(label[x0:x1, y0:y1, z0:z1].any())
        assert choice["class"] in CLASSES
    assert hits == 60
    uniform = [select_next(records, "random", rng=seed)["patch_bbox"][0] for seed in range(30)]
    assert len({tuple(s) for s in uniform}) > 10


def test_bad_input_names_the_problem():
    records = {"a": image_candidates(confident_probs(labelled_volume()), CLASSES, (8, 8, 8), rng=0)}
    with pytest.raises(ValueError, match="pool is empty"):
        select_next({}, "entropy")
    with pytest.raises(ValueError, match="unknown active-learning strategy"):
        select_next(records, "most_fun")
    with pytest.raises(ValueError, match="mutual_information"):
        select_next(records, "bald")
    with pytest.raises(ValueError, match="foreground classes"):
        image_candidates(confident_probs(labelled_volume()), CLASSES[:2], (8, 8, 8))


def test_bbox_to_grid_through_world_coordinates():
    # network grid: 2 mm voxels, axes flipped in x; stored image: 1 mm voxels, origin shifted
    network = np.diag([-2.0, 2.0, 2.0, 1.0])
    network[:3, 3] = [30.0, -10.0, 0.0]
    stored = np.eye(4)
    stored[:3, 3] = [-5.0, -12.0, -1.0]
    box = bbox_to_grid([[2, 3, 4], [6, 8, 10]], network, stored, (64, 64, 64))
    # x: network voxels 2..5 span world 30-2*5.5 .. 30-2*1.5 = 19..27, i.e. stored voxel centres 24..32, so
    # stored voxels 24..32 are (partly) inside; y: world -5..5 -> centres 7..17; z: world 7..19 -> centres 8..20
    assert box == [[24, 7, 8], [33, 18, 21]]
    assert bbox_to_grid([[0, 0, 0], [10, 10, 10]], np.eye(4), np.eye(4), (4, 4, 4)) == [[0, 0, 0], [4, 4, 4]]
    with pytest.raises(ValueError, match="outside"):
        bbox_to_grid([[20, 20, 20], [30, 30, 30]], np.eye(4), np.eye(4), (4, 4, 4))
