"""Shared fixtures: offline settings, a private cache, tiny phantom data, the real CT from ../shared."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_DIR = REPO_ROOT / "bundles" / "text_prompted_ct_segmentation"
APP_DIR = REPO_ROOT / "apps" / "textseg_app"
SHARED_CT_DIR = REPO_ROOT.parent / "shared" / "data" / "ct"


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Keep the embedding cache of a test run out of the user's ~/.cache."""
    path = tmp_path_factory.mktemp("textseg-cache")
    previous = os.environ.get("TEXTSEG_CACHE_DIR")
    os.environ["TEXTSEG_CACHE_DIR"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("TEXTSEG_CACHE_DIR", None)
    else:
        os.environ["TEXTSEG_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def shared_ct_dir() -> Path:
    if not (SHARED_CT_DIR / "example_ct_sm.nii.gz").exists():
        pytest.skip(f"the real CT is not available at {SHARED_CT_DIR} (../shared is absent in a user's clone)")
    return SHARED_CT_DIR


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory) -> Path:
    """A small phantom dataset (MSD layout): 3 training cases, 1 test case."""
    from textseg.phantom import make_phantom_dataset

    root = tmp_path_factory.mktemp("phantom")
    make_phantom_dataset(root, num_train=3, num_test=1, seed=7, progress=False)
    return root


def bundle_configs(*names: str) -> str:
    """A ``--config_file`` list for MONAI's CLI."""
    return "[" + ",".join(f"'{BUNDLE_DIR / 'configs' / n}'" for n in names) + "]"


def bundle_run_command(configs: tuple[str, ...] | list[str], *overrides: str, logging_file: bool = True) -> list[str]:
    """``python -m monai.bundle run`` of this repository's bundle: ``configs`` merged (names in its ``configs/``), its
    metadata, its logging config (unless ``logging_file`` is False), its bundle root, then ``overrides`` as given
    (``"--key", "value", ...``)."""
    folder = BUNDLE_DIR / "configs"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", bundle_configs(*configs)]
    command += ["--meta_file", str(folder / "metadata.json")]
    if logging_file:
        command += ["--logging_file", str(folder / "logging.conf")]
    return [*command, "--bundle_root", str(BUNDLE_DIR), *overrides]


def make_dry_run(target: str, *variables: str) -> str:
    """What ``make -n <target> <variables>`` would run in the repository root (the commands, none run); skips the test
    when make is not installed."""
    import shutil

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    return subprocess.run(["make", "-n", target, *variables], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout


def relative_weight_change(before: Path, after: Path) -> float:
    """How far the network weights of checkpoint ``after`` are from ``before``: the summed norm of the differences over the
    summed norm of ``before``, over the large float tensors other than ``class_embeddings`` (the prompts, not weights). One
    epoch of fine-tuning moves them by a few percent; a network trained from scratch is about 1 or more away."""
    import torch

    a = torch.load(before, map_location="cpu", weights_only=True)
    b = torch.load(after, map_location="cpu", weights_only=True)
    keys = [k for k in a if k != "class_embeddings" and a[k].dtype.is_floating_point and a[k].numel() > 1000]
    return sum(float((b[k].float() - a[k].float()).norm()) for k in keys) / sum(float(a[k].float().norm()) for k in keys)


def _train_tiny(tiny_phantom: Path, ckpt_dir: Path, overlays: tuple[str, ...], checkpoint: str) -> Path:
    result = subprocess.run(
        bundle_run_command(
            ("train.json", *overlays),
            *("--dataset_dir", str(tiny_phantom), "--ckpt_dir", str(ckpt_dir), "--output_dir", str(ckpt_dir / "eval")),
            *("--epochs", "1", "--val_interval", "1", "--num_val", "1", "--crops_per_image", "1", "--num_workers", "0"),
        ),
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=900,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    if result.returncode != 0 or not (ckpt_dir / checkpoint).exists():
        pytest.fail(f"bundle training failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return ckpt_dir


@pytest.fixture(scope="session")
def trained_bundle(tiny_phantom, tmp_path_factory) -> Path:
    """Train the tiny bundle for 2 iterations through ``python -m monai.bundle run``; returns the checkpoint folder
    (holding ``model_tiny.pt``)."""
    return _train_tiny(tiny_phantom, tmp_path_factory.mktemp("models"), ("tiny.json",), "model_tiny.pt")


@pytest.fixture(scope="session")
def trained_interactive_bundle(tiny_phantom, tmp_path_factory) -> Path:
    """Train the tiny interactive bundle (``tiny.json`` + ``interactive.json``: spatial prompts, simulated clicks) for
    2 iterations through ``python -m monai.bundle run``; returns the folder holding ``model_interactive.pt``."""
    return _train_tiny(
        tiny_phantom, tmp_path_factory.mktemp("interactive-models"), ("tiny.json", "interactive.json"), "model_interactive.pt"
    )


def _make_clicks_dominant(state: dict) -> dict:
    """A spatial-prompt TextSwinUNETR state (tiny, ``conditioned_stages`` starting at 1) whose text alone segments
    nothing (readout bias -50) and whose clicks dominate at the finest conditioned stage: a positive click adds a
    strong logit around itself, a negative click the opposite. Where a mask appears then shows where clicks landed."""
    import torch

    state = dict(state)
    state["readout_bias"] = torch.full_like(state["readout_bias"], -50.0)
    direction = torch.sign(state["readout"][0])
    for key in [k for k in state if k.startswith("guidance.")]:
        state[key] = torch.zeros_like(state[key])
    # GuidanceBlock of stage 0: mix = [conv(C + 3 -> C), ReLU, conv(C -> C)]; hidden channel 0 carries the
    # positive clicks, hidden channel 1 the negative ones, both at the kernels' centre taps only
    first, last = state["guidance.0.mix.0.weight"], state["guidance.0.mix.2.weight"]
    channels, centre = last.shape[0], tuple(k // 2 for k in last.shape[2:])
    first[(0, channels + 0, *centre)] = 1.0
    first[(1, channels + 1, *centre)] = 1.0
    last[(slice(None), 0, *centre)] = 150.0 * direction
    last[(slice(None), 1, *centre)] = -150.0 * direction
    return state


@pytest.fixture(scope="session")
def make_clicks_dominant():
    """:func:`_make_clicks_dominant`: state dict in, state dict out."""
    return _make_clicks_dominant


@contextlib.contextmanager
def _app_server(studies, work_dir: Path, background_scoring: bool = False, **conf: str):
    """``monailabel start_server --app apps/textseg_app`` on a free port of 127.0.0.1, tiny bundle overlay, with its
    log, caches and sessions in ``work_dir``. Background active-learning scoring only where a test asks for it
    (tests/app/test_active_learning.py): elsewhere it would compete for the CPU with the requests under test."""
    from textseg.serve import MonaiLabelServer

    env = {
        "MONAI_LABEL_DATASTORE_CACHE_PATH": str(work_dir / "cache"),
        "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(work_dir / "cache"),
        "MONAI_LABEL_SESSION_PATH": str(work_dir / "sessions"),
    }
    if not background_scoring:
        env["MONAI_LABEL_AUTO_UPDATE_SCORING"] = "false"
    with MonaiLabelServer(APP_DIR, studies, conf={"bundle_overlay": "tiny", **conf}, log=work_dir / "server.log", env=env) as server:
        yield server


@pytest.fixture(scope="session")
def start_app_server():
    """:func:`_app_server`: ``with start_app_server(studies, work_dir, models="text_prompt", ...) as server``."""
    return _app_server
