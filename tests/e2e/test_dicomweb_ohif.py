"""End to end: Orthanc (DICOMweb) -> textseg app -> DICOM SEG back in Orthanc; OHIF in headless Chromium."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monailabel.client import MONAILabelClient

from textseg.dicom import read_dicom_seg
from textseg.vocabulary import load_vocabulary

from .browser import FLAGS, Browser

pytestmark = pytest.mark.slow  # a real server (and Orthanc, Chromium): minutes

ARTIFACTS = Path(__file__).resolve().parents[2] / "data" / "artifacts"  # data/ is gitignored

CHROMIUM_FLAGS = [*FLAGS, "--virtual-time-budget=15000"]


@pytest.fixture(scope="module")
def dw_client(dicomweb_server, tmp_path_factory):
    return MONAILabelClient(dicomweb_server.url, tmpdir=str(tmp_path_factory.mktemp("dw-client")))


def test_datastore_lists_the_orthanc_series(dw_client, orthanc):
    sample = dw_client.next_sample("random", {})
    assert sample["id"] in {**orthanc.series, **orthanc.real_ct}
    assert sample["Modality"] == "CT"


def test_infer_on_an_orthanc_series_and_save_the_label_as_dicom_seg(dw_client, orthanc, tmp_path):
    series_uid = sorted(orthanc.series)[0]
    case = orthanc.series[series_uid]
    path, params = dw_client.infer("text_prompt", series_uid, {"prompt": "segment the liver and the right kidney"})
    assert params["label_names"] == {"liver": 5, "kidney_right": 2}
    result = nib.load(path)
    assert result.shape[:3] == case.image.shape
    # same world grid as the phantom the series was written from (DICOM LPS <-> NIfTI RAS handled)
    corners = [np.array([i, j, k, 1.0]) for i in (0, 63) for j in (0, 63) for k in (0, 63)]
    assert sorted(tuple(np.round((result.affine @ c)[:3], 2)) for c in corners) == sorted(
        tuple(np.round((case.affine @ c)[:3], 2)) for c in corners
    )

    # an annotator's label: liver and right kidney blocks, saved as final -> DICOM SEG in Orthanc
    label = np.zeros(result.shape[:3], dtype=np.int16)
    label[10:20, 10:20, 10:20] = 5
    label[30:35, 30:35, 30:35] = 2
    label_path = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(label, result.affine), str(label_path))
    before = {s["0020000E"]["Value"][0] for s in orthanc.get_json("/dicom-web/series?Modality=SEG")}
    dw_client.save_label(series_uid, str(label_path), "final", {})
    segs = [s for s in orthanc.get_json("/dicom-web/series?Modality=SEG") if s["0020000E"]["Value"][0] not in before]
    assert len(segs) == 1
    seg_series = segs[0]["0020000E"]["Value"][0]
    segments, referenced = read_dicom_seg(_download_single_instance(orthanc, seg_series, tmp_path / "seg.dcm"))
    assert referenced == series_uid
    assert {s.label: s.voxels for s in segments} == {"kidney_right": 125, "liver": 1000}
    vocabulary = load_vocabulary()
    for segment in segments:  # coloured from the vocabulary (CIELab in the file; rounding within 2 of 255)
        assert max(abs(a - b) for a, b in zip(segment.color, vocabulary[segment.label].color)) <= 2, segment


def _download_single_instance(orthanc, series_uid: str, path: Path) -> Path:
    """The one instance of an Orthanc series (a DICOM SEG), saved as ``path``."""
    series = orthanc.get_json("/series?expand")
    (instance,) = [i for s in series if s["MainDicomTags"]["SeriesInstanceUID"] == series_uid for i in s["Instances"]]
    with urllib.request.urlopen(f"{orthanc.url}/instances/{instance}/file", timeout=30) as r:
        path.write_bytes(r.read())
    return path


def _corners(affine, shape):
    return sorted(
        tuple(np.round((np.asarray(affine) @ np.array([i, j, k, 1.0]))[:3], 1))
        for i in (0, shape[0] - 1)
        for j in (0, shape[1] - 1)
        for k in (0, shape[2] - 1)
    )


def test_all_structures_on_the_real_ct_from_orthanc_keeps_its_geometry(dw_client, orthanc):
    if not orthanc.real_ct:
        pytest.skip("the real CT is not available in ../shared/data/ct (absent in a user's clone)")
    ((series_uid, nifti),) = orthanc.real_ct.items()
    path, params = dw_client.infer("all_structures", series_uid, {})
    assert len(params["label_names"]) == 10
    original, result = nib.load(str(nifti)), nib.load(path)
    assert sorted(result.shape[:3]) == sorted(original.shape[:3])
    assert _corners(result.affine, result.shape) == _corners(original.affine, original.shape)


def _chromium(chromium, *args, timeout=120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=timeout
        )


def test_ohif_renders_and_lists_the_orthanc_study(chromium, dicomweb_server, orthanc, tmp_path):
    url = f"{dicomweb_server.url}/ohif/"
    dom = _chromium(chromium, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Study List" in dom.stdout
    for case_id in ("TEXTSEG0031", "TEXTSEG0032", *(["REALCT0001"] if orthanc.real_ct else [])):
        assert case_id in dom.stdout, "the Orthanc study is not listed in OHIF"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "ohif_study_list.png"
    out = _chromium(chromium, f"--screenshot={shot}", url)
    assert out.returncode == 0 and shot.stat().st_size > 10_000, out.stderr[-2000:]


def _ohif_label_map(info: dict, model: str) -> dict[int, str]:
    """Index -> name for a model, built from /info the way OHIF's MONAI Label panel builds it."""
    labels = info["models"][model]["labels"]
    if isinstance(labels, list):
        return {i: name for i, name in enumerate(labels, start=1)}
    return {int(i): name for name, i in labels.items()}


def _ct_series(orthanc, study_uid: str) -> str:
    """The study's CT series (earlier tests may have stored a DICOM SEG beside it)."""
    series = orthanc.get_json(f"/dicom-web/studies/{study_uid}/series")
    (uid,) = [s["0020000E"]["Value"][0] for s in series if s.get("00080060", {}).get("Value") == ["CT"]]
    return uid


def _panel_infer(server_url: str, series_uid: str, prompt: str) -> np.ndarray:
    """The request OHIF's MONAI Label panel sends for Auto-Segmentation with ``prompt`` typed in Options; returns the
    label map it gets back (NRRD, uint8, OHIF's label indices)."""
    import nrrd
    import requests

    params = {"prompt": prompt, "result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False, "restore_label_idx": False}
    response = requests.post(
        f"{server_url}/infer/text_prompt",
        params={"image": series_uid, "output": "image"},
        files={"params": (None, json.dumps(params))},
        timeout=600,
    )
    assert response.status_code == 200, response.text[:2000]
    with tempfile.NamedTemporaryFile(suffix=".nrrd") as f:
        f.write(response.content)
        f.flush()
        data, _ = nrrd.read(f.name)
    return data


def test_ohif_panel_request_with_a_typed_prompt_returns_labels_ohif_can_show(dw_client, dicomweb_server, orthanc):
    """The request OHIF's MONAI Label panel sends for "Auto-Segmentation" (monailabel 0.8.5 OHIF extension:
    ``infer(model, SeriesInstanceUID, params)`` with the Options tab's values), the prompt typed there."""
    info = dw_client.info()
    model = info["models"]["text_prompt"]
    assert model["type"] == "segmentation"  # the panel lists deepgrow, deepedit, vista3d and segmentation models
    assert "prompt" in model["config"]  # the Options tab shows the model's config: that is where the prompt is typed
    series_uid = sorted(orthanc.series)[0]
    data = _panel_infer(dicomweb_server.url, series_uid, "segment the liver and kidneys")
    assert data.dtype == np.uint8 and data.shape == orthanc.series[series_uid].image.shape
    names = _ohif_label_map(info, "text_prompt")
    values = {int(v) for v in np.unique(data)} - {0}
    assert values <= {i for i, n in names.items() if n in ("liver", "kidney_left", "kidney_right")}, (values, names)


VIEWPORTS_HOLD_THE_CT = """(() => {
  const engine = (window.cornerstone?.getRenderingEngines() || [])[0];
  const viewports = engine ? engine.getViewports() : [];
  return viewports.length >= 3 && viewports.every(v => v.getActors().some(a => {
    const volume = window.cornerstone.cache.getVolume(a.referencedId);
    return volume && volume.loadStatus && volume.loadStatus.loaded;
  }));
})()"""
"""OHIF's own state: the rendering engine has its three MPR viewports, each with the CT volume loaded (what a user
sees before connecting the panel)."""

SEGMENTATION_STATE = """(() => {
  const s = window.cornerstoneTools.segmentation.state.getSegmentation('1');
  if (!s || !s.representationData.Labelmap) return null;
  const labelmap = s.representationData.Labelmap;
  const counts = {};
  for (const id of labelmap.imageIds) {
    const image = window.cornerstone.cache.getImage(id);
    const data = image.voxelManager ? image.voxelManager.getScalarData() : image.getPixelData();
    for (const v of data) { if (v) counts[v] = (counts[v] || 0) + 1; }
  }
  const names = {};
  for (const [index, segment] of Object.entries(window.services.segmentationService.getSegmentation('1').segments)) {
    if (segment) names[index] = segment.label;
  }
  const axial = window.cornerstone.getRenderingEngines()[0].getViewport('mpr-axial');
  const shown = axial.getActors().some(a => a.referencedId === labelmap.volumeId);
  const colors = {};
  for (const index of Object.keys(names)) {
    colors[index] = window.cornerstoneTools.segmentation.config.color.getSegmentIndexColor(axial.id, '1', Number(index));
  }
  return {counts, names, shown, colors};
})()"""
"""Segmentation ``1`` as OHIF holds it: voxels per segment index in its labelmap, segment index -> label name and
-> RGBA colour in the axial viewport, and whether that viewport renders the labelmap."""


def _connect_and_run(b, prompt: str, connect: bool = True) -> None:
    """The user's clicks: connect the MONAI Label panel (unless done already), type the prompt in Options, Run
    Auto-Segmentation."""
    if connect:
        b.click(".monaiLabelPanel button.actionButton")  # connect: the panel reads /info
    panel = b.wait_for(
        "(t => t.includes('text_prompt') && t)(document.querySelector('.monaiLabelPanel').innerText)", 300, "the app's models in the panel"
    )
    assert "all_structures" in panel and "clasp_pe" in panel  # models and active-learning strategies
    b.click(".monaiLabelPanel a", "Options")
    b.wait_for("!!document.querySelector('#infertext_promptprompt')", 30, "the prompt option")
    b.type_into("#infertext_promptprompt", prompt)
    b.click('[data-cy="Confirm-btn"]')
    before = len(b.requests("/infer/text_prompt"))
    b.click('.monaiLabelPanel button[title="Run Segmentation"]')
    deadline = time.time() + 600
    while not (len(b.requests("/infer/text_prompt")) > before and b.response_status(b.requests("/infer/text_prompt")[-1]["requestId"])):
        if time.time() > deadline:
            raise TimeoutError("the app did not answer the panel's /infer request")
        time.sleep(0.5)
        b.evaluate("0")  # collect network events
    time.sleep(2)  # OHIF draws the answer


MENU_ITEM = "(t => [...document.querySelectorAll('[role=menuitem]')].some(e => e.innerText.includes(t)))"
SEGMENTATION_MENU = 'button[aria-haspopup="menu"]:has(+ button[role="combobox"])'  # the "..." beside the segmentation's name


def _export_dicom_seg(b, report_name: str) -> None:
    """The user's clicks to save the label from the viewer: the Segmentation tab of the right panel, the segmentation's
    menu, Export & Download, Export DICOM SEG, a report name, Save (OHIF stores it through the app's DICOMweb proxy)."""
    b.mouse_click('[data-cy="panelSegmentation-btn"]')
    b.wait_for(f"!!document.querySelector({json.dumps(SEGMENTATION_MENU)})", 30, "the segmentation panel")
    b.mouse_click(SEGMENTATION_MENU)
    b.wait_for(f"{MENU_ITEM}('Export & Download')", 30, "the segmentation menu")
    b.mouse_click("[role=menuitem]", "Export & Download")
    b.wait_for(f"{MENU_ITEM}('Export DICOM SEG')", 30, "the export menu")
    b.mouse_click("[role=menuitem]", "Export DICOM SEG")
    try:
        b.wait_for("!!document.querySelector('[data-cy=\"Save-btn\"]')", 30, "the report name dialog")
    except TimeoutError as error:  # say what the page showed instead: CI keeps no screenshot
        menu = b.evaluate("[...document.querySelectorAll('[role=menuitem]')].map(e => e.innerText)")
        raise TimeoutError(f"{error}; menu items on the page: {menu}; page errors: {b.page_errors()}") from error
    b.type_into('input[data-cy^="input"]', report_name)
    b.mouse_click('[data-cy="Save-btn"]')


def _new_dicom_seg(orthanc, study_uid: str, before: set[str], out_dir: Path, timeout: float = 120) -> tuple[str, Path]:
    """The SEG series that appeared in the study since ``before`` (series UIDs), and its one instance downloaded into
    ``out_dir``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        series = orthanc.get_json(f"/dicom-web/studies/{study_uid}/series?Modality=SEG")
        new = [s["0020000E"]["Value"][0] for s in series if s["0020000E"]["Value"][0] not in before]
        if new:
            (uid,) = new
            return uid, _download_single_instance(orthanc, uid, out_dir / "seg.dcm")
        time.sleep(1)
    raise TimeoutError(f"no new DICOM SEG in Orthanc for study {study_uid}")


LOADED_SEG = """(name => {
  const segmentations = window.services.segmentationService.getSegmentations();
  const s = segmentations.find(s => s.segmentationId !== '1' && s.label === name && s.representationData.Labelmap);
  if (!s) return null;
  const labelmap = s.representationData.Labelmap;
  const counts = {};
  for (const id of labelmap.imageIds || []) {
    const image = window.cornerstone.cache.getImage(id);
    if (!image) return null;
    const data = image.voxelManager ? image.voxelManager.getScalarData() : image.getPixelData();
    for (const v of data) { if (v) counts[v] = (counts[v] || 0) + 1; }
  }
  const names = {};
  for (const [index, segment] of Object.entries(s.segments)) { if (segment) names[index] = segment.label; }
  return Object.keys(counts).length ? {id: s.segmentationId, counts, names} : null;
})"""
"""The segmentation OHIF loaded from the DICOM SEG whose series description is ``name``: its id, voxels per segment index
and segment index -> label."""


def _expected_counts(server_url: str, series_uid: str, prompt: str) -> dict[str, int]:
    """What the app answers the panel's request: voxels per structure name in the returned label map."""
    data = _panel_infer(server_url, series_uid, prompt)
    info = json.loads(urllib.request.urlopen(f"{server_url}/info/", timeout=60).read())
    names = _ohif_label_map(info, "text_prompt")
    values, counts = np.unique(data, return_counts=True)
    return {names[int(v)]: int(c) for v, c in zip(values, counts) if v}


def test_ohif_text_prompt_typed_in_the_panel_shows_the_labels_and_saves_them(chromium, dicomweb_server, orthanc, tmp_path):
    """A user's path in a real Chromium: open the study in OHIF's MONAI Label mode, wait until the viewports show the
    CT, connect the panel, type a prompt, Run. OHIF's own state must then hold segmentation 1 whose labelmap has
    exactly the voxels the app returned, under the prompted structures' names and the vocabulary's colours, rendered
    in the axial viewport, and the page must have thrown nothing. The screenshot shows the overlay.

    Then the save loop, in the same browser: Export DICOM SEG from the segmentation panel. Orthanc must hold a new
    DICOM SEG referencing the CT series, with the same voxels per structure, named and coloured from the vocabulary;
    OHIF's default viewer, opened on the study, must load it over the CT."""
    study_uid = orthanc.get_json("/dicom-web/studies?PatientID=TEXTSEG0031")[0]["0020000D"]["Value"][0]
    series_uid = _ct_series(orthanc, study_uid)
    server = dicomweb_server.url
    prompt = "the spleen and the left kidney"
    vocabulary = load_vocabulary()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with Browser(chromium, timeout=120) as b:
        b.set_cookie("MONAILABEL_SERVER_URL", server + "/", server)  # the panel's server (default :8000)
        b.goto(f"{server}/ohif/monai-label?StudyInstanceUIDs={study_uid}")
        b.wait_for("!!document.querySelector('.monaiLabelPanel button.actionButton')", 120, "the MONAI Label panel")
        b.wait_for(VIEWPORTS_HOLD_THE_CT, 120, "the three viewports showing the loaded CT")
        _connect_and_run(b, prompt)
        state = b.wait_for(SEGMENTATION_STATE, 30, "segmentation 1 in OHIF")
        b.screenshot(ARTIFACTS / "ohif_text_prompt_result.png")
        assert "Running Segmentation - Successful" in b.text()
        assert b.page_errors() == []
        (request,) = b.requests("/infer/text_prompt")
        assert f"image={series_uid}" in request["request"]["url"]
        form = re.search(r'name="params"\s+(\{.*?\})\s+--', b.post_data(request["requestId"]), re.S)
        assert form and json.loads(form.group(1))["prompt"] == prompt
        assert b.response_status(request["requestId"]) == 200
        shown = {state["names"][index]: count for index, count in state["counts"].items()}
        assert shown, "OHIF's labelmap is empty: nothing is drawn"
        assert set(shown) <= {"spleen", "kidney_left"}, shown
        assert shown == _expected_counts(server, series_uid, prompt)  # OHIF holds exactly what the app answered
        assert state["shown"], "the axial viewport does not render the labelmap"
        for index, name in state["names"].items():
            assert state["colors"][index] == [*vocabulary[name].color, 255], (name, state["colors"][index])

        # the save loop: Export DICOM SEG from OHIF's segmentation panel
        before = {s["0020000E"]["Value"][0] for s in orthanc.get_json(f"/dicom-web/studies/{study_uid}/series?Modality=SEG")}
        report = "textseg spleen and left kidney"
        _export_dicom_seg(b, report)
        seg_series, seg_file = _new_dicom_seg(orthanc, study_uid, before, tmp_path)
        b.screenshot(ARTIFACTS / "ohif_exported_dicom_seg.png")
        assert b.page_errors() == []
        segments, referenced = read_dicom_seg(seg_file)
        assert referenced == series_uid
        saved = {s.label: s.voxels for s in segments if s.voxels}
        assert saved == shown, (saved, shown)
        for segment in segments:
            if segment.voxels:
                assert segment.color and max(abs(a - b) for a, b in zip(segment.color, vocabulary[segment.label].color)) <= 2, segment

        # OHIF's default viewer opens the study; the user double-clicks the SEG's thumbnail
        b.goto(f"{server}/ohif/viewer?StudyInstanceUIDs={study_uid}")
        b.wait_for(
            f"(window.services.displaySetService.getActiveDisplaySets() || []).some(d => d.SeriesInstanceUID === {json.dumps(seg_series)})",
            120,
            "the SEG among the study's display sets",
        )
        b.wait_for(
            f"[...document.querySelectorAll('[data-cy^=study-browser-thumbnail]')].some(e => e.innerText.includes({json.dumps(report)}))",
            60,
            "the SEG's thumbnail in the study browser",
        )
        b.mouse_click('[data-cy^="study-browser-thumbnail"]', report, clicks=2)
        b.wait_for("[...document.querySelectorAll('button')].some(e => e.innerText.trim() === 'Yes')", 60, "OHIF asking to open the SEG")
        b.mouse_click("button", "Yes")  # "Do you want to open this Segmentation?"
        loaded = b.wait_for(f"{LOADED_SEG}({json.dumps(report)})", 120, "the DICOM SEG loaded in OHIF")
        b.screenshot(ARTIFACTS / "ohif_default_viewer_dicom_seg.png")
        assert b.page_errors() == []
    reopened = {loaded["names"][index]: count for index, count in loaded["counts"].items()}
    assert reopened == shown, (reopened, shown)


def test_ohif_connected_before_the_images_load_still_shows_the_labels(chromium, dicomweb_server, orthanc):
    """MONAI Label 0.8.5's stock panel builds its labelmap the moment the user connects, without waiting for OHIF's
    viewports: on a busy CPU it loses that race (page errors, nothing drawn on every Run). The app serves the panel
    with ``lib/ohif.py``'s fixes, which wait for the images. Here the page is throttled 8x and the user connects as
    soon as the button exists, before the viewports hold the CT: the labels must still be shown, without errors and
    without connecting again."""
    study_uid = orthanc.get_json("/dicom-web/studies?PatientID=TEXTSEG0031")[0]["0020000D"]["Value"][0]
    series_uid = _ct_series(orthanc, study_uid)
    server = dicomweb_server.url
    prompt = "the spleen and the left kidney"
    with Browser(chromium, timeout=180) as b:
        b.set_cookie("MONAILABEL_SERVER_URL", server + "/", server)
        b.throttle_cpu(8)
        b.goto(f"{server}/ohif/monai-label?StudyInstanceUIDs={study_uid}")
        b.wait_for("!!document.querySelector('.monaiLabelPanel button.actionButton')", 180, "the MONAI Label panel")
        assert not b.evaluate(VIEWPORTS_HOLD_THE_CT), "the CT loaded before connect: this test no longer connects early"
        b.click(".monaiLabelPanel button.actionButton")  # connect at once
        time.sleep(2)
        b.throttle_cpu(1)  # the machine gets less busy; the panel must now wait for the images on its own
        _connect_and_run(b, prompt, connect=False)
        state = b.wait_for(SEGMENTATION_STATE, 30, "segmentation 1 in OHIF")
        b.screenshot(ARTIFACTS / "ohif_connected_early.png")
        assert b.page_errors() == []
    shown = {state["names"][index]: count for index, count in state["counts"].items()}
    assert shown and set(shown) <= {"spleen", "kidney_left"}, shown
    assert shown == _expected_counts(server, series_uid, prompt)
    assert state["shown"]
