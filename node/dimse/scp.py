"""The DICOM SCP: C-ECHO and C-STORE for every storage SOP class, as pynetdicom intends.

Each service has one intervention handler that returns a status. A C-STORE data set goes
to the ingest (``node/store/ingest.py``), or, when a C-MOVE of the node's own asked for it
(the request names our AE title as its move originator), to the receiver the service plugs
in for those; either answers with an outcome (``node/store/outcome.py``) that this module
only turns into a status, logging a refusal once. Notification handlers write the audit
trail and count associations: accepted and refused ones, and when a connection closes, one
``study-received`` event per study it delivered. TLS is set up in ``node/dimse/tls.py``.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Sequence
from io import BytesIO

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
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
from node.errors import reraised_as
from node.store.ingest import Ingest, Receiver, WireInstance
from node.store.outcome import SUCCESS, ReceivedStudies, Refused, Stored

log = logging.getLogger(__name__)

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


def _requestor(event: Event) -> tuple[str, str]:
    requestor = event.assoc.requestor
    # Before negotiation only the A-ASSOCIATE-RQ primitive knows the calling AE.
    primitive = requestor.primitive
    calling = primitive.calling_ae_title if primitive is not None else requestor.ae_title
    return calling.strip(), requestor.address


def _called(event: Event) -> str:
    primitive = event.assoc.requestor.primitive
    return primitive.called_ae_title.strip() if primitive is not None else ""


class StorageSCP:
    """The node's listener(s); ``move_receiver`` takes the instances our own C-MOVEs asked
    for (None: they go to the ingest like any other)."""

    def __init__(
        self, settings: NodeSettings, ingest: Ingest, move_receiver: Receiver | None = None
    ) -> None:
        self.settings = settings
        self.ingest = ingest
        self.move_receiver = move_receiver
        self.ae = AE(ae_title=settings.ae_title)
        self.ae.maximum_pdu_size = 0  # no limit: fewer, larger P-DATA PDUs
        self.ae.maximum_associations = 32
        self.ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self._servers: list[ThreadedAssociationServer] = []
        self.audit = AuditLog.from_settings(settings)
        # What each open association delivered, audited when it closes.
        self._received: dict[Association, ReceivedStudies] = {}
        self._received_lock = threading.Lock()

    def start(self, host: str | None = None) -> None:
        """Listen on ``node.host`` (or ``host``): plain DICOM and/or TLS, as configured.

        ListenError when a port can't be bound or the TLS files can't be used; either way
        nothing is left listening.
        """
        host = host if host is not None else self.settings.host
        handlers: list[EventHandlerType] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_CONN_CLOSE, self._on_closed),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        tls, tls_port = self.settings.tls, self.settings.tls_port
        # Checked before anything listens: a bad file stops start-up with nothing bound.
        with reraised_as(TlsSetupError, ListenError):
            context = server_tls_context(tls) if tls is not None else None
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
            tls_handlers: list[EventHandlerType] = [
                (evt.EVT_CONN_OPEN, self._on_connection_open),
                *handlers,
            ]
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
        handlers: list[EventHandlerType],
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

    def _on_connection_open(self, event: Event) -> None:
        """TLS listener only: shake hands before pynetdicom reads the A-ASSOCIATE-RQ."""
        transport = event.assoc.dul.socket  # pynetdicom's AssociationSocket
        sock = transport.socket if transport is not None else None
        if transport is None or not isinstance(sock, ssl.SSLSocket):
            return
        requestor = event.assoc.requestor
        try:
            shake_hands(sock)
        except ClientGone as e:
            # A port probe or a client that gave up: nothing was refused, nothing to audit.
            log.info(
                "TLS connection from %s closed during the handshake (%s)", requestor.address, e
            )
            transport.close()
            return
        except HandshakeFailed as e:
            log.warning(
                "refused TLS connection from %s: handshake failed: %s", requestor.address, e
            )
            # Refused before the A-ASSOCIATE-RQ: no AE titles are known.
            self._refused(event, None, None, "tls", f"TLS handshake failed: {e}")
            # Closing the transport ends the association before anything is read from it.
            transport.close()
            return
        log.debug(
            "TLS %s from %s, client certificate %s",
            sock.version(),
            requestor.address,
            certificate_subject(sock) or "none",
        )

    def _on_requested(self, event: Event) -> None:
        calling, address = _requestor(event)
        called = _called(event)
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

    def _refused(
        self, event: Event, calling: str | None, called: str | None, reason: str, detail: str
    ) -> None:
        """Count and audit a refused connection; ``reason`` is the metric's label."""
        metrics.association_refused(reason)
        requestor = event.assoc.requestor
        self.audit.record(
            AuditEvent.ASSOCIATION_REFUSED,
            calling_ae=calling,
            called_ae=called,
            peer_address=requestor.address,
            peer_port=requestor.port,
            reason=detail,
        )

    def _on_accepted(self, event: Event) -> None:
        metrics.association_accepted()
        calling, address = _requestor(event)
        transport = event.assoc.dul.socket
        sock = transport.socket if transport is not None else None
        tls: dict[str, str | None] = (
            {"tls": sock.version(), "peer_certificate": certificate_subject(sock)}
            if isinstance(sock, ssl.SSLSocket)
            else {}
        )
        self.audit.record(
            AuditEvent.ASSOCIATION_ACCEPTED,
            calling_ae=calling,
            called_ae=_called(event),
            peer_address=address,
            peer_port=event.assoc.requestor.port,
            **tls,
        )

    def _on_closed(self, event: Event) -> None:
        """One audit event per study the association delivered (released, aborted or dropped)."""
        with self._received_lock:
            received = self._received.pop(event.assoc, None)
        if received is None:
            return
        calling, address = _requestor(event)
        received.record(self.audit, calling_ae=calling, peer_address=address)

    @staticmethod
    def _reject(event: Event, reason: int) -> None:
        event.assoc.acse.send_reject(REJECTED_PERMANENT, SERVICE_USER, reason)
        # As pynetdicom's own rejections do: let the DUL flush the A-ASSOCIATE-RJ before
        # the socket is shut down, or the peer only sees a dropped connection.
        event.assoc.kill()

    def _on_echo(self, event: Event) -> int:
        return SUCCESS

    def _on_store(self, event: Event) -> int:
        request = event.request
        assert isinstance(request, C_STORE)  # pynetdicom calls this for C-STORE only
        calling, address = _requestor(event)
        sop_uid = str(request.AffectedSOPInstanceUID)
        instance = WireInstance(
            dataset=request.DataSet or BytesIO(),
            sop_class_uid=str(request.AffectedSOPClassUID),
            sop_instance_uid=sop_uid,
            transfer_syntax=event.context.transfer_syntax,
            calling_ae=calling,
        )
        originator = (request.MoveOriginatorApplicationEntityTitle or "").strip()
        receiver = self.move_receiver if originator == self.settings.ae_title else None
        if receiver is not None:
            outcome = receiver(instance)
            where = f"C-MOVE'd {sop_uid} from {calling}"
        else:
            outcome = self.ingest.accept_received(instance)
            where = f"C-STORE of {sop_uid} from {calling} at {address}"
        if isinstance(outcome, Refused):
            outcome.report(log, where)
            return outcome.status
        self._note_received(event, outcome, moved=receiver is not None)
        if outcome.sop_instance_uid != sop_uid:
            log.warning(
                "C-STORE from %s: AffectedSOPInstanceUID %s differs from the data set's %s",
                calling,
                sop_uid,
                outcome.sop_instance_uid,
            )
        log.debug("filed %s (%s) from %s", outcome.sop_instance_uid, outcome.filed, calling)
        return SUCCESS

    def _note_received(self, event: Event, stored: Stored, *, moved: bool) -> None:
        with self._received_lock:
            received = self._received.setdefault(event.assoc, ReceivedStudies())
            # The audit trail calls what our own C-MOVEs fetched priors.
            received.add(stored, prior=moved)
