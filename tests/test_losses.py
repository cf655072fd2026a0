import pytest
import torch

from textseg.losses import PartialLabelDiceCELoss
from textseg.transforms import IGNORE_CHANNEL


def _target():
    target = torch.zeros(2, 3, 8, 8, 8)
    target[:, 0, 2:6, 2:6, 2:6] = 1
    target[:, 1, :4] = 1
    return target


def test_perfect_prediction_beats_wrong_one():
    loss = PartialLabelDiceCELoss()
    target = _target()
    good = (target * 2 - 1) * 20
    assert loss(good, target) < 0.01
    assert loss(-good, target) > 1.0


def test_unsupervised_channels_are_ignored():
    loss = PartialLabelDiceCELoss()
    target = _target()
    logits = (target * 2 - 1) * 20
    partial = target.clone()
    partial[0, 2] = IGNORE_CHANNEL
    wrong_on_ignored = logits.clone()
    wrong_on_ignored[0, 2] = 20  # would be very wrong if supervised
    assert torch.isclose(loss(wrong_on_ignored, partial), loss(logits, target), atol=1e-4)
    assert loss(wrong_on_ignored, target) > loss(logits, target) + 0.1


def test_no_supervised_channel_gives_zero_with_gradient():
    logits = torch.randn(1, 2, 4, 4, 4, requires_grad=True)
    out = PartialLabelDiceCELoss()(logits, torch.full((1, 2, 4, 4, 4), IGNORE_CHANNEL))
    out.backward()
    assert out.item() == 0.0 and logits.grad is not None


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="differ in shape"):
        PartialLabelDiceCELoss()(torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 3, 4, 4, 4))


def test_balanced_cross_entropy_lifts_a_small_structure_out_of_its_background():
    """pos_weight_cap weighs a channel's foreground by background/foreground (capped): a 1 % structure predicted
    absent gets a 20x stronger push than with plain cross-entropy; fully supervised negatives are unchanged."""
    target = torch.zeros(1, 2, 1000)
    target[0, 0, :10] = 1.0  # 1 % foreground
    logits = torch.full((1, 2, 1000), -8.0, requires_grad=True)
    grads = []
    for loss in (PartialLabelDiceCELoss(lambda_dice=0.0), PartialLabelDiceCELoss(lambda_dice=0.0, pos_weight_cap=20.0)):  # CE alone
        logits.grad = None
        loss(logits, target).backward()
        grads.append(logits.grad.clone())
    plain, balanced = grads
    assert torch.allclose(balanced[0, 0, :10] / plain[0, 0, :10], torch.full((10,), 20.0), rtol=0.05)
    assert torch.allclose(balanced[0, 1], plain[0, 1]), "an empty channel has nothing to weigh"
    with pytest.raises(ValueError, match="pos_weight_cap"):
        PartialLabelDiceCELoss(pos_weight_cap=0.5)
