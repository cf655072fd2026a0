"""How a prompt's text embedding conditions image features: FiLM, concatenation, cross-attention.

Every fusion turns the prompt embeddings into one per-channel affine modulation per conditioned
decoder stage, applied by :class:`textseg.networks.TextSwinUNETR` as

    modulated_ks = relu(scale_ks * F_s + shift_ks)

where ``F_s`` is the stage's shared feature map ``[B, H, *S_s]`` (computed once for all prompts) and
``scale_ks``/``shift_ks`` are ``[B, H]`` vectors of prompt ``k``. That form keeps the per-prompt cost to
one multiply-add per voxel, whatever the fusion:

- :class:`FiLMFusion` (Perez et al., AAAI 2018): ``scale, shift = MLP(t)``.
- :class:`ConcatFusion`: a 1x1 convolution of ``[F_s ; broadcast(adapter(t))]``, written as
  ``W_f F_s + (W_t adapter(t) + b)``: the image part runs once per stage, the text part is a shift.
- :class:`CrossAttentionFusion`: the adapted prompt attends over the image tokens of the coarsest
  conditioned stage (``nn.MultiheadAttention``), so the modulation depends on the image as well as
  the text (as the CLIP-driven universal model's controller does with global image features).

The text encoder itself stays frozen (embeddings come precomputed); the adapters here are trained.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["FUSIONS", "FiLMGenerator", "Fusion", "FiLMFusion", "ConcatFusion", "CrossAttentionFusion", "make_fusion"]


def _adapter(text_dim: int, hidden_dim: int) -> nn.Sequential:
    """Small trainable text adapter on top of a frozen text encoder."""
    return nn.Sequential(nn.Linear(text_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim), nn.GELU())


class FiLMGenerator(nn.Module):
    """Maps a vector to per-channel FiLM parameters for several stages.

    ``gamma = 1 + dgamma`` with a zero-initialised output layer, so a fresh generator leaves features unchanged.

    Args:
        in_dim: size of the input vector.
        channels: number of feature channels C_s of every conditioned stage.
    """

    def __init__(self, in_dim: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.channels = tuple(int(c) for c in channels)
        self.to_film = nn.Linear(in_dim, 2 * sum(self.channels))
        nn.init.zeros_(self.to_film.weight)
        nn.init.zeros_(self.to_film.bias)

    def forward(self, vector: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            vector: shape [..., in_dim].

        Returns:
            one ``(gamma, beta)`` pair per stage, each of shape [..., C_s].
        """
        gammas, betas = self.to_film(vector).split(sum(self.channels), dim=-1)
        return [(1.0 + g, b) for g, b in zip(gammas.split(self.channels, -1), betas.split(self.channels, -1))]


class Fusion(nn.Module):
    """Interface of a text-image fusion (see the module docstring).

    Args:
        text_dim: size D of the prompt embedding.
        channels: channels H_s of every conditioned stage's shared features.
        adapter_dim: width of the trainable text adapter.
    """

    scales_features = True
    """Whether :meth:`modulations` gives a ``scale`` (a shift-only fusion cannot drive a linear head)."""

    def __init__(self, text_dim: int, channels: Sequence[int], adapter_dim: int = 256) -> None:
        super().__init__()
        self.text_dim = text_dim
        self.channels = tuple(int(c) for c in channels)
        self.adapter_dim = adapter_dim

    def image_features(self, stage_index: int, features: torch.Tensor) -> torch.Tensor:
        """Prompt-independent transform of one stage's features [B, H_s, *S_s], run once for all prompts."""
        return features

    def modulations(self, text: torch.Tensor, features: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor | None, torch.Tensor]]:
        """
        Args:
            text: prompt embeddings [B, K, D].
            features: the stages' shared features, each [B, H_s, *S_s], coarsest last.

        Returns:
            per stage ``(scale, shift)``, each [B, K, H_s]; ``scale`` may be ``None`` (meaning 1).
        """
        raise NotImplementedError


class FiLMFusion(Fusion):
    """Feature-wise linear modulation by the text: ``scale, shift = FiLM(adapter(t))``."""

    def __init__(self, text_dim: int, channels: Sequence[int], adapter_dim: int = 256) -> None:
        super().__init__(text_dim, channels, adapter_dim)
        self.adapter = _adapter(text_dim, adapter_dim)
        self.film = FiLMGenerator(adapter_dim, self.channels)

    def modulations(self, text, features):
        return self.film(self.adapter(text))


class ConcatFusion(Fusion):
    """Concatenation of the adapted text to every voxel's features, followed by a 1x1 convolution.

    ``conv([F; a(t)]) = W_f F + W_t a(t) + b``: computed as a shared image convolution plus a per-prompt shift.
    """

    scales_features = False

    def __init__(self, text_dim: int, channels: Sequence[int], adapter_dim: int = 256) -> None:
        super().__init__(text_dim, channels, adapter_dim)
        self.adapter = _adapter(text_dim, adapter_dim)
        self.image_weights = nn.ModuleList([nn.Linear(c, c, bias=False) for c in self.channels])
        self.text_weights = nn.Linear(adapter_dim, sum(self.channels))

    def image_features(self, stage_index, features):
        weight = self.image_weights[stage_index].weight  # [H, H]
        return torch.einsum("oc,bc...->bo...", weight, features)

    def modulations(self, text, features):
        shifts = self.text_weights(self.adapter(text)).split(self.channels, dim=-1)
        return [(None, shift) for shift in shifts]


class CrossAttentionFusion(Fusion):
    """The adapted prompt queries the image tokens of the coarsest stage; the attended query gives FiLM parameters.

    ``q = a(t)``; ``q' = LN(q + MHA(q, tokens, tokens))``; ``q'' = LN(q' + MLP(q'))``; ``scale, shift = FiLM(q'')``,
    with ``tokens`` the coarsest stage's features [B, N, H] plus a learned projection of their normalised
    voxel coordinates (so that the attention knows where a token lies).

    Args:
        num_heads: attention heads (``adapter_dim`` must be divisible by it).
    """

    def __init__(self, text_dim: int, channels: Sequence[int], adapter_dim: int = 256, num_heads: int = 4) -> None:
        super().__init__(text_dim, channels, adapter_dim)
        if adapter_dim % num_heads:
            raise ValueError(f"adapter_dim {adapter_dim} must be divisible by num_heads {num_heads}.")
        self.adapter = _adapter(text_dim, adapter_dim)
        token_dim = self.channels[-1]
        self.position = nn.Linear(3, token_dim)
        self.attention = nn.MultiheadAttention(adapter_dim, num_heads, kdim=token_dim, vdim=token_dim, batch_first=True)
        self.norm1 = nn.LayerNorm(adapter_dim)
        self.mlp = nn.Sequential(nn.Linear(adapter_dim, 2 * adapter_dim), nn.GELU(), nn.Linear(2 * adapter_dim, adapter_dim))
        self.norm2 = nn.LayerNorm(adapter_dim)
        self.film = FiLMGenerator(adapter_dim, self.channels)

    def _tokens(self, features: torch.Tensor) -> torch.Tensor:
        spatial = features.shape[2:]
        axes = [torch.linspace(-1.0, 1.0, n, device=features.device, dtype=features.dtype) for n in spatial]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(spatial))  # [N, dims]
        if grid.shape[1] < 3:
            grid = nn.functional.pad(grid, (0, 3 - grid.shape[1]))
        return features.flatten(2).transpose(1, 2) + self.position(grid)  # [B, N, H]

    def modulations(self, text, features):
        query = self.adapter(text)
        tokens = self._tokens(features[-1])
        attended, _ = self.attention(query, tokens, tokens, need_weights=False)
        query = self.norm1(query + attended)
        query = self.norm2(query + self.mlp(query))
        return self.film(query)


FUSIONS: dict[str, type[Fusion]] = {"film": FiLMFusion, "concat": ConcatFusion, "cross_attention": CrossAttentionFusion}
"""Fusion name (the ``fusion`` argument of the networks and bundle overlays) -> class."""


def make_fusion(name: str, text_dim: int, channels: Sequence[int], adapter_dim: int = 256) -> Fusion:
    """Build the fusion called ``name`` (one of :data:`FUSIONS`)."""
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; choose one of {sorted(FUSIONS)}.")
    return FUSIONS[name](text_dim, channels, adapter_dim)
