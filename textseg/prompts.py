"""Prompt -> targets, each a vocabulary structure or a geometric query, with an explanation.

"segment the liver and kidneys" -> liver, kidney_right, kidney_left. Phrases are looked up in the
vocabulary (synonyms, groups, plurals, laterality in every usual form); a misspelt phrase is corrected
when it is close to one vocabulary term; other wording is matched by text-embedding similarity and
accepted only above a threshold. Position- and size-driven prompts (FLanS: "the largest organ",
"the organ in the right upper quadrant", "the organ left of the stomach") become
:class:`GeometricQuery` targets, answered after segmentation from the masks' volumes and centroids
in patient (world) coordinates (:func:`select_by_query`), so the image orientation does not matter.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from textseg.vocabulary import SIDE_WORDS, UnknownStructureError, Vocabulary, load_vocabulary, normalize

__all__ = [
    "MAX_PROMPT_LENGTH",
    "PromptError",
    "GeometricQuery",
    "Target",
    "Resolution",
    "PromptResolver",
    "split_prompt",
    "resolve",
    "resolve_structures",
    "resolve_prompt",
    "prompt_structures",
    "resolution_structures",
    "select_by_query",
    "check_prompt_case",
]

MAX_PROMPT_LENGTH = 1000

_LEADING = re.compile(
    r"^(?:please\s+)?(?:(?:segment|show|find|delineate|contour|outline|label|mark|highlight|get|extract|give)(?:\s+me)?(?:\s+|$))?"
    r"(?:(?:all\s+of\s+)?the(?:\s+|$)|an?(?:\s+|$))?",
)
_SEPARATORS = re.compile(r"\s*(?:,|;|\+|&|\band\b|\bplus\b|\bas well as\b)\s*")
_ARTICLES = re.compile(r"^(?:the|an?|also)\s+")

_KINDS = r"(organ|structure|vessel|bone|muscle)s?"
_SIZE = re.compile(rf"^(largest|biggest|smallest|tiniest)\s+{_KINDS}(?:\s+(?:in|of|on)\s+(?:the\s+)?(.+?))?$")
_QUADRANT = re.compile(rf"^{_KINDS}\s+(?:in|of)\s+(?:the\s+)?(right|left)\s+(upper|lower)\s+quadrant$")
_QUADRANT_ABBREVIATIONS = {"ruq": ("right", "upper"), "luq": ("left", "upper"), "rlq": ("right", "lower"), "llq": ("left", "lower")}
_QUADRANT_SHORT = re.compile(rf"^{_KINDS}\s+(?:in|of)\s+(?:the\s+)?(ruq|luq|rlq|llq)$")
_RELATION = re.compile(
    rf"^{_KINDS}\s+(?:(?:to\s+the\s+|on\s+the\s+)?(left|right)\s+(?:of|from)|(above|below|superior\s+to|inferior\s+to|"
    rf"in\s+front\s+of|anterior\s+to|behind|posterior\s+to))\s+(?:the\s+)?(.+)$"
)
_RELATION_NAMES = {
    "left": "left_of",
    "right": "right_of",
    "above": "above",
    "superior to": "above",
    "below": "below",
    "inferior to": "below",
    "in front of": "anterior_to",
    "anterior to": "anterior_to",
    "behind": "posterior_to",
    "posterior to": "posterior_to",
}
# unit vector of each relation in RAS+ world coordinates (x: patient's right, y: anterior, z: superior)
_DIRECTIONS = {
    "left_of": (-1.0, 0.0, 0.0),
    "right_of": (1.0, 0.0, 0.0),
    "anterior_to": (0.0, 1.0, 0.0),
    "posterior_to": (0.0, -1.0, 0.0),
    "above": (0.0, 0.0, 1.0),
    "below": (0.0, 0.0, -1.0),
}
_REGIONS = {  # region -> (axis, sign) halves relative to the centre of the segmented structures
    "upper abdomen": ((2, 1.0),),
    "lower abdomen": ((2, -1.0),),
    "abdomen": (),
    "body": (),
    "left side": ((0, -1.0),),
    "right side": ((0, 1.0),),
    "left": ((0, -1.0),),
    "right": ((0, 1.0),),
    "upper body": ((2, 1.0),),
    "lower body": ((2, -1.0),),
    "pelvis": ((2, -1.0),),
}
MIN_OFFSET_MM = 10.0
"""A structure is 'left of' another when its centroid is at least this much further to the patient's left."""


def _category(word: str) -> str | None:
    """Vocabulary category named by a query word; 'structure' means any."""
    return None if word == "structure" else word


class PromptError(ValueError):
    """A prompt that cannot be turned into targets (empty, too long, naming structures the model lacks)."""


@dataclass(frozen=True)
class GeometricQuery:
    """A structure chosen after segmentation by its size or position.

    Attributes:
        kind: ``largest``, ``smallest``, ``quadrant`` or ``relation``.
        category: vocabulary category to choose from (organ, vessel, bone, muscle) or None for any.
        region: ``upper abdomen``, ``left side``, ``right upper quadrant``... (size and quadrant queries).
        relation: ``left_of``, ``right_of``, ``above``, ``below``, ``anterior_to``, ``posterior_to``.
        reference: the structure a relation is measured from.
    """

    kind: str
    category: str | None = None
    region: str | None = None
    relation: str | None = None
    reference: str | None = None


@dataclass
class Target:
    """One thing the prompt asks for: a ``structure`` or a ``query``, and how it was understood."""

    phrase: str
    structure: str | None = None
    query: GeometricQuery | None = None
    explanation: str = ""

    def to_dict(self) -> dict:
        d = {"phrase": self.phrase, "explanation": self.explanation}
        if self.structure:
            d["structure"] = self.structure
        if self.query:
            d["query"] = {k: v for k, v in asdict(self.query).items() if v is not None}
        return d


@dataclass
class Resolution:
    """A resolved prompt: its targets in prompt order."""

    prompt: str
    targets: list[Target] = field(default_factory=list)

    @property
    def structures(self) -> list[str]:
        """Named structures, without duplicates."""
        names: list[str] = []
        for t in self.targets:
            if t.structure and t.structure not in names:
                names.append(t.structure)
        return names

    @property
    def queries(self) -> list[GeometricQuery]:
        return [t.query for t in self.targets if t.query is not None]

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "targets": [t.to_dict() for t in self.targets], "structures": self.structures}

    @classmethod
    def from_dict(cls, d: Mapping) -> Resolution:
        """Inverse of :meth:`to_dict` (the data pipeline carries a resolution as JSON, which survives collation)."""
        targets = [
            Target(
                t["phrase"],
                structure=t.get("structure"),
                query=GeometricQuery(**t["query"]) if t.get("query") else None,
                explanation=t.get("explanation", ""),
            )
            for t in d.get("targets", [])
        ]
        return cls(str(d["prompt"]), targets)


def split_prompt(prompt: str) -> list[str]:
    """Split a prompt into phrases: strip the request verb and articles, split lists and conjunctions;
    a lone side word takes the structure of the next phrase ("left and right kidney")."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("empty prompt: name at least one structure, e.g. 'segment the liver and kidneys'.")
    if len(prompt) > MAX_PROMPT_LENGTH:
        raise PromptError(f"prompt of {len(prompt)} characters is longer than {MAX_PROMPT_LENGTH}.")
    text = re.sub(r"\s+", " ", prompt.strip().lower()).rstrip(".!?")
    text = _LEADING.sub("", text, count=1)
    phrases = [_ARTICLES.sub("", p).strip() for p in _SEPARATORS.split(text)]
    phrases = [p for p in phrases if p]
    if not phrases:
        raise PromptError(f"prompt {prompt!r} names no structure.")
    merged: list[str] = []
    for i, phrase in enumerate(phrases):
        if all(w in SIDE_WORDS for w in phrase.split()):
            following = [w for w in phrases[i + 1].split() if w not in SIDE_WORDS] if i + 1 < len(phrases) else []
            if following:  # "left and right kidney" -> "left kidney", "right kidney"
                phrase = f"{phrase} {' '.join(following)}"
            elif merged:  # "kidney, left" -> "kidney left"
                merged[-1] = f"{merged[-1]} {phrase}"
                continue
        merged.append(phrase)
    return merged


class PromptResolver:
    """Turns prompts into :class:`Resolution` objects; results are cached per prompt.

    Args:
        vocabulary: defaults to the packaged vocabulary.
        encoder: text encoder for wording the vocabulary does not know (``None`` disables it).
        template: prompt template of the embedding table.
        similarity_threshold: minimum cosine similarity to accept an embedding match.
        similarity_margin: minimum lead of the best match over the next structure.
        typo_cutoff: minimum difflib ratio to correct a misspelt phrase.
    """

    def __init__(
        self,
        vocabulary: Vocabulary | None = None,
        encoder: str | None = "minilm",
        template: str | None = None,
        similarity_threshold: float = 0.85,
        similarity_margin: float = 0.05,
        typo_cutoff: float = 0.8,
    ):
        self.vocabulary = vocabulary or load_vocabulary()
        self.encoder = encoder
        self.template = template
        self.similarity_threshold = similarity_threshold
        self.similarity_margin = similarity_margin
        self.typo_cutoff = typo_cutoff
        self._cache: dict[str, Resolution] = {}
        self._words: list[str] | None = None
        self._table = None

    # --- single phrases ------------------------------------------------------------------------------
    def _structure(self, phrase: str) -> tuple[list[str], str]:
        try:
            names = self.vocabulary.lookup(phrase)
            return names, "vocabulary"
        except UnknownStructureError as unknown:
            corrected = self._spelling(phrase)
            if corrected:
                try:
                    return self.vocabulary.lookup(corrected), f"spelling corrected to {corrected!r}"
                except UnknownStructureError:
                    pass
            match = self._embedding_match(phrase)
            if match:
                return [match[0]], f"closest by text embedding (cosine {match[1]:.2f})"
            raise UnknownStructureError(phrase, self._suggestions(phrase, unknown.suggestions)) from None

    def _spelling(self, phrase: str) -> str | None:
        """Correct misspelt words, one by one, towards words of the vocabulary; None if nothing changes."""
        if self._words is None:
            self._words = sorted({w for term in self.vocabulary.terms() for w in term.split()})
        known = set(self._words) | set(SIDE_WORDS)
        corrected = []
        for word in normalize(phrase).split():
            if word not in known and len(word) > 3:
                best = difflib.get_close_matches(word, self._words, n=1, cutoff=self.typo_cutoff)
                word = best[0] if best else word
            corrected.append(word)
        text = " ".join(corrected)
        return text if text != normalize(phrase) else None

    def _embedding_scores(self, phrase: str):
        if self.encoder is None:
            return None
        from textseg.text import DEFAULT_TEMPLATE, create_encoder, vocabulary_embedding_table

        template = self.template or DEFAULT_TEMPLATE
        if self._table is None:  # loaded once per resolver
            self._table = vocabulary_embedding_table(self.encoder, template, vocabulary=self.vocabulary)
        query = create_encoder(self.encoder).encode([template.format(phrase)])[0]
        return self._table.names, (self._table.embeddings @ query).numpy()

    def _embedding_match(self, phrase: str) -> tuple[str, float] | None:
        words = normalize(phrase).split()
        side = {SIDE_WORDS[w] for w in words if w in SIDE_WORDS}
        scored = self._embedding_scores(" ".join(w for w in words if w not in SIDE_WORDS) or phrase)
        if scored is None:
            return None
        names, scores = scored
        order = np.argsort(-scores)
        best = names[order[0]]
        runner_up = next(
            float(scores[i])
            for i in order[1:]
            if self.vocabulary[names[i]].base is None or self.vocabulary[names[i]].base != self.vocabulary[best].base
        )
        if scores[order[0]] < self.similarity_threshold or scores[order[0]] - runner_up < self.similarity_margin:
            return None
        structure = self.vocabulary[best]
        if len(side) == 1 and structure.laterality and structure.laterality not in side and structure.pair:
            best = structure.pair
        return best, float(scores[order[0]])

    def _suggestions(self, phrase: str, lexical: Sequence[str]) -> list[str]:
        suggestions = list(lexical[:3])
        scored = self._embedding_scores(phrase)
        if scored is not None:
            names, scores = scored
            suggestions += [names[i].replace("_", " ") for i in np.argsort(-scores)[:3]]
        return list(dict.fromkeys(suggestions))

    def _query(self, phrase: str) -> GeometricQuery | None:
        text = normalize(phrase)
        if m := _SIZE.match(text):
            size = "largest" if m.group(1) in ("largest", "biggest") else "smallest"
            region = m.group(3)
            if region is not None and region not in _REGIONS:
                raise PromptError(f"unknown region {region!r} in {phrase!r}; known: {', '.join(sorted(_REGIONS))}")
            return GeometricQuery(size, _category(m.group(2)), region=region)
        if m := _QUADRANT.match(text):
            return GeometricQuery("quadrant", _category(m.group(1)), region=f"{m.group(2)} {m.group(3)} quadrant")
        if m := _QUADRANT_SHORT.match(text):
            side, level = _QUADRANT_ABBREVIATIONS[m.group(2)]
            return GeometricQuery("quadrant", _category(m.group(1)), region=f"{side} {level} quadrant")
        if m := _RELATION.match(text):
            relation = _RELATION_NAMES[m.group(2) or re.sub(r"\s+", " ", m.group(3))]
            reference = self.vocabulary.lookup(m.group(4))
            if len(reference) != 1:
                raise PromptError(f"{phrase!r}: the reference {m.group(4)!r} must be one structure, not {', '.join(reference)}")
            return GeometricQuery("relation", _category(m.group(1)), relation=relation, reference=reference[0])
        return None

    # --- prompts -------------------------------------------------------------------------------------
    def resolve(self, prompt: str) -> Resolution:
        """Resolve a prompt (cached).

        Raises:
            PromptError: empty, too long, or an unusable position/size phrase.
            UnknownStructureError: a phrase matching nothing well enough (the error lists the closest names).
            ValueError: contradictory laterality ("left right kidney").
        """
        cached = self._cache.get(prompt)
        if cached is not None:
            return cached
        resolution = Resolution(prompt)
        for phrase in split_prompt(prompt):
            query = self._query(phrase)
            if query is not None:
                resolution.targets.append(Target(phrase, query=query, explanation=f"{query.kind} query, answered after segmentation"))
                continue
            names, how = self._structure(phrase)
            for name in names:
                resolution.targets.append(Target(phrase, structure=name, explanation=f"{phrase!r} -> {name} ({how})"))
        self._cache[prompt] = resolution
        return resolution


_DEFAULT_RESOLVER: PromptResolver | None = None


def _resolver(vocabulary: Vocabulary | None) -> PromptResolver:
    global _DEFAULT_RESOLVER
    if vocabulary is not None:
        return PromptResolver(vocabulary)
    if _DEFAULT_RESOLVER is None:
        _DEFAULT_RESOLVER = PromptResolver()
    return _DEFAULT_RESOLVER


def resolve(prompt: str, vocabulary: Vocabulary | None = None) -> Resolution:
    """Resolve a prompt with the default resolver (MiniLM for unknown wording)."""
    return _resolver(vocabulary).resolve(prompt)


def resolve_structures(names: Sequence[str], vocabulary: Vocabulary | None = None) -> Resolution:
    """A resolution of a list of structures (a client's ``structures``, a model's classes), item by item.

    Canonical vocabulary names are taken as they are; any other item ("left kidney", "kidneys") is resolved on
    its own. The list is never joined into a prompt and parsed back.
    """
    if isinstance(names, str) or not names:
        raise PromptError(f"expected a non-empty list of structure names, got {names!r}.")
    known = vocabulary or load_vocabulary()
    resolution = Resolution(", ".join(str(n) for n in names))
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise PromptError(f"structure names must be non-empty strings, got {name!r}.")
        if name in known:
            resolution.targets.append(Target(name, structure=name, explanation=f"{name} (structure name)"))
        else:
            resolution.targets.extend(resolve(name, vocabulary).targets)
    return resolution


def _check_allowed(names: Sequence[str], allowed: Sequence[str] | None) -> None:
    if allowed is None:
        return
    unknown = [t for t in names if t not in allowed]
    if unknown:
        raise PromptError(f"the model was not trained on {', '.join(unknown)}; it segments: {', '.join(allowed)}.")


def _query_candidates(query: GeometricQuery, allowed: Sequence[str], vocabulary: Vocabulary) -> list[str]:
    return [n for n in allowed if query.category is None or vocabulary[n].category == query.category]


def prompt_structures(prompt: str, allowed: Sequence[str] | None = None, vocabulary: Vocabulary | None = None) -> list[str]:
    """Every structure a model must segment to answer ``prompt``: the named ones, then, for position/size
    queries, every candidate of the query's category among ``allowed`` and the references."""
    return resolution_structures(resolve(prompt, vocabulary), allowed, vocabulary)


def resolution_structures(resolution: Resolution, allowed: Sequence[str] | None = None, vocabulary: Vocabulary | None = None) -> list[str]:
    """:func:`prompt_structures` of a prompt already resolved (callers that also need the resolution resolve once)."""
    vocabulary = vocabulary or load_vocabulary()
    names = list(resolution.structures)
    _check_allowed(names, allowed)
    for query in resolution.queries:
        if allowed is None:
            raise PromptError(
                f"{resolution.prompt!r} asks for a structure by position or size: the model's classes are needed to answer it."
            )
        extra = _query_candidates(query, allowed, vocabulary) + ([query.reference] if query.reference else [])
        _check_allowed([query.reference] if query.reference else [], allowed)
        names += [n for n in extra if n not in names]
    return names


def resolve_prompt(prompt: str, allowed: Sequence[str] | None = None, vocabulary: Vocabulary | None = None) -> list[str]:
    """Canonical names of the structures a prompt names, in prompt order (position/size queries are not
    allowed here; use :func:`prompt_structures` and :func:`select_by_query`)."""
    resolution = resolve(prompt, vocabulary)
    if resolution.queries:
        raise PromptError(f"{prompt!r} asks for a structure by position or size; it is answered after segmentation.")
    _check_allowed(resolution.structures, allowed)
    return resolution.structures


def select_by_query(
    query: GeometricQuery, masks: Mapping[str, np.ndarray], affine: np.ndarray, vocabulary: Vocabulary | None = None
) -> tuple[str, str]:
    """Answer a geometric query from binary masks on one grid, in patient (world) coordinates.

    Args:
        query: the query.
        masks: structure name -> boolean mask, all on the grid of ``affine``.
        affine: 4x4 voxel -> world (RAS+ mm) matrix of that grid.

    Returns:
        ``(structure, explanation)``.

    Raises:
        PromptError: no segmented structure satisfies the query.
    """
    vocabulary = vocabulary or load_vocabulary()
    affine = np.asarray(affine, dtype=np.float64)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    centroids, volumes = {}, {}
    for name, mask in masks.items():
        voxels = np.argwhere(np.asarray(mask))
        if len(voxels):
            centroids[name] = affine[:3, :3] @ voxels.mean(0) + affine[:3, 3]
            volumes[name] = len(voxels) * voxel_ml
    if not centroids:
        raise PromptError("no structure was segmented, so the position/size query has no answer.")
    weights = np.array([volumes[n] for n in centroids])
    centre = (np.stack(list(centroids.values())) * weights[:, None]).sum(0) / weights.sum()
    candidates = [n for n in centroids if (query.category is None or vocabulary[n].category == query.category) and n != query.reference]

    def in_region(name: str, region: str | None) -> bool:
        if region is None:
            return True
        if region.endswith("quadrant"):
            side, level = region.split()[:2]
            halves = ((0, 1.0 if side == "right" else -1.0), (2, 1.0 if level == "upper" else -1.0))
        else:
            halves = _REGIONS[region]
        return all(sign * (centroids[name][axis] - centre[axis]) > 0 for axis, sign in halves)

    if query.kind in ("largest", "smallest", "quadrant"):
        pool = [n for n in candidates if in_region(n, query.region)]
        if not pool:
            raise PromptError(f"no segmented {query.category or 'structure'} lies in the {query.region}.")
        pick = max if query.kind != "smallest" else min
        best = pick(pool, key=lambda n: volumes[n])
        where = f" in the {query.region}" if query.region else ""
        return (
            best,
            f"{query.kind if query.kind != 'quadrant' else 'largest'} {query.category or 'structure'}{where}: "
            f"{best} ({volumes[best]:.0f} ml)",
        )
    if query.kind == "relation":
        if query.reference not in centroids:
            raise PromptError(f"the reference {query.reference} was not found in the image.")
        direction = np.asarray(_DIRECTIONS[query.relation])
        offsets = {n: centroids[n] - centroids[query.reference] for n in candidates}
        pool = [n for n in candidates if offsets[n] @ direction >= MIN_OFFSET_MM]
        if not pool:
            raise PromptError(
                f"no segmented {query.category or 'structure'} lies {query.relation.replace('_', ' ')} the {query.reference}."
            )
        best = min(pool, key=lambda n: float(np.linalg.norm(offsets[n])))
        return best, f"nearest {query.category or 'structure'} {query.relation.replace('_', ' ')} the {query.reference}: {best}"
    raise PromptError(f"unknown query kind {query.kind!r}")


def check_prompt_case(case: Mapping, resolver: PromptResolver | None = None) -> tuple[bool, str]:
    """Check one prompt test case ``{"prompt", "structures"?, "queries"?, "error"?}`` (tests/data/prompts.yaml).

    Returns ``(passed, what the resolver gave)``; structures compare as sets, queries field by field.
    """
    resolver = resolver or _resolver(None)
    try:
        resolution = resolver.resolve(case["prompt"])
    except (ValueError, KeyError) as e:
        got = type(e).__name__
        expected = case.get("error")
        return expected is not None and (got == expected or expected in [c.__name__ for c in type(e).__mro__]), f"{got}: {e}"
    if "error" in case:
        return False, f"no error: {resolution.to_dict()}"
    queries = [{k: v for k, v in asdict(q).items() if v is not None} for q in resolution.queries]
    passed = set(resolution.structures) == set(case.get("structures", [])) and queries == list(case.get("queries", []))
    return passed, f"structures={resolution.structures} queries={queries}"
