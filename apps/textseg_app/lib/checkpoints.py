"""The one check every model of the app makes before it uses a checkpoint."""

from __future__ import annotations

import os

import torch

from textseg.handlers import embeddings_match

__all__ = ["CheckpointMismatchError", "require_matching_embeddings"]


class CheckpointMismatchError(RuntimeError):
    """The checkpoint was trained with other prompt embeddings (encoder, template or vocabulary) than the bundle's."""


def require_matching_embeddings(embeddings: torch.Tensor | None, expected: torch.Tensor, checkpoint: str | os.PathLike) -> None:
    """Raise :class:`CheckpointMismatchError` unless a checkpoint's ``class_embeddings`` [C, D] are the bundle's."""
    if not embeddings_match(embeddings, expected):
        raise CheckpointMismatchError(
            f"checkpoint {checkpoint} was trained with other prompt embeddings than the bundle's text encoder/template/"
            "vocabulary give now: retrain it (make demo, or train from the app)."
        )
