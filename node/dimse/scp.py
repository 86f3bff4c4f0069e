"""The DICOM SCP: C-ECHO and C-STORE for every storage SOP class, as pynetdicom intends.

Each service has one intervention handler that returns a status; every failure is
turned into a DICOM status here, at the boundary, and logged once. Notification handlers
write the audit trail and count associations: accepted and refused ones, and when a
connection closes, one ``study-received`` event per study it delivered. TLS is set up in
``node/dimse/tls.py``.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from node import metrics
from node.audit import AuditEvent, AuditLog
from node.config import NodeSettings, Peer
from node.dimse.tls import (
    ClientGone,
    HandshakeFailed,
    TlsSetupError,
    certificate_subject,
    server_tls_context,
    shake_hands,
)
from node.priors.cache import PriorCache, write_instance
from node.store.ingest import Ingest, NotFiled, read_wire_header
from node.store.meta import InvalidInstance, UnreadableData
from node.store.part10 import part10_prefix

log = logging.getLogger(__name__)

# Storage service statuses (PS3.4 Annex B.2.3)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000

# A-ASSOCIATE-RJ: rejected-permanent, service-user, and the reason (PS3.8 9.3.4)
REJECTED_PERMANENT = 0x01
SERVICE_USER = 0x01
CALLING_AE_NOT_RECOGNIZED = 0x03
CALLED_AE_NOT_RECOGNIZED = 0x07


class ListenError(Exception):
    """The SCP can't listen; the message names the setting (or the TLS file) to change."""


def peer_allowed(peers: Sequence[Peer], ae_title: str, host: str) -> bool:
    if not peers:
        return True
    return any(p.ae_title == ae_title and (p.host is None or p.host == host) for p in peers)


@dataclass
class _Received:
    """What one association delivered of one study."""

    instances: int = 0
    patient_id: str | None = None  # audited only with node.log_phi


def _requestor(event: Any) -> tuple[str, str]:
    requestor = event.assoc.requestor
    # Before negotiation only the A-ASSOCIATE-RQ primitive knows the calling AE.
    primitive = requestor.primitive
    calling = primitive.calling_ae_title if primitive is not None else requestor.ae_title
    return str(calling).strip(), str(requestor.address)


class StorageSCP:
    def __init__(
        self, settings: NodeSettings, ingest: Ingest, prior_cache: PriorCache | None = None
    ) -> None:
        self.settings = settings
        self.ingest = ingest
        # Instances our own C-MOVE asked for are priors: cached, never new work.
        self.prior_cache = prior_cache
        self.ae = AE(ae_title=settings.ae_title)
        self.ae.maximum_pdu_size = 0  # no limit: fewer, larger P-DATA PDUs
        self.ae.maximum_associations = 32
        self.ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self._servers: list[ThreadedAssociationServer] = []
        self.audit = AuditLog.from_settings(settings)
        # Per open association: (study UID, filed as a prior) -> what it delivered.
        self._received: dict[Any, dict[tuple[str, bool], _Received]] = {}
        self._received_lock = threading.Lock()

    def start(self, host: str | None = None) -> None:
        """Listen on ``node.host`` (or ``host``): plain DICOM and/or TLS, as configured.

        ListenError when a port can't be bound or the TLS files can't be used; either way
        nothing is left listening.
        """
        host = host if host is not None else self.settings.host
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_CONN_CLOSE, self._on_closed),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        tls, tls_port = self.settings.tls, self.settings.tls_port
        # Checked before anything listens: a bad file stops start-up with nothing bound.
        try:
            context = server_tls_context(tls) if tls is not None else None
        except TlsSetupError as e:
            raise ListenError(str(e)) from e
        plain_port = self.settings.plain_port
        try:
            if plain_port is not None:
                self._listen(host, plain_port, "node.port", handlers, None)
                log.info(
                    "DICOM SCP %s listening on %s port %d (plain DICOM)",
                    self.settings.ae_title,
                    host,
                    plain_port,
                )
            if tls is None or context is None or tls_port is None:
                log.info("DICOM TLS is off (node.tls unset)")
                return
            tls_handlers = [(evt.EVT_CONN_OPEN, self._on_connection_open), *handlers]
            key = "node.port" if self.settings.plain_port is None else "node.tls.port"
            self._listen(host, tls_port, key, tls_handlers, context)
        except ListenError:
            self.stop()
            raise
        clients = (
            f"client certificates required, verified against {tls.ca_certificates}"
            if tls.ca_certificates is not None
            else "client certificates not required (node.tls.ca_certificates unset)"
        )
        log.info(
            "DICOM SCP %s listening on %s port %d with TLS (1.2 or later, certificate %s); %s",
            self.settings.ae_title,
            host,
            tls_port,
            tls.certificate,
            clients,
        )

    def _listen(
        self,
        host: str,
        port: int,
        key: str,
        handlers: list[Any],
        context: ssl.SSLContext | None,
    ) -> None:
        try:
            server = self.ae.start_server(
                (host, port), block=False, ssl_context=context, evt_handlers=handlers
            )
        except OSError as e:
            raise ListenError(
                f"cannot listen on DICOM port {port} ({key}) on {host} (node.host): "
                f"{e.strerror or e}"
            ) from e
        assert server is not None  # block=False returns the running server
        self._servers.append(server)

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
        self._servers = []

    def _on_connection_open(self, event: Any) -> None:
        """TLS listener only: shake hands before pynetdicom reads the A-ASSOCIATE-RQ."""
        transport = event.assoc.dul.socket  # pynetdicom's AssociationSocket
        sock = transport.socket
        if not isinstance(sock, ssl.SSLSocket):
            return
        address, port = event.address[0], int(event.address[1])
        try:
            shake_hands(sock)
        except ClientGone as e:
            # A port probe or a client that gave up: nothing was refused, nothing to audit.
            log.info("TLS connection from %s closed during the handshake (%s)", address, e)
            transport.close()
            return
        except HandshakeFailed as e:
            log.warning("refused TLS connection from %s: handshake failed: %s", address, e)
            metrics.association_refused("tls")
            self.audit.record(
                AuditEvent.ASSOCIATION_REFUSED,
                calling_ae=None,
                called_ae=None,
                peer_address=str(address),
                peer_port=port,
                reason=f"TLS handshake failed: {e}",
            )
            # Closing the transport ends the association before anything is read from it.
            transport.close()
            return
        log.debug(
            "TLS %s from %s, client certificate %s",
            sock.version(),
            address,
            certificate_subject(sock) or "none",
        )

    def _on_requested(self, event: Any) -> None:
        calling, address = _requestor(event)
        called = str(event.assoc.requestor.primitive.called_ae_title).strip()
        if called != self.settings.ae_title:
            log.warning(
                "refused association from %s at %s: called AE %r is not %r",
                calling,
                address,
                called,
                self.settings.ae_title,
            )
            self._refused(event, calling, called, "called-ae", f"called AE {called!r} is not ours")
            self._reject(event, CALLED_AE_NOT_RECOGNIZED)
            return
        if not peer_allowed(self.settings.allowed_peers, calling, address):
            log.warning(
                "refused association from %s at %s: not in node.allowed_peers", calling, address
            )
            self._refused(event, calling, called, "calling-ae", "not in node.allowed_peers")
            self._reject(event, CALLING_AE_NOT_RECOGNIZED)

    def _refused(self, event: Any, calling: str, called: str, reason: str, detail: str) -> None:
        metrics.association_refused(reason)
        requestor = event.assoc.requestor
        self.audit.record(
            AuditEvent.ASSOCIATION_REFUSED,
            calling_ae=calling,
            called_ae=called,
            peer_address=str(requestor.address),
            peer_port=int(requestor.port),
            reason=detail,
        )

    def _on_accepted(self, event: Any) -> None:
        metrics.association_accepted()
        calling, address = _requestor(event)
        requestor = event.assoc.requestor
        sock = event.assoc.dul.socket.socket
        tls: dict[str, str | None] = (
            {"tls": sock.version(), "peer_certificate": certificate_subject(sock)}
            if isinstance(sock, ssl.SSLSocket)
            else {}
        )
        self.audit.record(
            AuditEvent.ASSOCIATION_ACCEPTED,
            calling_ae=calling,
            called_ae=str(requestor.primitive.called_ae_title).strip(),
            peer_address=address,
            peer_port=int(requestor.port),
            **tls,
        )

    def _note_received(
        self, event: Any, study_uid: str, *, prior: bool, patient_id: str | None = None
    ) -> None:
        with self._received_lock:
            studies = self._received.setdefault(event.assoc, {})
            received = studies.setdefault((study_uid, prior), _Received())
            received.instances += 1
            received.patient_id = received.patient_id or patient_id

    def _on_closed(self, event: Any) -> None:
        """One audit event per study the association delivered (released, aborted or dropped)."""
        with self._received_lock:
            studies = self._received.pop(event.assoc, {})
        if not studies:
            return
        calling, address = _requestor(event)
        for (study_uid, prior), received in studies.items():
            phi = {"patient_id": received.patient_id} if self.audit.log_phi else {}
            self.audit.record(
                AuditEvent.STUDY_RECEIVED,
                study_uid=study_uid,
                instances=received.instances,
                prior=prior,
                calling_ae=calling,
                peer_address=address,
                **phi,
            )

    def _file_prior(self, event: Any, sop_uid: str, calling: str) -> int:
        assert self.prior_cache is not None
        request = event.request
        transfer_syntax = event.context.transfer_syntax
        try:
            header = read_wire_header(request.DataSet, transfer_syntax)
        except InvalidInstance as e:
            log.error("prior instance %s from %s refused: %s", sop_uid, calling, e)
            metrics.instance_refused("unreadable")
            return CANNOT_UNDERSTAND
        study_uid = str(header.get("StudyInstanceUID", ""))
        directory = self.prior_cache.study_dir(study_uid)
        if not directory.is_dir():
            # Only a retrieval in progress prepares its directory; a late or unasked
            # C-MOVE'd instance is refused rather than filed as new work.
            log.warning(
                "refused C-MOVE'd %s from %s: no retrieval of study %s is waiting",
                sop_uid,
                calling,
                study_uid,
            )
            metrics.instance_refused("prior-not-waiting")
            return DATASET_DOES_NOT_MATCH_SOP_CLASS
        prefix = part10_prefix(str(request.AffectedSOPClassUID), sop_uid, transfer_syntax, calling)
        write_instance(directory, sop_uid, prefix + request.DataSet.getvalue())
        self._note_received(event, study_uid, prior=True)
        return SUCCESS

    @staticmethod
    def _reject(event: Any, reason: int) -> None:
        event.assoc.acse.send_reject(REJECTED_PERMANENT, SERVICE_USER, reason)
        # As pynetdicom's own rejections do: let the DUL flush the A-ASSOCIATE-RJ before
        # the socket is shut down, or the peer only sees a dropped connection.
        event.assoc.kill()

    def _on_echo(self, event: Any) -> int:
        return SUCCESS

    def _on_store(self, event: Any) -> int:
        calling, address = _requestor(event)
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        originator = str(event.request.MoveOriginatorApplicationEntityTitle or "").strip()
        if self.prior_cache is not None and originator == self.settings.ae_title:
            return self._file_prior(event, sop_uid, calling)
        try:
            request = event.request
            meta, filed = self.ingest.accept_received(
                request.DataSet,
                sop_class_uid=str(request.AffectedSOPClassUID),
                sop_instance_uid=sop_uid,
                transfer_syntax=event.context.transfer_syntax,
                calling_ae=calling,
            )
        except InvalidInstance as e:
            log.error("C-STORE of %s from %s at %s refused: %s", sop_uid, calling, address, e)
            unreadable = isinstance(e, UnreadableData)
            metrics.instance_refused("unreadable" if unreadable else "invalid")
            return CANNOT_UNDERSTAND if unreadable else DATASET_DOES_NOT_MATCH_SOP_CLASS
        except NotFiled as e:
            # Disk full, database down: the sender keeps the instance and retries later.
            log.error("C-STORE of %s from %s at %s not filed: %s", sop_uid, calling, address, e)
            metrics.instance_refused("not-filed")
            return OUT_OF_RESOURCES
        except Exception:
            log.exception(
                "C-STORE of %s from %s at %s could not be filed", sop_uid, calling, address
            )
            metrics.instance_refused("not-filed")
            return OUT_OF_RESOURCES
        self._note_received(event, meta.study_uid, prior=False, patient_id=meta.patient_id)
        if meta.sop_uid != sop_uid:
            log.warning(
                "C-STORE from %s: AffectedSOPInstanceUID %s differs from the data set's %s",
                calling,
                sop_uid,
                meta.sop_uid,
            )
        log.debug("filed %s (%s) from %s", meta.sop_uid, filed, calling)
        return SUCCESS
