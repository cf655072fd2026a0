"""Infer tasks of the textseg app."""

from .interactive import InteractiveInferTask
from .text_prompt import TextPromptInferTask

__all__ = ["InteractiveInferTask", "TextPromptInferTask"]
