"""One TaskConfig per model: ``text_prompt``, ``all_structures`` and ``interactive``."""

from .all_structures import AllStructures
from .interactive import Interactive
from .text_prompt import TextPrompt

__all__ = ["AllStructures", "Interactive", "TextPrompt"]
