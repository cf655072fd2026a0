import pytest
import torch

from textseg.networks import FUSIONS, HEADS, TextSwinUNETR

TINY = dict(in_channels=1, num_classes=3, text_dim=16, feature_size=12, window_size=4, head_channels=8)

CASES = [
    # (network kwargs, image shape, text shape, expected output shape)
    (dict(TINY), (2, 1, 64, 64, 64), (5, 16), (2, 5, 64, 64, 64)),
    (dict(TINY), (1, 1, 64, 96, 64), (1, 4, 16), (1, 4, 64, 96, 64)),
    (dict(TINY), (2, 1, 64, 64, 64), (1, 2, 16), (2, 2, 64, 64, 64)),
    (dict(TINY, conditioned_stages=(1, 2, 3)), (1, 1, 64, 64, 64), (3, 16), (1, 3, 64, 64, 64)),
    (dict(TINY, conditioned_stages=(3,)), (1, 1, 96, 64, 64), (1, 16), (1, 1, 96, 64, 64)),
    (dict(TINY, in_channels=2), (1, 2, 64, 64, 64), (2, 16), (1, 2, 64, 64, 64)),
    (dict(TINY, fusion="concat"), (2, 1, 64, 64, 64), (1, 3, 16), (2, 3, 64, 64, 64)),
    (dict(TINY, fusion="cross_attention"), (2, 1, 64, 64, 64), (2, 3, 16), (2, 3, 64, 64, 64)),
    (dict(TINY, fusion="cross_attention", conditioned_stages=(2, 3)), (1, 1, 64, 64, 96), (4, 16), (1, 4, 64, 64, 96)),
    (dict(TINY, head="linear"), (2, 1, 64, 64, 64), (5, 16), (2, 5, 64, 64, 64)),
    (dict(TINY, head="linear", conditioned_stages=(1, 2, 3)), (1, 1, 64, 96, 64), (1, 4, 16), (1, 4, 64, 96, 64)),
    (dict(TINY, head="linear", conditioned_stages=(3,)), (2, 1, 96, 64, 64), (2, 2, 16), (2, 2, 96, 64, 64)),
    (dict(TINY, head="linear", fusion="cross_attention", conditioned_stages=(2, 3)), (1, 1, 64, 64, 96), (4, 16), (1, 4, 64, 64, 96)),
]

# every fusion with every head it works with (the linear head needs a scale: not concat)
FUSION_HEADS = [(fusion, "mlp") for fusion in sorted(FUSIONS)] + [("film", "linear"), ("cross_attention", "linear")]


def _randomize_text_path(net):
    """Fresh fusions start as (near) identities: give their text layers random weights."""
    with torch.no_grad():
        for name, p in net.fusion.named_parameters():
            if "film" in name or "text_weights" in name:
                p.normal_(0, 0.5)


@pytest.mark.parametrize("kwargs,image_shape,text_shape,expected", CASES)
def test_output_shape(kwargs, image_shape, text_shape, expected):
    net = TextSwinUNETR(**kwargs).eval()
    with torch.no_grad():
        out = net(torch.rand(image_shape), torch.randn(text_shape))
    assert out.shape == expected


def test_default_prompts_are_the_class_embeddings():
    torch.manual_seed(0)
    net = TextSwinUNETR(**TINY).eval()
    embeddings = torch.randn(3, 16)
    net.set_class_embeddings(embeddings)
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x), net(x, embeddings), atol=1e-6)
    assert "class_embeddings" in net.state_dict()
    with pytest.raises(ValueError, match="do not fit"):
        net.set_class_embeddings(torch.randn(4, 16))


@pytest.mark.parametrize("fusion,head", FUSION_HEADS)
def test_prompts_are_answered_independently(fusion, head):
    """Each output channel depends only on its own prompt: the K prompts share one image pass."""
    torch.manual_seed(0)
    net = TextSwinUNETR(**TINY, fusion=fusion, head=head).eval()
    _randomize_text_path(net)
    x = torch.rand(1, 1, 64, 64, 64)
    a, b = torch.randn(1, 16), torch.randn(1, 16)
    with torch.no_grad():
        both = net(x, torch.cat([a, b]))
        alone = net(x, b)
        other = net(x, a)
    assert torch.allclose(both[:, 1:], alone, atol=1e-5)
    assert not torch.allclose(alone, other, atol=1e-3), "different prompts must give different masks"


def test_cross_attention_modulation_depends_on_the_image():
    """Unlike FiLM and concatenation, the cross-attention prompt looks at the image before it modulates it."""
    torch.manual_seed(0)
    net = TextSwinUNETR(**TINY, fusion="cross_attention").eval()
    _randomize_text_path(net)
    text = torch.randn(1, 2, 16)
    with torch.no_grad():
        features = [torch.randn(1, 8, 4, 4, 4)]
        first = net.fusion.modulations(text, features * 3)
        second = net.fusion.modulations(text, [features[0] * 0 + 1.0] * 3)
    assert not torch.allclose(first[0][0], second[0][0], atol=1e-4)


@pytest.mark.parametrize("fusion,head", FUSION_HEADS)
def test_gradients_reach_image_encoder_and_text_adapter(fusion, head):
    torch.manual_seed(0)
    net = TextSwinUNETR(**TINY, fusion=fusion, head=head)
    _randomize_text_path(net)
    out = net(torch.rand(2, 1, 64, 64, 64), torch.randn(2, 16))
    out.square().mean().backward()
    missing = [name for name, p in net.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, f"no gradient for {missing}"
    assert net.fusion.adapter[0].weight.grad.abs().sum() > 0
    assert net.backbone.swinViT.patch_embed.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("head", HEADS)
def test_thin_training_patch(head):
    """A 64x64x32 patch (the real-CT recipe's) trains: its bottleneck has 2x2x1 voxels, enough to instance-normalise."""
    net = TextSwinUNETR(**TINY, head=head).train()
    out = net(torch.rand(2, 1, 64, 64, 32), torch.randn(3, 16))
    assert out.shape == (2, 3, 64, 64, 32)
    out.mean().backward()
    assert net.backbone.swinViT.patch_embed.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "image_shape,text_shape,match",
    [
        ((1, 1, 60, 64, 64), (2, 16), "multiples of 32"),
        ((1, 1, 32, 32, 32), (2, 16), "at least one of them 64"),
        ((1, 2, 64, 64, 64), (2, 16), "expected an image"),
        ((1, 64, 64, 64), (2, 16), "expected an image"),
        ((1, 1, 64, 64, 64), (2, 15), "text_embedding must be"),
        ((2, 1, 64, 64, 64), (3, 2, 16), "does not match the image batch"),
    ],
)
def test_bad_input_is_named(image_shape, text_shape, match):
    net = TextSwinUNETR(**TINY).eval()
    with pytest.raises(ValueError, match=match):
        net(torch.rand(image_shape), torch.randn(text_shape))


def test_bad_stages_and_fusion():
    with pytest.raises(ValueError, match="conditioned_stages"):
        TextSwinUNETR(**TINY, conditioned_stages=(4,))
    with pytest.raises(ValueError, match="unknown fusion 'sum'"):
        TextSwinUNETR(**TINY, fusion="sum")
    with pytest.raises(ValueError, match="unknown head 'conv'"):
        TextSwinUNETR(**TINY, head="conv")
    with pytest.raises(ValueError, match="film or cross_attention"):
        TextSwinUNETR(**TINY, head="linear", fusion="concat")
    with pytest.raises(ValueError, match="spatial prompts need the mlp head"):
        TextSwinUNETR(**TINY, head="linear", spatial_prompts=True)


def test_a_checkpoint_of_one_head_is_refused_by_the_other():
    """Both heads have the same parameters; the linear head's marker key keeps their checkpoints apart."""
    mlp, linear = TextSwinUNETR(**TINY), TextSwinUNETR(**TINY, head="linear")
    assert set(linear.state_dict()) - set(mlp.state_dict()) == {"linear_head"}
    with pytest.raises(RuntimeError, match="linear_head"):
        mlp.load_state_dict(linear.state_dict())
    with pytest.raises(RuntimeError, match="linear_head"):
        linear.load_state_dict(mlp.state_dict())
    linear.load_state_dict(TextSwinUNETR(**TINY, head="linear").state_dict())


def test_linear_head_is_a_text_made_classifier_of_the_shared_features():
    """With one conditioned stage, the linear head's logit is ``(readout * scale) . relu(F) + readout . shift + bias``."""
    torch.manual_seed(0)
    net = TextSwinUNETR(**TINY, head="linear", conditioned_stages=(3,)).eval()
    _randomize_text_path(net)
    x, text = torch.rand(1, 1, 64, 64, 64), torch.randn(2, 16)
    with torch.no_grad():
        features = net.projections[0](net.decoder_features(x)[3])  # [1, 8, 8, 8, 8]
        ((scale, shift),) = net.fusion.modulations(text[None], [features])
        expected = (
            torch.einsum("kc,cxyz->kxyz", scale[0] * net.readout[0], features[0].relu())
            + (shift[0] * net.readout[0]).sum(-1)[:, None, None, None]
        )
        expected = (
            torch.nn.functional.interpolate(expected[None], size=(64, 64, 64), mode="trilinear", align_corners=False) + net.readout_bias
        )
        assert torch.allclose(net(x, text), expected, atol=1e-5)


@pytest.mark.parametrize("fusion,head", FUSION_HEADS)
def test_torchscript_trace_round_trip(fusion, head, tmp_path):
    net = TextSwinUNETR(**TINY, fusion=fusion, head=head).eval()
    _randomize_text_path(net)
    net.set_class_embeddings(torch.randn(3, 16))
    x = torch.rand(1, 1, 64, 64, 64)
    traced = torch.jit.trace(net, x)
    path = tmp_path / "net.ts"
    traced.save(str(path))
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-5)
