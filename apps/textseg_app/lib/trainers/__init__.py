"""Train tasks of the textseg app."""

from .text_prompt import TextPromptTrainTask

__all__ = ["TextPromptTrainTask"]
