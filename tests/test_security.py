"""Security against real peers: DICOM TLS with DCMTK ``storescu +tls`` and certificates made
here with the ``openssl`` command, the HTTP bearer token (header and the worklist page's
cookie), and the loopback-only default binding."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from fixtures.series import make_cr_study
from node.config import TlsSettings
from node.dimse.tls import TLS_HANDSHAKE_TIMEOUT, TlsSetupError, server_tls_context
from node.store.index import Index
from tests.conftest import node_config, storescu
from tests.peers import NodeProcess, free_port, serve_until_exit, wait_for

TOKEN = "mgn-test-token-6f1d2c9a8b7e4f30"
TOKEN_ENV = "MGN_TEST_HTTP_TOKEN"


# -- certificates -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A test CA, the node's certificate, a client certificate it signed, and a stranger's."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # self-signed: no chain to the CA
    rogue_key: Path
    encrypted_key: Path  # the server key under a passphrase


def _openssl(*args: str | Path) -> None:
    result = subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def _self_signed(directory: Path, name: str, subject: str, *extensions: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    addext = [arg for extension in extensions for arg in ("-addext", extension)]
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", key, "-out", cert, "-subj", subject, *addext,
    )  # fmt: skip
    return cert, key


def _signed(directory: Path, name: str, subject: str, ca: tuple[Path, Path], ext: str) -> Path:
    """A key and a certificate for ``subject`` signed by ``ca``, with extensions ``ext``."""
    key, request = directory / f"{name}.key", directory / f"{name}.csr"
    cert, extfile = directory / f"{name}.pem", directory / f"{name}.ext"
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request,
             "-subj", subject)  # fmt: skip
    extfile.write_text(ext)
    _openssl(
        "x509", "-req", "-in", request, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-days", "2", "-out", cert, "-extfile", extfile,
    )  # fmt: skip
    return cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = _self_signed(
        d,
        "ca",
        "/O=medgemma-node tests/CN=Test CA",
        "basicConstraints=critical,CA:TRUE",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    server = _signed(
        d,
        "server",
        "/O=medgemma-node tests/CN=localhost",
        ca,
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    client = _signed(
        d,
        "client",
        "/O=Modality/CN=STORESCU",
        ca,
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    rogue_cert, rogue_key = _self_signed(d, "rogue", "/CN=STORESCU")
    encrypted = d / "encrypted.key"
    _openssl("pkey", "-in", d / "server.key", "-aes256", "-passout", "pass:secret",
             "-out", encrypted)  # fmt: skip
    return Pki(
        ca=ca[0],
        server_cert=server,
        server_key=d / "server.key",
        client_cert=client,
        client_key=d / "client.key",
        rogue_cert=rogue_cert,
        rogue_key=rogue_key,
        encrypted_key=encrypted,
    )


def _tls_args(pki: Pki, *, cert: Path | None, key: Path | None) -> list[str]:
    """storescu options: TLS with this client certificate (anonymous without), trusting our CA."""
    identity = ["+tls", str(key), str(cert)] if cert and key else ["+tla"]
    return [*identity, "+cf", str(pki.ca)]


# -- nodes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    process: NodeProcess
    config: dict[str, Any]
    url: str

    @property
    def data_dir(self) -> Path:
        return Path(self.config["node"]["data_dir"])

    def sop_uids(self) -> set[str]:
        index = Index(f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}")
        try:
            return index.known_sop_uids()
        finally:
            index.close()

    def audit(self, event: str) -> list[dict[str, Any]]:
        trail = self.data_dir / "audit.jsonl"  # written with the first event
        lines = trail.read_text().splitlines() if trail.exists() else []
        return [line for line in map(json.loads, lines) if line["event"] == event]


def _start(workdir: Path, test_model: Path, **node: Any) -> Iterator[Node]:
    config_path, config = node_config(workdir, test_model, node={"stable_seconds": 1, **node})
    http_port = config["node"]["http_port"]
    # Waiting on the HTTP port (opened after the SCP) keeps readiness probes off the TLS port.
    process = NodeProcess(config_path, workdir / "node.log", http_port).start()
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_for(
            lambda: requests.get(f"{url}/healthz", timeout=5).status_code == 200,
            timeout=60,
            what="GET /healthz to answer 200",
        )
        yield Node(process, config, url)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def tls_only(
    tmp_path_factory: pytest.TempPathFactory, test_model: Path, pki: Pki
) -> Iterator[Node]:
    """TLS on node.port (no plain DICOM), client certificates not asked for, no HTTP token."""
    tls = {"certificate": str(pki.server_cert), "private_key": str(pki.server_key)}
    yield from _start(tmp_path_factory.mktemp("tls-only"), test_model, tls=tls)


@pytest.fixture(scope="module")
def mutual(tmp_path_factory: pytest.TempPathFactory, test_model: Path, pki: Pki) -> Iterator[Node]:
    """Plain DICOM on node.port, TLS on tls.port with client certificates from our CA, and an
    HTTP token in the process's environment."""
    tls = {
        "certificate": str(pki.server_cert),
        "private_key": str(pki.server_key),
        "ca_certificates": str(pki.ca),
        "port": free_port(),
    }
    with pytest.MonkeyPatch.context() as env:
        env.setenv(TOKEN_ENV, TOKEN)  # NodeProcess passes its environment on to the node
        yield from _start(
            tmp_path_factory.mktemp("mutual"), test_model, tls=tls, http_token_env=TOKEN_ENV
        )


def _cr(directory: Path) -> tuple[Path, str]:
    path = make_cr_study(directory)
    return path, str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# -- DICOM TLS ----------------------------------------------------------------------------


def test_tls_store_with_dcmtk(tls_only: Node, pki: Pki, tmp_path: Path) -> None:
    port = tls_only.config["node"]["port"]
    path, sop_uid = _cr(tmp_path / "with-cert")
    sent = storescu(port, [path], extra=_tls_args(pki, cert=pki.client_cert, key=pki.client_key))
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert sop_uid in tls_only.sop_uids()

    # Without node.tls.ca_certificates a client needs no certificate of its own.
    path, anonymous_uid = _cr(tmp_path / "anonymous")
    sent = storescu(port, [path], extra=_tls_args(pki, cert=None, key=None))
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert anonymous_uid in tls_only.sop_uids()

    log = tls_only.process.log(tail=None)
    assert f"listening on 127.0.0.1 port {port} with TLS (1.2 or later" in log
    assert "client certificates not required" in log
    assert "(plain DICOM)" not in log  # TLS took node.port
    [accepted, *_] = tls_only.audit("association-accepted")
    assert accepted["tls"] in ("TLSv1.2", "TLSv1.3")


def test_a_silent_tls_client_neither_blocks_others_nor_stays_forever(
    tls_only: Node, pki: Pki, tmp_path: Path
) -> None:
    """A client that connects to the TLS port and never starts its handshake: another
    sender is served meanwhile, and the silent connection is closed after the handshake
    limit (TLS_HANDSHAKE_TIMEOUT, 30 s)."""
    port = tls_only.config["node"]["port"]
    silent = socket.create_connection(("127.0.0.1", port), timeout=5)
    opened = time.monotonic()
    try:
        path, sop_uid = _cr(tmp_path / "beside-a-silent-client")
        sent = storescu(port, [path], extra=_tls_args(pki, cert=None, key=None))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert sop_uid in tls_only.sop_uids()
        silent.settimeout(TLS_HANDSHAKE_TIMEOUT + 30)
        try:
            closed = silent.recv(1) == b""
        except ConnectionResetError:
            closed = True
        waited = time.monotonic() - opened
    finally:
        silent.close()
    assert closed and waited >= TLS_HANDSHAKE_TIMEOUT - 1, waited


def test_plain_dicom_to_the_tls_port_is_refused(tls_only: Node, tmp_path: Path) -> None:
    path, sop_uid = _cr(tmp_path)
    sent = storescu(tls_only.config["node"]["port"], [path])
    assert sent.returncode != 0
    assert sop_uid not in tls_only.sop_uids()
    wait_for(
        lambda: "handshake failed" in tls_only.process.log(tail=None),
        timeout=10,
        what="the refused handshake in the node's log",
    )
    refused = tls_only.audit("association-refused")
    assert any(r["reason"].startswith("TLS handshake failed") for r in refused), refused


def test_client_certificates_required_when_a_ca_is_set(
    mutual: Node, pki: Pki, tmp_path: Path
) -> None:
    tls_port = mutual.config["node"]["tls"]["port"]
    refused_before = len(mutual.audit("association-refused"))
    for name, cert, key in [("anonymous", None, None), ("rogue", pki.rogue_cert, pki.rogue_key)]:
        path, sop_uid = _cr(tmp_path / name)
        sent = storescu(tls_port, [path], extra=_tls_args(pki, cert=cert, key=key))
        assert sent.returncode != 0, f"{name}: {sent.stdout + sent.stderr}"
        assert sop_uid not in mutual.sop_uids()
    refused = wait_for(
        lambda: mutual.audit("association-refused")[refused_before:] or None,
        timeout=10,
        what="audited refusals",
    )
    assert all(r["reason"].startswith("TLS handshake failed") for r in refused), refused

    path, sop_uid = _cr(tmp_path / "signed")
    sent = storescu(
        tls_port, [path], extra=_tls_args(pki, cert=pki.client_cert, key=pki.client_key)
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert sop_uid in mutual.sop_uids()
    certified = [a for a in mutual.audit("association-accepted") if a.get("peer_certificate")]
    assert certified and certified[-1]["peer_certificate"] == "O=Modality,CN=STORESCU"

    log = mutual.process.log(tail=None)
    assert f"port {tls_port} with TLS" in log
    assert f"client certificates required, verified against {pki.ca}" in log
    assert "refused TLS connection from 127.0.0.1: handshake failed" in log


def test_plain_port_stays_open_beside_tls_port(mutual: Node, tmp_path: Path) -> None:
    port = mutual.config["node"]["port"]
    path, sop_uid = _cr(tmp_path)
    sent = storescu(port, [path])
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert sop_uid in mutual.sop_uids()
    assert f"listening on 127.0.0.1 port {port} (plain DICOM)" in mutual.process.log(tail=None)


def test_bad_key_stops_serve_naming_the_key_and_file(tmp_path: Path, pki: Pki) -> None:
    missing = tmp_path / "no-such.key"
    tls = {"certificate": str(pki.server_cert), "private_key": str(missing)}
    config_path, _ = node_config(tmp_path, tmp_path / "model-unused", node={"tls": tls})
    result = serve_until_exit(config_path)
    assert result.returncode == 1
    assert f"node.tls.private_key: cannot read {missing}" in result.stderr


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"certificate": "server_key"}, "node.tls.certificate: {server_key} holds no PEM"),
        ({"private_key": "client_key"}, "node.tls.private_key: {client_key} is not the key of"),
        ({"private_key": "ca"}, "node.tls.private_key: {ca} holds no usable PEM private key"),
        ({"private_key": "encrypted_key"}, "node.tls.private_key: {encrypted_key} is encrypted"),
        ({"ca_certificates": "server_key"}, "node.tls.ca_certificates: {server_key} holds no"),
    ],
)
def test_unusable_tls_files_are_named(pki: Pki, files: dict[str, str], message: str) -> None:
    paths = {name: getattr(pki, name) for name in vars(pki)}
    chosen = {"certificate": pki.server_cert, "private_key": pki.server_key}
    chosen.update({key: paths[name] for key, name in files.items()})
    with pytest.raises(TlsSetupError) as error:
        server_tls_context(TlsSettings.model_validate(chosen))
    assert message.format(**paths) in str(error.value)


# -- HTTP bearer token --------------------------------------------------------------------


def test_http_token_header(mutual: Node) -> None:
    url = mutual.url
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200  # never asks

    for path in ("/api/studies", "/metrics", "/openapi.json", "/"):
        response = requests.get(url + path, timeout=10)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Bearer"), path

    wrong = requests.get(
        f"{url}/api/studies", headers={"Authorization": "Bearer not-the-token"}, timeout=10
    )
    assert wrong.status_code == 401
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    basic = requests.get(f"{url}/api/studies", auth=("user", TOKEN), timeout=10)
    assert basic.status_code == 401

    good = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.get(f"{url}/api/studies", headers=good, timeout=10).status_code == 200
    metrics = requests.get(f"{url}/metrics", headers=good, timeout=10)
    assert metrics.status_code == 200 and "medgemma_" in metrics.text

    # STOW-RS input is refused before its body is read; nothing is stored.
    before = mutual.sop_uids()
    stow = requests.post(
        f"{url}/dicom-web/studies",
        data=b"--x\r\nContent-Type: application/dicom\r\n\r\nDICM\r\n--x--\r\n",
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=x'},
        timeout=10,
    )
    assert stow.status_code == 401
    assert mutual.sop_uids() == before
    assert "refused HTTP GET /api/studies from 127.0.0.1: wrong bearer token" in (
        mutual.process.log(tail=None)
    )


def test_worklist_page_token_becomes_a_cookie_for_its_images(
    mutual: Node, pki: Pki, tmp_path: Path
) -> None:
    url, good = mutual.url, {"Authorization": f"Bearer {TOKEN}"}
    path = make_cr_study(tmp_path)
    study_uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    tls_port = mutual.config["node"]["tls"]["port"]
    sent = storescu(
        tls_port, [path], extra=_tls_args(pki, cert=pki.client_cert, key=pki.client_key)
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr

    def done_job() -> dict[str, Any] | None:
        studies = requests.get(f"{url}/api/studies", headers=good, timeout=10).json()
        study = next((s for s in studies if s["study_instance_uid"] == study_uid), None)
        jobs = [j for j in (study or {}).get("jobs", []) if j["state"] in ("done", "failed")]
        return jobs[0] if jobs else None

    job = wait_for(done_job, timeout=90, what="the CR's job to finish")
    assert job["state"] == "done", mutual.process.log()
    image_url = url + job["image"]["url"]

    assert requests.get(f"{url}/?token=wrong", timeout=10).status_code == 401
    browser = requests.Session()
    page = browser.get(f"{url}/?token={TOKEN}", timeout=10)
    assert page.status_code == 200 and "NOT FOR DIAGNOSTIC USE" in page.text
    set_cookie = page.headers["set-cookie"]
    assert set_cookie.startswith("medgemma_token=")
    assert "HttpOnly" in set_cookie and "samesite=strict" in set_cookie.lower()
    cookie = browser.cookies["medgemma_token"]
    assert cookie and TOKEN not in cookie  # an HMAC of the token, not the token

    # The page's later requests carry only the cookie, as a browser's <img> and fetch do.
    image = requests.get(image_url, cookies={"medgemma_token": cookie}, timeout=30)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert browser.get(url + "/", timeout=10).status_code == 200
    assert browser.get(f"{url}/api/studies", timeout=10).status_code == 200
    forged = requests.get(image_url, cookies={"medgemma_token": "0" * len(cookie)}, timeout=10)
    assert forged.status_code == 401
    assert requests.get(image_url, timeout=10).status_code == 401


# -- loopback by default ------------------------------------------------------------------


def _non_loopback_ipv4() -> str | None:
    """One of this machine's own IPv4 addresses that isn't loopback, if it has one."""
    candidates: list[str] = []
    try:
        listed = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10)
        candidates += listed.stdout.split()
    except OSError:
        pass
    try:
        candidates.append(socket.gethostbyname(socket.gethostname()))
    except OSError:
        pass
    for address in candidates:
        if ":" in address or address.startswith("127."):
            continue
        try:  # it must be an address of this machine: something can listen there
            with socket.socket() as probe:
                probe.bind((address, 0))
        except OSError:
            continue
        return address
    return None


def test_everything_binds_to_loopback_by_default(tls_only: Node) -> None:
    address = _non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect to")
    ports = {
        "DICOM (node.port)": tls_only.config["node"]["port"],
        "HTTP (node.http_port)": tls_only.config["node"]["http_port"],
    }
    for what, port in ports.items():
        with socket.socket() as s:
            s.settimeout(5)
            assert s.connect_ex(("127.0.0.1", port)) == 0, f"{what} not on loopback"
        with socket.socket() as s:
            s.settimeout(5)
            assert s.connect_ex((address, port)) == errno.ECONNREFUSED, f"{what} on {address}"
    # The refusal means something: a listener on that address is reachable from here.
    with socket.socket() as listener, socket.socket() as client:
        listener.bind((address, 0))
        listener.listen()
        client.settimeout(5)
        assert client.connect_ex(listener.getsockname()) == 0
