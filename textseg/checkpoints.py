"""The one check a checkpoint passes before it is used: the network it was trained as, and the prompt embeddings.

A checkpoint stores the embeddings of its classes (``class_embeddings``). If the bundle's text encoder, template or
vocabulary now gives different ones, every prompt would mean something else to the network, so it must be retrained.
The bundle (:class:`textseg.handlers.PromptEmbeddingCheck`), the demo and the MONAI Label app all check through here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: `textseg resolve` starts without it
    import torch

__all__ = ["CheckpointMismatchError", "checkpoint_matches", "embeddings_match", "require_matching_embeddings"]


class CheckpointMismatchError(ValueError):
    """The checkpoint was trained with other prompt embeddings (encoder, template or vocabulary) than the bundle's."""


def embeddings_match(stored: torch.Tensor | None, expected: torch.Tensor, atol: float = 1e-4) -> bool:
    """Whether a checkpoint's ``class_embeddings`` [K, D] equal those the current text configuration gives."""
    import torch

    if stored is None:
        return False
    stored = torch.as_tensor(stored).detach().float().cpu()
    expected = torch.as_tensor(expected).float().cpu()
    return stored.shape == expected.shape and torch.allclose(stored, expected, atol=atol)


def require_matching_embeddings(
    stored: torch.Tensor | None, expected: torch.Tensor, checkpoint: str | os.PathLike | None = None, text_encoder: str = ""
) -> None:
    """Raise :class:`CheckpointMismatchError` unless a checkpoint's ``class_embeddings`` [K, D] are ``expected``.

    Args:
        stored: the checkpoint's (or loaded network's) ``class_embeddings``; ``None`` when it has none.
        expected: the class embeddings the bundle's text encoder, template and vocabulary give now, [K, D].
        checkpoint: the checkpoint's path, for the message.
        text_encoder: the configured encoder's name, for the message.
    """
    import torch

    if embeddings_match(stored, expected):
        return
    shape = "none" if stored is None else tuple(torch.as_tensor(stored).shape)
    encoder = f" {text_encoder!r}" if text_encoder else ""
    raise CheckpointMismatchError(
        f"checkpoint {checkpoint or ''} was trained with other prompt embeddings (shape {shape}) than the bundle's text "
        f"encoder{encoder}, template and vocabulary give now (shape {tuple(torch.as_tensor(expected).shape)}): use the "
        "encoder and template it was trained with (see the bundle's metadata), or retrain it (make demo, or train from the app)."
    )


def checkpoint_matches(checkpoint: str | os.PathLike, bundle_dir: str | os.PathLike, overlays: Sequence[str]) -> bool:
    """Whether a checkpoint fits today's bundle (``inference.json`` + ``overlays``): the same network (parameter names
    and shapes) and today's prompt embeddings for the bundle's classes. Otherwise it must be retrained."""
    import torch

    from textseg.bundle import bundle_parser

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    parser = bundle_parser(bundle_dir, ["inference.json", *overlays])
    network = parser.get_parsed_content("network_def")
    if {k: tuple(v.shape) for k, v in state.items()} != {k: tuple(v.shape) for k, v in network.state_dict().items()}:
        return False
    return embeddings_match(state.get("class_embeddings"), parser.get_parsed_content("class_embeddings"))
