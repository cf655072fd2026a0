import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd

from textseg.prompts import PromptError
from textseg.transforms import (
    IGNORE_CHANNEL,
    AddTextEmbeddingd,
    AtomicNibabelWriter,
    LabelToChannelsd,
    MaskUnsupervisedd,
    ProbabilitiesToLabelMapd,
    SamplePromptsd,
    ValidateImaged,
    ct_transforms,
)


def _save(path, array, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(array), np.diag([2.0, 2.0, 3.0, 1.0]) if affine is None else affine), str(path))
    return str(path)


@pytest.mark.parametrize(
    "shape,match",
    [((1, 16, 16), "expected a 3D image"), ((3, 8, 8, 8), "4D or multi-channel"), ((1, 8, 8, 1), "spatial size below 2")],
)
def test_validate_rejects_non_3d(shape, match):
    with pytest.raises(ValueError, match=match):
        ValidateImaged("image")({"image": MetaTensor(torch.zeros(shape), meta={"filename_or_obj": "scan.nii.gz"})})


def test_validate_names_file_with_nan():
    image = torch.zeros(1, 4, 4, 4)
    image[0, 1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="scan.nii.gz: image contains NaN"):
        ValidateImaged("image")({"image": MetaTensor(image, meta={"filename_or_obj": "scan.nii.gz"})})


def test_ct_transforms_load_orient_window_and_invert(tmp_path):
    hu = np.linspace(-1000, 1000, 10 * 12 * 8, dtype=np.float32).reshape(10, 12, 8)
    lps = np.diag([-2.0, -2.0, 3.0, 1.0])  # stored LPS: the pipeline must reorient to RAS
    path = _save(tmp_path / "ct.nii.gz", hu, lps)
    chain = Compose(ct_transforms(pixdim=(4.0, 4.0, 3.0), hu_range=(-175, 250)))
    out = chain({"image": path})
    image = out["image"]
    assert image.shape[0] == 1 and image.shape[1:3] in [(5, 6), (6, 6), (5, 7), (6, 7)] and image.shape[3] == 8
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0
    assert np.all(np.diag(image.affine.numpy())[:3] > 0), "not reoriented to RAS"
    out["pred"] = image.clone()
    back = Invertd("pred", transform=chain, orig_keys="image", nearest_interp=False)(out)["pred"]
    assert back.shape == (1, 10, 12, 8)
    assert np.allclose(back.affine.numpy(), lps)


def test_ct_transforms_2d_file_is_rejected_with_its_name(tmp_path):
    path = _save(tmp_path / "slice.nii.gz", np.zeros((16, 16), np.float32), np.eye(4))
    with pytest.raises(RuntimeError) as raised:
        Compose(ct_transforms())({"image": path})
    causes = []
    error = raised.value
    while error is not None:  # MONAI wraps transform errors; ours is in the chain
        causes.append(str(error))
        error = error.__cause__
    assert any("slice.nii.gz: expected a 3D image" in c for c in causes), causes


LABEL_MAPS = {"a": {1: "liver", 2: "spleen"}, "b": {1: "spleen", 5: "kidney_left"}}


def test_label_to_channels_maps_ids_and_marks_unannotated():
    label = torch.tensor([0, 1, 2, 5]).reshape(1, 4, 1, 1).repeat(1, 1, 2, 2)
    to_channels = LabelToChannelsd("label", ["spleen", "liver", "kidney_left"], LABEL_MAPS)
    out = to_channels({"label": label, "dataset": "b", "annotated": ["spleen"]})
    target = out["label"]
    assert target.shape == (3, 4, 2, 2) and "annotated" not in out
    assert target[0, :, 0, 0].tolist() == [0, 1, 0, 0]  # spleen is id 1 in dataset b
    assert torch.all(target[1] == IGNORE_CHANNEL)  # b has no liver
    assert torch.all(target[2] == IGNORE_CHANNEL)  # kidney_left exists in b but this case does not annotate it
    full = to_channels({"label": label, "dataset": "a"})["label"]
    assert full[1, :, 0, 0].tolist() == [0, 1, 0, 0] and full[0, :, 0, 0].tolist() == [0, 0, 1, 0]
    with pytest.raises(KeyError, match="no label map for dataset 'c'"):
        to_channels({"label": label, "dataset": "c"})


def test_mask_unsupervised_channels():
    label = torch.zeros(2, 4, 4, 4)
    label[1] = IGNORE_CHANNEL
    pred = torch.ones(2, 4, 4, 4)
    out = MaskUnsupervisedd("pred")({"pred": pred, "label": label})
    assert out["pred"][1].sum() == 0 and out["label"][1].sum() == 0 and out["pred"][0].sum() == 64
    assert pred.sum() == 128, "input must not be modified"


def test_probabilities_to_label_map():
    # three voxels; channel 0 is vocabulary id 5, channel 1 id 2
    probs = torch.tensor([[0.9, 0.6, 0.4, 0.2], [0.7, 0.8, 0.3, 0.5]]).reshape(2, 4, 1, 1)
    out = ProbabilitiesToLabelMapd("pred", label_ids=[5, 2])({"pred": probs})["pred"]
    assert out.shape == (1, 4, 1, 1)
    assert out.flatten().tolist() == [5, 2, 0, 2]  # most probable wins; below 0.5 is background
    with pytest.raises(ValueError, match="2 label ids"):
        ProbabilitiesToLabelMapd("pred", label_ids=[5, 2])({"pred": torch.zeros(3, 2, 2, 2)})


def test_probabilities_to_label_map_reads_the_sample_s_ids():
    probs = torch.tensor([[0.9, 0.2], [0.1, 0.8]]).reshape(2, 2, 1, 1)
    out = ProbabilitiesToLabelMapd("pred", label_ids_key="target_ids")({"pred": probs, "target_ids": torch.tensor([7, 3])})["pred"]
    assert out.flatten().tolist() == [7, 3]
    with pytest.raises(ValueError, match="either label_ids or label_ids_key"):
        ProbabilitiesToLabelMapd("pred")
    with pytest.raises(ValueError, match="either label_ids or label_ids_key"):
        ProbabilitiesToLabelMapd("pred", label_ids=[1], label_ids_key="target_ids")


def _random_table(dim: int = 8):
    from textseg.text import EmbeddingTable
    from textseg.vocabulary import load_vocabulary

    names = list(load_vocabulary().names)
    return EmbeddingTable(names, torch.randn(len(names), dim, generator=torch.Generator().manual_seed(0)), encoder="test")


def test_resolve_promptd_writes_ids_embeddings_and_the_resolution():
    from textseg.prompts import resolution_structures, resolve
    from textseg.text import prompt_features
    from textseg.transforms import ResolvePromptd, resolution_of
    from textseg.vocabulary import load_vocabulary

    vocabulary = load_vocabulary()
    table = _random_table()
    classes = ["spleen", "kidney_right", "kidney_left", "liver", "stomach", "aorta"]
    out = ResolvePromptd(table, classes)({"image": 0, "prompt": "aorta and the organ left of the stomach"})
    names = resolution_structures(resolve("aorta and the organ left of the stomach"), allowed=classes)
    assert names[0] == "aorta" and "spleen" in names and "stomach" in names
    assert out["target_ids"].tolist() == [vocabulary[n].id for n in names]
    assert torch.equal(out["text_embedding"], prompt_features(table, names))
    assert out["prompt"] == "aorta and the organ left of the stomach"
    assert resolution_of(out) == resolve("aorta and the organ left of the stomach")
    with pytest.raises(PromptError, match="not trained on pancreas"):
        ResolvePromptd(table, classes)({"prompt": "pancreas"})
    with pytest.raises(PromptError, match="no 'prompt'"):
        ResolvePromptd(table, classes)({"image": 0})


def test_resolve_promptd_takes_a_resolution_without_resolving_again(monkeypatch):
    from textseg.prompts import PromptResolver, resolve
    from textseg.transforms import ResolvePromptd

    resolution = resolve("left kidney and liver")
    calls = []
    monkeypatch.setattr(PromptResolver, "resolve", lambda self, prompt: calls.append(prompt))
    out = ResolvePromptd(_random_table(), ["liver", "kidney_left"])({"prompt": resolution})
    assert calls == [] and out["prompt"] == "left kidney and liver"
    assert out["target_ids"].tolist() == [3, 5]


def test_the_resolved_prompt_survives_a_data_loader_and_decollation():
    """A bundle's DataLoader collates the sample and the evaluator decollates it before post-processing: the ids, the
    embeddings and the resolution (JSON) come out as they went in."""
    from monai.data import DataLoader, Dataset, decollate_batch

    from textseg.prompts import resolve
    from textseg.transforms import ResolvePromptd, resolution_of

    transform = ResolvePromptd(_random_table(), ["spleen", "liver", "stomach"])
    data = [{"image": torch.zeros(1, 2, 2, 2), "prompt": "liver and the largest organ"}]
    batch = next(iter(DataLoader(Dataset(data, transform), batch_size=1)))
    assert batch["text_embedding"].shape == (1, 3, 10)
    (sample,) = decollate_batch(batch)
    assert sample["target_ids"].tolist() == [5, 1, 6]
    assert resolution_of(sample) == resolve("liver and the largest organ")
    assert resolution_of(batch) == resolve("liver and the largest organ")


def test_add_text_embedding():
    out = AddTextEmbeddingd(torch.ones(3, 8))({"image": 0})
    assert out["text_embedding"].shape == (3, 8)
    with pytest.raises(ValueError, match="K>0"):
        AddTextEmbeddingd(torch.ones(0, 8))


def _crop_target():
    """Six prompt channels of a 4x4x4 crop: 0-2 present, 3-4 annotated but absent, 5 not annotated."""
    target = torch.zeros(6, 4, 4, 4)
    for k in range(3):
        target[k, k] = 1.0
    target[5] = IGNORE_CHANNEL
    return target


@pytest.mark.parametrize(
    "num_prompts,negative_fraction,positives,negatives,unsupervised",
    [(4, 0.25, 3, 1, 0), (4, 0.5, 2, 2, 0), (2, 0.0, 2, 0, 0), (6, 0.25, 3, 2, 1), (3, 1.0, 1, 2, 0)],
)
def test_sample_prompts_keeps_positives_and_known_absent_negatives(num_prompts, negative_fraction, positives, negatives, unsupervised):
    target = _crop_target()
    embedding = torch.arange(6, dtype=torch.float32)[:, None].repeat(1, 8)  # row k is filled with k
    sampler = SamplePromptsd(num_prompts=num_prompts, negative_fraction=negative_fraction)
    seen = set()
    for seed in range(20):
        sampler.set_random_state(seed)
        out = sampler({"label": target, "text_embedding": embedding})
        chosen = out["text_embedding"][:, 0].long().tolist()
        assert out["label"].shape == (num_prompts, 4, 4, 4) and len(set(chosen)) == num_prompts
        assert torch.equal(out["label"], target[chosen]), "labels and prompts must stay paired"
        assert sum(c < 3 for c in chosen) == positives
        assert sum(c in (3, 4) for c in chosen) == negatives
        assert sum(c == 5 for c in chosen) == unsupervised
        seen.add(tuple(chosen))
    assert len(seen) > 1, "the choice and order must be random"


def test_sample_prompts_bad_arguments():
    with pytest.raises(ValueError, match="only 6 channels"):
        SamplePromptsd(num_prompts=7)({"label": _crop_target(), "text_embedding": torch.zeros(6, 8)})
    with pytest.raises(ValueError, match="negative_fraction"):
        SamplePromptsd(negative_fraction=1.5)


def test_atomic_writer_keeps_previous_file_on_failure(tmp_path):
    target = tmp_path / "seg.nii.gz"
    target.write_bytes(b"previous result")
    writer = AtomicNibabelWriter()
    writer.set_data_array(torch.zeros(1, 4, 4, 4), channel_dim=0)
    writer.set_metadata({"affine": np.eye(4)}, resample=False)
    writer.data_obj = object()  # makes nib.save fail mid-write
    with pytest.raises(Exception):
        writer.write(target)
    assert target.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["seg.nii.gz"], "temporary file left behind"
    writer = AtomicNibabelWriter()
    writer.set_data_array(torch.ones(1, 4, 4, 4), channel_dim=0)
    writer.set_metadata({"affine": np.eye(4)}, resample=False)
    writer.write(target)
    assert nib.load(str(target)).shape == (4, 4, 4)


@pytest.mark.parametrize("flip", [False, True])
def test_answer_prompt_keeps_named_structures_and_query_answers(flip):
    from textseg.phantom import PHANTOM_LABELS, make_phantom
    from textseg.prompts import resolve
    from textseg.transforms import AnswerPromptd
    from textseg.vocabulary import load_vocabulary

    vocabulary = load_vocabulary()
    case = make_phantom(2)
    label = np.zeros_like(case.label, dtype=np.int16)
    for i, name in PHANTOM_LABELS.items():
        label[case.label == i] = vocabulary[name].id
    image = nib.Nifti1Image(label, case.affine)
    if flip:  # the same anatomy stored LPS
        image = image.as_reoriented(np.array([[0, -1], [1, -1], [2, 1]]))
    labels = MetaTensor(torch.as_tensor(np.ascontiguousarray(image.dataobj))[None], affine=torch.as_tensor(image.affine))
    resolution = json.dumps(resolve("aorta and the organ left of the stomach").to_dict())
    out = AnswerPromptd("pred")({"pred": labels, "prompt_resolution": resolution})["pred"]
    kept = set(torch.unique(out).tolist()) - {0}
    assert kept == {vocabulary["aorta"].id, vocabulary["spleen"].id}
    assert (out > 0).sum() == ((labels == vocabulary["aorta"].id) | (labels == vocabulary["spleen"].id)).sum()
