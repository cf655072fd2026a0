"""Orthanc (Debian) loaded with phantom DICOM, and the textseg app serving it over DICOMweb, on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "data" / "artifacts"  # data/ is gitignored
REAL_CT = REPO_ROOT.parent / "shared" / "data" / "ct" / "example_ct_sm.nii.gz"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _require(binary_present: bool, what: str) -> None:
    if binary_present:
        return
    message = f"{what} is not installed (Debian: apt-get install -y orthanc orthanc-dicomweb chromium; .ci/run installs them)"
    if os.environ.get("CI"):
        pytest.fail(message + " - in CI it must be installed")
    pytest.skip(message)


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """Orthanc with the DICOMweb plugin on a free port, holding two 64^3 phantom CT series."""
    import pydicom

    from textseg.dicom import nifti_to_ct_series, write_ct_series
    from textseg.phantom import make_phantom
    from textseg.serve import ORTHANC_BINARY, ORTHANC_DICOMWEB_PLUGIN, OrthancServer

    _require(Path(ORTHANC_BINARY).exists() and Path(ORTHANC_DICOMWEB_PLUGIN).exists(), "Orthanc with its DICOMweb plugin")
    work = tmp_path_factory.mktemp("orthanc")
    with OrthancServer(work / "server") as server:
        server.series = {}
        for seed in (31, 32):
            case = make_phantom(seed, shape=(64, 64, 64), spacing=(5.3, 4.4, 5.6))
            files = write_ct_series(case.image, case.affine, work / f"dicom_{seed}", patient_id=f"TEXTSEG{seed:04d}")
            server.upload(files)
            server.series[pydicom.dcmread(str(files[0]), stop_before_pixels=True).SeriesInstanceUID] = case
        server.real_ct = {}
        if REAL_CT.exists():  # the real CT from ../shared, when this checkout has it
            files = nifti_to_ct_series(REAL_CT, work / "dicom_real", patient_id="REALCT0001", series_description="real CT")
            server.upload(files)
            server.real_ct[pydicom.dcmread(str(files[0]), stop_before_pixels=True).SeriesInstanceUID] = REAL_CT
        yield server


@pytest.fixture(scope="session")
def e2e_checkpoint(trained_bundle, tmp_path_factory) -> Path:
    """A private copy of the tiny checkpoint."""
    path = tmp_path_factory.mktemp("e2e-model") / "model_tiny.pt"
    shutil.copy2(trained_bundle / "model_tiny.pt", path)
    return path


@pytest.fixture(scope="session")
def dicomweb_server(start_app_server, orthanc, e2e_checkpoint, tmp_path_factory):
    """The textseg app started with ``--studies http://127.0.0.1:<orthanc>/dicom-web``."""
    with start_app_server(
        orthanc.dicomweb_url,
        tmp_path_factory.mktemp("dicomweb-server"),
        models="text_prompt,all_structures",
        checkpoint=str(e2e_checkpoint),
    ) as server:
        yield server


@pytest.fixture(scope="session")
def chromium():
    _require(CHROMIUM is not None, "chromium")
    return CHROMIUM
