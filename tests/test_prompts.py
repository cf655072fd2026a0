import pytest

from textseg.prompts import MAX_PROMPT_LENGTH, PromptError, resolve_prompt, split_prompt
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


def test_typo_suggests_the_right_term():
    with pytest.raises(UnknownStructureError) as raised:
        resolve_prompt("segment the spleeen")
    assert any("spleen" in s for s in raised.value.suggestions)


def test_structure_outside_the_model():
    with pytest.raises(PromptError, match="not trained on .*femur"):
        resolve_prompt("liver and left femur", allowed=["liver", "spleen"])
