"""Real-CT augmentations: slabs, contrast phases, slice thickness, field of view."""

import pytest
import torch

from textseg.augment import CONTRAST_PHASES, CropSlabd, RandContrastPhased, RandFieldOfViewd, RandSliceThicknessd
from textseg.datasets import DatasetError, split_slabs
from textseg.transforms import IGNORE_CHANNEL


def test_crop_slab_keeps_the_asked_band_of_the_last_axis():
    image = torch.arange(20.0).reshape(1, 1, 1, 20).expand(1, 4, 4, 20).clone()
    out = CropSlabd(keys=["image", "label"])({"image": image, "label": image.clone(), "slab": [0.25, 0.5]})
    assert "slab" not in out
    assert out["image"].shape == (1, 4, 4, 5) and out["image"][0, 0, 0].tolist() == [5.0, 6.0, 7.0, 8.0, 9.0]
    assert torch.equal(out["image"], out["label"])
    assert CropSlabd(keys="image")({"image": image})["image"].shape == image.shape  # no slab: unchanged
    with pytest.raises(ValueError, match="fractions"):
        CropSlabd(keys="image")({"image": image, "slab": [0.6, 0.4]})


def test_split_slabs_trains_around_the_band_and_validates_on_it():
    cases = [{"image": "a", "dataset": "x"}, {"image": "b", "dataset": "y"}]
    split = split_slabs(cases, {"x": [0.7, 0.9]})
    assert split["training"] == [
        {"image": "a", "dataset": "x", "slab": [0.0, 0.7]},
        {"image": "a", "dataset": "x", "slab": [0.9, 1.0]},
        {"image": "b", "dataset": "y"},
    ]
    assert split["validation"] == [{"image": "a", "dataset": "x", "slab": [0.7, 0.9]}]
    assert "slab" not in cases[0]
    assert [c["slab"] for c in split_slabs(cases[:1], {"x": [0.0, 0.5]})["training"]] == [[0.0 + 0.5, 1.0]]
    with pytest.raises(DatasetError, match="fractions"):
        split_slabs(cases, {"x": [0.5, 1.5]})


def _crop_with_two_structures():
    image = torch.full((1, 8, 8, 8), 0.5)
    label = torch.zeros(3, 8, 8, 8)
    label[0, :4] = 1.0  # aorta, annotated
    label[1, 4:] = 1.0  # liver, annotated
    label[2] = IGNORE_CHANNEL  # kidney_left, not annotated in this case
    return {"image": image, "label": label}


def test_contrast_phase_shifts_annotated_structures_only_and_stays_in_window():
    transform = RandContrastPhased(class_names=["aorta", "liver", "kidney_left"], hu_range=(-175, 250), prob=1.0)
    changed = set()
    for seed in range(20):
        transform.set_random_state(seed)
        data = _crop_with_two_structures()
        out = transform(data)["image"]
        assert out.min() >= 0.0 and out.max() <= 1.0
        aorta, liver = out[0, :4], out[0, 4:]
        assert torch.all(aorta == aorta.flatten()[0]) and torch.all(liver == liver.flatten()[0]), "one offset per structure"
        if not torch.equal(out, data["image"]):
            changed.add(seed)
            assert (aorta.flatten()[0] - 0.5).abs() <= 300 / 425 + 1e-6
    assert len(changed) >= 5, "arterial/portal-venous phases were drawn"
    assert "aorta" in CONTRAST_PHASES["arterial"] and CONTRAST_PHASES["native"] == {}


def test_contrast_phase_never_touches_unannotated_voxels():
    data = _crop_with_two_structures()
    data["label"][0] = IGNORE_CHANNEL
    data["label"][1] = IGNORE_CHANNEL
    transform = RandContrastPhased(class_names=["aorta", "liver", "kidney_left"], prob=1.0)
    for seed in range(5):
        transform.set_random_state(seed)
        assert torch.equal(transform(dict(data))["image"], data["image"])


def test_slice_thickness_blurs_along_the_last_axis_only():
    image = torch.zeros(1, 6, 6, 24)
    image[..., ::2] = 1.0  # thin slices alternate along z
    transform = RandSliceThicknessd(keys="image", factor_range=(2.0, 2.0), prob=1.0)
    out = transform({"image": image})["image"]
    assert out.shape == image.shape
    assert out[..., 4:20].std() < 0.25 * image[..., 4:20].std(), "alternating thin slices are averaged"
    flat = torch.rand(1, 6, 6, 1).expand(1, 6, 6, 24).clone()  # constant along z: in-plane detail is kept
    assert torch.allclose(transform({"image": flat})["image"], flat, atol=1e-5)


def test_field_of_view_blanks_outside_a_slab_and_clears_supervised_targets():
    data = _crop_with_two_structures()
    data["image"] = torch.rand(1, 8, 8, 8) + 0.1
    transform = RandFieldOfViewd(slice_range=(2, 3), prob=1.0)
    transform.set_random_state(3)
    out = transform(data)
    kept = (out["image"][0] != 0).any(dim=0).any(dim=0)
    assert 2 <= int(kept.sum()) <= 3
    assert torch.all(out["label"][:2][..., ~kept] == 0), "nothing is visible outside the slab"
    assert torch.all(out["label"][2] == IGNORE_CHANNEL), "unannotated channels stay ignored"
    assert torch.equal(out["label"][:2][..., kept], data["label"][:2][..., kept])
