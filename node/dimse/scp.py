"""The DICOM SCP: C-ECHO and C-STORE for every storage SOP class, as pynetdicom intends.

Each service has one intervention handler that returns a status; every failure is
turned into a DICOM status here, at the boundary, and logged once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from node.config import NodeSettings, Peer
from node.priors.cache import PriorCache, write_instance
from node.store.ingest import Ingest, read_wire_header
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


def peer_allowed(peers: Sequence[Peer], ae_title: str, host: str) -> bool:
    if not peers:
        return True
    return any(p.ae_title == ae_title and (p.host is None or p.host == host) for p in peers)


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
        self._server: ThreadedAssociationServer | None = None

    def start(self, host: str = "0.0.0.0") -> None:
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        self._server = self.ae.start_server(
            (host, self.settings.port), block=False, evt_handlers=handlers
        )
        log.info("DICOM SCP %s listening on port %d", self.settings.ae_title, self.settings.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

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
            self._reject(event, CALLED_AE_NOT_RECOGNIZED)
            return
        if not peer_allowed(self.settings.allowed_peers, calling, address):
            log.warning(
                "refused association from %s at %s: not in node.allowed_peers", calling, address
            )
            self._reject(event, CALLING_AE_NOT_RECOGNIZED)

    def _file_prior(self, event: Any, sop_uid: str, calling: str) -> int:
        assert self.prior_cache is not None
        request = event.request
        transfer_syntax = event.context.transfer_syntax
        try:
            header = read_wire_header(request.DataSet, transfer_syntax)
        except InvalidInstance as e:
            log.error("prior instance %s from %s refused: %s", sop_uid, calling, e)
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
            return DATASET_DOES_NOT_MATCH_SOP_CLASS
        prefix = part10_prefix(str(request.AffectedSOPClassUID), sop_uid, transfer_syntax, calling)
        write_instance(directory, sop_uid, prefix + request.DataSet.getvalue())
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
            return CANNOT_UNDERSTAND if unreadable else DATASET_DOES_NOT_MATCH_SOP_CLASS
        except Exception:
            # Disk full, database down: the sender keeps the instance and retries later.
            log.exception(
                "C-STORE of %s from %s at %s could not be filed", sop_uid, calling, address
            )
            return OUT_OF_RESOURCES
        if meta.sop_uid != sop_uid:
            log.warning(
                "C-STORE from %s: AffectedSOPInstanceUID %s differs from the data set's %s",
                calling,
                sop_uid,
                meta.sop_uid,
            )
        log.debug("filed %s (%s) from %s", meta.sop_uid, filed, calling)
        return SUCCESS
