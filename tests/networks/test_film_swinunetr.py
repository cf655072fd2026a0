import pytest
import torch

from textseg.networks import TextFiLMSwinUNETR

TINY = dict(in_channels=1, num_classes=3, text_dim=16, feature_size=12, window_size=4, head_channels=8)

CASES = [
    # (network kwargs, image shape, text shape, expected output shape)
    (dict(TINY), (2, 1, 64, 64, 64), (5, 16), (2, 5, 64, 64, 64)),
    (dict(TINY), (1, 1, 64, 96, 64), (1, 4, 16), (1, 4, 64, 96, 64)),
    (dict(TINY), (2, 1, 64, 64, 64), (1, 2, 16), (2, 2, 64, 64, 64)),
    (dict(TINY, film_stages=(1, 2, 3)), (1, 1, 64, 64, 64), (3, 16), (1, 3, 64, 64, 64)),
    (dict(TINY, film_stages=(3,)), (1, 1, 96, 64, 64), (1, 16), (1, 1, 96, 64, 64)),
    (dict(TINY, in_channels=2), (1, 2, 64, 64, 64), (2, 16), (1, 2, 64, 64, 64)),
]


@pytest.mark.parametrize("kwargs,image_shape,text_shape,expected", CASES)
def test_output_shape(kwargs, image_shape, text_shape, expected):
    net = TextFiLMSwinUNETR(**kwargs).eval()
    with torch.no_grad():
        out = net(torch.rand(image_shape), torch.randn(text_shape))
    assert out.shape == expected


def test_default_prompts_are_the_class_embeddings():
    torch.manual_seed(0)
    net = TextFiLMSwinUNETR(**TINY).eval()
    embeddings = torch.randn(3, 16)
    net.set_class_embeddings(embeddings)
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x), net(x, embeddings), atol=1e-6)
    assert "class_embeddings" in net.state_dict()
    with pytest.raises(ValueError, match="do not fit"):
        net.set_class_embeddings(torch.randn(4, 16))


def test_prompts_are_answered_independently():
    """Each output channel depends only on its own prompt: the K prompts share one image pass."""
    torch.manual_seed(0)
    net = TextFiLMSwinUNETR(**TINY).eval()
    with torch.no_grad():  # make FiLM non-trivial (it starts as identity)
        for p in net.film.to_film.parameters():
            p.normal_(0, 0.5)
    x = torch.rand(1, 1, 64, 64, 64)
    a, b = torch.randn(1, 16), torch.randn(1, 16)
    with torch.no_grad():
        both = net(x, torch.cat([a, b]))
        alone = net(x, b)
        other = net(x, a)
    assert torch.allclose(both[:, 1:], alone, atol=1e-5)
    assert not torch.allclose(alone, other, atol=1e-3), "different prompts must give different masks"


def test_gradients_reach_image_encoder_and_text_adapter():
    torch.manual_seed(0)
    net = TextFiLMSwinUNETR(**TINY)
    out = net(torch.rand(2, 1, 64, 64, 64), torch.randn(2, 16))
    out.square().mean().backward()
    missing = [name for name, p in net.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, f"no gradient for {missing}"
    assert net.film.to_film.weight.grad.abs().sum() > 0
    assert net.backbone.swinViT.patch_embed.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "image_shape,text_shape,match",
    [
        ((1, 1, 60, 64, 64), (2, 16), "divisible by 32"),
        ((1, 2, 64, 64, 64), (2, 16), "expected an image"),
        ((1, 64, 64, 64), (2, 16), "expected an image"),
        ((1, 1, 64, 64, 64), (2, 15), "text_embedding must be"),
        ((2, 1, 64, 64, 64), (3, 2, 16), "does not match the image batch"),
    ],
)
def test_bad_input_is_named(image_shape, text_shape, match):
    net = TextFiLMSwinUNETR(**TINY).eval()
    with pytest.raises(ValueError, match=match):
        net(torch.rand(image_shape), torch.randn(text_shape))


def test_bad_stages():
    with pytest.raises(ValueError, match="film_stages"):
        TextFiLMSwinUNETR(**TINY, film_stages=(4,))


def test_torchscript_trace_round_trip(tmp_path):
    net = TextFiLMSwinUNETR(**TINY).eval()
    net.set_class_embeddings(torch.randn(3, 16))
    x = torch.rand(1, 1, 64, 64, 64)
    traced = torch.jit.trace(net, x)
    path = tmp_path / "net.ts"
    traced.save(str(path))
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-5)
