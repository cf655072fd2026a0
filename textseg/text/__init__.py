"""Text side: encoders and precomputed embedding tables."""

from .encoders import (
    DEFAULT_TEMPLATE,
    EmbeddingTable,
    MeanPoolingEncoder,
    MiniLMEncoder,
    TextEncoder,
    build_embedding_table,
    create_encoder,
    default_cache_dir,
    vocabulary_embedding_table,
)

__all__ = [
    "DEFAULT_TEMPLATE",
    "EmbeddingTable",
    "MeanPoolingEncoder",
    "MiniLMEncoder",
    "TextEncoder",
    "build_embedding_table",
    "create_encoder",
    "default_cache_dir",
    "vocabulary_embedding_table",
]
