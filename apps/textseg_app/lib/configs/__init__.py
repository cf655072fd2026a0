"""One TaskConfig per model: ``text_prompt`` and ``all_structures``."""

from .all_structures import AllStructures
from .text_prompt import TextPrompt

__all__ = ["AllStructures", "TextPrompt"]
