"""A training run killed mid-epoch resumes from its last saved epoch (network, optimizer, scheduler, epoch)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest
import torch
from conftest import bundle_run_command

pytestmark = pytest.mark.slow

EPOCHS = 3


def _train_command(tiny_phantom, ckpt_dir):
    return bundle_run_command(
        ("train.json", "tiny.json"),
        *("--dataset_dir", str(tiny_phantom), "--ckpt_dir", str(ckpt_dir), "--output_dir", str(ckpt_dir / "eval")),
        *("--epochs", str(EPOCHS), "--val_interval", str(EPOCHS), "--num_val", "1", "--crops_per_image", "1", "--num_workers", "0"),
        *("--train_datalist", "$@datalist[:-@num_val] * 4"),
    )


def test_killed_bundle_training_resumes_from_its_last_epoch(tiny_phantom, tmp_path):
    """Start ``monai.bundle run`` training, SIGKILL it mid-epoch once an epoch was saved, run the same command again."""
    ckpt_dir = tmp_path / "models"
    state_file = ckpt_dir / "model_tiny_training_state.pt"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(_train_command(tiny_phantom, ckpt_dir), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 600
        while not state_file.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert state_file.exists(), (
            "no training state after the first epoch:\n" + (tmp_path / "first.log").read_text(encoding="utf-8", errors="replace")[-3000:]
        )
        time.sleep(1.0)  # into the next epoch
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        log.close()
    assert not (ckpt_dir / "model_tiny.pt").exists() or "Train completed" not in (tmp_path / "first.log").read_text(
        encoding="utf-8", errors="replace"
    )
    saved = torch.load(state_file, map_location="cpu", weights_only=False)
    assert set(saved) == {"network", "optimizer", "lr_scheduler", "trainer"}
    done = saved["trainer"]["iteration"] // saved["trainer"]["epoch_length"]
    assert 1 <= done < EPOCHS, f"killed after {done} epochs: not mid-training"
    assert saved["optimizer"]["state"], "the optimizer's moments were saved"
    assert saved["lr_scheduler"]["last_epoch"] == done

    second = subprocess.run(
        _train_command(tiny_phantom, ckpt_dir), capture_output=True, encoding="utf-8", errors="replace", timeout=900, env=env
    )
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-4000:]
    assert f"resuming training from {state_file}: epoch {done} of {EPOCHS} done" in output
    completed = [int(n) for n in re.findall(r"SupervisedTrainer - INFO - Epoch\[(\d+)\] Complete", output)]
    assert completed == list(range(done + 1, EPOCHS + 1)), f"the resumed run trained epochs {completed}"
    assert (ckpt_dir / "model_tiny.pt").exists()
    assert not state_file.exists(), "a completed run removes its training state, so the next run starts afresh"


def _net(num_classes: int, feature_size: int = 12):
    from textseg.networks import TextSwinUNETR

    torch.manual_seed(num_classes + feature_size)
    net = TextSwinUNETR(in_channels=1, num_classes=num_classes, text_dim=10, feature_size=feature_size, window_size=4)
    return net.set_class_embeddings(torch.randn(num_classes, 10))


def test_initial_weights_load_every_weight_but_the_class_embeddings(tmp_path):
    """Fine-tuning on another class set: the network's weights come from the checkpoint, the class embeddings stay."""
    from textseg.handlers import InitialWeights

    shipped = _net(63)
    torch.save(shipped.state_dict(), tmp_path / "model.pt")
    new = _net(4)
    embeddings = new.class_embeddings.clone()
    assert not torch.equal(new.state_dict()["backbone.swinViT.patch_embed.proj.weight"],
                           shipped.state_dict()["backbone.swinViT.patch_embed.proj.weight"])  # fmt: skip
    InitialWeights(tmp_path / "model.pt", new)()
    for key, value in shipped.state_dict().items():
        if key != "class_embeddings":
            assert torch.equal(new.state_dict()[key], value), key
    assert torch.equal(new.class_embeddings, embeddings)


def test_initial_weights_name_a_checkpoint_of_another_network(tmp_path):
    from textseg.handlers import InitialWeights

    torch.save({"model": _net(4, feature_size=24).state_dict()}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"not a checkpoint of this network \(other shapes"):
        InitialWeights(tmp_path / "other.pt", _net(4))()
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        InitialWeights(tmp_path / "missing.pt", _net(4))()
    InitialWeights("", _net(4)).attach(None)  # no checkpoint given: nothing to attach
