import json

import pytest
import torch

from textseg.text import DEFAULT_TEMPLATE, EmbeddingTable, MeanPoolingEncoder, build_embedding_table, create_encoder


@pytest.fixture(scope="module")
def minilm():
    return create_encoder("minilm")


def test_minilm_embeds_offline(minilm):
    out = minilm.encode(["liver", "hepatic organ", "left femur"])
    assert out.shape == (3, 384) and minilm.name == "all-MiniLM-L6-v2"
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    # a real language model: the synonym is closer than an unrelated bone
    assert out[0] @ out[1] > out[0] @ out[2]


def test_mean_pooling_encoder_on_a_local_bert(tmp_path, minilm):
    """The generic BERT-style path, on a tiny random model the test saves itself."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    BertModel(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(str(minilm.model_path), local_files_only=True).save_pretrained(tmp_path)
    encoder = MeanPoolingEncoder(tmp_path)
    out = encoder.encode(["spleen", "a much longer prompt about the right kidney"])
    assert out.shape == (2, 32) and encoder.dim == 32
    # padding must not change an embedding: mean pooling uses the attention mask
    assert torch.allclose(out[0], encoder.encode(["spleen"])[0], atol=1e-5)


def test_missing_model_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        MeanPoolingEncoder(tmp_path / "nowhere").encode(["liver"])
    with pytest.raises(ValueError, match="unknown text encoder"):
        create_encoder("no-such-encoder")


def test_table_round_trip_and_lookup(tmp_path, minilm):
    table = build_embedding_table(minilm, ["liver", "spleen"])
    assert table.template == DEFAULT_TEMPLATE and table.encoder == minilm.name
    expected = minilm.encode([DEFAULT_TEMPLATE.format("spleen")])[0]
    assert torch.allclose(table.lookup(["spleen"])[0], expected, atol=1e-5)
    loaded = EmbeddingTable.load(table.save(tmp_path / "t.pt"))
    assert loaded.names == ["liver", "spleen"] and torch.equal(loaded.embeddings, table.embeddings)
    with pytest.raises(KeyError, match="no precomputed embedding"):
        table.lookup(["pancreas"])
    (tmp_path / "bad.pt").write_bytes(b"not a table")
    with pytest.raises(ValueError, match="bad.pt"):
        EmbeddingTable.load(tmp_path / "bad.pt")


def test_vocabulary_table_is_cached_as_a_file(tmp_path):
    from textseg.text import vocabulary_embedding_table
    from textseg.vocabulary import load_vocabulary

    first = vocabulary_embedding_table("minilm", cache_dir=tmp_path)
    files = list((tmp_path / "embeddings").glob("*.pt"))
    assert len(files) == 1
    assert first.names == load_vocabulary().names
    mtime = files[0].stat().st_mtime_ns
    second = vocabulary_embedding_table("minilm", cache_dir=tmp_path)
    assert files[0].stat().st_mtime_ns == mtime and torch.equal(first.embeddings, second.embeddings)


def _tiny_clip(path):
    """A randomly initialised CLIP text tower with a tiny byte-level BPE tokenizer, saved like a hub model."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    path.mkdir()
    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    merges = ["l i", "li v", "e r</w>", "k i", "d n"]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    tokenizer.save_pretrained(str(path))
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=2,
        projection_dim=24,
        max_position_embeddings=77,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
    )
    torch.manual_seed(0)
    CLIPTextModelWithProjection(config).save_pretrained(str(path))
    return path


def test_clip_text_encoder_from_a_local_directory(tmp_path):
    from textseg.text import CLIPTextEncoder

    path = _tiny_clip(tmp_path / "tiny-clip")
    for encoder in (CLIPTextEncoder(path), create_encoder(f"clip:{path}"), create_encoder(str(path))):
        assert isinstance(encoder, CLIPTextEncoder)
        out = encoder.encode(["A computerized tomography of a liver", "kidney"])
        assert out.shape == (2, 24) and torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
        assert not torch.allclose(out[0], out[1])
    # padding must not change the embedding of the shorter prompt (CLIP pools the end-of-text token)
    assert torch.allclose(encoder.encode(["kidney"])[0], out[1], atol=1e-5)
    table = build_embedding_table(encoder, ["liver"])
    assert table.encoder == "clip:tiny-clip" and table.dim == 24
