"""The bundle through MONAI's own CLI: verify, train 2 iterations, infer with a prompt, evaluate, export."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BUNDLE_DIR, REPO_ROOT, bundle_run_command  # tests/ is on sys.path (rootdir conftest)
from conftest import bundle_configs as _config_list

from textseg.bundle import SHIPPED_CONFIGS, generated_metadata, read_config_value, sync_bundle

META_SCHEMA = REPO_ROOT.parent / "shared" / "monai" / "meta_schema_20240725.json"
CONFIGS = BUNDLE_DIR / "configs"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def monai_bundle(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ...`` in a fresh process; fails the test with its output on error."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=900,
    )
    if result.returncode != 0:
        pytest.fail(f"monai.bundle {args[0]} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def test_metadata_is_valid():
    if not META_SCHEMA.exists():
        pytest.skip(f"no offline metadata schema at {META_SCHEMA}")
    monai_bundle("verify_metadata", "--meta_file", str(CONFIGS / "metadata.json"), "--filepath", str(META_SCHEMA))


def test_metadata_and_model_card_agree_with_vocabulary():
    assert sync_bundle(BUNDLE_DIR, write=False) == [], "run scripts/sync_vocabulary.py"
    metadata = json.loads((CONFIGS / "metadata.json").read_text(encoding="utf-8"))
    assert read_config_value(BUNDLE_DIR, "inference.json", "class_names") == read_config_value(BUNDLE_DIR, "train.json", "class_names")
    class_names = read_config_value(BUNDLE_DIR, SHIPPED_CONFIGS, "class_names")  # the metadata describes the shipped model
    assert metadata == generated_metadata(metadata, class_names)
    assert metadata["network_data_format"]["outputs"]["pred"]["num_channels"] == len(class_names)


@pytest.mark.parametrize(
    "overlays",
    [
        ("real_ct.json",),
        ("real_ct.json", "real_ct_gpu.json"),
        ("real_ct.json", "head_linear.json"),
        ("real_ct.json", "fusion_concat.json"),
        ("real_ct.json", "fusion_cross_attention.json"),
        ("real_ct.json", "interactive.json"),
    ],
)
def test_verify_net_in_out(overlays):
    """Every variant of the shipped model's class set, at CPU and real size, against the metadata's shapes."""
    monai_bundle(
        "verify_net_in_out",
        "network_def",
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--config_file",
        _config_list("inference.json", *overlays),
        "--n",
        "2",
        "--device",
        "cpu",
    )


@pytest.mark.slow
def test_train_writes_checkpoint_with_class_embeddings(trained_bundle):
    state = torch.load(trained_bundle / "model_tiny.pt", map_location="cpu", weights_only=True)
    class_names = read_config_value(BUNDLE_DIR, "inference.json", "class_names")
    assert state["class_embeddings"].shape == (len(class_names), 384 + 2)  # MiniLM + [is_left, is_right]
    assert state["class_embeddings"][:, :384].norm(dim=1).min() > 0.99, "trained without the text table"
    sides = state["class_embeddings"][:, 384:]
    assert sides[class_names.index("kidney_left")].tolist() == [1.0, 0.0] and sides[class_names.index("liver")].tolist() == [0.0, 0.0]


@pytest.mark.slow
def test_interactive_overlay_trains_with_clicks_and_infers_without(trained_interactive_bundle, tiny_phantom, tmp_path):
    """train.json + tiny.json + interactive.json trains through MONAI's CLI (simulated clicks reach the network's
    guidance layers); inference.json with the same overlays runs from text alone and keeps the input grid."""
    state = torch.load(trained_interactive_bundle / "model_interactive.pt", map_location="cpu", weights_only=True)
    # each GuidanceBlock's last convolution (mix.2) starts at zero: non-zero after training means clicks reached it
    guidance_weights = [v for k, v in state.items() if k.startswith("guidance.") and k.endswith("mix.2.weight")]
    assert guidance_weights, "the interactive checkpoint has no guidance blocks"
    assert any(w.abs().sum() > 0 for w in guidance_weights), (
        "the guidance blocks (identity at start) were never trained: no clicks reached them"
    )
    image = sorted((tiny_phantom / "imagesTs").glob("*.nii.gz"))[0]
    monai_bundle(
        "run",
        "--config_file",
        _config_list("inference.json", "tiny.json", "interactive.json"),
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--bundle_root",
        str(BUNDLE_DIR),
        "--ckpt_path",
        str(trained_interactive_bundle / "model_interactive.pt"),
        "--input_image",
        str(image),
        "--prompt",
        "liver",
        "--output_dir",
        str(tmp_path),
    )
    (output,) = tmp_path.glob("*_seg.nii.gz")
    assert nib.load(str(output)).shape == nib.load(str(image)).shape
    assert read_config_value(BUNDLE_DIR, "interactive.json", "ckpt_name") == "model_interactive.pt"
    from monai.bundle import ConfigParser

    from textseg.bundle import bundle_config_files
    from textseg.spatial import CorrectiveClickTraining

    parser = ConfigParser()
    parser.read_config(bundle_config_files(BUNDLE_DIR, ["train.json", "tiny.json", "interactive.json"]))
    assert isinstance(parser.get_parsed_content("iteration_update"), CorrectiveClickTraining), (
        "training also clicks on the network's errors"
    )


@pytest.mark.slow
def test_inference_cli_with_prompt_keeps_input_grid(trained_bundle, tiny_phantom, tmp_path):
    image = sorted((tiny_phantom / "imagesTs").glob("*.nii.gz"))[0]
    monai_bundle(
        "run",
        "--config_file",
        _config_list("inference.json", "tiny.json"),
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--bundle_root",
        str(BUNDLE_DIR),
        "--ckpt_path",
        str(trained_bundle / "model_tiny.pt"),
        "--input_image",
        str(image),
        "--prompt",
        "left kidney and the liver",
        "--output_dir",
        str(tmp_path),
    )
    (output,) = tmp_path.glob("*_seg.nii.gz")
    source, result = nib.load(str(image)), nib.load(str(output))
    assert result.shape == source.shape
    assert np.allclose(result.affine, source.affine, atol=1e-4)
    values = set(np.unique(np.asarray(result.dataobj)).tolist())
    from textseg.vocabulary import load_vocabulary

    vocabulary = load_vocabulary()
    assert values <= {0, vocabulary["kidney_left"].id, vocabulary["liver"].id}


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides,messages",
    [
        (["--prompt", "segment the flux capacitor"], ["flux capacitor", "closest"]),
        (["--prompt", "liver", "--text_template", "A photo of a {}"], ["trained with other prompt embeddings"]),
        (["--prompt", "left lung and liver"], ["not trained on lung_upper_lobe_left", "it segments: spleen"]),
        (["--prompt", "liver", "--input_image", "{nan_image}"], ["nan.nii.gz", "NaN or infinite"]),
    ],
)
def test_inference_cli_refuses_bad_requests(trained_bundle, tiny_phantom, tmp_path, overrides, messages):
    """An unknown or untrained structure, a text set-up other than the checkpoint's, or a NaN image stops inference
    before anything is written."""
    image = sorted((tiny_phantom / "imagesTs").glob("*.nii.gz"))[0]
    source = nib.load(str(image))
    array = np.asarray(source.dataobj, dtype=np.float32)
    array[3, 3, 3] = np.nan
    nan_image = tmp_path / "inputs" / "nan.nii.gz"
    nan_image.parent.mkdir()
    nib.save(nib.Nifti1Image(array, source.affine), str(nan_image))
    overrides = [o.replace("{nan_image}", str(nan_image)) for o in overrides]
    result = subprocess.run(
        bundle_run_command(
            ("inference.json", "tiny.json"),
            *("--ckpt_path", str(trained_bundle / "model_tiny.pt"), "--input_image", str(image), "--output_dir", str(tmp_path)),
            *overrides,
            logging_file=False,
        ),
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=600,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert result.returncode != 0
    assert all(m in result.stderr for m in messages), result.stderr[-3000:]
    assert not list(tmp_path.glob("*.nii.gz"))


@pytest.mark.slow
def test_evaluate_writes_metrics_per_structure(trained_bundle, tiny_phantom):
    monai_bundle(
        "run",
        "--config_file",
        _config_list("train.json", "evaluate.json", "tiny.json"),
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--bundle_root",
        str(BUNDLE_DIR),
        "--dataset_dir",
        str(tiny_phantom),
        "--ckpt_dir",
        str(trained_bundle),
        "--output_dir",
        str(trained_bundle / "evaluation"),
        "--num_workers",
        "0",
    )
    report = json.loads((trained_bundle / "evaluation" / "per_structure.json").read_text(encoding="utf-8"))
    class_names = read_config_value(BUNDLE_DIR, "inference.json", "class_names")
    assert list(report) == class_names
    for metrics in report.values():
        assert set(metrics) == {"val_mean_dice", "val_hd95", "val_nsd", "val_volume_similarity"}
        for name in ("val_mean_dice", "val_nsd", "val_volume_similarity"):
            assert metrics[name]["cases"] == 0 or 0.0 <= metrics[name]["mean"] <= 1.0
        assert metrics["val_hd95"]["cases"] == 0 or metrics["val_hd95"]["mean"] >= 0.0
    assert sum(m["val_mean_dice"]["cases"] for m in report.values()) > 0, "no structure was evaluated"
    csv_header = (trained_bundle / "evaluation" / "per_structure.csv").read_text(encoding="utf-8").splitlines()[0]
    assert csv_header.startswith("structure,val_mean_dice,val_mean_dice_cases,val_hd95")


@pytest.mark.slow
def test_ckpt_export_traces_the_network(trained_bundle, tmp_path):
    monai_bundle(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(tmp_path / "model.ts"),
        "--ckpt_file",
        str(trained_bundle / "model_tiny.pt"),
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--config_file",
        _config_list("inference.json", "tiny.json"),
        "--bundle_root",
        str(BUNDLE_DIR),
        "--use_trace",
        "True",
        "--input_shape",
        "[1, 1, 64, 64, 64]",
    )
    exported = torch.jit.load(str(tmp_path / "model.ts"))
    with torch.no_grad():
        out = exported(torch.rand(1, 1, 64, 64, 64))
    assert out.shape == (1, len(read_config_value(BUNDLE_DIR, "inference.json", "class_names")), 64, 64, 64)


@pytest.mark.slow
@pytest.mark.parametrize(
    "fusion_overlays,checkpoint",
    [((), "model_tiny.pt"), (("fusion_concat.json",), "model_concat.pt"), (("fusion_cross_attention.json",), "model_cross_attention.pt")],
)
def test_multi_gpu_config_trains_with_two_processes(tiny_phantom, tmp_path, fusion_overlays, checkpoint):
    """torchrun + DistributedDataParallel with the gloo backend: 2 CPU processes, 1 epoch, for every fusion."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={_free_port()}",
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            _config_list("train.json", "multi_gpu_train.json", "tiny.json", *fusion_overlays),
            "--meta_file",
            str(CONFIGS / "metadata.json"),
            "--bundle_root",
            str(BUNDLE_DIR),
            "--dataset_dir",
            str(tiny_phantom),
            "--ckpt_dir",
            str(tmp_path),
            "--output_dir",
            str(tmp_path / "eval"),
            "--epochs",
            "1",
            "--val_interval",
            "1",
            "--num_val",
            "2",
            "--crops_per_image",
            "1",
            "--num_workers",
            "0",
        ],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=900,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    state = torch.load(tmp_path / checkpoint, map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state), "checkpoint must hold the bare network, not the DDP wrapper"


def _relabelled_phantom(source: Path, target: Path, ids: dict[int, int]) -> None:
    """Copy a phantom dataset (MSD layout) keeping only some structures, under other label ids."""
    for sub in ("imagesTr", "labelsTr"):
        (target / sub).mkdir(parents=True)
    for image in sorted((source / "imagesTr").glob("*.nii.gz")):
        (target / "imagesTr" / image.name).write_bytes(image.read_bytes())
        label = nib.load(str(source / "labelsTr" / image.name))
        old = np.asarray(label.dataobj)
        new = np.zeros_like(old)
        for old_id, new_id in ids.items():
            new[old == old_id] = new_id
        nib.save(nib.Nifti1Image(new, label.affine), str(target / "labelsTr" / image.name))


def test_seed_key_seeds_training():
    """``--seed N`` reaches set_determinism in train.json, and multi_gpu_train.json seeds with the same key."""
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    draws = {}
    for seed in (1, 2):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "train.json"))
        parser["seed"] = seed
        parser.get_parsed_content("initialize")
        draws[seed] = torch.rand(3)
        set_determinism(seed=seed)
        assert torch.equal(draws[seed], torch.rand(3))
    set_determinism(seed=None)
    assert not torch.equal(draws[1], draws[2])
    multi_gpu = json.loads((CONFIGS / "multi_gpu_train.json").read_text())["initialize"]
    assert json.loads((CONFIGS / "train.json").read_text())["initialize"][0] in multi_gpu


@pytest.mark.slow
@pytest.mark.parametrize("save_final", [False, True])
def test_training_saves_the_best_validated_or_the_final_model(tiny_phantom, tmp_path, save_final):
    """train.json keeps the best validated model, written by the validator after each validation; with ``save_final`` (the
    real-CT recipe) nothing is written during training and the network as it ends is saved."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "tiny.json")],
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type="train",
        bundle_root=str(BUNDLE_DIR),
        dataset_dir=str(tiny_phantom),
        ckpt_dir=str(tmp_path),
        output_dir=str(tmp_path / "eval"),
        epochs=2,
        val_interval=1,
        num_val=1,
        crops_per_image=1,
        num_workers=0,
        save_final=save_final,
    )
    workflow.initialize()
    checkpoint = tmp_path / workflow.parser.get_parsed_content("ckpt_name")
    saved_after_first_epoch = []
    trainer = workflow.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda _: saved_after_first_epoch.append(checkpoint.exists()))
    workflow.run()
    workflow.finalize()
    assert saved_after_first_epoch == [not save_final]
    assert checkpoint.exists()
    if save_final:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        final = workflow.parser.get_parsed_content("network").state_dict()
        assert saved.keys() == final.keys()
        assert all(torch.equal(saved[k], final[k].cpu()) for k in final)


@pytest.mark.slow
def test_training_mixes_datasets_with_different_label_sets(tiny_phantom, tmp_path):
    """Two datasets.yaml entries with different label ids and annotated subsets train one model (partial labels)."""
    from monai.bundle import ConfigParser

    from textseg.phantom import PHANTOM_LABELS
    from textseg.transforms import IGNORE_CHANNEL

    kidneys = tmp_path / "kidneys"
    phantom_ids = {name: i for i, name in PHANTOM_LABELS.items()}
    _relabelled_phantom(tiny_phantom, kidneys, {phantom_ids["kidney_left"]: 1, phantom_ids["kidney_right"]: 2})
    datasets_file = tmp_path / "datasets.yaml"
    datasets_file.write_text(
        (REPO_ROOT / "datasets.yaml").read_text(encoding="utf-8").rstrip()
        + "\n  kidney_only:\n    description: phantom kidneys, relabelled\n    modality: CT\n    source: test\n    licence: test\n"
        "    layout: paired_folders\n    labels_map: {1: kidney_left, 2: kidney_right}\n"
    )
    sources = [{"name": "phantom", "root": str(tiny_phantom)}, {"name": "kidney_only", "root": str(kidneys)}]
    overrides = {"datasets": sources, "datasets_file": str(datasets_file), "bundle_root": str(BUNDLE_DIR), "num_workers": 0}
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "tiny.json")])
    parser.update(overrides)
    datalist = parser.get_parsed_content("datalist")
    assert [c["dataset"] for c in datalist[:2]] == ["phantom", "kidney_only"]
    class_names = parser.get_parsed_content("class_names")
    case = next(c for c in datalist if c["dataset"] == "kidney_only")
    sample = parser.get_parsed_content("validate#preprocessing")(dict(case))
    target = sample["label"]
    for k, name in enumerate(class_names):
        if name in ("kidney_left", "kidney_right"):
            assert (target[k] == 1).sum() > 0, f"{name} lost its voxels in the relabelled dataset"
        else:
            assert torch.all(target[k] == IGNORE_CHANNEL), f"{name} is not annotated in kidney_only and must be ignored"

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            _config_list("train.json", "tiny.json"),
            "--meta_file",
            str(CONFIGS / "metadata.json"),
            "--bundle_root",
            str(BUNDLE_DIR),
            "--datasets",
            repr(sources),
            "--datasets_file",
            str(datasets_file),
            "--ckpt_dir",
            str(tmp_path / "models"),
            "--output_dir",
            str(tmp_path / "eval"),
            "--epochs",
            "1",
            "--val_interval",
            "1",
            "--num_val",
            "2",
            "--crops_per_image",
            "1",
            "--num_workers",
            "0",
        ],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=900,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert result.returncode == 0, result.stderr[-6000:]
    assert (tmp_path / "models" / "model_tiny.pt").exists()
