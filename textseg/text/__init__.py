"""Text side: encoders and precomputed embedding tables."""

from .encoders import (
    DEFAULT_TEMPLATE,
    LATERALITY_FEATURES,
    CLIPTextEncoder,
    EmbeddingTable,
    MeanPoolingEncoder,
    MiniLMEncoder,
    TextEncoder,
    build_embedding_table,
    create_encoder,
    default_cache_dir,
    prompt_features,
    vocabulary_embedding_table,
)

__all__ = [
    "CLIPTextEncoder",
    "DEFAULT_TEMPLATE",
    "EmbeddingTable",
    "MeanPoolingEncoder",
    "MiniLMEncoder",
    "TextEncoder",
    "build_embedding_table",
    "create_encoder",
    "default_cache_dir",
    "LATERALITY_FEATURES",
    "prompt_features",
    "vocabulary_embedding_table",
]
