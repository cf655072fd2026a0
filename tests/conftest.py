"""Shared fixtures: offline settings, a private cache, tiny phantom data, the real CT from ../shared."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_DIR = REPO_ROOT / "bundles" / "text_prompted_ct_segmentation"
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


def _train_tiny(tiny_phantom: Path, ckpt_dir: Path, overlays: tuple[str, ...], checkpoint: str) -> Path:
    configs = BUNDLE_DIR / "configs"
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", bundle_configs("train.json", *overlays),
         "--meta_file", str(configs / "metadata.json"), "--logging_file", str(configs / "logging.conf"),
         "--bundle_root", str(BUNDLE_DIR), "--dataset_dir", str(tiny_phantom), "--ckpt_dir", str(ckpt_dir),
         "--output_dir", str(ckpt_dir / "eval"), "--epochs", "1", "--val_interval", "1", "--num_val", "1",
         "--crops_per_image", "1", "--num_workers", "0"],
        capture_output=True, text=True, timeout=900, env=dict(os.environ, HF_HUB_OFFLINE="1"),
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
    return _train_tiny(tiny_phantom, tmp_path_factory.mktemp("interactive-models"), ("tiny.json", "interactive.json"),
                       "model_interactive.pt")
