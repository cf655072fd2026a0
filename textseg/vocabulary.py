"""The vocabulary of anatomical structures: the only module that knows names, ids, colours and synonyms.

Its data live in ``textseg/data/vocabulary.yaml``. :meth:`Vocabulary.lookup` turns one phrase
("left kidney", "kidney (L)", "IVC", "hepatic", "both kidneys", "ribs") into canonical names.
Laterality is always the patient's side.
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

__all__ = ["Structure", "Vocabulary", "load_vocabulary", "structure_ids", "UnknownStructureError", "DEFAULT_VOCABULARY_PATH"]

DEFAULT_VOCABULARY_PATH = Path(__file__).parent / "data" / "vocabulary.yaml"

SIDE_WORDS = {
    "left": "left", "l": "left", "lt": "left", "sinistral": "left", "sinister": "left", "sin": "left", "leftsided": "left",
    "right": "right", "r": "right", "rt": "right", "dextral": "right", "dexter": "right", "dx": "right", "rightsided": "right",
}
BOTH_WORDS = {"both", "bilateral", "bilat", "all", "each"}
_FILLER = {"the", "a", "an", "of", "sided", "side", "organ", "tissue", "parenchyma", "region", "area", "volume", "mask"}
REGIONS = {"head_neck", "thorax", "abdomen", "pelvis", "spine", "upper_limb", "lower_limb", "whole_body"}
CATEGORIES = {"organ", "vessel", "bone", "muscle", "lesion", "other"}


class UnknownStructureError(KeyError):
    """A phrase that names no vocabulary structure; ``suggestions`` holds the closest known terms."""

    def __init__(self, term: str, suggestions: Sequence[str] = ()):
        super().__init__(term)
        self.term = term
        self.suggestions = list(suggestions)

    def __str__(self) -> str:
        hint = f"; closest vocabulary terms: {', '.join(self.suggestions)}" if self.suggestions else ""
        return f"unknown structure {self.term!r}{hint}"


@dataclass(frozen=True)
class Structure:
    """One structure of the vocabulary."""

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
    """Lower case, ``_``/``-``/punctuation to spaces, collapsed whitespace ("Gall-Bladder" -> "gall bladder")."""
    text = term.lower().replace("left-sided", "leftsided").replace("right-sided", "rightsided")
    text = re.sub(r"[_\-/,;:.()\[\]!?'\"]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


class Vocabulary:
    """Structures, groups and the phrase table built from them.

    Args:
        structures: every structure, with unique ids, names and colours.
        groups: group term -> member names (e.g. "kidneys" -> [kidney_left, kidney_right]).
        group_synonyms: group term -> other phrases for it.
        base_synonyms: base of paired structures (e.g. "kidney") -> synonyms ("renal").
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
        self.groups = {normalize(g): list(m) for g, m in (groups or {}).items()}
        self.group_synonyms = {normalize(g): list(s) for g, s in (group_synonyms or {}).items()}
        self.base_synonyms = {b: list(s) for b, s in (base_synonyms or {}).items()}
        self._validate()
        self._table: dict[str, list[str]] | None = None
        self._sided: dict[tuple[str, str], str] | None = None

    def _validate(self) -> None:
        problems = []
        if len(self._by_name) != len(self._structures):
            problems.append("duplicate structure names")
        if len(self._by_id) != len(self._structures):
            seen, dup = set(), set()
            for s in self._structures:
                (dup if s.id in seen else seen).add(s.id)
            problems.append(f"duplicate ids {sorted(dup)}")
        colours = [s.color for s in self._structures]
        if len(set(colours)) != len(colours):
            problems.append("duplicate colours " + str(sorted({c for c in colours if colours.count(c) > 1})))
        for s in self._structures:
            if len(s.color) != 3 or any(not 0 <= c <= 255 for c in s.color):
                problems.append(f"{s.name}: colour {s.color} is not RGB 0-255")
            if s.region not in REGIONS:
                problems.append(f"{s.name}: unknown region {s.region!r}")
            if s.category not in CATEGORIES:
                problems.append(f"{s.name}: unknown category {s.category!r}")
            if s.laterality not in (None, "left", "right"):
                problems.append(f"{s.name}: laterality {s.laterality!r} is not left/right")
            if s.pair is not None:
                other = self._by_name.get(s.pair)
                if other is None or other.pair != s.name or other.laterality == s.laterality or other.base != s.base:
                    problems.append(f"{s.name}: pair {s.pair!r} is not a symmetric counterpart")
        for group, members in self.groups.items():
            unknown = [m for m in members if m not in self._by_name]
            if unknown:
                problems.append(f"group {group!r}: unknown members {unknown}")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> Vocabulary:
        """Load and validate a vocabulary file; errors name the file and the problem."""
        path = Path(path)
        try:
            content = yaml.safe_load(path.read_text())
            structures = [
                Structure(
                    id=int(e["id"]), name=str(e["name"]), display=str(e.get("display", e["name"])),
                    synonyms=tuple(str(s) for s in e.get("synonyms", ())), region=str(e.get("region", "whole_body")),
                    category=str(e.get("category", "other")), color=tuple(int(c) for c in e["color"]),
                    laterality=e.get("laterality"), pair=e.get("pair"), base=e.get("base"),
                )
                for e in content["structures"]
            ]
            groups = {g: v["members"] for g, v in (content.get("groups") or {}).items()}
            group_synonyms = {g: v.get("synonyms", []) for g, v in (content.get("groups") or {}).items()}
            return cls(structures, groups, group_synonyms, content.get("base_synonyms") or {})
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"invalid vocabulary file {path}: {e}") from e

    # --- access -------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Canonical names in id order."""
        return [s.name for s in self._structures]

    def __len__(self) -> int:
        return len(self._structures)

    def __iter__(self) -> Iterator[Structure]:
        return iter(self._structures)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, key: str | int) -> Structure:
        if isinstance(key, int) and not isinstance(key, bool):
            return self.by_id(key)
        if key in self._by_name:
            return self._by_name[key]
        raise UnknownStructureError(str(key), self.closest(str(key)))

    def by_id(self, structure_id: int) -> Structure:
        if structure_id not in self._by_id:
            raise KeyError(f"no structure with id {structure_id} (ids run from {self._structures[0].id} to {self._structures[-1].id})")
        return self._by_id[structure_id]

    def colors(self) -> dict[str, tuple[int, int, int]]:
        return {s.name: s.color for s in self._structures}

    def label_table(self, names: Sequence[str]) -> list[dict]:
        """``[{"id", "name", "display", "color"}]`` for ``names`` (in that order)."""
        return [{"id": s.id, "name": s.name, "display": s.display, "color": list(s.color)} for s in (self[n] for n in names)]

    # --- phrases ------------------------------------------------------------------------------------
    def _build(self) -> None:
        table: dict[str, list[str]] = {}
        sided: dict[tuple[str, str], str] = {}

        def add(term: str, names: Sequence[str]) -> None:
            key = normalize(term)
            if key:
                entry = table.setdefault(key, [])
                entry.extend(n for n in names if n not in entry)

        bases: dict[str, list[Structure]] = {}
        for s in self._structures:
            if s.laterality and s.base:
                bases.setdefault(s.base, []).append(s)
            else:
                for term in (s.name, s.display, *s.synonyms):
                    add(term, [s.name])
            add(s.name, [s.name])
            add(s.display, [s.name])
        for base, members in bases.items():
            base_terms = [base, base.replace("_", " "), *self.base_synonyms.get(base, [])]
            base_terms += [m.display.lower().replace(m.laterality, "", 1) for m in members]
            for term in base_terms:
                key = normalize(term)
                if not key:
                    continue
                add(key, [m.name for m in members])  # side-less: every side
                for m in members:
                    sided[(m.laterality, key)] = m.name
        for group, members in self.groups.items():
            for term in (group, *self.group_synonyms.get(group, [])):
                add(term, members)
        self._table, self._sided = table, sided

    def terms(self) -> dict[str, list[str]]:
        """Every recognised side-less phrase (normalised) -> canonical names."""
        if self._table is None:
            self._build()
        return self._table  # type: ignore[return-value]

    def _match(self, core: str) -> list[str] | None:
        table = self.terms()
        if core in table:
            return table[core]
        for singular in (core[:-2] if core.endswith("es") else None, core[:-1] if core.endswith("s") else None):
            if singular and singular in table:
                return table[singular]
        return None

    def lookup(self, term: str) -> list[str]:
        """Canonical names for one phrase, in id order.

        Raises:
            ValueError: empty phrase, or both sides named ("left right kidney").
            UnknownStructureError: nothing matches; the error lists the closest terms.
        """
        if not isinstance(term, str) or not normalize(term):
            raise ValueError("empty structure name")
        text = normalize(term)
        if text in self._by_name:
            return [text]
        words = text.split()
        sides = {SIDE_WORDS[w] for w in words if w in SIDE_WORDS}
        core_words = [w for w in words if w not in SIDE_WORDS and w not in BOTH_WORDS]
        if len(sides) > 1:
            raise ValueError(f"contradictory laterality in {term!r}: both left and right")
        core = " ".join(core_words)
        names = self._match(core) if core else None
        if names is None:
            core = " ".join(w for w in core_words if w not in _FILLER)
            names = self._match(core) if core else None
        if names is None:
            # the whole phrase may be a term that contains a side word ("left lung")
            names = self._match(" ".join(w for w in words if w not in BOTH_WORDS))
            sides = set() if names is not None else sides
        if names is None:
            raise UnknownStructureError(term, self.closest(term))
        if sides:
            (side,) = sides
            self.terms()
            exact = self._sided.get((side, core)) if self._sided else None  # type: ignore[union-attr]
            if exact:
                return [exact]
            lateral = [n for n in names if self._by_name[n].laterality == side]
            if not lateral:
                raise ValueError(f"{term!r}: {', '.join(names)} has no {side} side")
            names = lateral
        return sorted(names, key=lambda n: self._by_name[n].id)

    def closest(self, term: str, n: int = 5) -> list[str]:
        """The ``n`` recognised phrases closest to ``term`` (for error messages)."""
        candidates = set(self.terms()) | {normalize(s.display) for s in self._structures}
        return difflib.get_close_matches(normalize(term), sorted(candidates), n=n, cutoff=0.0)


@lru_cache(maxsize=8)
def _load(path: str) -> Vocabulary:
    return Vocabulary.from_yaml(path)


def load_vocabulary(path: str | os.PathLike | None = None) -> Vocabulary:
    """The vocabulary at ``path`` (default: the packaged one), loaded once per process."""
    return _load(str(Path(path or DEFAULT_VOCABULARY_PATH).resolve()))


def structure_ids(names: Sequence[str], vocabulary: Vocabulary | None = None) -> list[int]:
    """Vocabulary ids of ``names`` (for label maps); unknown names raise :class:`UnknownStructureError`."""
    vocabulary = vocabulary or load_vocabulary()
    return [vocabulary[name].id for name in names]
