"""A real MONAI Label server (the textseg app) on 127.0.0.1, shared by the app tests of a session."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

APP_DIR = Path(__file__).resolve().parents[2] / "apps" / "textseg_app"
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
def app_interactive_checkpoint(trained_interactive_bundle, make_clicks_dominant, tmp_path_factory) -> Path:
    """The tiny interactive checkpoint (2 training iterations) with its click response made dominant (text alone
    segments nothing, a click segments around itself), so where a mask appears shows where the app put the clicks."""
    import torch

    state = torch.load(trained_interactive_bundle / "model_interactive.pt", map_location="cpu", weights_only=True)
    path = tmp_path_factory.mktemp("app-interactive-model") / "model_interactive.pt"
    torch.save(make_clicks_dominant(state), path)
    return path


@pytest.fixture(scope="session")
def app_server(start_app_server, app_studies, app_checkpoint, app_interactive_checkpoint, tmp_path_factory):
    """The textseg app serving the phantom studies (local datastore) with all three models."""
    with start_app_server(
        app_studies["studies"],
        tmp_path_factory.mktemp("app-server"),
        models="text_prompt,all_structures,interactive",
        checkpoint=str(app_checkpoint),
        interactive_checkpoint=str(app_interactive_checkpoint),
    ) as server:
        yield server


@pytest.fixture(scope="session")
def client(app_server, tmp_path_factory):
    from monailabel.client import MONAILabelClient

    return MONAILabelClient(app_server.url, tmpdir=str(tmp_path_factory.mktemp("client")))
