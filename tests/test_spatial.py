import numpy as np
import pytest
import torch

from textseg.networks import TextSwinUNETR
from textseg.spatial import SpatialPromptError, box_from_mask, encode_spatial_prompts, next_corrective_click, zoom_out_zoom_in


def test_guidance_channels():
    g = encode_spatial_prompts((16, 16, 16), positive_points=[(4, 5, 6)], negative_points=[(10, 10, 10)], boxes=[(2, 2, 2, 8, 9, 10)])
    assert g.shape == (3, 16, 16, 16)
    assert g[0, 4, 5, 6] == 1.0 and g[0, 10, 10, 10] < 1e-3
    assert g[1, 10, 10, 10] == 1.0 and g[1, 4, 5, 6] < 1e-3
    assert g[2].sum() == 6 * 7 * 8 and g[2, 2, 2, 2] == 1 and g[2, 8, 8, 8] == 0
    assert torch.count_nonzero(encode_spatial_prompts((8, 8, 8))) == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(positive_points=[(16, 0, 0)]), "outside the volume of size"),
        (dict(negative_points=[(-1, 3, 3)]), "negative point .* outside"),
        (dict(positive_points=[(1, 2)]), "has 2 coordinates"),
        (dict(boxes=[(4, 4, 4, 4, 8, 8)]), "is empty"),
        (dict(boxes=[(8, 4, 4, 2, 8, 8)]), "negative size"),
        (dict(boxes=[(20, 20, 20, 30, 30, 30)]), "outside the volume"),
        (dict(boxes=[(1, 2, 3)]), "6 numbers"),
    ],
)
def test_bad_spatial_prompts_are_named(kwargs, match):
    with pytest.raises(SpatialPromptError, match=match):
        encode_spatial_prompts((16, 16, 16), **kwargs)


def test_box_from_mask():
    mask = np.zeros((10, 10, 10), bool)
    mask[2:5, 3:7, 4:5] = True
    assert box_from_mask(mask) == [2, 3, 4, 5, 7, 5]
    assert box_from_mask(mask, margin=3) == [0, 0, 1, 8, 10, 8]
    assert box_from_mask(np.zeros((4, 4, 4))) is None


def test_corrective_click_targets_the_largest_error():
    target = np.zeros((20, 20, 20), bool)
    target[2:12, 2:12, 2:12] = True
    prediction = target.copy()
    prediction[2:12, 2:12, 2:6] = False  # a missed slab of 400 voxels
    prediction[15:18, 15:18, 15:18] = True  # a false positive of 27 voxels
    voxel, positive = next_corrective_click(prediction, target)
    assert positive and target[voxel] and not prediction[voxel]
    prediction[2:12, 2:12, 2:6] = True
    voxel, positive = next_corrective_click(prediction, target)
    assert not positive and voxel == (16, 16, 16)
    assert next_corrective_click(target, target) is None


def test_zoom_out_zoom_in_refines_inside_the_region():
    image = torch.zeros(1, 1, 128, 96, 96)
    image[..., 40:80, 30:60, 30:60] = 1.0
    calls = []

    def predictor(x):
        calls.append(tuple(x.shape[2:]))
        return (x > 0.5).float()

    out = zoom_out_zoom_in(image, predictor, roi_size=(64, 64, 64))
    assert calls[0] == (64, 64, 64) and all(c % 32 == 0 for c in calls[1])
    assert out.shape == image.shape
    assert torch.equal(out[0, 0] > 0.5, image[0, 0] > 0.5), "the fine pass at full resolution recovers the exact object"
    empty = zoom_out_zoom_in(torch.zeros(1, 1, 64, 64, 64), predictor, roi_size=(64, 64, 64))
    assert empty.sum() == 0


TINY = dict(in_channels=1, num_classes=2, text_dim=16, feature_size=12, window_size=4, head_channels=8, conditioned_stages=(1, 2, 3))


def test_network_takes_spatial_prompts():
    torch.manual_seed(0)
    net = TextSwinUNETR(**TINY, spatial_prompts=True).eval()
    x, text = torch.rand(1, 1, 64, 64, 64), torch.randn(2, 16)
    guidance = torch.stack([encode_spatial_prompts((64, 64, 64), positive_points=[(20, 30, 30)]), encode_spatial_prompts((64, 64, 64))])[None]
    with torch.no_grad():
        plain = net(x, text)
        assert torch.allclose(net(x, text, guidance), plain), "a fresh guidance projection starts at zero"
        for layer in net.guidance:
            layer.weight.normal_(0, 0.5)
        guided = net(x, text, guidance)
    assert not torch.allclose(guided[:, 0], plain[:, 0], atol=1e-4), "a click changes its prompt's mask"
    assert torch.allclose(guided[:, 1], plain[:, 1], atol=1e-5), "an empty guidance leaves its prompt alone"
    out = net(x, text, guidance)
    out.mean().backward()
    assert net.guidance[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"guidance must have shape \(1, 2, 3, 64, 64, 64\)"):
        net(x, text, guidance[:, :1])
    with pytest.raises(ValueError, match="spatial_prompts=True"):
        TextSwinUNETR(**TINY)(x, text, guidance)
