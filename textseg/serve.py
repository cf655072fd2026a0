"""Running the servers around the app: MONAI Label and Orthanc as subprocesses on 127.0.0.1 (tests, benchmarks,
``make serve``), and the CT studies ``make serve`` serves.

``python -m textseg.serve prepare-studies DIR`` | ``python -m textseg.serve orthanc --studies DIR [--port 8042]``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["free_port", "stop_process_group", "MonaiLabelServer", "OrthancServer", "EXAMPLE_STUDY", "prepare_studies"]


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process_group(process, signum: int | None = None, timeout: float = 20) -> None:
    """Stop a server started in its own session (``start_new_session=True``) and everything it started: ``signum``
    (default SIGTERM) to the process group, then SIGKILL after ``timeout`` seconds. Nothing happens if it has ended."""
    import signal
    import subprocess

    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM if signum is None else signum)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _wait_http(url: str, timeout: float, process=None, log=None) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            tail = Path(log).read_text(encoding="utf-8")[-4000:] if log else ""
            raise RuntimeError(f"server exited with code {process.returncode} before answering {url}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    tail = Path(log).read_text(encoding="utf-8")[-4000:] if log else ""
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s:\n{tail}")


class MonaiLabelServer:
    """``monailabel start_server`` in a subprocess on 127.0.0.1 (a context manager).

    Args:
        app_dir: the MONAI Label app folder.
        studies: local folder or DICOMweb URL.
        conf: ``--conf`` options.
        port: TCP port (a free one when omitted).
        log: file receiving the server's output.
        env: extra environment variables (e.g. cache folders).
        python_bin: folder holding ``monailabel`` and the ``python`` it runs (default: this interpreter's).
        uvicorn_app: the ASGI app to serve (``<module>:<app>``; default MONAI Label's own), e.g.
            ``textseg.team:remote_user_app`` behind the team proxy.
    """

    def __init__(
        self,
        app_dir,
        studies,
        conf: Mapping[str, str],
        port: int | None = None,
        log=None,
        env: Mapping[str, str] | None = None,
        python_bin=None,
        startup_timeout: float = 180.0,
        uvicorn_app: str | None = None,
    ):
        import sys

        self.app_dir, self.studies, self.conf = str(app_dir), str(studies), dict(conf)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log) if log else Path(os.environ.get("TMPDIR", "/tmp")) / f"monailabel-{self.port}.log"
        self.env = dict(env or {})
        self.bin = Path(python_bin or Path(sys.executable).parent)
        self.startup_timeout = startup_timeout
        self.uvicorn_app = uvicorn_app
        self.process = None

    def start(self) -> "MonaiLabelServer":
        import subprocess

        cmd = [
            str(self.bin / "monailabel"),
            "start_server",
            "--app",
            self.app_dir,
            "--studies",
            self.studies,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if self.uvicorn_app:
            cmd += ["--uvicorn_app", self.uvicorn_app]
        for k, v in self.conf.items():
            cmd += ["--conf", k, str(v)]
        env = dict(os.environ, **self.env)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"  # monailabel runs plain `python`
        env.setdefault("HF_HUB_OFFLINE", "1")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "w", encoding="utf-8") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            _wait_http(f"{self.url}/info/", self.startup_timeout, self.process, self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_process_group(self.process)  # the server and its training subprocesses (own session)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


ORTHANC_BINARY = "/usr/sbin/Orthanc"
ORTHANC_DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class OrthancServer:
    """Debian's Orthanc with the DICOMweb plugin, local-only, in a temporary folder (a context manager).

    Args:
        work_dir: folder for the config, storage and log.
        port: HTTP port (a free one when omitted); the DICOM port is disabled.
    """

    def __init__(self, work_dir, port: int | None = None, binary: str = ORTHANC_BINARY, plugin: str = ORTHANC_DICOMWEB_PLUGIN):
        self.work_dir = Path(work_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb_url = f"{self.url}/dicom-web"
        self.binary, self.plugin = binary, plugin
        self.process = None

    def start(self) -> "OrthancServer":
        import subprocess

        for path in (self.binary, self.plugin):
            if not Path(path).exists():
                raise FileNotFoundError(f"{path} not found: install Debian's orthanc and orthanc-dicomweb packages.")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "textseg-test",
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "StorageDirectory": str(self.work_dir / "storage"),
            "IndexDirectory": str(self.work_dir / "index"),
            "Plugins": [self.plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False},
        }
        (self.work_dir / "orthanc.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        self.log = self.work_dir / "orthanc.log"
        with open(self.log, "w", encoding="utf-8") as out:
            self.process = subprocess.Popen(
                [self.binary, str(self.work_dir / "orthanc.json")], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            _wait_http(f"{self.dicomweb_url}/studies", 60, self.process, self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def upload(self, files) -> list[dict]:
        """POST DICOM files to ``/instances``; returns Orthanc's answers."""
        import urllib.request

        answers = []
        for f in files:
            req = urllib.request.Request(
                f"{self.url}/instances", data=Path(f).read_bytes(), method="POST", headers={"Content-Type": "application/dicom"}
            )
            with urllib.request.urlopen(req, timeout=30) as r:
                answers.append(json.loads(r.read()))
        return answers

    def get_json(self, path: str):
        """GET a JSON resource of Orthanc's REST API (``/series``, ``/dicom-web/studies``...)."""
        import urllib.request

        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        stop_process_group(self.process)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


EXAMPLE_STUDY = {
    "patient_id": "TSEXAMPLE01",
    "patient_name": "TotalSegmentator^Example",
    "study_description": "CT abdomen-pelvis (TotalSegmentator example, native phase)",
    "series_description": "CT 3 mm",
}
"""DICOM identity of the shipped real example CT when it is served as a study."""


def prepare_studies(out_dir: str | os.PathLike, num: int = 2, seed: int = 900, dicom_dir: str | os.PathLike | None = None) -> list[Path]:
    """CT studies for serving: the shipped real example CT first, then ``num`` phantom volumes, as NIfTI in
    ``out_dir`` (kept when present), and optionally the same volumes as DICOM series under ``dicom_dir`` (one
    folder each; the real CT under its own patient name and description)."""
    import shutil

    from textseg.demo import EXAMPLE_CT
    from textseg.dicom import write_ct_series
    from textseg.phantom import make_phantom

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    if EXAMPLE_CT.is_file():
        path = out_dir / EXAMPLE_CT.name
        if not path.exists():
            shutil.copyfile(EXAMPLE_CT, path)
        paths.append(path)
    for i in range(num):
        path = out_dir / f"phantom_{seed + i:04d}.nii.gz"
        if not path.exists():
            make_phantom(seed + i).save(path, out_dir.parent / f"{out_dir.name}_labels" / path.name)
        paths.append(path)
    if dicom_dir is not None:
        for path in paths:
            series = Path(dicom_dir) / path.name.replace(".nii.gz", "")
            if series.exists():
                continue
            img = nib.load(str(path))
            identity = (
                EXAMPLE_STUDY if path.name == EXAMPLE_CT.name else {"patient_id": path.name.replace(".nii.gz", "").replace("_", "").upper()}
            )
            write_ct_series(np.asarray(img.dataobj, dtype=np.float32), img.affine, series, **identity)
    return paths


def _main(argv=None) -> int:
    """``python -m textseg.serve prepare-studies DIR`` | ``orthanc --studies DIR [--port 8042]`` |
    ``add-user NAME --state DIR`` | ``team --state DIR [--port 8443]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m textseg.serve", description=_main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare-studies", help="write the real example CT and phantom CT studies (NIfTI) for `make serve`")
    p.add_argument("out_dir")
    p.add_argument("--num", type=int, default=2)
    o = sub.add_parser("orthanc", help="run Debian's Orthanc on 127.0.0.1 loaded with DICOM made from the served studies")
    o.add_argument("--studies", default="data/serve/studies")
    o.add_argument("--port", type=int, default=8042)
    o.add_argument("--work", default="data/serve/orthanc")
    u = sub.add_parser("add-user", help="add or replace a user of the team deployment (the password is read from stdin or asked)")
    u.add_argument("name")
    u.add_argument("--state", default="data/team", help="the team deployment's state folder (users, certificates, logs)")
    t = sub.add_parser("team", help="Orthanc + MONAI Label behind one authenticated HTTPS proxy (nginx): docs/team.md")
    t.add_argument("--state", default="data/team")
    t.add_argument("--port", type=int, default=8443, help="HTTPS port (all interfaces)")
    t.add_argument("--http-port", type=int, default=8080, help="plain HTTP port: redirects to HTTPS")
    t.add_argument("--host", default="localhost", help="the server's name in the self-signed certificate and URLs")
    t.add_argument("--certificate", default=None, help="a real certificate (PEM) instead of the self-signed one")
    t.add_argument("--key", default=None, help="its private key (PEM)")
    t.add_argument("--studies", default="data/serve/studies", help="studies loaded into Orthanc as DICOM")
    t.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="MONAI Label --conf option")
    args = parser.parse_args(argv)
    if args.command == "prepare-studies":
        for path in prepare_studies(args.out_dir, args.num):
            print(path)
        return 0
    if args.command == "add-user":
        import getpass
        import sys

        from textseg.team import add_user

        password = sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else getpass.getpass(f"password for {args.name}: ")
        add_user(Path(args.state) / "users", args.name, password)
        print(f"user {args.name} saved in {Path(args.state) / 'users'} (hashed)")
        return 0
    import signal

    def _stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)  # so the `with` below stops the servers (they run in their own sessions)
    if args.command == "team":
        return _serve_team(args)
    dicom = Path(args.work) / "dicom"
    prepare_studies(args.studies, dicom_dir=dicom)
    with OrthancServer(Path(args.work) / "server", port=args.port) as server:
        for folder in sorted(p for p in dicom.iterdir() if p.is_dir()):
            server.upload(sorted(folder.glob("*.dcm")))
        print(
            f"Orthanc DICOMweb at {server.dicomweb_url} (Ctrl-C stops it); serve with: make serve STUDIES={server.dicomweb_url}", flush=True
        )
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass
    return 0


def _serve_team(args) -> int:
    from textseg.team import TeamServer

    state = Path(args.state)
    dicom = state / "dicom"
    prepare_studies(args.studies, dicom_dir=dicom)
    conf = {"models": "text_prompt,all_structures", **dict(args.conf)}
    env = {"MONAI_LABEL_DATASTORE_CACHE_PATH": str(state / "cache"), "MONAI_LABEL_SESSION_PATH": str(state / "sessions")}
    with TeamServer(
        Path(__file__).resolve().parents[1] / "apps" / "textseg_app", None, state, https_port=args.port, http_port=args.http_port,
        conf=conf, certificate=args.certificate, key=args.key, env=env, host=args.host,
    ) as team:  # fmt: skip
        for folder in sorted(p for p in dicom.iterdir() if p.is_dir()):
            team.orthanc.upload(sorted(folder.glob("*.dcm")))
        print(f"textseg team server at {team.url}/ohif/ (DICOMweb at {team.url}/dicom-web; Ctrl-C stops it)", flush=True)
        try:
            team.proxy.process.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
