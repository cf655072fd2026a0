"""Serving a team: one authenticated, encrypted entry point (Debian's nginx) for OHIF, MONAI Label and Orthanc.

``TeamServer`` starts Orthanc and MONAI Label on 127.0.0.1 and nginx in front of them on one origin:

- ``https://HOST:PORT/`` → MONAI Label (its API and ``/ohif/``), ``/dicom-web/`` → Orthanc's DICOMweb;
- TLS with a self-signed certificate made on first start (``state/tls``), or the one given;
- HTTP basic authentication on every route, against ``state/users`` (``user:$6$...`` SHA-512 crypt hashes made
  by ``openssl passwd -6``; :func:`add_user`); plain HTTP answers a redirect to HTTPS;
- the user nginx authenticated reaches MONAI Label as ``X-Remote-User`` (nginx overwrites any header the client
  sends), where :data:`REMOTE_USER` holds it for the request: saved labels and training requests record it;
- upload size and request time limits that fit a whole-CT ``/infer``.

Basic authentication behind TLS was chosen over MONAI Label's own OIDC auth: it needs no identity provider, it
covers Orthanc's DICOMweb and the OHIF static files with the same credentials, and OHIF and 3D Slicer send it
without changes (the browser asks once per session; Slicer takes ``https://user:password@host:port``).
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from textseg.files import write_atomic

__all__ = [
    "REMOTE_USER",
    "RemoteUserApp",
    "remote_user_app",
    "TeamLimits",
    "add_user",
    "ensure_certificate",
    "nginx_config",
    "NginxProxy",
    "TeamServer",
]

logger = logging.getLogger(__name__)

NGINX_BINARY = "/usr/sbin/nginx"
REMOTE_USER: contextvars.ContextVar[str | None] = contextvars.ContextVar("textseg_remote_user", default=None)
"""The user the reverse proxy authenticated for the request being served (None without a proxy)."""

_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_LOGGED_METHODS = {"POST", "PUT", "DELETE"}


class RemoteUserApp:
    """ASGI wrapper of MONAI Label's app (``monailabel start_server --uvicorn_app textseg.team:remote_user_app``).

    Sets :data:`REMOTE_USER` from the ``X-Remote-User`` header for each request and logs every request that changes
    something (``POST``/``PUT``/``DELETE``: labels, training, uploads) with its user. Only the team proxy may reach a
    server run this way: it binds 127.0.0.1 and nginx replaces the header on every request.
    """

    def __init__(self, app=None):
        self._app = app

    async def __call__(self, scope, receive, send):
        if self._app is None:
            from monailabel.app import app  # imported once the server's settings are in place

            self._app = app
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        user = dict(scope.get("headers") or []).get(b"x-remote-user")
        token = REMOTE_USER.set(user.decode("latin-1") if user else None)
        if scope.get("method") in _LOGGED_METHODS:
            logger.info(f"user={REMOTE_USER.get() or '-'} {scope['method']} {scope.get('path')}")
        try:
            await self._app(scope, receive, send)
        finally:
            REMOTE_USER.reset(token)


remote_user_app = RemoteUserApp()


def add_user(users_file: str | os.PathLike, name: str, password: str) -> None:
    """Add or replace a user in the password file (SHA-512 crypt hash by ``openssl passwd -6``; the file is rewritten
    atomically and readable by its owner and group only)."""
    if not _USER_NAME.match(name or ""):
        raise ValueError(f"user name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit.")
    if not password or len(password) < 8 or "\n" in password:
        raise ValueError("password: at least 8 characters, on one line.")
    hashed = subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"], input=password, capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    path = Path(users_file)
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    lines = [line for line in lines if line and not line.startswith(f"{name}:")] + [f"{name}:{hashed}"]
    write_atomic(path, "\n".join(lines) + "\n")
    os.chmod(path, 0o640)


def ensure_certificate(tls_dir: str | os.PathLike, host: str = "localhost") -> tuple[Path, Path]:
    """``(certificate, key)`` in ``tls_dir``: a self-signed certificate for ``host``, 127.0.0.1 and localhost is
    made on first use (RSA 2048, 825 days) and kept."""
    tls_dir = Path(tls_dir)
    cert, key = tls_dir / "server.crt", tls_dir / "server.key"
    if cert.is_file() and key.is_file():
        return cert, key
    tls_dir.mkdir(parents=True, exist_ok=True)
    names = ",".join(dict.fromkeys([f"DNS:{host}" if not re.match(r"^[\d.]+$", host) else f"IP:{host}", "DNS:localhost", "IP:127.0.0.1"]))
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "825", "-subj", f"/CN={host}",
         "-addext", f"subjectAltName={names}", "-keyout", str(key), "-out", str(cert)],
        capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    os.chmod(key, 0o600)
    return cert, key


@dataclass
class TeamLimits:
    """Request limits of the proxy.

    Attributes:
        max_upload: largest request body (nginx size, e.g. ``2g``): a whole CT as NIfTI or a DICOM series upload.
        request_timeout_s: how long the proxy waits for MONAI Label or Orthanc (a whole-CT ``/infer`` on CPU, or
            training started from the app, takes minutes).
        client_timeout_s: how long a client may take to send its headers or the next part of its body (slow
            clients are cut off so they cannot hold connections).
    """

    max_upload: str = "2g"
    request_timeout_s: int = 1800
    client_timeout_s: int = 30


def nginx_config(
    state_dir: Path, https_port: int, http_port: int, monailabel_port: int, orthanc_port: int | None,
    certificate: Path, key: Path, users_file: Path, limits: TeamLimits = TeamLimits(),
) -> str:  # fmt: skip
    """nginx.conf of the team proxy (run with ``nginx -p state_dir -c nginx.conf``)."""
    orthanc = (
        f"""
        location /dicom-web/ {{
            proxy_pass http://127.0.0.1:{orthanc_port}/dicom-web/;
        }}"""
        if orthanc_port
        else ""
    )
    # started by root, nginx would run its workers as nobody, who cannot read the users file in a private state folder:
    # they run as the starting user (run the team server as an unprivileged user; ports >= 1024 need no root)
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""# made by textseg.team; do not edit (it is rewritten at every start)
{user}worker_processes 2;
pid {state_dir}/nginx.pid;
error_log {state_dir}/logs/error.log warn;
daemon off;
events {{ worker_connections 512; }}
http {{
    types {{ text/html html; application/javascript js; text/css css; application/json json; }}
    default_type application/octet-stream;
    log_format team '$remote_addr $remote_user [$time_local] "$request" $status $body_bytes_sent $request_time';
    access_log {state_dir}/logs/access.log team;
    client_body_temp_path {state_dir}/tmp/body;
    proxy_temp_path {state_dir}/tmp/proxy;
    fastcgi_temp_path {state_dir}/tmp/fastcgi;
    uwsgi_temp_path {state_dir}/tmp/uwsgi;
    scgi_temp_path {state_dir}/tmp/scgi;
    server_tokens off;
    client_max_body_size {limits.max_upload};
    client_header_timeout {limits.client_timeout_s}s;
    client_body_timeout {limits.client_timeout_s}s;
    send_timeout {limits.request_timeout_s}s;
    proxy_connect_timeout 10s;
    proxy_read_timeout {limits.request_timeout_s}s;
    proxy_send_timeout {limits.request_timeout_s}s;
    proxy_request_buffering off;
    proxy_http_version 1.1;

    server {{
        listen 127.0.0.1:{http_port};
        listen {http_port};
        return 301 https://$host:{https_port}$request_uri;
    }}
    server {{
        listen {https_port} ssl;
        ssl_certificate {certificate};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        auth_basic "textseg";
        auth_basic_user_file {users_file};
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-Proto https;
        proxy_set_header X-Remote-User $remote_user;
        proxy_set_header Authorization "";
        location / {{
            proxy_pass http://127.0.0.1:{monailabel_port};
        }}{orthanc}
    }}
}}
"""


class NginxProxy:
    """Debian's nginx running :func:`nginx_config` in ``state_dir`` (a context manager; logs in ``state_dir/logs``)."""

    def __init__(self, state_dir: str | os.PathLike, config: str, https_port: int, binary: str = NGINX_BINARY):
        self.state_dir = Path(state_dir)
        self.config = config
        self.https_port = https_port
        self.binary = binary
        self.process = None

    def start(self) -> NginxProxy:
        if not Path(self.binary).exists():
            raise FileNotFoundError(f"{self.binary} not found: install Debian's nginx package (apt-get install nginx).")
        for sub in ("logs", "tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        conf = self.state_dir / "nginx.conf"
        write_atomic(conf, self.config)
        check = subprocess.run([self.binary, "-t", "-p", str(self.state_dir), "-c", str(conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx refused its configuration {conf}:\n{check.stderr}")
        log = open(self.state_dir / "logs" / "nginx.out", "w", encoding="utf-8")
        self.process = subprocess.Popen(
            [self.binary, "-p", str(self.state_dir), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        import socket

        deadline = time.time() + 30
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with code {self.process.returncode}: see {self.state_dir / 'logs'}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.https_port)) == 0:
                    return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"nginx did not listen on {self.https_port} within 30 s")

    def stop(self) -> None:
        import signal

        from textseg.serve import stop_process_group

        stop_process_group(self.process, signal.SIGQUIT)  # graceful: workers finish their requests

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class TeamServer:
    """Orthanc + MONAI Label (the textseg app) on 127.0.0.1 behind the authenticated TLS proxy (a context manager).

    Args:
        app_dir: the MONAI Label app.
        studies: the app's studies: a local folder, or None to serve Orthanc's DICOMweb (started here).
        orthanc_port: with a local ``studies`` folder, an Orthanc already running on 127.0.0.1 whose DICOMweb the proxy
            serves at ``/dicom-web/``.
        state_dir: certificates, the users file, the proxy's config and logs, Orthanc's storage.
        https_port, http_port: the proxy's ports (HTTP redirects to HTTPS); free ones when omitted.
        conf: MONAI Label ``--conf`` options for the app.
        certificate, key: a real certificate; default a self-signed one made in ``state_dir/tls``.
        limits: upload size and time limits.
        env: extra environment for MONAI Label (cache folders).
    """

    def __init__(
        self,
        app_dir: str | os.PathLike,
        studies: str | os.PathLike | None,
        state_dir: str | os.PathLike,
        https_port: int | None = None,
        http_port: int | None = None,
        conf: dict | None = None,
        certificate: str | os.PathLike | None = None,
        key: str | os.PathLike | None = None,
        limits: TeamLimits = TeamLimits(),
        env: dict | None = None,
        host: str = "localhost",
        orthanc_port: int | None = None,
    ):
        from textseg.serve import free_port

        self.app_dir, self.studies = Path(app_dir), studies
        self.state_dir = Path(state_dir).resolve()
        self.https_port = https_port or free_port()
        self.http_port = http_port or free_port()
        self.conf = dict(conf or {})
        self.certificate, self.key = certificate, key
        self.limits, self.env, self.host = limits, dict(env or {}), host
        self.orthanc_port = orthanc_port
        self.users_file = self.state_dir / "users"
        self.url = f"https://{host}:{self.https_port}"
        self._stack = None

    def start(self) -> TeamServer:
        import contextlib

        from textseg.serve import MonaiLabelServer, OrthancServer

        if not self.users_file.is_file():
            raise FileNotFoundError(
                f"no users yet ({self.users_file}): add one with `python -m textseg.serve add-user NAME --state {self.state_dir}`."
            )
        if self.certificate and self.key:
            certificate, key = Path(self.certificate), Path(self.key)
        else:
            certificate, key = ensure_certificate(self.state_dir / "tls", self.host)
        if os.geteuid() == 0:
            logger.warning("the team server runs as root: nginx's workers will too; run it as an unprivileged user")
        with contextlib.ExitStack() as stack:
            orthanc = None
            studies = self.studies
            if studies is None:
                orthanc = stack.enter_context(OrthancServer(self.state_dir / "orthanc"))
                studies = orthanc.dicomweb_url
            self.orthanc = orthanc
            orthanc_port = orthanc.port if orthanc else self.orthanc_port
            self.monailabel = stack.enter_context(
                MonaiLabelServer(
                    self.app_dir,
                    studies,
                    self.conf,
                    log=self.state_dir / "logs" / "monailabel.log",
                    env=self.env,
                    uvicorn_app="textseg.team:remote_user_app",
                )
            )
            config = nginx_config(
                self.state_dir, self.https_port, self.http_port, self.monailabel.port, orthanc_port,
                certificate, key, self.users_file, self.limits,
            )  # fmt: skip
            self.proxy = stack.enter_context(NginxProxy(self.state_dir, config, self.https_port))
            self._stack = stack.pop_all()
        return self

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
