"""Infer tasks of the textseg app."""

from .text_prompt import TextPromptInferTask

__all__ = ["TextPromptInferTask"]
