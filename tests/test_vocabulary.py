import json
from pathlib import Path

import pytest

from textseg.vocabulary import DEFAULT_VOCABULARY_PATH, UnknownStructureError, Vocabulary, load_vocabulary, normalize, structure_ids

TOTALSEG_CLASSES = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct" / "totalseg_v2_total_classes.json"
REGIONS = {"head_neck", "thorax", "abdomen", "pelvis", "spine", "upper_limb", "lower_limb", "whole_body"}
CATEGORIES = {"organ", "vessel", "bone", "muscle", "lesion", "other"}


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary()


def test_totalsegmentator_ids_and_names(vocab):
    if not TOTALSEG_CLASSES.exists():
        pytest.skip(f"{TOTALSEG_CLASSES} is not available (../shared is absent in a user's clone)")
    classes = {int(k): v for k, v in json.loads(TOTALSEG_CLASSES.read_text(encoding="utf-8")).items()}
    assert len(classes) == 117
    assert {i: vocab.by_id(i).name for i in classes} == classes


def test_ids_are_contiguous_and_in_order(vocab):
    assert [s.id for s in vocab] == list(range(1, len(vocab) + 1))
    assert vocab.names == [vocab.by_id(i).name for i in range(1, len(vocab) + 1)]


def test_unique_and_consistent(vocab):
    structures = list(vocab)
    assert len({s.id for s in structures}) == len({s.name for s in structures}) == len({s.color for s in structures}) == len(structures)
    for s in structures:
        assert s.display and s.region in REGIONS and s.category in CATEGORIES, s
        assert len(s.color) == 3 and all(0 <= c <= 255 for c in s.color), s
        if s.pair:
            other = vocab[s.pair]
            assert other.pair == s.name and {s.laterality, other.laterality} == {"left", "right"} and other.base == s.base
        if s.laterality:
            assert s.base, f"{s.name} has a side but no base"
    for members in vocab.groups.values():
        assert members and all(m in vocab for m in members)
    assert vocab.colors()["liver"] == vocab["liver"].color and len(vocab.colors()) == len(vocab)


def test_dataset_classes_are_covered(vocab):
    for name in [
        "liver_tumor",
        "pancreas_tumor",
        "kidney_tumor",
        "lung_tumor",
        "colon_tumor",
        "hepatic_vessel",
        "rectum",
        "femoral_head_left",
        "femoral_head_right",
        "portal_vein_and_splenic_vein",
        "prostate_or_uterus",
        "uterus",
        "adrenal_glands_combined",
    ]:
        assert name in vocab


@pytest.mark.parametrize(
    "term,expected",
    [
        ("Liver", ["liver"]),
        ("livers", ["liver"]),
        ("the liver", ["liver"]),
        ("hepatic", ["liver"]),
        ("IVC", ["inferior_vena_cava"]),
        ("postcava", ["inferior_vena_cava"]),
        ("vena cava inferior", ["inferior_vena_cava"]),
        ("left kidney", ["kidney_left"]),
        ("kidney (L)", ["kidney_left"]),
        ("lt kidney", ["kidney_left"]),
        ("l kidney", ["kidney_left"]),
        ("kidney left", ["kidney_left"]),
        ("kidney, left", ["kidney_left"]),
        ("sinistral kidney", ["kidney_left"]),
        ("left-sided kidney", ["kidney_left"]),
        ("dextral kidney", ["kidney_right"]),
        ("right-sided kidney", ["kidney_right"]),
        ("right sided kidney", ["kidney_right"]),
        ("R kidney", ["kidney_right"]),
        ("renal (R)", ["kidney_right"]),
        ("kidney", ["kidney_right", "kidney_left"]),
        ("kidneys", ["kidney_right", "kidney_left"]),
        ("both kidneys", ["kidney_right", "kidney_left"]),
        ("bilateral kidneys", ["kidney_right", "kidney_left"]),
        ("renal", ["kidney_right", "kidney_left"]),
        ("right adrenal", ["adrenal_gland_right"]),
        ("adrenal glands", ["adrenal_gland_right", "adrenal_gland_left"]),
        ("gall-bladder", ["gallbladder"]),
        ("GB", ["gallbladder"]),
        ("Urinary_Bladder", ["urinary_bladder"]),
        ("bladder", ["urinary_bladder"]),
        ("L3", ["vertebrae_L3"]),
        ("vertebrae_L3", ["vertebrae_L3"]),
        ("rib_left_3", ["rib_left_3"]),
        ("third rib (R)", ["rib_right_3"]),
        ("left psoas", ["iliopsoas_left"]),
        ("carotid arteries", ["common_carotid_artery_right", "common_carotid_artery_left"]),
        ("RUL", ["lung_upper_lobe_right"]),
        ("right RUL", ["lung_upper_lobe_right"]),
        ("left lower lobe", ["lung_lower_lobe_left"]),
        ("head of femur (L)", ["femoral_head_left"]),
        ("portal vein", ["portal_vein_and_splenic_vein"]),
    ],
)
def test_lookup(vocab, term, expected):
    assert vocab.lookup(term) == expected


@pytest.mark.parametrize(
    "term,count",
    [
        ("ribs", 24),
        ("left ribs", 12),
        ("ribs (R)", 12),
        ("lumbar vertebrae", 5),
        ("L spine", 5),
        ("cervical spine", 7),
        ("vertebrae", 25),
        ("left lung", 2),
        ("lung (R)", 3),
        ("lungs", 5),
        ("abdominal organs", 7),
        ("gluteal muscles", 6),
    ],
)
def test_group_lookup(vocab, term, count):
    names = vocab.lookup(term)
    assert len(names) == count and len(set(names)) == count
    assert names == sorted(names, key=lambda n: vocab[n].id)


@pytest.mark.parametrize("side", ["left", "right"])
def test_every_lateral_form_of_every_pair(vocab, side):
    """Lateral phrasings are derived from the base for every paired structure, not spelt out in the file."""
    short = {"left": ["l", "lt", "sinistral"], "right": ["r", "rt", "dextral"]}[side]
    for s in vocab:
        if s.laterality != side:
            continue
        base = s.base.replace("_", " ")
        forms = [f"{side} {base}", f"{base} {side}", f"{base} ({side[0].upper()})", f"{base}, {side}", f"{side}-sided {base}"]
        forms += [f"{word} {base}" for word in short]
        for form in forms:
            assert vocab.lookup(form) == [s.name], form


def test_every_recognised_phrase_looks_up_to_itself(vocab):
    for phrase, names in vocab.terms().items():
        assert normalize(phrase) == phrase
        assert vocab.lookup(phrase) == sorted(names, key=lambda n: vocab[n].id), phrase


def test_left_group_members_are_left(vocab):
    assert all(vocab[n].laterality == "left" for n in vocab.lookup("left ribs"))


def test_unknown_term_lists_suggestions(vocab):
    with pytest.raises(UnknownStructureError) as raised:
        vocab.lookup("flux capacitor")
    assert str(raised.value).startswith("unknown structure 'flux capacitor'; closest vocabulary terms: ")
    assert len(raised.value.suggestions) == 5 and raised.value.term == "flux capacitor"
    with pytest.raises(UnknownStructureError) as raised:
        vocab.lookup("spleeen")
    assert raised.value.suggestions[0] == "spleen"
    with pytest.raises(KeyError, match="kidney"):  # UnknownStructureError is a KeyError
        vocab["kidney"]


@pytest.mark.parametrize(
    "term,match",
    [
        ("left right kidney", "contradictory laterality"),
        ("left RUL", "contradictory laterality"),
        ("", "empty"),
        (" ,- ", "empty"),
        ("left liver", "no left side"),
        ("left middle lobe", "no left side"),
    ],
)
def test_lookup_errors(vocab, term, match):
    with pytest.raises(ValueError, match=match):
        vocab.lookup(term)


def test_ids_and_label_table(vocab):
    assert structure_ids(["spleen", "liver"]) == [1, 5]
    assert vocab[5].name == "liver" and vocab.by_id(63).name == "inferior_vena_cava"
    rows = vocab.label_table(["kidney_left", "spleen"])
    assert [r["id"] for r in rows] == [3, 1] and rows[0]["display"] == "Left kidney" and len(rows[0]["color"]) == 3
    with pytest.raises(KeyError, match="no structure with id 999"):
        vocab.by_id(999)


def test_closest(vocab):
    assert vocab.closest("livr", n=3)[0] == "liver" and len(vocab.closest("livr", n=3)) == 3


S = "structures:\n"
A = "  - {id: 1, name: a, color: [1, 2, 3]}\n"
BAD_FILES = {
    "duplicate ids": S + A + "  - {id: 1, name: b, color: [4, 5, 6]}\n",
    "duplicate names": S + A + "  - {id: 2, name: a, color: [4, 5, 6]}\n",
    "unknown members": S + A + "groups:\n  g: {members: [a, nope]}\n",
    "duplicate colours": S + A + "  - {id: 2, name: b, color: [1, 2, 3]}\n",
    "not RGB 0-255": S + "  - {id: 1, name: a, color: [1, 2, 300]}\n",
    "not a list of 3 integers": S + "  - {id: 1, name: a, color: red}\n",
    "not a symmetric counterpart": S + "  - {id: 1, name: a_left, laterality: left, base: a, pair: b, color: [1, 2, 3]}\n"
    "  - {id: 2, name: b, color: [4, 5, 6]}\n",
    "unknown region": S + "  - {id: 1, name: a, region: belly, color: [1, 2, 3]}\n",
    "unknown keys": S + "  - {id: 1, name: a, synonym: [x], color: [1, 2, 3]}\n",
    "missing": S + "  - {id: 1, name: a}\n",
    "ambiguous phrases": S
    + "  - {id: 1, name: a, synonyms: [x], color: [1, 2, 3]}\n  - {id: 2, name: b, synonyms: [x], color: [4, 5, 6]}\n",
    "is the base of no structure": S + A + "base_synonyms:\n  kidny: [renal]\n",
    "version": "version: 7\n" + S + A,
    "no 'structures' list": "groups: {}\n",
}


@pytest.mark.parametrize("problem", list(BAD_FILES))
def test_bad_vocabulary_file_is_named(tmp_path, problem):
    path = tmp_path / "vocab.yaml"
    path.write_text(BAD_FILES[problem])
    with pytest.raises(ValueError, match=problem) as raised:
        Vocabulary.from_yaml(path)
    assert str(path) in str(raised.value)


def test_missing_vocabulary_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="invalid vocabulary file .*nowhere.yaml"):
        Vocabulary.from_yaml(tmp_path / "nowhere.yaml")


def test_small_vocabulary_from_plain_data():
    from textseg.vocabulary import Structure

    structures = [
        Structure(1, "kidney_left", "Left kidney", (), "abdomen", "organ", (1, 2, 3), "left", "kidney_right", "kidney"),
        Structure(2, "kidney_right", "Right kidney", (), "abdomen", "organ", (4, 5, 6), "right", "kidney_left", "kidney"),
        Structure(3, "liver", "Liver", ("hepatic",), "abdomen", "organ", (7, 8, 9)),
    ]
    vocab = Vocabulary(structures, {"solid organs": ["liver", "kidney_left", "kidney_right"]}, base_synonyms={"kidney": ["renal"]})
    assert len(vocab) == 3 and "liver" in vocab and "hepatic" not in vocab
    assert vocab.lookup("renal, left") == ["kidney_left"]
    assert vocab.lookup("solid organs") == ["kidney_left", "kidney_right", "liver"]
    assert vocab.lookup("right solid organs") == ["kidney_right"]


def test_default_file_is_packaged_and_cached():
    assert DEFAULT_VOCABULARY_PATH.is_file() and DEFAULT_VOCABULARY_PATH.parent.name == "data"
    assert load_vocabulary() is load_vocabulary(DEFAULT_VOCABULARY_PATH)


def test_bundle_classes_have_distinguishable_colours():
    """Structures shown together (the bundle's classes) must not share a near-identical colour in OHIF/Slicer."""
    import itertools

    from conftest import BUNDLE_DIR

    from textseg.bundle import read_config_value

    vocab = load_vocabulary()
    names = read_config_value(BUNDLE_DIR, "inference.json", "class_names")
    for a, b in itertools.combinations(names, 2):
        distance = sum((x - y) ** 2 for x, y in zip(vocab[a].color, vocab[b].color)) ** 0.5
        assert distance >= 30, f"{a} {vocab[a].color} and {b} {vocab[b].color} look alike (RGB distance {distance:.0f})"
