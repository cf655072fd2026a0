"""The one checkpoint check: the same prompt embeddings or a clear refusal."""

import pytest
import torch

from textseg.checkpoints import CheckpointMismatchError, embeddings_match, require_matching_embeddings


def test_matching_embeddings_pass_and_others_are_refused_with_their_shapes():
    expected = torch.randn(3, 8)
    require_matching_embeddings(expected + 1e-6, expected, "models/model.pt")
    assert embeddings_match(expected.double(), expected)
    with pytest.raises(CheckpointMismatchError, match=r"models/model.pt.*other prompt embeddings \(shape \(3, 8\)\).*'minilm'"):
        require_matching_embeddings(expected + 0.1, expected, "models/model.pt", text_encoder="minilm")
    with pytest.raises(CheckpointMismatchError, match=r"shape \(2, 8\).*\(shape \(3, 8\)\)"):
        require_matching_embeddings(expected[:2], expected)
    with pytest.raises(CheckpointMismatchError, match="shape none"):
        require_matching_embeddings(None, expected)
