"""SwinUNETR conditioned on text embeddings (FiLM, concatenation or cross-attention), answering many prompts in one image pass."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import SwinUNETR
from torch import nn

from .fusion import FUSIONS, make_fusion

__all__ = ["GUIDANCE_CHANNELS", "HEADS", "GuidanceBlock", "TextSwinUNETR"]

HEADS = ("mlp", "linear")
"""The per-prompt heads of :class:`TextSwinUNETR` (its ``head`` argument)."""

GUIDANCE_CHANNELS = ("positive_points", "negative_points", "box")
"""The channels of a spatial prompt (guidance volume [K, 3, *S]) that the interactive network takes, in order."""


class GuidanceBlock(nn.Module):
    """Spreads one prompt's spatial prompts over its features: ``features + mix([features, guidance])``.

    ``mix`` is a 3x3 convolution, ReLU and a dilated (2) 3x3 convolution, so a click reaches the voxels around
    it whose features resemble the clicked ones (a 1x1 projection could only change the clicked voxels). The last
    convolution starts at zero: a fresh block is the identity, whatever the guidance.

    Args:
        channels: feature channels C (input and output).
        guidance_channels: guidance channels G (see :data:`GUIDANCE_CHANNELS`).
        spatial_dims: 2 or 3.
    """

    def __init__(self, channels: int, guidance_channels: int, spatial_dims: int = 3) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.mix = nn.Sequential(
            conv(channels + guidance_channels, channels, 3, padding=1),
            nn.ReLU(),
            conv(channels, channels, 3, padding=2, dilation=2),
        )
        nn.init.zeros_(self.mix[-1].weight)
        nn.init.zeros_(self.mix[-1].bias)

    def forward(self, features: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features: [B, C, *S].
            guidance: [B, G, *S], at the features' resolution.

        Returns:
            [B, C, *S].
        """
        return features + self.mix(torch.cat([features, guidance], dim=1))


class TextSwinUNETR(nn.Module):
    """MONAI SwinUNETR whose decoder features are conditioned on text, one mask logit per prompt.

    The image encoder and the shared decoder run once per image; only a light head runs per prompt.
    At each conditioned decoder stage ``s`` the features are projected to ``head_channels`` channels
    and transformed by the fusion (once: ``F_s``); prompt ``k`` then gets
    ``relu(scale_ks * F_s + shift_ks)`` (see :mod:`textseg.networks.fusion` for how each fusion makes
    ``scale``/``shift`` from the text), reduced to one logit map by a shared readout, upsampled to the
    input size and summed over stages. The cost of K prompts is therefore almost that of one.

    Prompts are given as text embeddings (see :mod:`textseg.text`). When ``text_embedding`` is omitted
    the network answers every class it was trained on, whose embeddings it keeps in the buffer
    ``class_embeddings`` (saved in the checkpoint, so an exported model needs no text encoder).

    Args:
        in_channels: number of image channels.
        num_classes: number of classes stored in ``class_embeddings`` (the default prompts).
        text_dim: size of the text embedding.
        fusion: how text conditions the image features: ``"film"``, ``"concat"`` or ``"cross_attention"``.
        feature_size: SwinUNETR feature size (multiple of 12).
        depths: Swin transformer depths per stage.
        num_heads: Swin transformer heads per stage.
        window_size: Swin attention window (7 as in the paper; 4 is ~3x faster on CPU at 64^3).
        head_channels: channels of the per-prompt head at every stage.
        conditioned_stages: which decoder stages are conditioned: 0 = full resolution, 1 = 1/2, 2 = 1/4, 3 = 1/8.
        adapter_dim: width of the trainable text adapter.
        drop_rate: dropout in the Swin encoder (also used by MC-dropout).
        use_checkpoint: gradient checkpointing in the Swin encoder.
        spatial_dims: 2 or 3.
        head: the per-prompt head. ``"mlp"``: ``readout . relu(scale * F_s + shift)`` per prompt and stage (a one-hidden-layer
            network per prompt, whose hidden map costs one full pass over the stage's features per prompt).
            ``"linear"``: the text makes the weights of a 1x1 classifier, ``(readout * scale) . relu(F_s) + readout . shift``,
            computed for all prompts in one matrix product at the finest conditioned stage's resolution and upsampled once
            (the per-prompt cost is that of a logit map; needs a fusion with a ``scale``: film or cross_attention). Its state
            dict has the extra key ``linear_head``, so that loading a checkpoint into a network of the other head fails.
        spatial_prompts: accept per-prompt guidance volumes (points and boxes, see :mod:`textseg.spatial`):
            at every stage a :class:`GuidanceBlock` mixes the guidance (max-pooled to the stage's resolution, so
            a click reaches every stage) into each prompt's modulated features. No guidance is the same as an
            all-zero one, so the interactive network also answers text alone.

    Example::

        net = TextSwinUNETR(in_channels=1, num_classes=3, text_dim=384, feature_size=12, fusion="concat")
        logits = net(torch.rand(2, 1, 64, 64, 64), torch.rand(5, 384))  # [2, 5, 64, 64, 64]
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        text_dim: int = 384,
        fusion: str = "film",
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        head_channels: int = 32,
        conditioned_stages: Sequence[int] = (0, 1, 2, 3),
        adapter_dim: int = 256,
        drop_rate: float = 0.0,
        use_checkpoint: bool = False,
        spatial_dims: int = 3,
        spatial_prompts: bool = False,
        head: str = "mlp",
    ) -> None:
        super().__init__()
        if not conditioned_stages or any(s not in (0, 1, 2, 3) for s in conditioned_stages):
            raise ValueError(f"conditioned_stages must be a non-empty subset of (0, 1, 2, 3), got {tuple(conditioned_stages)}.")
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {sorted(FUSIONS)}.")
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; choose one of {HEADS}.")
        if head == "linear" and not FUSIONS[fusion].scales_features:
            scaling = " or ".join(name for name, cls in FUSIONS.items() if cls.scales_features)
            raise ValueError(f"the linear head needs a fusion that scales the features ({scaling}): {fusion} only shifts them.")
        if head == "linear" and spatial_prompts:
            raise ValueError("spatial prompts need the mlp head: the guidance is mixed into each prompt's own feature map.")
        self.in_channels = in_channels
        self.text_dim = text_dim
        self.spatial_dims = spatial_dims
        self.fusion_name = fusion
        self.head = head
        self.conditioned_stages = tuple(sorted(set(conditioned_stages)))
        self.backbone = SwinUNETR(
            in_channels=in_channels,
            out_channels=1,  # the backbone's own 1x1 output layer is unused; the text heads replace it
            feature_size=feature_size,
            depths=depths,
            num_heads=num_heads,
            window_size=window_size,
            drop_rate=drop_rate,
            use_checkpoint=use_checkpoint,
            spatial_dims=spatial_dims,
        )
        del self.backbone.out
        # decoder stages above the finest conditioned one are never run: drop them so that DDP sees no unused parameters
        unconditioned = [("decoder1", "encoder1"), ("decoder2", "encoder2"), ("decoder3", "encoder3")][: min(self.conditioned_stages)]
        for names in unconditioned:
            for name in names:
                delattr(self.backbone, name)
        stage_channels = {0: feature_size, 1: feature_size, 2: 2 * feature_size, 3: 4 * feature_size}
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.projections = nn.ModuleList([conv(stage_channels[s], head_channels, 1) for s in self.conditioned_stages])
        self.fusion = make_fusion(fusion, text_dim, [head_channels] * len(self.conditioned_stages), adapter_dim)
        self.readout = nn.Parameter(torch.randn(len(self.conditioned_stages), head_channels) / head_channels**0.5)
        self.readout_bias = nn.Parameter(torch.zeros(1))
        self.register_buffer("class_embeddings", torch.zeros(num_classes, text_dim))
        if head == "linear":  # both heads have the same parameters: this key makes a checkpoint of one head refused by the other
            self.register_buffer("linear_head", torch.ones(1))
        self.guidance = None
        self.guidance_channels = 0
        if spatial_prompts:
            self.guidance_channels = len(GUIDANCE_CHANNELS)
            self.guidance = nn.ModuleList(
                [GuidanceBlock(head_channels, self.guidance_channels, spatial_dims) for _ in self.conditioned_stages]
            )

    @torch.no_grad()
    def set_class_embeddings(self, embeddings: torch.Tensor) -> TextSwinUNETR:
        """Store the default prompts' embeddings, shape [num_classes, D]; returns ``self`` for config chaining."""
        embeddings = torch.as_tensor(embeddings, dtype=self.class_embeddings.dtype)
        if embeddings.shape != self.class_embeddings.shape:
            raise ValueError(
                f"class embeddings of shape {tuple(embeddings.shape)} do not fit the network's "
                f"{tuple(self.class_embeddings.shape)} (num_classes, text_dim)."
            )
        self.class_embeddings.copy_(embeddings.to(self.class_embeddings.device))
        return self

    def decoder_features(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Run the image encoder and shared decoder once.

        Args:
            x: image, shape [B, C_in, *S], every spatial size a multiple of 32, at least one of them 64 or more.

        Returns:
            stage index -> features [B, C_s, *S / 2**s] for the conditioned stages.
        """
        net = self.backbone
        if not torch.jit.is_tracing():
            if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
                raise ValueError(
                    f"expected an image of shape [B, {self.in_channels}, {', '.join(['S'] * self.spatial_dims)}], got {tuple(x.shape)}."
                )
            # the bottleneck is S / 32: one voxel alone cannot be instance-normalised in training
            if any(s % 32 or s < 32 for s in x.shape[2:]) or max(x.shape[2:]) < 64:
                raise ValueError(f"spatial sizes must be multiples of 32, at least one of them 64 or more, got {tuple(x.shape[2:])}.")
        hidden = net.swinViT(x, net.normalize)
        enc3 = net.encoder4(hidden[2])
        dec3 = net.decoder5(net.encoder10(hidden[4]), hidden[3])
        stages = {3: net.decoder4(dec3, enc3)}
        # the higher-resolution stages cost most on CPU: compute them only when conditioned
        finest = min(self.conditioned_stages)
        if finest <= 2:
            stages[2] = net.decoder3(stages[3], net.encoder3(hidden[1]))
        if finest <= 1:
            stages[1] = net.decoder2(stages[2], net.encoder2(hidden[0]))
        if finest == 0:
            stages[0] = net.decoder1(stages[1], net.encoder1(x))
        return {s: stages[s] for s in self.conditioned_stages}

    def forward(self, x: torch.Tensor, text_embedding: torch.Tensor | None = None, guidance: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: image, shape [B, C_in, *S], spatial sizes multiples of 32, at least one of them 64 or more.
            text_embedding: prompt embeddings, shape [K, D] (the same prompts for every image) or
                [B, K, D] (per image; B may also be 1 and is then broadcast). ``None`` uses
                ``class_embeddings``.
            guidance: spatial prompts, [B, K, 3, *S] (see :func:`textseg.spatial.encode_spatial_prompts`;
                all zero for a prompt without points or box); only with ``spatial_prompts=True``.

        Returns:
            mask logits, shape [B, K, *S]; ``sigmoid`` gives one probability map per prompt.
        """
        if text_embedding is None:
            text_embedding = self.class_embeddings
        if text_embedding.ndim == 2:
            text_embedding = text_embedding.unsqueeze(0)
        if text_embedding.ndim != 3 or text_embedding.shape[-1] != self.text_dim:
            raise ValueError(f"text_embedding must be [K, {self.text_dim}] or [B, K, {self.text_dim}], got {tuple(text_embedding.shape)}.")
        batch = x.shape[0]
        if text_embedding.shape[0] not in (1, batch):
            raise ValueError(f"text_embedding batch {text_embedding.shape[0]} does not match the image batch {batch}.")
        text_embedding = text_embedding.to(dtype=x.dtype, device=x.device).expand(batch, -1, -1)
        num_prompts = text_embedding.shape[1]
        if guidance is not None and self.guidance is None:
            raise ValueError("this network takes no spatial prompts: build it with spatial_prompts=True.")
        if self.guidance is not None:
            expected = (batch, num_prompts, self.guidance_channels, *x.shape[2:])
            if guidance is None:
                guidance = x.new_zeros(expected)
            if tuple(guidance.shape) != expected:
                raise ValueError(f"guidance must have shape {expected} ([B, K, 3, *S]), got {tuple(guidance.shape)}.")
            guidance = guidance.to(dtype=x.dtype, device=x.device)
        features = self.decoder_features(x)
        shared = [
            self.fusion.image_features(i, proj(features[s])) for i, (proj, s) in enumerate(zip(self.projections, self.conditioned_stages))
        ]
        modulations = self.fusion.modulations(text_embedding, shared)  # per stage: (scale | None, shift), [B, K, H]
        size = x.shape[2:]
        mode = "trilinear" if self.spatial_dims == 3 else "bilinear"
        if self.head == "linear":
            return self._linear_head(shared, modulations, size, mode)
        view = (batch, -1) + (1,) * self.spatial_dims
        logits = []
        for k in range(num_prompts):  # a loop, not a batch: K full-resolution feature maps would not fit in memory
            total = self.readout_bias.expand(1)
            for i, s in enumerate(self.conditioned_stages):
                scale, shift = modulations[i]
                modulated = shared[i] if scale is None else scale[:, k].reshape(view) * shared[i]
                modulated = modulated + shift[:, k].reshape(view)
                if guidance is not None:
                    stage_guidance = guidance[:, k]
                    if s:  # max-pooled, not interpolated: a click's peak survives at every resolution
                        pool = F.adaptive_max_pool3d if self.spatial_dims == 3 else F.adaptive_max_pool2d
                        stage_guidance = pool(stage_guidance, shared[i].shape[2:])
                    modulated = self.guidance[i](modulated, stage_guidance)
                modulated = torch.relu(modulated)
                stage_logit = torch.einsum("bc...,c->b...", modulated, self.readout[i]).unsqueeze(1)
                if s:
                    stage_logit = F.interpolate(stage_logit, size=size, mode=mode, align_corners=False)
                total = total + stage_logit
            logits.append(total)
        return torch.cat(logits, dim=1)

    def _linear_head(self, shared: list[torch.Tensor], modulations: list, size: Sequence[int], mode: str) -> torch.Tensor:
        """All prompts' logits [B, K, *size] as text-made 1x1 classifiers of the shared features (``head="linear"``)."""
        total = None
        for i in reversed(range(len(shared))):  # coarsest first: each sum is upsampled to the next finer stage
            scale, shift = modulations[i]
            weights = scale * self.readout[i]  # [B, K, H]
            bias = (shift * self.readout[i]).sum(-1)  # [B, K]
            stage_logit = torch.einsum("bkc,bc...->bk...", weights, torch.relu(shared[i]))
            stage_logit = stage_logit + bias.reshape(bias.shape + (1,) * self.spatial_dims)
            if total is not None:
                total = F.interpolate(total, size=stage_logit.shape[2:], mode=mode, align_corners=False)
                stage_logit = stage_logit + total
            total = stage_logit
        if tuple(total.shape[2:]) != tuple(size):
            total = F.interpolate(total, size=size, mode=mode, align_corners=False)
        return total + self.readout_bias
