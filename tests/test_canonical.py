"""Orientation canonicalization: rotation estimates on rotated phantoms, canonical images, inversion to the
input grid, failure fallback, and position prompts answered in the patient's frame."""

from __future__ import annotations

import functools
import json
import warnings

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd
from scipy import ndimage

from textseg.canonical import (
    CENTRE_META_KEY,
    ROTATION_META_KEY,
    CanonicalizeRotationd,
    RotationEstimate,
    canonicalize,
    estimate_rotation,
    patient_affine,
    patient_frame_affine,
    rotation_angles,
    rotation_matrix,
)
from textseg.phantom import PHANTOM_LABELS, make_phantom
from textseg.prompts import resolve, select_by_query
from textseg.transforms import AnswerPromptd, ct_transforms

# 4 mm phantoms whose field of view holds the whole body (352 x 288 x 256 mm)
SHAPE, SPACING, SEED = (88, 72, 64), (4.0, 4.0, 4.0), 5


@functools.lru_cache(maxsize=8)
def _phantom(rotation=(0.0, 0.0, 0.0)):
    return make_phantom(SEED, shape=SHAPE, spacing=SPACING, rotation_deg=rotation)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _angle_between(r1: np.ndarray, r2: np.ndarray) -> float:
    """Angle in degrees of the rotation taking r2 to r1."""
    return float(np.degrees(np.arccos(np.clip((np.trace(r1 @ r2.T) - 1) / 2, -1, 1))))


def test_rotation_matrix_and_angles_round_trip():
    for angles in [(0, 0, 0), (5.73, 0, 0), (0, -5.73, 30), (10, 20, -135)]:
        assert np.allclose(rotation_angles(rotation_matrix(angles)), angles, atol=1e-9)
    r = rotation_matrix((3, 4, 50))
    assert np.allclose(r @ r.T, np.eye(3))


@pytest.mark.parametrize(
    "rotation",
    [(0, 0, 0), (0, 0, 15), (0, 0, 45), (0, 0, 90), (0, 0, -135), (0, 0, 180), (5.73, 0, 0), (0, 5.73, 0), (-5.73, 5.73, 30)],
)
def test_estimated_rotation_matches_the_applied_one(rotation):
    """Within 2° of the rotation the phantom was made with, including the 90° and 180° ambiguities."""
    case = _phantom(tuple(float(a) for a in rotation))
    estimate = estimate_rotation(case.image, case.affine)
    assert estimate.ok, estimate.message
    error = _angle_between(estimate.rotation, rotation_matrix(rotation))
    assert error < 2.0, f"applied {rotation}, estimated {np.round(estimate.angles_deg, 2)} ({error:.2f}° off)"


def _body(image: np.ndarray) -> np.ndarray:
    return ndimage.binary_fill_holes(image > -500)


def _centred(mask: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``mask`` shifted by whole voxels so its centroid falls on ``like``'s (the rotation centre may differ)."""
    shift = np.round(np.array(ndimage.center_of_mass(like)) - np.array(ndimage.center_of_mass(mask))).astype(int)
    return ndimage.shift(mask.astype(np.uint8), shift, order=0).astype(bool)


def test_canonical_image_of_a_rotated_phantom_matches_the_upright_one():
    upright, rotated = _phantom(), _phantom((0.0, 0.0, 45.0))
    image, affine, estimate = canonicalize(rotated.image, rotated.affine)
    assert image.shape == rotated.image.shape
    assert np.allclose(affine[:3, :3], rotation_matrix((0, 0, 45)) @ rotated.affine[:3, :3], atol=0.15)
    reference = _body(upright.image)
    canonical_dice = _dice(_centred(_body(image), reference), reference)
    rotated_dice = _dice(_centred(_body(rotated.image), reference), reference)
    assert canonical_dice > 0.97, canonical_dice
    assert rotated_dice < 0.93, "the test cannot tell a rotated body from an upright one"
    # the organs line up too (labels resampled with the image's estimate, nearest neighbour)
    labels, _, _ = canonicalize(rotated.label, rotated.affine, estimate=estimate, order=0, pad_value=0)
    liver_ref = upright.label == 5
    assert _dice(_centred(labels == 5, liver_ref), liver_ref) > 0.85


def _save(case, tmp_path, name):
    image, label = tmp_path / f"{name}_image.nii.gz", tmp_path / f"{name}_label.nii.gz"
    case.save(image, label)
    return {"image": str(image), "label": str(label)}


def test_masks_map_back_to_the_input_grid(tmp_path):
    """ct_transforms(canonicalize=True) + Invertd: a mask predicted on the canonical grid lands on the input grid."""
    case = _phantom((0.0, 0.0, 45.0))
    preprocessing = Compose(ct_transforms(keys=["image"], label_key="label", pixdim=SPACING, canonicalize=True))
    data = preprocessing(_save(case, tmp_path, "rotated"))
    angles = rotation_angles(data["image"].meta[ROTATION_META_KEY].numpy())
    assert abs(angles[2] - 45.0) < 2.0, angles
    # the canonical label is the upright anatomy: the liver is on the patient's right, i.e. +x in voxel space
    liver = np.argwhere(data["label"][0].numpy() == 5).mean(0)
    spleen = np.argwhere(data["label"][0].numpy() == 1).mean(0)
    assert liver[0] - spleen[0] > 25 and abs(liver[1] - spleen[1]) < 15, (liver, spleen)
    # pretend the network predicted the liver perfectly on the canonical grid
    data["pred"] = MetaTensor((data["label"] == 5).float(), meta=data["image"].meta, applied_operations=data["image"].applied_operations)
    inverted = Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=False)(data)["pred"]
    assert tuple(inverted.shape[1:]) == case.image.shape
    assert np.allclose(inverted.affine.numpy(), case.affine, atol=1e-4)
    assert _dice(inverted[0].numpy() > 0.5, case.label == 5) > 0.97
    assert ROTATION_META_KEY in inverted.meta  # survives the inversion, for position prompts


def test_empty_volume_warns_and_keeps_the_affine_orientation():
    image = MetaTensor(torch.full((1, 32, 32, 24), -1000.0), affine=torch.diag(torch.tensor([4.0, 4.0, 4.0, 1.0])))
    image.meta["filename_or_obj"] = "empty.nii.gz"
    assert not estimate_rotation(image[0], image.affine).ok
    with pytest.warns(UserWarning, match="empty.nii.gz: rotation estimate failed .*no body"):
        out = CanonicalizeRotationd(keys="image")({"image": image})["image"]
    assert torch.equal(out.as_tensor(), image.as_tensor())
    assert torch.allclose(out.affine, image.affine)
    assert torch.equal(out.meta[ROTATION_META_KEY], torch.eye(3, dtype=torch.float64))
    with pytest.warns(UserWarning, match="rotation estimate failed"):
        array, affine, estimate = canonicalize(np.full((16, 16, 16), -1000.0), np.eye(4))
    assert not estimate.ok and np.allclose(affine, np.eye(4)) and (array == -1000).all()


def test_small_rotations_are_left_alone():
    """Below min_angle_deg nothing is resampled (an upright scan goes through unchanged)."""
    case = _phantom()
    image = MetaTensor(torch.as_tensor(case.image)[None], affine=torch.as_tensor(case.affine))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = CanonicalizeRotationd(keys="image", min_angle_deg=2.0)({"image": image})["image"]
    assert torch.allclose(out.as_tensor(), image.as_tensor(), atol=1e-3)
    assert torch.allclose(out.affine.double(), image.affine.double())


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="one entry per key"):
        CanonicalizeRotationd(keys=["image", "label"], mode=["bilinear"])
    with pytest.raises(ValueError, match="3D volume"):
        estimate_rotation(np.zeros((4, 4)), np.eye(4))
    with pytest.raises(TypeError, match="MetaTensor"):
        CanonicalizeRotationd(keys="image")({"image": torch.zeros(1, 8, 8, 8)})


QUERIES = [
    "the organ in the right upper quadrant",
    "the organ left of the stomach",
    "the vessel right of the aorta",
    "the largest organ on the left side",
    "the largest organ in the upper abdomen",
]


def _masks(label: np.ndarray) -> dict[str, np.ndarray]:
    return {name: label == i for i, name in PHANTOM_LABELS.items()}


@pytest.mark.parametrize("angle", [45.0, 90.0, 180.0])
def test_position_prompts_work_on_rotated_scans(angle):
    """Answered in the patient's frame (estimated rotation), queries give the upright scan's answers."""
    upright, rotated = _phantom(), _phantom((0.0, 0.0, angle))
    estimate = estimate_rotation(rotated.image, rotated.affine)
    frame = patient_affine(rotated.affine, estimate.rotation, estimate.centre)
    wrong = 0
    for prompt in QUERIES:
        (query,) = resolve(prompt).queries
        expected, _ = select_by_query(query, _masks(upright.label), upright.affine)
        answer, explanation = select_by_query(query, _masks(rotated.label), frame)
        assert answer == expected, f"{prompt!r} at {angle}°: {explanation}"
        try:
            wrong += select_by_query(query, _masks(rotated.label), rotated.affine)[0] != expected
        except Exception:
            wrong += 1
    if angle >= 90:
        assert wrong > 0, "scanner-frame answers were all right too: the test shows nothing"


def test_answer_promptd_uses_the_recorded_rotation():
    """AnswerPromptd reads the rotation that CanonicalizeRotationd left in the meta."""
    from textseg.vocabulary import load_vocabulary

    vocabulary = load_vocabulary()
    rotated = _phantom((0.0, 0.0, 180.0))
    estimate = estimate_rotation(rotated.image, rotated.affine)
    ids = np.zeros_like(rotated.label, dtype=np.int16)
    for i, name in PHANTOM_LABELS.items():
        ids[rotated.label == i] = vocabulary[name].id
    labels = MetaTensor(torch.as_tensor(ids)[None], affine=torch.as_tensor(rotated.affine))
    resolution = json.dumps(resolve("the organ left of the stomach").to_dict())
    plain = AnswerPromptd(keys="pred")({"pred": labels.clone(), "prompt_resolution": resolution})["pred"]
    labels.meta[ROTATION_META_KEY] = torch.as_tensor(estimate.rotation)
    labels.meta[CENTRE_META_KEY] = torch.as_tensor(estimate.centre)
    assert not np.allclose(patient_frame_affine(labels), rotated.affine)
    framed = AnswerPromptd(keys="pred")({"pred": labels, "prompt_resolution": resolution})["pred"]
    spleen = vocabulary["spleen"].id
    assert (framed.numpy() == spleen).any() and not (plain.numpy() == spleen).any()


def test_rotation_estimate_round_trips_as_a_dict():
    estimate = RotationEstimate(rotation=rotation_matrix((1, 2, 3)), centre=np.array([1.0, 2.0, 3.0]))
    d = estimate.to_dict()
    assert (
        np.allclose(d["angles_deg"], [1, 2, 3])
        and d["ok"]
        and abs(estimate.angle_deg - np.degrees(np.arccos((np.trace(estimate.rotation) - 1) / 2))) < 1e-9
    )


def test_oblique_affine_is_estimated_in_world_coordinates():
    """An upright patient stored with a rotated (oblique) affine has no rotation in world coordinates."""
    case = _phantom((0.0, 0.0, 30.0))
    estimate = estimate_rotation(case.image, case.affine)
    oblique = np.eye(4)
    oblique[:3, :3] = rotation_matrix((0, 0, -30))
    # the same voxels, declared rotated back by -30° about the world origin: the anatomy is upright in world space
    moved = estimate_rotation(case.image, oblique @ case.affine)
    assert _angle_between(moved.rotation, np.eye(3)) < 2.0 and _angle_between(estimate.rotation, rotation_matrix((0, 0, 30))) < 2.0


def test_bundle_overlays_switch_canonicalization_and_rotation_augmentation_on():
    from monai.bundle import ConfigParser

    from textseg.bundle import bundle_config_files

    bundle = "bundles/text_prompted_ct_segmentation"
    parser = ConfigParser()
    parser.read_config(bundle_config_files(bundle, ["inference.json", "tiny.json", "canonical.json"]))
    names = [type(t).__name__ for t in parser.get_parsed_content("ct_transforms")]
    assert names.index("Spacingd") < names.index("CanonicalizeRotationd") < names.index("ScaleIntensityRanged")
    parser = ConfigParser()
    parser.read_config(bundle_config_files(bundle, ["inference.json", "tiny.json"]))
    assert "CanonicalizeRotationd" not in [type(t).__name__ for t in parser.get_parsed_content("ct_transforms")]
    parser = ConfigParser()
    parser.read_config(bundle_config_files(bundle, ["train.json", "tiny.json", "rotation_augment.json"]))
    augment = parser.get_parsed_content("rotation_augment")
    assert type(augment).__name__ == "RandRotated" and augment.keys == ("image", "label")
    assert "[@rotation_augment] + @train#random_transforms" in parser["train#preprocessing#transforms"].replace("::", "#")
