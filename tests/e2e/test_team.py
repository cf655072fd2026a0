"""The team deployment against the real processes on 127.0.0.1: nginx (TLS, basic auth) in front of MONAI Label (the
textseg app, tiny model, phantom studies) and Orthanc's DICOMweb; who saved a label; no lost updates."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import APP_DIR

from textseg.team import NGINX_BINARY, TeamLimits, TeamServer, add_user

from .conftest import ARTIFACTS, _require

USERS = {"alice": "alice-password-1", "bob": "bob-password-22"}
UNVERIFIED = ssl._create_unverified_context()  # the self-signed certificate of the test server


@pytest.fixture(scope="module")
def team(orthanc, e2e_checkpoint, tmp_path_factory):
    """The team server: two phantom studies (local folder), Orthanc's DICOMweb at /dicom-web/, users alice and bob,
    a 1 MB upload limit and a 3 s client timeout (so the tests can reach them)."""
    from textseg.phantom import make_phantom

    _require(Path(NGINX_BINARY).exists(), "nginx")
    root = tmp_path_factory.mktemp("team")
    studies = root / "studies"
    studies.mkdir()
    for seed in (41, 42):
        make_phantom(seed, shape=(64, 64, 64), spacing=(5.3, 4.4, 5.6)).save(studies / f"case_{seed}.nii.gz", root / f"label_{seed}.nii.gz")
    for name, password in USERS.items():
        add_user(root / "state" / "users", name, password)
    env = {"MONAI_LABEL_DATASTORE_CACHE_PATH": str(root / "cache"), "MONAI_LABEL_SESSION_PATH": str(root / "sessions"),
           "MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}  # fmt: skip
    conf = {"models": "text_prompt", "bundle_overlay": "tiny", "checkpoint": str(e2e_checkpoint)}
    limits = TeamLimits(max_upload="1m", request_timeout_s=600, client_timeout_s=3)
    with TeamServer(APP_DIR, studies, root / "state", conf=conf, limits=limits, env=env, orthanc_port=orthanc.port) as server:
        server.studies_dir = studies
        yield server


def _request(server, method: str, path: str, user: str | None = None, password: str | None = None, body=b"", headers=None, tls=True):
    """One request to the proxy; returns (status, headers, body)."""
    connection = (
        http.client.HTTPSConnection("127.0.0.1", server.https_port, context=UNVERIFIED, timeout=600)
        if tls
        else http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    )
    headers = dict(headers or {})
    if user:
        token = base64.b64encode(f"{user}:{password if password is not None else USERS[user]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


ROUTES = [
    ("GET", "/info/"),
    ("GET", "/datastore/?output=all"),
    ("POST", "/infer/text_prompt?image=case_41"),
    ("POST", "/train/text_prompt"),
    ("POST", "/activelearning/random"),
    ("GET", "/ohif/"),
    ("GET", "/dicom-web/studies"),  # QIDO
    ("GET", "/dicom-web/studies/1.2.3/series/4.5.6/instances/7.8.9"),  # WADO
    ("POST", "/dicom-web/studies"),  # STOW
]


@pytest.mark.parametrize("method,path", ROUTES)
def test_every_route_needs_a_user(team, method, path):
    status, headers, _ = _request(team, method, path)
    assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Basic")
    assert _request(team, method, path, user="alice", password="wrong-password")[0] == 401
    assert _request(team, method, path, user="mallory", password="alice-password-1")[0] == 401


def test_plain_http_is_redirected_to_https(team):
    status, headers, _ = _request(team, "GET", "/info/", tls=False)
    assert status == 301 and headers["Location"].startswith("https://") and f":{team.https_port}/info/" in headers["Location"]


def test_a_user_reaches_monai_label_ohif_and_dicomweb(team, orthanc):
    status, _, body = _request(team, "GET", "/info/", user="alice")
    assert status == 200 and "text_prompt" in json.loads(body)["models"]
    status, _, body = _request(team, "GET", "/ohif/", user="bob")
    assert status == 200 and b"<html" in body.lower()
    status, _, body = _request(team, "GET", "/dicom-web/studies", user="alice")
    assert status == 200 and len(json.loads(body)) == len(orthanc.get_json("/studies"))


def test_traversal_oversized_uploads_and_slow_clients_are_refused(team):
    for path in ("/ohif/../../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/static/..%2f..%2f..%2fetc/passwd"):
        status, _, body = _request(team, "GET", path, user="alice")
        assert status in (400, 404) and b"root:" not in body, (path, status)
    status, _, _ = _request(team, "PUT", "/datastore/label?image=case_41", user="alice", body=b"0" * (2 << 20),
                            headers={"Content-Type": "application/octet-stream"})  # fmt: skip
    assert status == 413
    raw = socket.create_connection(("127.0.0.1", team.https_port))
    slow = UNVERIFIED.wrap_socket(raw, server_hostname="localhost")
    slow.sendall(b"GET /info/ HTTP/1.1\r\nHost: localhost\r\n")  # and never the rest of the headers
    assert _request(team, "GET", "/info/", user="bob")[0] == 200  # others are served meanwhile
    slow.settimeout(30)
    start = time.time()
    answer = slow.recv(1024)
    assert time.time() - start < 25 and (answer == b"" or b" 408 " in answer), answer  # cut off after client_timeout_s
    slow.close()
    assert _request(team, "GET", "/info/", user="alice")[0] == 200


def _label_upload(path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="label"; filename="label{"".join(path.suffixes)}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n'.encode()
    )
    body += json.dumps({"user": "mallory"}).encode() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _phantom_label(team, image: str, value: int, tmp_path: Path) -> Path:
    source = nib.load(str(team.studies_dir / f"{image}.nii.gz"))
    data = np.zeros(source.shape, dtype=np.uint8)
    data[20:40, 20:40, 20:40] = value
    path = tmp_path / f"label_{value}.nii.gz"
    nib.save(nib.Nifti1Image(data, source.affine), str(path))
    return path


def test_saved_labels_record_the_authenticated_user_and_concurrent_saves_are_both_kept(team, tmp_path):
    """alice saves, then alice and bob save the same label at the same moment: three versions, the last current, each
    with the user the proxy authenticated (not the ``user`` the client wrote in the params, nor an X-Remote-User
    header it sent), and every file whole."""
    labels = {v: _phantom_label(team, "case_42", v, tmp_path) for v in (1, 2, 3)}
    body, kind = _label_upload(labels[1])
    status, _, answer = _request(team, "PUT", "/datastore/label?image=case_42", user="alice", body=body,
                                 headers={"Content-Type": kind, "X-Remote-User": "mallory"})  # fmt: skip
    assert status == 200, answer
    results = {}
    barrier = threading.Barrier(2)

    def save(user, value):
        body, kind = _label_upload(labels[value])
        barrier.wait()
        results[user] = _request(team, "PUT", "/datastore/label?image=case_42", user=user, body=body, headers={"Content-Type": kind})

    threads = [threading.Thread(target=save, args=("alice", 2)), threading.Thread(target=save, args=("bob", 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r[0] == 200 for r in results.values()), results
    status, _, body = _request(team, "GET", "/datastore/?output=all", user="alice")
    info = json.loads(body)["objects"]["case_42"]["labels"]["final"]["info"]
    assert info["version"] == 3 and [h["version"] for h in info["history"]] == [1, 2, 3]
    assert info["history"][0]["user"] == "alice" and sorted(h["user"] for h in info["history"][1:]) == ["alice", "bob"]
    assert info["user"] == info["history"][-1]["user"] and "mallory" not in json.dumps(info)
    current = np.asarray(nib.load(str(team.studies_dir / "labels" / "final" / "case_42.nii.gz")).dataobj)
    last = {"alice": 2, "bob": 3}[info["user"]]
    assert set(np.unique(current)) == {0, last}  # the later save is current, whole
    kept = sorted(np.unique(np.asarray(nib.load(p).dataobj)).max() for p in info["previous_versions"])
    assert kept == sorted({1, 2, 3} - {last})  # both earlier versions are kept, whole
    log = (team.state_dir / "logs" / "monailabel.log").read_text(encoding="utf-8")
    assert "user=alice PUT /datastore/label" in log and "user=bob PUT /datastore/label" in log


def test_training_requests_are_logged_with_their_user(team):
    status, _, _ = _request(team, "DELETE", "/train/", user="bob")
    assert status in (200, 404)
    assert "user=bob DELETE /train/" in (team.state_dir / "logs" / "monailabel.log").read_text(encoding="utf-8")


@pytest.mark.slow
def test_twenty_concurrent_infer_requests_through_the_proxy(team):
    prompts = [("liver", {"liver": 5}), ("left kidney", {"kidney_left": 3}), ("spleen and aorta", {"spleen": 1, "aorta": 52})]
    results: list = [None] * 20
    barrier = threading.Barrier(20)

    def infer(i):
        prompt, expected = prompts[i % len(prompts)]
        query = urllib.parse.urlencode({"image": f"case_{41 + i % 2}", "output": "json"})
        body = urllib.parse.urlencode({"params": json.dumps({"prompt": prompt})}).encode()
        barrier.wait()
        status, _, answer = _request(team, "POST", f"/infer/text_prompt?{query}", user=("alice", "bob")[i % 2], body=body,
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
        results[i] = "ok" if status == 200 and json.loads(answer)["label_names"] == expected else f"{status} {answer[:300]}"

    threads = [threading.Thread(target=infer, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["ok"] * 20, [r for r in results if r != "ok"]


@pytest.mark.slow
def test_a_server_killed_mid_save_leaves_the_previous_label_intact(team, e2e_checkpoint, tmp_path):
    """A real MONAI Label server (the app, local datastore) is killed (SIGKILL) while it writes a large label; the label
    it was replacing and the datastore's index are intact afterwards."""
    from textseg.serve import MonaiLabelServer

    studies = tmp_path / "studies"
    studies.mkdir()
    shape = (512, 512, 160)
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.full(shape, -1000, dtype=np.int16), affine), str(studies / "big.nii"))
    first, second = tmp_path / "first.nii", tmp_path / "second.nii"
    for path, value in ((first, 1), (second, 5)):
        data = np.zeros(shape, dtype=np.uint8)
        data[100:300, 100:300, 40:120] = value
        nib.save(nib.Nifti1Image(data, affine), str(path))
    conf = {"models": "text_prompt", "bundle_overlay": "tiny", "checkpoint": str(e2e_checkpoint)}
    env = {"MONAI_LABEL_DATASTORE_CACHE_PATH": str(tmp_path / "cache"), "MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}
    work = studies / ".label_versions"
    with MonaiLabelServer(APP_DIR, studies, conf, log=tmp_path / "server.log", env=env) as server:
        body, kind = _label_upload(first)
        status, _, answer = _put(server.port, body, kind)
        assert status == 200, answer
        body, kind = _label_upload(second)
        sender = threading.Thread(target=lambda: _put(server.port, body, kind, expect_failure=True))
        sender.start()
        deadline = time.time() + 120
        while time.time() < deadline and not (work.is_dir() and any(p.name.startswith(".tmp-") for p in work.iterdir())):
            time.sleep(0.002)
        assert time.time() < deadline, "the second save never started writing"
        os.killpg(server.process.pid, signal.SIGKILL)
        sender.join()
    current = np.asarray(nib.load(str(studies / "labels" / "final" / "big.nii")).dataobj)
    assert current.max() == 1 and (current == 1).sum() == 200 * 200 * 80  # the first label, whole
    index = json.loads((studies / "datastore_v2.json").read_text(encoding="utf-8"))
    assert index["objects"]["big"]["labels"]["final"]["info"]["version"] == 1
    shutil.rmtree(studies)


def _put(port: int, body: bytes, kind: str, expect_failure: bool = False):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request("PUT", "/datastore/label?image=big", body=body, headers={"Content-Type": kind})
        response = connection.getresponse()
        return response.status, {}, response.read()
    except (ConnectionError, http.client.HTTPException):
        if not expect_failure:
            raise
        return None, {}, b""
    finally:
        connection.close()


@pytest.mark.slow
def test_ohif_through_the_proxy_shows_the_labels_of_a_typed_prompt(chromium, orthanc, e2e_checkpoint, tmp_path):
    """The OHIF user's path through the team proxy in headless Chromium: the user's credentials in the address (the
    browser keeps them for the origin), open the study from Orthanc, connect the MONAI Label panel, type a prompt,
    Run; OHIF's own state must hold the labels, with no page errors, every request over HTTPS through nginx."""
    from .browser import Browser
    from .test_dicomweb_ohif import SEGMENTATION_STATE, VIEWPORTS_HOLD_THE_CT, _connect_and_run, _ct_series

    _require(Path(NGINX_BINARY).exists(), "nginx")
    add_user(tmp_path / "state" / "users", "alice", USERS["alice"])
    conf = {"models": "text_prompt,all_structures", "bundle_overlay": "tiny", "checkpoint": str(e2e_checkpoint)}
    env = {"MONAI_LABEL_DATASTORE_CACHE_PATH": str(tmp_path / "cache"), "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(tmp_path / "cache"),
           "MONAI_LABEL_SESSION_PATH": str(tmp_path / "sessions"), "MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}  # fmt: skip
    study_uid = orthanc.get_json("/dicom-web/studies?PatientID=TEXTSEG0032")[0]["0020000D"]["Value"][0]
    series_uid = _ct_series(orthanc, study_uid)
    with TeamServer(APP_DIR, orthanc.dicomweb_url, tmp_path / "state", conf=conf, env=env, orthanc_port=orthanc.port) as server:
        url = f"https://localhost:{server.https_port}"
        with Browser(chromium, timeout=120, flags=("--ignore-certificate-errors",)) as b:
            b.set_cookie("MONAILABEL_SERVER_URL", url + "/", url)
            b.goto(f"https://alice:{USERS['alice']}@localhost:{server.https_port}/ohif/monai-label?StudyInstanceUIDs={study_uid}")
            b.wait_for("!!document.querySelector('.monaiLabelPanel button.actionButton')", 120, "the MONAI Label panel")
            b.wait_for(VIEWPORTS_HOLD_THE_CT, 180, "the three viewports showing the loaded CT")
            _connect_and_run(b, "the spleen and the left kidney")
            state = b.wait_for(SEGMENTATION_STATE, 30, "segmentation 1 in OHIF")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            b.screenshot(ARTIFACTS / "ohif_through_the_team_proxy.png")
            assert b.page_errors() == []
            shown = {state["names"][index]: count for index, count in state["counts"].items()}
            assert shown and set(shown) <= {"spleen", "kidney_left"}, shown
            (request,) = b.requests("/infer/text_prompt")
            assert request["request"]["url"].startswith(url) and f"image={series_uid}" in request["request"]["url"]
    access = (tmp_path / "state" / "logs" / "access.log").read_text(encoding="utf-8")
    assert " alice " in access and "/infer/text_prompt" in access
