"""The vocabulary of anatomical structures: the only module that knows names, ids, colours and synonyms.

Its data live in ``textseg/data/vocabulary.yaml``. :meth:`Vocabulary.lookup` turns one phrase
("left kidney", "kidney (L)", "IVC", "hepatic", "both kidneys", "ribs") into canonical names.
Laterality is always the patient's side.

Paired structures (``kidney_left``/``kidney_right``) share a side-less ``base`` ("kidney") whose synonyms
("renal") are listed once; every lateral phrasing ("left kidney", "kidney left", "lt kidney",
"kidney (L)", "kidney, left", "sinistral kidney", "left-sided kidney") is derived from those by
:meth:`Vocabulary.lookup`, so the file does not spell them out.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

__all__ = [
    "DEFAULT_VOCABULARY_PATH",
    "Structure",
    "UnknownStructureError",
    "Vocabulary",
    "load_vocabulary",
    "SIDE_WORDS",
    "normalize",
    "structure_ids",
]

DEFAULT_VOCABULARY_PATH = Path(__file__).parent / "data" / "vocabulary.yaml"
"""The packaged vocabulary file."""

SIDE_WORDS = {
    "left": "left",
    "l": "left",
    "lt": "left",
    "sinistral": "left",
    "sinister": "left",
    "sin": "left",
    "leftsided": "left",
    "right": "right",
    "r": "right",
    "rt": "right",
    "dextral": "right",
    "dexter": "right",
    "dx": "right",
    "rightsided": "right",
}
"""Words naming a side (after :func:`normalize`) -> ``"left"`` or ``"right"``."""
BOTH_WORDS = {"both", "bilateral", "bilat", "all", "each"}
"""Words asking for every side; dropped before matching."""
_FILLER = {"the", "a", "an", "of", "sided", "side", "organ", "tissue", "parenchyma", "region", "area", "volume", "mask"}
REGIONS = ("head_neck", "thorax", "abdomen", "pelvis", "spine", "upper_limb", "lower_limb", "whole_body")
CATEGORIES = ("organ", "vessel", "bone", "muscle", "lesion", "other")
_STRUCTURE_KEYS = {"id", "name", "display", "synonyms", "region", "category", "color", "laterality", "pair", "base"}
_FILE_KEYS = {"version", "structures", "groups", "base_synonyms"}
_SUPPORTED_VERSIONS = (1,)


class UnknownStructureError(KeyError):
    """A phrase that names no vocabulary structure.

    Args:
        term: the phrase as given.
        suggestions: the closest recognised phrases, best first.
    """

    def __init__(self, term: str, suggestions: Sequence[str] = ()):
        super().__init__(term)
        self.term = term
        self.suggestions = list(suggestions)

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        hint = f"; closest vocabulary terms: {', '.join(self.suggestions)}" if self.suggestions else ""
        return f"unknown structure {self.term!r}{hint}"


@dataclass(frozen=True)
class Structure:
    """One structure of the vocabulary.

    Attributes:
        id: label id (1-117 are TotalSegmentator v2 'total' ids).
        name: canonical snake_case name.
        display: human readable name ("Right kidney").
        synonyms: lower-case phrases naming this structure (for paired structures, phrases naming this
            side only; side-less synonyms belong to the base).
        region: body region, one of :data:`REGIONS`.
        category: one of :data:`CATEGORIES`.
        color: RGB, 0-255.
        laterality: ``"left"``/``"right"`` (patient's side) or None for unpaired structures.
        pair: canonical name of the other side's structure, if any.
        base: side-less name shared by both sides ("kidney"), for lateral structures.
    """

    id: int
    name: str
    display: str
    synonyms: tuple[str, ...]
    region: str
    category: str
    color: tuple[int, int, int]
    laterality: str | None = None
    pair: str | None = None
    base: str | None = None


def normalize(term: str) -> str:
    """Lower case; ``_``, ``-`` and punctuation become spaces; whitespace collapsed ("Gall-Bladder" -> "gall bladder").

    "left-sided"/"right-sided" become one word ("leftsided") so that they read as a side.
    """
    text = term.lower().replace("left-sided", "leftsided").replace("right-sided", "rightsided")
    text = re.sub(r"[_\-/,;:.()\[\]{}!?'\"`’]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def _singulars(phrase: str) -> list[str]:
    """Singular candidates of a phrase whose last word may be an English plural ("arteries" -> "artery")."""
    if len(phrase) < 4:
        return []
    candidates = []
    if phrase.endswith("ies"):
        candidates.append(phrase[:-3] + "y")
    if phrase.endswith("es"):
        candidates.append(phrase[:-2])
    if phrase.endswith("s") and not phrase.endswith("ss"):
        candidates.append(phrase[:-1])
    return candidates


class Vocabulary:
    """Structures, groups and the phrase table built from them (plain data, no I/O; see :meth:`from_yaml`).

    Args:
        structures: every structure, with unique ids, names and colours.
        groups: group term -> member names (e.g. ``"kidneys" -> [kidney_left, kidney_right]``).
        group_synonyms: group term -> other phrases for the group.
        base_synonyms: base of paired structures (``"kidney"``) -> side-less synonyms (``["renal"]``).

    Raises:
        ValueError: duplicate ids/names/colours, a bad colour/region/category/laterality, a pair that is not
            symmetric, an unknown group member or base, or one phrase naming two different things.
    """

    def __init__(
        self,
        structures: Sequence[Structure],
        groups: Mapping[str, Sequence[str]] | None = None,
        group_synonyms: Mapping[str, Sequence[str]] | None = None,
        base_synonyms: Mapping[str, Sequence[str]] | None = None,
    ):
        self._structures = sorted(structures, key=lambda s: s.id)
        self._by_name = {s.name: s for s in self._structures}
        self._by_id = {s.id: s for s in self._structures}
        self.groups: dict[str, list[str]] = {normalize(g): list(m) for g, m in (groups or {}).items()}
        self.group_synonyms: dict[str, list[str]] = {normalize(g): list(s) for g, s in (group_synonyms or {}).items()}
        self.base_synonyms: dict[str, list[str]] = {b: list(s) for b, s in (base_synonyms or {}).items()}
        self._validate()
        # the phrase table is small (~1000 phrases, ~1 ms): built here so that ambiguous phrases fail early
        self._table = self._build()

    # --- construction ---------------------------------------------------------------------------------
    def _validate(self) -> None:
        problems = []
        if not self._structures:
            problems.append("no structures")
        for label, values in (("ids", [s.id for s in self._structures]), ("names", [s.name for s in self._structures])):
            dup = sorted({v for v in values if values.count(v) > 1}, key=str)
            if dup:
                problems.append(f"duplicate {label} {dup}")
        owners: dict[tuple, list[str]] = {}
        for s in self._structures:
            owners.setdefault(tuple(s.color), []).append(s.name)
            if len(s.color) != 3 or any(not isinstance(c, int) or not 0 <= c <= 255 for c in s.color):
                problems.append(f"{s.name}: colour {list(s.color)} is not RGB 0-255")
            if s.region not in REGIONS:
                problems.append(f"{s.name}: unknown region {s.region!r} (use one of {', '.join(REGIONS)})")
            if s.category not in CATEGORIES:
                problems.append(f"{s.name}: unknown category {s.category!r} (use one of {', '.join(CATEGORIES)})")
            if s.laterality not in (None, "left", "right"):
                problems.append(f"{s.name}: laterality {s.laterality!r} is not left/right")
            if (s.base or s.pair) and not s.laterality:
                problems.append(f"{s.name}: base/pair given without laterality")
            if s.pair is not None:
                other = self._by_name.get(s.pair)
                if other is None or other.pair != s.name or other.laterality == s.laterality or other.base != s.base:
                    problems.append(f"{s.name}: pair {s.pair!r} is not a symmetric counterpart")
        for colour, names in owners.items():
            if len(names) > 1:
                problems.append(f"duplicate colours {list(colour)} for {names}")
        for group, members in self.groups.items():
            unknown = [m for m in members if m not in self._by_name]
            if unknown:
                problems.append(f"group {group!r}: unknown members {unknown}")
            if not members:
                problems.append(f"group {group!r}: no members")
        for group in self.group_synonyms:
            if group not in self.groups:
                problems.append(f"synonyms for unknown group {group!r}")
        bases = {s.base for s in self._structures if s.base}
        for base in self.base_synonyms:
            if base not in bases:
                problems.append(f"base_synonyms: {base!r} is the base of no structure")
        if problems:
            raise ValueError("; ".join(problems))

    def _build(self) -> dict[str, list[str]]:
        """Phrase (normalised) -> canonical names; raises ValueError when a phrase names two different things."""
        table: dict[str, list[str]] = {}
        source: dict[str, str] = {}
        clashes = []

        def add(term: str, names: Sequence[str], owner: str) -> None:
            key = normalize(term)
            if not key:
                return
            if key in table and sorted(table[key]) != sorted(names):
                clashes.append(f"{key!r} names both {source[key]} and {owner}")
                return
            table.setdefault(key, list(names))
            source.setdefault(key, owner)

        members_of: dict[str, list[str]] = {}
        for s in self._structures:
            for term in (s.name, s.display, *s.synonyms):
                add(term, [s.name], s.name)
            if s.base:
                members_of.setdefault(s.base, []).append(s.name)
        for base, members in members_of.items():
            side_less = [base, *self.base_synonyms.get(base, [])]
            # "Left kidney" -> "kidney": the display name without its side word
            side_less += [" ".join(w for w in normalize(self[m].display).split() if w not in SIDE_WORDS) for m in members]
            for term in side_less:
                add(term, members, f"base {base!r}")
        for group, members in self.groups.items():
            for term in (group, *self.group_synonyms.get(group, [])):
                add(term, members, f"group {group!r}")
        if clashes:
            raise ValueError("ambiguous phrases: " + "; ".join(clashes))
        return table

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> Vocabulary:
        """Load and validate a vocabulary file (schema: ``textseg/data/vocabulary.yaml``).

        Raises:
            ValueError: the file is missing, not YAML, or invalid; the message names the file and the problem.
        """
        path = Path(path)
        try:
            content = yaml.safe_load(path.read_text(encoding="utf-8"))
            if not isinstance(content, dict) or "structures" not in content:
                raise ValueError("no 'structures' list")
            unknown_keys = set(content) - _FILE_KEYS
            if unknown_keys:
                raise ValueError(f"unknown top-level keys {sorted(unknown_keys)} (expected {sorted(_FILE_KEYS)})")
            if content.get("version", 1) not in _SUPPORTED_VERSIONS:
                raise ValueError(f"version {content['version']!r} is not supported (supported: {_SUPPORTED_VERSIONS})")
            structures = [_structure(entry, k) for k, entry in enumerate(content["structures"])]
            groups_section = content.get("groups") or {}
            groups, group_synonyms = {}, {}
            for group, entry in groups_section.items():
                if not isinstance(entry, dict) or "members" not in entry:
                    raise ValueError(f"group {group!r} has no 'members' list")
                groups[str(group)] = [str(m) for m in entry["members"]]
                group_synonyms[str(group)] = [str(s) for s in entry.get("synonyms") or []]
            base_synonyms = {str(b): [str(s) for s in v or []] for b, v in (content.get("base_synonyms") or {}).items()}
            return cls(structures, groups, group_synonyms, base_synonyms)
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"invalid vocabulary file {path}: {e}") from e

    # --- access ---------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Canonical names in id order."""
        return [s.name for s in self._structures]

    def __len__(self) -> int:
        return len(self._structures)

    def __iter__(self) -> Iterator[Structure]:
        """Structures in id order."""
        return iter(self._structures)

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is a canonical name (use :meth:`lookup` for phrases)."""
        return name in self._by_name

    def __getitem__(self, key: str | int) -> Structure:
        """The structure with this canonical name or id.

        Raises:
            UnknownStructureError: an unknown name (with the closest phrases).
            KeyError: an unknown id.
        """
        if isinstance(key, int) and not isinstance(key, bool):
            return self.by_id(key)
        if key in self._by_name:
            return self._by_name[key]
        raise UnknownStructureError(str(key), self.closest(str(key)))

    def by_id(self, structure_id: int) -> Structure:
        """The structure with label id ``structure_id``; KeyError naming the id range otherwise."""
        if structure_id not in self._by_id:
            first, last = self._structures[0].id, self._structures[-1].id
            raise KeyError(f"no structure with id {structure_id} (ids run from {first} to {last})")
        return self._by_id[structure_id]

    def colors(self) -> dict[str, tuple[int, int, int]]:
        """Canonical name -> RGB colour, in id order."""
        return {s.name: s.color for s in self._structures}

    def label_table(self, names: Sequence[str]) -> list[dict]:
        """``[{"id", "name", "display", "color"}]`` for ``names`` (in that order), for metadata and docs."""
        return [{"id": s.id, "name": s.name, "display": s.display, "color": list(s.color)} for s in (self[n] for n in names)]

    # --- phrases --------------------------------------------------------------------------------------
    def terms(self) -> dict[str, list[str]]:
        """Every recognised side-less phrase, canonical name and display name (normalised) -> canonical names.

        Lateral phrasings ("kidney (L)") are not listed: :meth:`lookup` derives them from these phrases.
        """
        return self._table

    def _match(self, phrase: str) -> list[str] | None:
        if phrase in self._table:
            return self._table[phrase]
        for singular in _singulars(phrase):
            if singular in self._table:
                return self._table[singular]
        return None

    def lookup(self, term: str) -> list[str]:
        """Canonical names for one phrase (not a sentence), in id order.

        Case, punctuation, ``-``/``_`` and plurals are ignored; the side may be written in any usual form
        ("left kidney", "kidney left", "lt kidney", "kidney (L)", "kidney, left", "sinistral kidney",
        "right-sided kidney"). A side-less base ("kidney", "renal") or "both ..."/"bilateral ..." gives
        both sides; a group ("ribs", "lumbar vertebrae") gives its members.

        Raises:
            ValueError: an empty phrase, both sides named ("left right kidney"), or a side of an unpaired
                structure ("left liver").
            UnknownStructureError: nothing matches; the error lists the closest recognised phrases.
        """
        if not isinstance(term, str):
            raise ValueError(f"a structure phrase must be a string, got {type(term).__name__}")
        text = normalize(term)
        if not text:
            raise ValueError(f"empty structure name {term!r}")
        names = self._match(text)  # whole phrases first: "left lung", "l spine", "rib left 3"
        if names is not None:
            return self._ordered(names)
        words = text.split()
        sides = {SIDE_WORDS[w] for w in words if w in SIDE_WORDS}
        if len(sides) > 1:
            raise ValueError(f"contradictory laterality in {term!r}: it names both the left and the right side")
        core_words = [w for w in words if w not in SIDE_WORDS and w not in BOTH_WORDS]
        names = self._match(" ".join(core_words)) if core_words else None
        if names is None:
            content = [w for w in core_words if w not in _FILLER]
            names = self._match(" ".join(content)) if content else None
        if names is None:
            raise UnknownStructureError(term, self.closest(term))
        if sides:
            (side,) = sides
            lateral = [n for n in names if self._by_name[n].laterality == side]
            if not lateral:
                what = self._by_name[names[0]].display if len(names) == 1 else repr(" ".join(core_words))
                if all(self._by_name[n].pair for n in names):  # "left RUL": the phrase already names the other side
                    other = ", ".join(self._by_name[self._by_name[n].pair].display for n in names)
                    raise ValueError(f"contradictory laterality in {term!r}: {what} is not on the {side} side (did you mean {other}?)")
                raise ValueError(f"{term!r} asks for the {side} side, but {what} has no {side} side in the vocabulary")
            names = lateral
        return self._ordered(names)

    def _ordered(self, names: Sequence[str]) -> list[str]:
        return sorted(names, key=lambda n: self._by_name[n].id)

    def closest(self, term: str, n: int = 5) -> list[str]:
        """The ``n`` recognised phrases closest to ``term`` (difflib ratio), best first, for error messages."""
        return difflib.get_close_matches(normalize(str(term)), list(self._table), n=n, cutoff=0.0)


def _structure(entry: object, index: int) -> Structure:
    """One ``structures`` entry of a vocabulary file -> :class:`Structure` (ValueError naming the entry)."""
    if not isinstance(entry, dict):
        raise ValueError(f"structures[{index}] is not a mapping")
    where = f"structures[{index}] ({entry.get('name', '?')})"
    missing = [k for k in ("id", "name", "color") if k not in entry]
    if missing:
        raise ValueError(f"{where}: missing {missing}")
    unknown = set(entry) - _STRUCTURE_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (expected some of {sorted(_STRUCTURE_KEYS)})")
    color = entry["color"]
    if not isinstance(color, (list, tuple)) or not all(isinstance(c, int) and not isinstance(c, bool) for c in color):
        raise ValueError(f"{where}: colour {color!r} is not a list of 3 integers 0-255")
    synonyms = entry.get("synonyms") or ()
    if isinstance(synonyms, str):
        raise ValueError(f"{where}: synonyms must be a list, got the string {synonyms!r}")
    return Structure(
        id=int(entry["id"]),
        name=str(entry["name"]),
        display=str(entry.get("display", entry["name"])),
        synonyms=tuple(str(s) for s in synonyms),
        region=str(entry.get("region", "whole_body")),
        category=str(entry.get("category", "other")),
        color=tuple(color),  # type: ignore[arg-type]
        laterality=entry.get("laterality"),
        pair=entry.get("pair"),
        base=entry.get("base"),
    )


@lru_cache(maxsize=8)
def _load(path: str) -> Vocabulary:
    return Vocabulary.from_yaml(path)


def load_vocabulary(path: str | os.PathLike | None = None) -> Vocabulary:
    """The vocabulary at ``path`` (default: the packaged one), loaded once per process and path."""
    return _load(str(Path(path or DEFAULT_VOCABULARY_PATH).resolve()))


def structure_ids(names: Sequence[str], vocabulary: Vocabulary | None = None) -> list[int]:
    """Vocabulary ids of canonical ``names`` (for label maps); unknown names raise :class:`UnknownStructureError`."""
    vocabulary = vocabulary or load_vocabulary()
    return [vocabulary[name].id for name in names]
