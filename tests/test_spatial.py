import numpy as np
import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer

from textseg.networks import GuidanceBlock, TextSwinUNETR
from textseg.spatial import (
    CorrectiveClickTraining,
    GuidedSlidingWindowInferer,
    PrepareBatchGuidance,
    RandSpatialPromptsd,
    SpatialPromptError,
    box_from_mask,
    encode_spatial_prompts,
    infer_with_guidance,
    next_corrective_click,
    points_to_grid,
    zoom_out_zoom_in,
)
from textseg.transforms import IGNORE_CHANNEL


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
    guidance = torch.stack([encode_spatial_prompts((64, 64, 64), positive_points=[(20, 30, 30)]), encode_spatial_prompts((64, 64, 64))])[
        None
    ]
    with torch.no_grad():
        assert torch.allclose(net(x, text, guidance), net(x, text)), "a fresh guidance block is the identity"
        for block in net.guidance:
            block.mix[-1].weight.normal_(0, 0.5)
        plain, guided = net(x, text), net(x, text, guidance)
        assert torch.allclose(net(x, text, torch.zeros_like(guidance)), plain), "no guidance = all-zero guidance"
    changed = (guided[0, 0] - plain[0, 0]).abs() > 1e-4
    assert changed.any(), "a click changes its prompt's mask"
    # the blocks convolve: one click reaches most of the 64^3 crop (1x1 blocks would reach ~5 % of it)
    assert changed.float().mean() > 0.25, f"a click changed only {changed.float().mean():.1%} of the crop"
    assert torch.allclose(guided[:, 1], plain[:, 1], atol=1e-5), "an empty guidance leaves its prompt alone"
    out = net(x, text, guidance)
    out.mean().backward()
    assert net.guidance[0].mix[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"guidance must have shape \(1, 2, 3, 64, 64, 64\)"):
        net(x, text, guidance[:, :1])
    with pytest.raises(ValueError, match="spatial_prompts=True"):
        TextSwinUNETR(**TINY)(x, text, guidance)


def test_guidance_block_is_config_instantiable_and_keeps_shapes():
    block = GuidanceBlock(channels=8, guidance_channels=3)
    features, guidance = torch.randn(2, 8, 10, 12, 14), torch.rand(2, 3, 10, 12, 14)
    assert torch.equal(block(features, guidance), features), "zero-initialised last convolution"
    block2d = GuidanceBlock(channels=4, guidance_channels=3, spatial_dims=2)
    assert block2d(torch.randn(1, 4, 9, 9), torch.rand(1, 3, 9, 9)).shape == (1, 4, 9, 9)


# --- training-time click simulation --------------------------------------------------------------------


def _cube_label(shape=(32, 32, 32)):
    label = torch.zeros(4, *shape)
    label[0, 8:16, 10:20, 12:18] = 1  # present
    label[2] = IGNORE_CHANNEL  # not annotated
    label[3, 20:24, 20:24, 20:24] = 1  # present, small
    return label  # channel 1: annotated but absent


def _peaks(channel: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(int(i) for i in p) for p in torch.nonzero(channel == 1.0)]


@pytest.mark.parametrize("seed", range(6))
def test_simulated_points_land_inside_and_near_the_structure(seed):
    from scipy import ndimage

    label = _cube_label()
    t = RandSpatialPromptsd(no_prompt_prob=0.0, points_prob=1.0, box_prob=0.0, max_positive=4, max_negative=3, negative_margin=3)
    t.set_random_state(seed)
    g = t({"label": label, "image": torch.zeros(1, 32, 32, 32)})["guidance"]
    assert g.shape == (4, 3, 32, 32, 32) and g.dtype == torch.float32
    assert torch.count_nonzero(g[1]) == 0 and torch.count_nonzero(g[2]) == 0, "absent or unannotated structures get no prompt"
    for k in (0, 3):
        target = label[k].numpy() > 0
        positives, negatives = _peaks(g[k, 0]), _peaks(g[k, 1])
        assert 1 <= len(positives) <= 4 and len(negatives) <= 3
        assert all(target[p] for p in positives)
        near = ndimage.binary_dilation(target, iterations=3) & ~target
        assert all(near[p] for p in negatives)
        assert torch.count_nonzero(g[k, 2]) == 0


def test_simulated_boxes_cover_the_structure_and_text_only_prompts():
    label = _cube_label()
    t = RandSpatialPromptsd(no_prompt_prob=0.0, points_prob=0.0, box_prob=1.0, box_margin=2)
    t.set_random_state(1)
    g = t({"label": label})["guidance"]
    for k in (0, 3):
        box = g[k, 2] > 0
        assert torch.all(box[label[k] > 0]), "the box contains the whole structure"
        lo, hi = box_from_mask(label[k].numpy())[:3], box_from_mask(label[k].numpy())[3:]
        grown = box_from_mask(box.numpy())
        assert all(0 <= a - b <= 2 for a, b in zip(lo, grown[:3])) and all(0 <= b - a <= 2 for a, b in zip(hi, grown[3:]))
        assert torch.count_nonzero(g[k, :2]) == 0
    text_only = RandSpatialPromptsd(no_prompt_prob=1.0)({"label": label})["guidance"]
    assert text_only.shape == (4, 3, 32, 32, 32) and torch.count_nonzero(text_only) == 0


def test_click_simulation_is_reproducible_and_varied():
    label = _cube_label()
    a, b = RandSpatialPromptsd(), RandSpatialPromptsd()
    a.set_random_state(5)
    b.set_random_state(5)
    first = [a({"label": label})["guidance"] for _ in range(8)]
    assert all(torch.equal(x, b({"label": label})["guidance"]) for x in first)
    kinds = {(bool(x[0, 0].any()), bool(x[0, 2].any())) for x in first}
    assert len(kinds) >= 2, "text only, points and boxes are all drawn"


@pytest.mark.parametrize("kwargs", [dict(no_prompt_prob=1.5), dict(box_prob=-0.1), dict(max_positive=0), dict(negative_margin=0)])
def test_click_simulation_refuses_bad_settings(kwargs):
    with pytest.raises(ValueError):
        RandSpatialPromptsd(**kwargs)


def test_bundle_training_chain_draws_guidance(tiny_phantom):
    """train.json + tiny.json + interactive.json: every training crop carries guidance for its sampled prompts."""
    from conftest import BUNDLE_DIR
    from monai.bundle import ConfigParser

    configs = BUNDLE_DIR / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / n) for n in ("train.json", "tiny.json", "interactive.json")])
    parser.update({"dataset_dir": str(tiny_phantom), "bundle_root": str(BUNDLE_DIR)})
    assert parser.get_parsed_content("network_def").guidance is not None
    crops = parser.get_parsed_content("train#preprocessing")(parser.get_parsed_content("datalist")[0])
    for crop in crops:
        k = crop["label"].shape[0]
        assert crop["guidance"].shape == (k, 3, 64, 64, 64)
        for channel in range(k):
            positives = _peaks(crop["guidance"][channel, 0])
            assert all(crop["label"][channel][p] == 1 for p in positives), "a positive click outside its structure"
    assert any(crop["guidance"].any() for crop in crops)
    batch = {"image": torch.zeros(1, 1, 8, 8, 8), "label": torch.zeros(1, 2, 8, 8, 8), "text_embedding": torch.zeros(1, 2, 4)}
    _, _, _, kwargs = parser.get_parsed_content("prepare_batch")(batch)
    assert set(kwargs) == {"text_embedding"}, "validation/inference batches without guidance run text only"
    _, _, _, kwargs = parser.get_parsed_content("prepare_batch")({**batch, "guidance": torch.ones(1, 2, 3, 8, 8, 8)})
    assert set(kwargs) == {"text_embedding", "guidance"} and kwargs["guidance"].shape == (1, 2, 3, 8, 8, 8)


def test_prepare_batch_guidance_refuses_positional_keys():
    with pytest.raises(ValueError, match="must be a dict"):
        PrepareBatchGuidance(["text_embedding"])


# --- windows of guidance -------------------------------------------------------------------------------


def _echo_positive_clicks(x, text_embedding=None, guidance=None):
    """A stand-in network: mask logits = its window's positive-click channel (+ the image), so misplaced windows show."""
    assert guidance.shape[0] == x.shape[0] and guidance.shape[3:] == x.shape[2:]
    return guidance[:, :, 0] + x[:, :1]


def test_sliding_window_cuts_guidance_with_the_image():
    shape = (70, 50, 90)
    image = torch.rand(1, 1, *shape)
    guidance = torch.stack(
        [
            encode_spatial_prompts(shape, positive_points=[(5, 40, 80), (60, 10, 3)]),
            encode_spatial_prompts(shape, positive_points=[(35, 25, 45)]),
        ]
    )[None]
    inferer = GuidedSlidingWindowInferer(roi_size=(32, 32, 32), sw_batch_size=3, overlap=0.25)
    out = inferer(image, _echo_positive_clicks, text_embedding=None, guidance=guidance)
    assert out.shape == (1, 2, *shape)
    assert torch.allclose(out, guidance[:, :, 0] + image, atol=1e-5)
    plain = SlidingWindowInferer(roi_size=(32, 32, 32), sw_batch_size=3, overlap=0.25)
    assert torch.allclose(infer_with_guidance(plain, image, _echo_positive_clicks, guidance), out, atol=1e-6)
    assert torch.allclose(infer_with_guidance(SimpleInferer(), image, _echo_positive_clicks, guidance), out, atol=1e-6)
    with pytest.raises(ValueError, match=r"guidance must have shape \[1, K, 3, 70, 50, 90\]"):
        inferer(image, _echo_positive_clicks, guidance=guidance[..., :10])


def test_guided_inferer_without_guidance_is_the_plain_sliding_window():
    torch.manual_seed(0)
    net = TextSwinUNETR(**TINY, spatial_prompts=True).eval()
    x, text = torch.rand(1, 1, 80, 64, 64), torch.randn(2, 16)
    kwargs = dict(roi_size=(64, 64, 64), sw_batch_size=2, overlap=0.25)
    with torch.no_grad():
        assert torch.allclose(
            GuidedSlidingWindowInferer(**kwargs)(x, net, text_embedding=text), SlidingWindowInferer(**kwargs)(x, net, text_embedding=text)
        )


def test_zoom_out_zoom_in_keeps_clicked_regions():
    image = torch.zeros(1, 1, 96, 96, 96)
    image[..., 70:80, 70:80, 70:80] = 1.0

    calls = []

    def blind_coarse_pass(x):  # finds nothing at low resolution (the first call), everything at full resolution
        calls.append(tuple(x.shape[2:]))
        return (x > 0.5).float() if len(calls) > 1 else torch.zeros_like(x)

    assert zoom_out_zoom_in(image, blind_coarse_pass, (64, 64, 64)).sum() == 0
    calls.clear()
    out = zoom_out_zoom_in(image, blind_coarse_pass, (64, 64, 64), include_points=[(75, 75, 75)])
    assert calls[1] == (64, 64, 64), "a single click gets one patch of context"
    assert torch.equal(out[0, 0] > 0.5, image[0, 0] > 0.5), "the clicked object is segmented although the coarse pass missed it"
    with pytest.raises(SpatialPromptError, match="outside the volume"):
        zoom_out_zoom_in(image, blind_coarse_pass, (64, 64, 64), include_points=[(100, 5, 5)])


# --- clicks from the original image to the network grid -----------------------------------------------


def test_points_to_grid_maps_through_world_coordinates():
    source = np.diag([2.0, 3.0, 4.0, 1.0])
    source[:3, 3] = (10, 20, 30)
    target = np.diag([-4.0, 4.0, 4.0, 1.0])
    target[:3, 3] = (50, 0, 0)
    (p,) = points_to_grid([(5, 0, 1)], source, target)
    assert np.allclose(p, ((50 - 20) / 4, 20 / 4, 34 / 4))
    with pytest.raises(SpatialPromptError, match="has 2 coordinates"):
        points_to_grid([(1, 2)], source, target)


@pytest.mark.parametrize("flip", [False, True])
def test_a_click_on_an_organ_lands_on_it_after_preprocessing(tmp_path, flip):
    """A click on the liver (and one on the left kidney) in the stored image's voxels lands on the same organ on the
    network's grid after orientation to RAS and resampling to 4 mm, also for an image stored LPS."""
    import nibabel as nib
    from monai.transforms import Compose

    from textseg.phantom import PHANTOM_LABELS, make_phantom
    from textseg.transforms import ct_transforms

    case = make_phantom(4, shape=(64, 64, 64), spacing=(5.3, 4.4, 5.6))
    image, label, affine = case.image, case.label, case.affine
    if flip:  # the same scan stored LPS: array flipped on x and y, the affine says so
        flip_affine = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip_affine[:2, 3] = 63
        image, label, affine = image[::-1, ::-1].copy(), label[::-1, ::-1].copy(), affine @ flip_affine
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(tmp_path / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), str(tmp_path / "label.nii.gz"))
    data = Compose(ct_transforms(["image"], label_key="label", pixdim=(4.0, 4.0, 4.0)))(
        {"image": str(tmp_path / "ct.nii.gz"), "label": str(tmp_path / "label.nii.gz")}
    )
    ids = {name: i for i, name in PHANTOM_LABELS.items()}
    for organ in ("liver", "kidney_left"):
        inside = np.argwhere(label == ids[organ])
        click = tuple(int(c) for c in inside[len(inside) // 2])
        (mapped,) = points_to_grid([click], data["image"].meta["original_affine"], data["image"].affine)
        voxel = tuple(int(round(c)) for c in mapped)
        assert int(data["label"][0][voxel]) == ids[organ], f"a click on the {organ} landed elsewhere"


def test_clicks_as_hard_constraints():
    from textseg.spatial import constrain_to_clicks

    probs = torch.full((20, 20, 20), 0.3)
    out = constrain_to_clicks(probs, positive_points=[(5, 5, 5)], negative_points=[(15, 15, 15), (6, 5, 5)], radius=2)
    assert torch.equal(probs, torch.full((20, 20, 20), 0.3)), "the input is not modified"
    assert out[5, 5, 3] == 1.0 and out[5, 7, 5] == 1.0 and out[5, 5, 2] == pytest.approx(0.3), "a ball of radius 2 around the click"
    assert out[6, 5, 5] == 0.0 and out[4, 5, 5] == 0.0, "negative clicks win where the balls overlap"
    assert out[15, 15, 13] == 0.0 and out[15, 15, 12] == pytest.approx(0.3)
    assert (out == 1.0).sum() < (4 / 3 * np.pi * 8) and (out == 0.0).sum() > 30
    assert torch.equal(constrain_to_clicks(probs, [(5, 5, 5)], radius=0), probs)
    with pytest.raises(SpatialPromptError, match="outside the volume"):
        constrain_to_clicks(probs, [(25, 5, 5)])


# --- training on corrective clicks (iteration_update) ------------------------------------------------------


def _click_training_batch() -> dict:
    label = torch.zeros(1, 2, 64, 64, 64)
    label[0, 0, 16:40, 20:44, 24:48] = 1.0  # an annotated structure
    label[0, 1] = IGNORE_CHANNEL  # not annotated in this case
    return {
        "image": torch.rand(1, 1, 64, 64, 64),
        "label": label,
        "text_embedding": torch.randn(1, 2, 16),
        "guidance": torch.zeros(1, 2, 3, 64, 64, 64),
    }


@pytest.mark.parametrize("probability", [1.0, 0.0])
def test_corrective_click_training_runs_in_monais_trainer(probability):
    from monai.engines import SupervisedTrainer

    torch.manual_seed(0)
    net = TextSwinUNETR(**TINY, spatial_prompts=True)
    before = [p.detach().clone() for p in net.parameters()]
    batch = _click_training_batch()
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=[batch],
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        loss_function=torch.nn.BCEWithLogitsLoss(),
        prepare_batch=PrepareBatchGuidance({"text_embedding": "text_embedding"}),
        iteration_update=CorrectiveClickTraining(probability=probability, max_clicks=2),
        amp=False,
    )
    trainer.run()
    clicks = batch["guidance"][0, 0, :2]
    if probability:
        assert clicks.max() == pytest.approx(1.0), "a corrective click (peak 1) was added to the annotated prompt"
        peak = np.unravel_index(int(clicks.argmax()), clicks.shape)
        inside = bool(batch["label"][0, 0][peak[1:]] > 0)
        assert inside == (peak[0] == 0), "positive clicks land inside the structure, negative ones outside"
    else:
        assert clicks.abs().sum() == 0, "no iteration drew clicks"
    assert batch["guidance"][0, 1].abs().sum() == 0, "an unannotated prompt gets no click"
    assert net.training, "the network is back in training mode"
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters())), "the engine's own step still trained"


def test_corrective_clicks_stop_when_the_prediction_is_right():
    batch = _click_training_batch()
    logits = torch.where(batch["label"] > 0, 10.0, -10.0)
    assert CorrectiveClickTraining().add_corrective_clicks(batch, logits) == 0
    with pytest.raises(ValueError, match="do not fit"):
        CorrectiveClickTraining().add_corrective_clicks(batch, logits[:, :1])
    with pytest.raises(KeyError, match="RandSpatialPromptsd"):
        CorrectiveClickTraining().add_corrective_clicks({"label": batch["label"]}, logits)
    with pytest.raises(ValueError, match="max_clicks"):
        CorrectiveClickTraining(max_clicks=0)
