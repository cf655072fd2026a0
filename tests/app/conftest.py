"""A real MONAI Label server (the textseg app) on 127.0.0.1, shared by the app tests of a session."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_DIR = REPO_ROOT / "apps" / "textseg_app"
PHANTOM_SHAPE = (64, 64, 64)
PHANTOM_SPACING = (5.3, 4.4, 5.6)  # 64^3 voxels covering the phantom's abdomen and pelvis


def phantom_to_vocabulary_ids(label: np.ndarray) -> np.ndarray:
    """A phantom label map (dataset ids) as vocabulary ids, which the app's labels use."""
    from textseg.phantom import PHANTOM_LABELS
    from textseg.vocabulary import load_vocabulary

    vocabulary = load_vocabulary()
    out = np.zeros(label.shape, dtype=np.int16)
    for i, name in PHANTOM_LABELS.items():
        out[label == i] = vocabulary[name].id
    return out


@pytest.fixture(scope="session")
def app_studies(tmp_path_factory) -> dict:
    """Two 64^3 phantom studies (NIfTI) in a datastore folder, with their reference labels (vocabulary ids) beside."""
    from textseg.phantom import make_phantom

    root = tmp_path_factory.mktemp("app-data")
    studies, refs = root / "studies", root / "refs"
    studies.mkdir()
    refs.mkdir()
    for seed in (21, 22):
        case = make_phantom(seed, shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING)
        case.save(studies / f"case_{seed}.nii.gz", refs / f"case_{seed}_dataset_ids.nii.gz")
        img = nib.Nifti1Image(phantom_to_vocabulary_ids(case.label), case.affine)
        nib.save(img, str(refs / f"case_{seed}.nii.gz"))
    return {"studies": studies, "refs": refs, "ids": ["case_21", "case_22"], "root": root}


@pytest.fixture(scope="session")
def app_checkpoint(trained_bundle, tmp_path_factory) -> Path:
    """A private copy of the tiny checkpoint (the app's training rewrites it)."""
    path = tmp_path_factory.mktemp("app-model") / "model_tiny.pt"
    shutil.copy2(trained_bundle / "model_tiny.pt", path)
    return path


@pytest.fixture(scope="session")
def app_interactive_checkpoint(trained_interactive_bundle, tmp_path_factory) -> Path:
    """The tiny interactive checkpoint (2 training iterations) with its click response made dominant: text alone
    segments nothing (readout bias -50) and a positive click adds a strong logit around itself at the finest
    conditioned stage (negative clicks the opposite), so where a mask appears shows where the app put the clicks."""
    import torch

    state = torch.load(trained_interactive_bundle / "model_interactive.pt", map_location="cpu", weights_only=True)
    state["readout_bias"] = torch.full_like(state["readout_bias"], -50.0)
    direction = torch.sign(state["readout"][0])
    for key in [k for k in state if k.startswith("guidance.")]:
        state[key] = torch.zeros_like(state[key])
    weight = state["guidance.0.weight"]  # [head_channels, 3, 1, 1, 1]: stage 1 (1/2 resolution) of the tiny network
    weight[:, 0] = 150.0 * direction.reshape(-1, 1, 1, 1)
    weight[:, 1] = -150.0 * direction.reshape(-1, 1, 1, 1)
    path = tmp_path_factory.mktemp("app-interactive-model") / "model_interactive.pt"
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def app_server(app_studies, app_checkpoint, app_interactive_checkpoint, tmp_path_factory):
    """``monailabel start_server --app apps/textseg_app`` on a free port of 127.0.0.1 (local datastore)."""
    from textseg.app_support import MonaiLabelServer

    work = tmp_path_factory.mktemp("app-server")
    server = MonaiLabelServer(
        APP_DIR, app_studies["studies"],
        conf={"models": "text_prompt,all_structures,interactive", "bundle_overlay": "tiny", "checkpoint": str(app_checkpoint),
              "interactive_checkpoint": str(app_interactive_checkpoint)},
        log=work / "server.log",
        env={"MONAI_LABEL_DATASTORE_CACHE_PATH": str(work / "cache"), "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(work / "cache"),
             "MONAI_LABEL_SESSION_PATH": str(work / "sessions"),
             # background active-learning scoring is tested on its own server (tests/app/test_active_learning.py)
             "MONAI_LABEL_AUTO_UPDATE_SCORING": "false"},
    )
    with server:
        yield server


@pytest.fixture(scope="session")
def client(app_server, tmp_path_factory):
    from monailabel.client import MONAILabelClient

    return MONAILabelClient(app_server.url, tmpdir=str(tmp_path_factory.mktemp("client")))
