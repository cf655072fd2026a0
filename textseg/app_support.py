"""Library helpers for serving textseg bundles (used by the MONAI Label app in ``apps/``; no app imports here)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from textseg.files import write_atomic
from textseg.vocabulary import Vocabulary, load_vocabulary

__all__ = [
    "SAFE_ID",
    "check_image_id",
    "check_label_file",
    "annotated_structures",
    "label_info_for_map",
    "TrainProgressWriter",
    "read_progress",
    "free_port",
    "MonaiLabelServer",
    "OrthancServer",
    "prepare_studies",
]

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
"""What a datastore image id may look like: no path separators, no leading dot (so no ``..``)."""


def check_image_id(image_id: str) -> str:
    """Return ``image_id`` if it names a datastore entry safely, else raise ``ValueError`` naming the problem."""
    if not isinstance(image_id, str) or not image_id:
        raise ValueError("image id is empty.")
    if "/" in image_id or "\\" in image_id or ".." in image_id or not SAFE_ID.match(image_id):
        raise ValueError(
            f"image id {image_id!r} is not a datastore id: ids may not contain path components ('/', '\\\\', '..') "
            "and use only letters, digits, '.', '_' and '-'."
        )
    return image_id


def check_label_file(
    label: str | os.PathLike, image: str | os.PathLike | None = None, allowed_ids: Sequence[int] | None = None
) -> np.ndarray:
    """Read a label map (NIfTI) fully and check it against its image; return the array.

    Args:
        label: the uploaded label file.
        image: the image it labels (NIfTI file); when given, the shapes must agree.
        allowed_ids: label values that are allowed besides 0 (vocabulary ids of the model's classes).

    Raises:
        ValueError: unreadable file, not 3D, shape differs from the image's, non-integer or unknown values.
    """
    label = Path(label)
    try:
        img = nib.load(str(label))
        data = np.asarray(img.dataobj)
    except Exception as e:
        raise ValueError(f"label {label.name}: not a readable NIfTI file ({type(e).__name__}: {e}).") from e
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"label {label.name}: expected a 3D label map, got shape {tuple(data.shape)}.")
    if image is not None and str(image).endswith((".nii", ".nii.gz")):
        image_shape = tuple(nib.load(str(image)).shape[:3])
        if tuple(data.shape) != image_shape:
            raise ValueError(f"label {label.name}: shape {tuple(data.shape)} differs from the image's shape {image_shape}.")
    if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
        raise ValueError(f"label {label.name}: values must be integer label ids.")
    if allowed_ids is not None:
        unknown = sorted(set(np.unique(data).astype(int).tolist()) - {0} - {int(i) for i in allowed_ids})
        if unknown:
            raise ValueError(f"label {label.name}: ids {unknown} are not among the model's label ids {sorted(allowed_ids)}.")
    return data


def annotated_structures(
    label_info: Mapping | None, present_ids: Sequence[int], class_names: Sequence[str], vocabulary: Vocabulary | None = None
) -> list[str]:
    """Which of ``class_names`` a saved label annotates (partial labels).

    Taken from the label's info when the client said so (``annotated``: names; ``label_names``: name -> id;
    ``label_info``: ``[{"name": ...}]``, as OHIF sends), else the structures present in the label map: a
    structure that is absent and not declared is unknown, not background.
    """
    vocabulary = vocabulary or load_vocabulary()
    info = dict(label_info or {})
    declared: list[str] = []
    if isinstance(info.get("annotated"), (list, tuple)):
        declared = [str(n) for n in info["annotated"]]
    elif isinstance(info.get("label_names"), Mapping):
        declared = [str(n) for n in info["label_names"]]
    elif isinstance(info.get("label_info"), (list, tuple)):
        declared = [str(d.get("name")) for d in info["label_info"] if isinstance(d, Mapping) and d.get("name")]
    names = []
    for name in declared:
        try:
            names.append(vocabulary[name].name)
        except KeyError:
            try:
                names += vocabulary.lookup(name)  # "right kidney", "kidneys"
            except KeyError:
                continue
    if not names:
        names = [vocabulary.by_id(int(i)).name for i in present_ids if int(i) > 0]
    return [n for n in class_names if n in names]


def label_info_for_map(label_ids: Sequence[int], vocabulary: Vocabulary | None = None) -> list[dict]:
    """Segment descriptions (name, description, colour) for the non-zero ids of a label map, in ascending order,
    as MONAI Label's DICOM SEG writer matches them to the map's sorted unique values."""
    vocabulary = vocabulary or load_vocabulary()
    rows = []
    for i in sorted({int(i) for i in label_ids if int(i) > 0}):
        s = vocabulary.by_id(i)
        rows.append({"name": s.name, "description": s.display, "color": list(s.color), "model_name": "textseg"})
    return rows


class TrainProgressWriter:
    """Ignite handler writing training progress to a JSON file after every epoch (atomically).

    Args:
        path: the JSON file: ``{"epoch", "max_epochs", "loss", "best_metric", "state", "ts"}``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._write, "RUNNING")
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write, "RUNNING")
        engine.add_event_handler(Events.COMPLETED, self._write, "FINISHED")

    def _write(self, engine, state: str) -> None:
        output = engine.state.output
        loss = None
        if isinstance(output, list) and output and isinstance(output[0], Mapping) and "loss" in output[0]:
            loss = float(output[0]["loss"])
        elif isinstance(output, Mapping) and "loss" in output:
            loss = float(output["loss"])
        record = {
            "epoch": int(engine.state.epoch),
            "max_epochs": int(engine.state.max_epochs or 0),
            "loss": loss,
            "best_metric": float(engine.state.best_metric) if getattr(engine.state, "best_metric", -1) not in (None, -1) else None,
            "state": state,
            "ts": time.time(),
        }
        write_atomic(self.path, json.dumps(record))


def read_progress(path: str | os.PathLike) -> dict:
    """The last record :class:`TrainProgressWriter` wrote, or ``{}``."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# --- running servers (tests, benchmarks, `make serve`) ----------------------------------------------------
def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    ):
        import sys

        self.app_dir, self.studies, self.conf = str(app_dir), str(studies), dict(conf)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log) if log else Path(os.environ.get("TMPDIR", "/tmp")) / f"monailabel-{self.port}.log"
        self.env = dict(env or {})
        self.bin = Path(python_bin or Path(sys.executable).parent)
        self.startup_timeout = startup_timeout
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
        import signal
        import subprocess

        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # the server and its training subprocesses (own session)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

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
        import signal
        import subprocess

        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)

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
    """``python -m textseg.app_support prepare-studies DIR`` | ``orthanc --studies DIR [--port 8042]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m textseg.app_support", description=_main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare-studies", help="write the real example CT and phantom CT studies (NIfTI) for `make serve`")
    p.add_argument("out_dir")
    p.add_argument("--num", type=int, default=2)
    o = sub.add_parser("orthanc", help="run Debian's Orthanc on 127.0.0.1 loaded with DICOM made from the served studies")
    o.add_argument("--studies", default="data/serve/studies")
    o.add_argument("--port", type=int, default=8042)
    o.add_argument("--work", default="data/serve/orthanc")
    args = parser.parse_args(argv)
    if args.command == "prepare-studies":
        for path in prepare_studies(args.out_dir, args.num):
            print(path)
        return 0
    import signal

    def _stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)  # so the `with` below stops Orthanc (it runs in its own session)
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


if __name__ == "__main__":
    raise SystemExit(_main())
