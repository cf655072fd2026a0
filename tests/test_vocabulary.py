import json
from pathlib import Path

import pytest

from textseg.vocabulary import DEFAULT_VOCABULARY_PATH, UnknownStructureError, Vocabulary, load_vocabulary, structure_ids

TOTALSEG_CLASSES = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct" / "totalseg_v2_total_classes.json"


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary()


def test_totalsegmentator_ids_and_names(vocab):
    if not TOTALSEG_CLASSES.exists():
        pytest.skip(f"{TOTALSEG_CLASSES} is not available")
    classes = {int(k): v for k, v in json.loads(TOTALSEG_CLASSES.read_text()).items()}
    assert len(classes) == 117
    assert {i: vocab.by_id(i).name for i in classes} == classes


def test_unique_and_consistent(vocab):
    structures = list(vocab)
    assert len({s.id for s in structures}) == len({s.name for s in structures}) == len({s.color for s in structures}) == len(structures)
    for s in structures:
        if s.pair:
            other = vocab[s.pair]
            assert other.pair == s.name and {s.laterality, other.laterality} == {"left", "right"} and other.base == s.base
    for members in vocab.groups.values():
        assert all(m in vocab for m in members)


def test_dataset_classes_are_covered(vocab):
    for name in ["liver_tumor", "pancreas_tumor", "kidney_tumor", "hepatic_vessel", "rectum", "femoral_head_left", "portal_vein_and_splenic_vein"]:
        assert name in vocab


@pytest.mark.parametrize(
    "term,expected",
    [
        ("Liver", ["liver"]),
        ("hepatic", ["liver"]),
        ("IVC", ["inferior_vena_cava"]),
        ("postcava", ["inferior_vena_cava"]),
        ("left kidney", ["kidney_left"]),
        ("kidney (L)", ["kidney_left"]),
        ("lt kidney", ["kidney_left"]),
        ("kidney left", ["kidney_left"]),
        ("kidney, left", ["kidney_left"]),
        ("sinistral kidney", ["kidney_left"]),
        ("dextral kidney", ["kidney_right"]),
        ("right-sided kidney", ["kidney_right"]),
        ("R kidney", ["kidney_right"]),
        ("kidneys", ["kidney_right", "kidney_left"]),
        ("both kidneys", ["kidney_right", "kidney_left"]),
        ("renal", ["kidney_right", "kidney_left"]),
        ("right adrenal", ["adrenal_gland_right"]),
        ("adrenal glands", ["adrenal_gland_right", "adrenal_gland_left"]),
        ("gall-bladder", ["gallbladder"]),
        ("Urinary_Bladder", ["urinary_bladder"]),
        ("bladder", ["urinary_bladder"]),
        ("L3", ["vertebrae_L3"]),
        ("rib_left_3", ["rib_left_3"]),
        ("left psoas", ["iliopsoas_left"]),
    ],
)
def test_lookup(vocab, term, expected):
    assert vocab.lookup(term) == expected


@pytest.mark.parametrize("term,count", [("ribs", 24), ("left ribs", 12), ("lumbar vertebrae", 5), ("left lung", 2), ("lungs", 5)])
def test_group_lookup(vocab, term, count):
    names = vocab.lookup(term)
    assert len(names) == count and len(set(names)) == count


def test_left_group_members_are_left(vocab):
    assert all(vocab[n].laterality == "left" for n in vocab.lookup("left ribs"))


def test_unknown_term_lists_suggestions(vocab):
    with pytest.raises(UnknownStructureError) as raised:
        vocab.lookup("flux capacitor")
    assert "flux capacitor" in str(raised.value) and len(raised.value.suggestions) == 5
    with pytest.raises(UnknownStructureError) as raised:
        vocab.lookup("spleeen")
    assert raised.value.suggestions[0] == "spleen"


@pytest.mark.parametrize("term,match", [("left right kidney", "contradictory laterality"), ("", "empty"), ("left liver", "no left side")])
def test_lookup_errors(vocab, term, match):
    with pytest.raises(ValueError, match=match):
        vocab.lookup(term)


def test_ids_and_label_table(vocab):
    assert structure_ids(["spleen", "liver"]) == [1, 5]
    row = vocab.label_table(["kidney_left"])[0]
    assert row["id"] == 3 and row["display"] == "Left kidney" and len(row["color"]) == 3
    with pytest.raises(KeyError, match="no structure with id 999"):
        vocab.by_id(999)


BAD_FILES = {
    "duplicate id": "structures:\n  - {id: 1, name: a, color: [1, 2, 3]}\n  - {id: 1, name: b, color: [4, 5, 6]}\n",
    "unknown members": "structures:\n  - {id: 1, name: a, color: [1, 2, 3]}\ngroups:\n  g: {members: [a, nope]}\n",
    "duplicate colours": "structures:\n  - {id: 1, name: a, color: [1, 2, 3]}\n  - {id: 2, name: b, color: [1, 2, 3]}\n",
    "not a symmetric counterpart": "structures:\n  - {id: 1, name: a_left, laterality: left, base: a, pair: b, color: [1, 2, 3]}\n"
    "  - {id: 2, name: b, color: [4, 5, 6]}\n",
}


@pytest.mark.parametrize("problem", list(BAD_FILES))
def test_bad_vocabulary_file_is_named(tmp_path, problem):
    path = tmp_path / "vocab.yaml"
    path.write_text(BAD_FILES[problem])
    with pytest.raises(ValueError, match=problem) as raised:
        Vocabulary.from_yaml(path)
    assert str(path) in str(raised.value)


def test_default_file_is_packaged():
    assert DEFAULT_VOCABULARY_PATH.is_file() and DEFAULT_VOCABULARY_PATH.parent.name == "data"
