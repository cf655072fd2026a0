"""The app's interactive model through monailabel.client against the real server: clicks as 3D Slicer and OHIF send
them (``foreground``/``background`` voxel indices of the stored image), with or without a structure name."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from monailabel.client.client import MONAILabelClientException
from scipy import ndimage

from tests.app.test_client import _status
from textseg.vocabulary import load_vocabulary

pytestmark = pytest.mark.slow  # a real server


def _deepest_voxel(mask: np.ndarray) -> list[int]:
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1, 1:-1]
    return [int(i) for i in np.unravel_index(int(np.argmax(depth)), mask.shape)]


def _reference(app_studies, case="case_21"):
    img = nib.load(str(app_studies["refs"] / f"{case}.nii.gz"))
    return np.asarray(img.dataobj), img


def test_info_shows_an_interactive_model(client):
    model = client.info()["models"]["interactive"]
    assert model["type"] == "deepgrow"
    assert model["labels"]["liver"] == load_vocabulary()["liver"].id


@pytest.mark.parametrize(
    "organ,params",
    [
        ("liver", {"label": "liver"}),
        ("kidney_left", {"prompt": "segment the left kidney"}),
        ("spleen", {"label": "spleen"}),
    ],
)
def test_a_click_on_an_organ_gives_a_mask_on_that_organ(client, app_studies, organ, params):
    """The checkpoint's clicks dominate (see app_interactive_checkpoint): the mask appears where the app placed the
    click on the network's grid, mapped back to the study's grid; it must sit on the clicked organ."""
    ids, ref_img = _reference(app_studies)
    organ_id = load_vocabulary()[organ].id
    click = _deepest_voxel(ids == organ_id)
    # click_radius 0: the mask comes from the network's guidance alone, not from the click constraint
    path, result = client.infer("interactive", "case_21", {"foreground": [click], "background": [], "click_radius": 0, **params})
    assert result["structure"] == organ and result["label_names"] == {organ: organ_id}
    out = nib.load(path)
    assert out.shape[:3] == ref_img.shape and np.allclose(out.affine, ref_img.affine, atol=1e-3)
    mask = np.asarray(out.dataobj)
    assert set(np.unique(mask).tolist()) == {0, organ_id}
    assert mask[tuple(click)] == organ_id, "no mask at the click"
    inside = (ids[mask == organ_id] == organ_id).mean()
    assert inside > 0.8, f"only {inside:.0%} of the mask lies on the clicked {organ}"


def test_clicks_without_text_and_a_background_click(client, app_studies):
    ids, _ = _reference(app_studies)
    vocabulary = load_vocabulary()
    liver = _deepest_voxel(ids == vocabulary["liver"].id)
    spleen = _deepest_voxel(ids == vocabulary["spleen"].id)
    path, result = client.infer("interactive", "case_21", {"foreground": [liver]})
    assert len(result["label_names"]) == 1 and result["structure"] in result["candidates"]
    mask = np.asarray(nib.load(path).dataobj) > 0
    assert mask[tuple(liver)]
    # a background click removes the mask around itself: a foreground and a background click on the same voxel cancel
    path, _ = client.infer("interactive", "case_21", {"foreground": [liver, spleen], "background": [spleen], "label": "liver"})
    mask = np.asarray(nib.load(path).dataobj) > 0
    assert mask[tuple(liver)] and not mask[tuple(spleen)]


def test_a_box_around_an_organ_is_accepted(client, app_studies):
    from textseg.spatial import box_from_mask

    ids, _ = _reference(app_studies)
    liver = ids == load_vocabulary()["liver"].id
    path, result = client.infer(
        "interactive", "case_21", {"box": box_from_mask(liver), "foreground": [_deepest_voxel(liver)], "label": "liver"}
    )
    assert result["structure"] == "liver"
    assert set(np.unique(np.asarray(nib.load(path).dataobj)).tolist()) <= {0, load_vocabulary()["liver"].id}


@pytest.mark.parametrize(
    "params,message",
    [
        ({"foreground": [[70, 5, 5]], "label": "liver"}, "outside the volume of size (64, 64, 64)"),
        ({"foreground": [[10, 10, 10]], "background": [[-1, 5, 5]], "label": "liver"}, "background point"),
        ({"box": [10, 10, 10, 10, 20, 20], "label": "liver"}, "is empty"),
        ({"box": [20, 10, 10, 10, 20, 20], "label": "liver"}, "negative size"),
        ({"box": [70, 70, 70, 80, 80, 80], "label": "liver"}, "outside the volume"),
        ({"foreground": [[1, 2]], "label": "liver"}, "3 numbers"),
        ({"foreground": "liver", "label": "liver"}, "list of [x, y, z]"),
        ({"label": "kidneys"}, "segments one structure"),
        ({"label": "liver", "foreground": [[10, 10, 10]], "click_radius": "wide"}, "click_radius must be a number"),
        ({"label": "flux capacitor", "foreground": [[10, 10, 10]]}, "flux capacitor"),
    ],
)
def test_bad_clicks_answer_400_with_a_message(client, params, message):
    with pytest.raises(MONAILabelClientException) as error:
        client.infer("interactive", "case_21", params)
    assert _status(error.value) == 400, error.value.msg
    assert message in error.value.msg, error.value.msg
    # the server keeps serving
    assert "interactive" in client.info()["models"]
