"""Prompt -> target structures.

"segment the liver and kidneys" -> ["liver", "kidney_right", "kidney_left"]. Each phrase of the prompt
is looked up in the vocabulary (synonyms, groups, laterality); unknown phrases raise an error that
names the closest vocabulary terms.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from textseg.vocabulary import Vocabulary, load_vocabulary

__all__ = ["MAX_PROMPT_LENGTH", "PromptError", "split_prompt", "resolve_prompt"]

MAX_PROMPT_LENGTH = 1000

# words that ask for a segmentation but name nothing
_LEADING = re.compile(
    r"^(?:please\s+)?(?:(?:segment|show|find|delineate|contour|outline|label|mark|highlight|get|extract)(?:\s+me)?(?:\s+|$))?"
    r"(?:(?:all\s+of\s+)?the(?:\s+|$)|an?(?:\s+|$))?",
)
_SEPARATORS = re.compile(r"\s*(?:,|;|\+|&|/|\band\b|\bplus\b|\bas well as\b)\s*")
_ARTICLES = re.compile(r"^(?:the|an?|also)\s+")


class PromptError(ValueError):
    """A prompt that cannot be turned into targets (empty, too long, or naming structures the model lacks)."""


def split_prompt(prompt: str) -> list[str]:
    """Split a prompt into phrases: strip the request verb and articles, split lists and conjunctions."""
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
    return phrases


def resolve_prompt(prompt: str, allowed: Sequence[str] | None = None, vocabulary: Vocabulary | None = None) -> list[str]:
    """Resolve a prompt to canonical structure names, in the order the prompt names them.

    Args:
        prompt: free text, e.g. "segment the liver and kidneys".
        allowed: the classes a model was trained on; targets outside it raise :class:`PromptError`.
        vocabulary: defaults to the packaged vocabulary.

    Raises:
        PromptError: empty/too long prompt, or a target the model does not know.
        UnknownStructureError: a phrase that matches no vocabulary term (the message lists the closest).
    """
    vocabulary = vocabulary or load_vocabulary()
    targets: list[str] = []
    for phrase in split_prompt(prompt):
        names = vocabulary.lookup(phrase)
        targets.extend(n for n in names if n not in targets)
    if allowed is not None:
        allowed = list(allowed)
        unknown = [t for t in targets if t not in allowed]
        if unknown:
            raise PromptError(
                f"the model was not trained on {', '.join(unknown)}; it segments: {', '.join(allowed)}."
            )
    return targets
