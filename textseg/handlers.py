"""Ignite handlers for textseg bundles."""

from __future__ import annotations

import torch
from monai.utils import min_version, optional_import

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = ["PromptEmbeddingCheck", "embeddings_match"]


def embeddings_match(stored: torch.Tensor | None, expected: torch.Tensor, atol: float = 1e-4) -> bool:
    """Whether a checkpoint's ``class_embeddings`` equal those the current text configuration gives."""
    if stored is None:
        return False
    stored = torch.as_tensor(stored).detach().float().cpu()
    expected = torch.as_tensor(expected).float().cpu()
    return stored.shape == expected.shape and torch.allclose(stored, expected, atol=atol)


class PromptEmbeddingCheck:
    """Refuse to run a checkpoint with prompt embeddings other than those it was trained with.

    A checkpoint stores the embeddings of its classes (``class_embeddings``); if the bundle's text
    encoder, template or vocabulary now gives different ones, prompts would be meaningless to the
    network. Attach after ``CheckpointLoader`` (both run when the engine starts).

    Args:
        network: the network (or a DDP wrapper) with a ``class_embeddings`` buffer.
        expected: the class embeddings the current text configuration gives, [K, D].
        text_encoder: encoder name, for the error message.
    """

    def __init__(self, network: torch.nn.Module, expected: torch.Tensor, text_encoder: str = ""):
        self.network = getattr(network, "module", network)
        self.expected = torch.as_tensor(expected, dtype=torch.float32)
        self.text_encoder = text_encoder

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine=None) -> None:
        stored = self.network.class_embeddings
        if not embeddings_match(stored, self.expected):
            raise ValueError(
                f"the checkpoint was trained with other prompt embeddings (shape {tuple(stored.shape)}) than the "
                f"configured text encoder {self.text_encoder!r} gives (shape {tuple(self.expected.shape)}): use the encoder "
                "and template it was trained with (see the bundle's metadata), or retrain."
            )
