"""DICOM TLS for the SCP (PS3.15 B.1): the listener's SSL context and the deferred handshake.

:func:`server_tls_context` checks ``node.tls`` before anything listens; each error names
the key and the file. pynetdicom wraps every accepted socket in its accept loop, so the
context only prepares the socket there, and :func:`shake_hands` runs the handshake, with
a deadline, on the thread pynetdicom starts for the connection (the SCP calls it from its
``EVT_CONN_OPEN`` handler): a client that connects and says nothing holds back no one else.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from node.config import TlsSettings

__all__ = [
    "TLS_HANDSHAKE_TIMEOUT",
    "ClientGone",
    "HandshakeFailed",
    "TlsSetupError",
    "certificate_subject",
    "server_tls_context",
    "shake_hands",
]

# A client that opens a TLS connection and says nothing is dropped after this long.
TLS_HANDSHAKE_TIMEOUT = 30.0


class TlsSetupError(Exception):
    """A certificate, key or CA file that can't be used; the message names the key and file."""


class ClientGone(Exception):
    """The client closed the connection during the handshake: a port probe, or it gave up."""


class HandshakeFailed(Exception):
    """The handshake failed (a bad certificate, plain DICOM, a timeout); the message says why."""


class _DeferredHandshakeContext(ssl.SSLContext):
    """A server context whose sockets shake hands later, in :func:`shake_hands`."""

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=False,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=server_hostname,
            session=session,
        )


def _read(path: Path, key: str) -> None:
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as e:
        raise TlsSetupError(f"{key}: cannot read {path}: {e.strerror or e}") from e


def _load_certificates(context: ssl.SSLContext, path: Path, key: str) -> None:
    """Load the PEM certificates in ``path``; TlsSetupError names the key and file."""
    _read(path, key)
    try:
        context.load_verify_locations(cafile=str(path))
    except ssl.SSLError as e:
        raise TlsSetupError(f"{key}: {path} holds no PEM certificate ({e.reason or e})") from e


def _no_passphrase() -> bytes:
    raise TlsSetupError("encrypted")


def server_tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """The SSL context of the TLS listener; TlsSetupError names the key and file that failed."""
    cert_key, key_key = "node.tls.certificate", "node.tls.private_key"
    # Parse the certificate file on its own first, so a failure is blamed on the right file.
    _load_certificates(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), tls.certificate, cert_key)
    _read(tls.private_key, key_key)
    context = _DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.certificate, tls.private_key, password=_no_passphrase)
    except TlsSetupError as e:
        raise TlsSetupError(
            f"{key_key}: {tls.private_key} is encrypted; the node can't ask for a passphrase: "
            "give it an unencrypted key that only the node's user can read"
        ) from e
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            problem = f"is not the key of {cert_key} {tls.certificate}"
        else:
            problem = f"holds no usable PEM private key ({e.reason or e})"
        raise TlsSetupError(f"{key_key}: {tls.private_key} {problem}") from e
    if tls.ca_certificates is not None:
        _load_certificates(context, tls.ca_certificates, "node.tls.ca_certificates")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def shake_hands(sock: ssl.SSLSocket) -> None:
    """Run the handshake the context deferred, within ``TLS_HANDSHAKE_TIMEOUT``.

    ClientGone when the client closed the connection (nothing was refused), HandshakeFailed
    with the reason otherwise; either way the caller closes the connection.
    """
    blocking = sock.gettimeout()
    try:
        sock.settimeout(TLS_HANDSHAKE_TIMEOUT)
        sock.do_handshake()
    except (ssl.SSLEOFError, ConnectionError) as e:
        raise ClientGone(str(e)) from e
    except (OSError, ValueError) as e:
        reason = e.reason if isinstance(e, ssl.SSLError) else None
        raise HandshakeFailed(reason or str(e) or type(e).__name__) from e
    sock.settimeout(blocking)


# The attribute names ssl.SSLSocket.getpeercert gives, as RFC 4514 writes them.
_DN_ABBREVIATIONS = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
}


def certificate_subject(sock: ssl.SSLSocket) -> str | None:
    """The client certificate's subject as ``CN=…,O=…`` (verified ones only), else None."""
    certificate = sock.getpeercert()
    subject = certificate.get("subject", ()) if certificate else ()
    if isinstance(subject, str):
        return subject or None
    # A tuple of relative distinguished names, each a tuple of (attribute, value) pairs.
    names = [
        f"{_DN_ABBREVIATIONS.get(pair[0], pair[0])}={pair[1]}"
        for rdn in subject
        for pair in rdn
        if isinstance(pair, tuple)
    ]
    return ",".join(names) or None
