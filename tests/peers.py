"""Real peers for the tests on free loopback ports: Orthanc, PostgreSQL, the node itself."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import requests

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
NODE_BIN = Path(sys.executable).with_name("medgemma-node")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
# DCMTK and Orthanc leave Nagle's algorithm on otherwise: ~40 ms per instance on loopback.
NODELAY_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], T], *, timeout: float, what: str, every: float = 0.2) -> T:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` at the end."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError, KeyError) as e:  # a peer still starting refuses connections
            last_error = e
        time.sleep(every)
    raise TimeoutError(
        f"timed out after {timeout:g} s waiting for {what} (last error: {last_error})"
    )


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


# Orthanc's routing script: the very file docker/compose.yaml's Orthanc loads. It sends a stable
# study to the modality named "node", leaving out what the node itself sent back.
ROUTE_STABLE_STUDIES = REPO / "docker" / "orthanc" / "route.lua"


class Orthanc:
    """An Orthanc PACS with the DICOMweb plugin, its own storage, on free ports."""

    def __init__(self, workdir: Path, *, aet: str = "ORTHANC") -> None:
        self.workdir = workdir
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def start(
        self,
        *,
        node_aet: str | None = None,
        node_port: int | None = None,
        route: bool = False,
        extra_modalities: dict[str, list[Any]] | None = None,
        stable_age: int = 1,
        dicomweb_servers: dict[str, Any] | None = None,
    ) -> Orthanc:
        """``dicomweb_servers``: the DICOMweb plugin's ``Servers`` (DICOMweb peers Orthanc
        can query and retrieve from as a client), e.g. ``{"node": {"Url": ...}}``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        modalities: dict[str, list[Any]] = dict(extra_modalities or {})
        if node_aet and node_port:
            modalities["node"] = [node_aet, "127.0.0.1", node_port]
        config: dict[str, Any] = {
            "Name": "test-pacs",
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "RemoteAccessAllowed": True,
            "AuthenticationEnabled": False,
            "DicomModalities": modalities,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowMove": True,
            "DicomCheckCalledAet": False,
            "StableAge": stable_age,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "Servers": dict(dicomweb_servers or {}),
            },
            "LuaScripts": [],
        }
        if route and node_aet:
            config["LuaScripts"] = [str(ROUTE_STABLE_STUDIES)]
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        return self.launch(config_path)

    def launch(self, config_path: Path) -> Orthanc:
        """Run Orthanc on ``config_path`` (its ports must be this object's) until it answers."""
        log = (self.workdir / "orthanc.log").open("wb")
        self.process = subprocess.Popen(
            ["Orthanc", str(config_path)], stdout=log, stderr=subprocess.STDOUT, env=NODELAY_ENV
        )
        wait_for(lambda: self.get("/system"), timeout=30, what="Orthanc to answer HTTP")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            body = response.read()
        try:
            return json.loads(body)
        except ValueError:
            return body

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return bytes(response.read())

    def post(self, path: str, body: bytes | str | dict[str, Any] | list[Any]) -> Any:
        data = (
            body
            if isinstance(body, bytes)
            else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
        )
        request = urllib.request.Request(self.url + path, data=data, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def upload(self, path: Path) -> dict[str, Any]:
        result: dict[str, Any] = self.post("/instances", path.read_bytes())
        return result


class DcmQrScp:
    """DCMTK's dcmqrscp as a PACS (C-FIND, C-MOVE, C-GET, C-STORE) with its own storage area.

    ``move_destinations``: the AE titles it may C-MOVE to, each listening on that loopback port.
    """

    def __init__(
        self, workdir: Path, move_destinations: dict[str, int], *, aet: str = "DCMQR"
    ) -> None:
        self.workdir, self.aet, self.port = workdir, aet, free_port()
        self.move_destinations = move_destinations
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DcmQrScp:
        storage = self.workdir / "db"
        storage.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "dcmqrscp.cfg"
        hosts = "".join(
            f"dest{number} = ({ae}, 127.0.0.1, {port})\n"
            for number, (ae, port) in enumerate(self.move_destinations.items())
        )
        config.write_text(
            f"NetworkTCPPort = {self.port}\nMaxPDUSize = 65536\nMaxAssociations = 16\n\n"
            f"HostTable BEGIN\n{hosts}HostTable END\n\nVendorTable BEGIN\nVendorTable END\n\n"
            "AETable BEGIN\n"
            f"{self.aet} {storage} RW (100, 1024mb) ANY\n"
            "AETable END\n"
        )
        log = (self.workdir / "dcmqrscp.log").open("wb")
        self.process = subprocess.Popen(
            ["dcmqrscp", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT, env=NODELAY_ENV
        )
        wait_for(lambda: port_open(self.port), timeout=10, what="dcmqrscp to listen")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


class Postgres:
    """A throwaway PostgreSQL cluster owned by the ``postgres`` user, trust auth on loopback."""

    BIN = Path("/usr/lib/postgresql/15/bin")

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, args: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *args]
        return args

    def start(self) -> Postgres:
        bin_dir = self.BIN if self.BIN.exists() else Path(shutil.which("initdb") or "").parent
        self.workdir.mkdir(parents=True, exist_ok=True)
        data = self.workdir / "pgdata"
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
            self.workdir.chmod(0o755)
            # every parent must be traversable by the postgres user
            for parent in self.workdir.parents:
                if parent != Path("/") and not os.access(parent, os.X_OK):
                    parent.chmod(parent.stat().st_mode | 0o111)
        if not (data / "PG_VERSION").exists():  # else started again after stop()
            self._initdb(bin_dir, data)
        log = (self.workdir / "postgres.log").open("ab")
        if os.geteuid() == 0:
            shutil.chown(self.workdir / "postgres.log", "postgres", "postgres")
        self.process = subprocess.Popen(
            self._as_postgres(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.workdir),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                ]
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: port_open(self.port), timeout=30, what="PostgreSQL to listen")
        return self

    def fresh_database(self, name: str) -> str:
        """An empty database ``name`` on this cluster (dropped first if there); its URL."""
        from sqlalchemy import create_engine, text

        admin = create_engine(self.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def _initdb(self, bin_dir: Path, data: Path) -> None:
        subprocess.run(
            self._as_postgres(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        if self.process is not None:
            # runuser doesn't pass signals on to postgres: ask pg_ctl for a fast shutdown.
            bin_dir = self.BIN if self.BIN.exists() else Path(shutil.which("pg_ctl") or "").parent
            subprocess.run(
                self._as_postgres(
                    [
                        str(bin_dir / "pg_ctl"),
                        "stop",
                        "-m",
                        "fast",
                        "-w",
                        "-D",
                        str(self.workdir / "pgdata"),
                    ]
                ),
                capture_output=True,
                timeout=60,
                check=False,
            )
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None


class NodeProcess:
    """``medgemma-node serve`` as a separate process, as an administrator runs it."""

    def __init__(self, config_path: Path, log_path: Path, port: int) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> NodeProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(NODE_BIN), "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        wait_for(self._listening, timeout=60, what=f"the node to listen on port {self.port}")
        return self

    def _listening(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"the node exited with {self.process.returncode}: {self.log()}")
        return port_open(self.port)

    def log(self, tail: int | None = 4000) -> str:
        text = self.log_path.read_text(errors="replace")
        return text if tail is None else text[-tail:]

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None


def serve_until_exit(config_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``medgemma-node serve`` that is expected to stop by itself (a start-up failure)."""
    return subprocess.run(
        [str(NODE_BIN), "serve", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def stow_post(http_port: int, part10: bytes) -> requests.Response:
    """One instance by STOW-RS to a node, as one plain POST (dicomweb-client retries a 503
    with an emptied body, which would hide the answer)."""
    boundary = "mgn-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + part10
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return requests.post(
        f"http://127.0.0.1:{http_port}/dicom-web/studies",
        data=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
        },
        timeout=60,
    )
