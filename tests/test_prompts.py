import functools
from pathlib import Path

import numpy as np
import pytest
import yaml

from textseg.prompts import (
    MAX_PROMPT_LENGTH,
    GeometricQuery,
    PromptError,
    PromptResolver,
    check_prompt_case,
    prompt_structures,
    resolve,
    resolve_prompt,
    select_by_query,
    split_prompt,
)
from textseg.vocabulary import UnknownStructureError


@pytest.mark.parametrize(
    "prompt,expected",
    [
        ("segment the liver and kidneys", ["liver", "kidney_left", "kidney_right"]),
        ("Segment the liver, spleen and the left kidney.", ["liver", "spleen", "kidney_left"]),
        ("IVC", ["inferior_vena_cava"]),
        ("please outline the gallbladder & aorta", ["gallbladder", "aorta"]),
        ("kidney (L)", ["kidney_left"]),
        ("right kidney; urinary bladder", ["kidney_right", "urinary_bladder"]),
        ("liver and liver", ["liver"]),
        ("the second cervical vertebra", ["vertebrae_C2"]),
        ("first lumbar vertebra and the 12th thoracic vertebra", ["vertebrae_L1", "vertebrae_T12"]),
        ("third left rib", ["rib_left_3"]),
        ("L1", ["vertebrae_L1"]),
        ("atlas and axis", ["vertebrae_C1", "vertebrae_C2"]),
        ("lefft kidnye and spleeen", ["kidney_left", "spleen"]),
    ],
)
def test_resolve(prompt, expected):
    assert sorted(resolve_prompt(prompt)) == sorted(expected)


def test_order_follows_prompt():
    assert resolve_prompt("spleen and liver") == ["spleen", "liver"]


def test_split_prompt():
    assert split_prompt("Segment the liver, spleen and both kidneys!") == ["liver", "spleen", "both kidneys"]


@pytest.mark.parametrize("prompt", ["", "   ", "segment the"])
def test_empty_prompt(prompt):
    with pytest.raises(PromptError):
        resolve_prompt(prompt)


def test_too_long_prompt():
    with pytest.raises(PromptError, match=str(MAX_PROMPT_LENGTH)):
        resolve_prompt("liver " * 300)


def test_unknown_structure_names_closest_terms():
    with pytest.raises(UnknownStructureError) as raised:
        resolve_prompt("segment the flux capacitor")
    assert "flux capacitor" in str(raised.value) and raised.value.suggestions


def test_typo_is_corrected():
    assert resolve_prompt("segment the spleeen") == ["spleen"]


def test_structure_outside_the_model():
    with pytest.raises(PromptError, match="not trained on .*femur"):
        resolve_prompt("liver and left femur", allowed=["liver", "spleen"])


# --- the prompt test set, free-form wording, position and size prompts -----------------------------------
PROMPT_SET = Path(__file__).parent / "data" / "prompts.yaml"


def test_prompt_set_accuracy():
    cases = yaml.safe_load(PROMPT_SET.read_text(encoding="utf-8"))["prompts"]
    assert len(cases) >= 300
    resolver = PromptResolver()
    failures = [(c["prompt"], got) for c in cases for ok, got in [check_prompt_case(c, resolver)] if not ok]
    accuracy = 1 - len(failures) / len(cases)
    assert accuracy >= 0.97, failures[:20]


@pytest.mark.parametrize(
    "prompt,expected",
    [
        ("left and right kidney", ["kidney_left", "kidney_right"]),
        ("kidney, left", ["kidney_left"]),
        ("segment the lvier", ["liver"]),
        ("bile bladder", ["gallbladder"]),
    ],
)
def test_free_form_wording(prompt, expected):
    assert sorted(resolve(prompt).structures) == sorted(expected)


def test_explanations_say_how_a_phrase_was_understood():
    targets = resolve("spleeen and bile bladder").targets
    assert "spelling" in targets[0].explanation and "text embedding" in targets[1].explanation


def test_without_encoder_unknown_wording_is_an_error():
    with pytest.raises(UnknownStructureError):
        PromptResolver(encoder=None).resolve("bile bladder")


def test_queries_need_the_model_classes():
    assert prompt_structures("liver and the largest vessel", allowed=["liver", "aorta", "spleen", "inferior_vena_cava"]) == [
        "liver",
        "aorta",
        "inferior_vena_cava",
    ]
    with pytest.raises(PromptError, match="after segmentation"):
        resolve_prompt("the largest organ")


QUERIES = [
    ("the largest organ", "liver"),
    ("the smallest organ", "gallbladder"),
    ("the organ in the right upper quadrant", "liver"),
    ("the organ left of the stomach", "spleen"),
    ("the vessel right of the aorta", "inferior_vena_cava"),
    ("the largest organ in the upper abdomen", "liver"),
]


@functools.lru_cache(maxsize=3)
def _phantom_in(orientation):
    import nibabel as nib

    from textseg.phantom import PHANTOM_LABELS, make_phantom

    case = make_phantom(11, rotation_deg=(0, 0, 20) if orientation == "rotated" else (0, 0, 0))
    image = nib.Nifti1Image(case.label, case.affine)
    if orientation == "LPS":
        image = image.as_reoriented(np.array([[0, -1], [1, -1], [2, 1]]))  # flip x and y
    label = np.asarray(image.dataobj)
    return {name: label == i for i, name in PHANTOM_LABELS.items()}, image.affine


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "rotated"])
@pytest.mark.parametrize("prompt,expected", QUERIES)
def test_position_and_size_prompts_on_phantoms(prompt, expected, orientation):
    """Answers come from world coordinates, so reorienting the arrays or rotating the body a little changes nothing."""
    masks, affine = _phantom_in(orientation)
    (query,) = resolve(prompt).queries
    answer, explanation = select_by_query(query, masks, affine)
    assert answer == expected, explanation


def test_query_without_answer_is_an_error():
    masks = {"liver": np.ones((4, 4, 4), bool)}
    with pytest.raises(PromptError, match="no segmented"):
        select_by_query(GeometricQuery("relation", "organ", relation="left_of", reference="liver"), masks, np.eye(4))
    with pytest.raises(PromptError, match="no structure was segmented"):
        select_by_query(GeometricQuery("largest", "organ"), {"liver": np.zeros((2, 2, 2), bool)}, np.eye(4))


def test_a_resolution_round_trips_through_its_dict():
    from textseg.prompts import Resolution

    for prompt in ("the liver and the organ left of the stomach", "largest organ in the upper abdomen", "left kidney"):
        resolution = resolve(prompt)
        assert Resolution.from_dict(resolution.to_dict()) == resolution


def test_resolve_structures_takes_names_as_they_are_and_resolves_other_wording(monkeypatch):
    from textseg.prompts import resolve_structures

    calls = []
    original = PromptResolver.resolve
    monkeypatch.setattr(PromptResolver, "resolve", lambda self, prompt: (calls.append(prompt), original(self, prompt))[1])
    resolution = resolve_structures(["liver", "kidney_left", "kidneys"])
    assert resolution.structures == ["liver", "kidney_left", "kidney_right"]
    assert calls == ["kidneys"]  # canonical names are not parsed; no joined prompt is
    with pytest.raises(PromptError, match="non-empty list"):
        resolve_structures([])
    with pytest.raises(PromptError, match="non-empty strings"):
        resolve_structures(["liver", ""])
    with pytest.raises(UnknownStructureError):
        resolve_structures(["flux capacitor"])
