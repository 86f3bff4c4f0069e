"""One association with the PACS as SCU: C-FIND, C-MOVE, C-GET and C-STORE, checked.

Every DIMSE request the node makes goes through ``associate``: one place sets the
timeouts and the presentation contexts, checks that the PACS accepted the service, and
reads the statuses. So every failure is the same kind whatever asked: a PACS that is
down, refuses the association or the service, drops the connection, or answers a
failure status raises ``PacsUnavailable`` (``DeliveryRefused`` for a refused C-STORE),
the message naming the PACS, the service and the study. Nothing returns ``None`` for a
connection that dropped.

Queries and retrievals use the Study Root information model, which every PACS the node
meets offers (Orthanc, dcmqrscp, the commercial archives).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

from pydicom import Dataset
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import code_to_category

from node.config import PacsSettings
from node.pacs_errors import DeliveryRefused, PacsUnavailable, describe_pacs

__all__ = ["InstanceSink", "PacsAssociation", "Service", "associate"]

log = logging.getLogger(__name__)

Service = Literal["C-FIND", "C-MOVE", "C-GET", "C-STORE"]

# Called with (SOP Instance UID, the instance as Part 10 bytes) for each instance a C-GET
# brings back; an OSError it raises is answered "out of resources" to the PACS.
InstanceSink = Callable[[str, bytes], object]

_MODELS: dict[Service, str] = {
    "C-FIND": StudyRootQueryRetrieveInformationModelFind,
    "C-MOVE": StudyRootQueryRetrieveInformationModelMove,
    "C-GET": StudyRootQueryRetrieveInformationModelGet,
}
_PENDING = frozenset({0xFF00, 0xFF01})
_STORE_SUCCESS = 0x0000
_STORE_OUT_OF_RESOURCES = 0xA700
# pynetdicom proposes at most 128 presentation contexts in one association.
_MAX_CONTEXTS = 128
# A PACS that doesn't answer the TCP connect at all is down; no need to wait the full
# DIMSE timeout for that.
_MAX_CONNECT_SECONDS = 10.0


@contextmanager
def associate(
    pacs: PacsSettings,
    calling_ae: str,
    service: Service,
    *,
    timeout: float | None = None,
    study_uid: str | None = None,
    storage_classes: Sequence[str] = (),
    file_instance: InstanceSink | None = None,
) -> Iterator[PacsAssociation]:
    """An association with ``pacs`` for ``service``, released on leaving (a retrieval that
    overran its deadline has aborted it already).

    ``timeout`` bounds each network step (default ``pacs.timeout_seconds``); ``study_uid``
    only names the study in the errors. ``storage_classes`` are the SOP classes a C-STORE
    sends (the common storage classes are proposed besides, so a PACS lacking one still
    associates) or a C-GET takes back, each of which ``file_instance`` receives.

    Raises
    ------
    ValueError
        A C-GET without ``file_instance``.
    PacsUnavailable
        No association, or the PACS doesn't accept the query/retrieve service.
    """
    if service == "C-GET" and file_instance is None:
        raise ValueError("a C-GET needs file_instance for the instances it brings back")
    where = describe_pacs(pacs, service)
    ae = _application_entity(calling_ae, pacs.timeout_seconds if timeout is None else timeout)
    handlers: list[evt.EventHandlerType] = []
    roles: list[SCP_SCU_RoleSelectionNegotiation] = []
    if service == "C-STORE":
        _request_storage(ae, storage_classes)
    else:
        ae.add_requested_context(_MODELS[service])
    if service == "C-GET":
        assert file_instance is not None
        # The PACS sends the instances back as C-STOREs on this association: we are their SCP.
        for sop_class in storage_classes:
            ae.add_requested_context(sop_class, ALL_TRANSFER_SYNTAXES)
        roles = [build_role(sop_class, scp_role=True) for sop_class in storage_classes]
        handlers.append((evt.EVT_C_STORE, _store_handler(file_instance, where, study_uid)))
    assoc = ae.associate(
        pacs.host,
        pacs.port,
        ae_title=pacs.ae_title,
        ext_neg=list(roles),
        evt_handlers=handlers,
    )
    if not assoc.is_established:
        about = f" (study {study_uid})" if study_uid else ""
        raise PacsUnavailable(f"{where}: association was not accepted{about}")
    try:
        peer = PacsAssociation(assoc, service, where)
        if service != "C-STORE" and not peer.accepts(_MODELS[service]):
            # A PACS that associates but doesn't offer the service would otherwise fail
            # deep inside pynetdicom.
            raise PacsUnavailable(f"{where}: the PACS does not accept Study Root {service}")
        yield peer
    finally:
        if assoc.is_established:
            assoc.release()


class PacsAssociation:
    """An established association; each request checks the statuses it gets back."""

    def __init__(self, assoc: Association, service: Service, where: str) -> None:
        self._assoc = assoc
        self.service = service
        self.where = where  # describe_pacs of the PACS and service, for messages

    def accepts(self, sop_class: str) -> bool:
        """Whether the PACS accepted a presentation context for ``sop_class``."""
        return any(cx.abstract_syntax == sop_class for cx in self._assoc.accepted_contexts)

    def find(self, query: Dataset) -> list[Dataset]:
        """Every identifier a C-FIND of ``query`` matches, once the PACS reports success."""
        answers: list[Dataset] = []
        for status, identifier in self._assoc.send_c_find(query, _MODELS["C-FIND"]):
            code = _status_code(status)
            if code is None:
                raise PacsUnavailable(
                    f"{self.where}: no answer to {_asked(query)} (connection lost or timed out)"
                )
            if code in _PENDING:
                if identifier is not None:
                    answers.append(identifier)
            elif code_to_category(code) != "Success":
                raise PacsUnavailable(
                    f"{self.where}: C-FIND failed with status 0x{code:04X} ({_asked(query)})"
                )
        return answers

    def move(self, query: Dataset, destination: str, *, within: float) -> int | None:
        """C-MOVE what ``query`` names to ``destination``; the completed sub-operations
        (None when the PACS doesn't count them). See ``_retrieved`` for the checks."""
        responses = self._assoc.send_c_move(query, destination, _MODELS["C-MOVE"])
        return self._retrieved(responses, query, within)

    def get(self, query: Dataset, *, within: float) -> int | None:
        """C-GET what ``query`` names (the instances go to ``file_instance``); the completed
        sub-operations (None when the PACS doesn't count them)."""
        return self._retrieved(self._assoc.send_c_get(query, _MODELS["C-GET"]), query, within)

    def store(self, ds: Dataset) -> None:
        """C-STORE ``ds``; DeliveryRefused unless the PACS reports success or a warning."""
        study = f"of study {ds.StudyInstanceUID}"
        if not self.accepts(str(ds.SOPClassUID)):
            raise DeliveryRefused(
                f"{self.where}: the PACS does not accept {UID(str(ds.SOPClassUID)).name} "
                f"({ds.SOPInstanceUID} {study})"
            )
        code = _status_code(self._assoc.send_c_store(ds))
        if code is None or code_to_category(code) not in ("Success", "Warning"):
            raise DeliveryRefused(
                f"{self.where} refused {ds.SOPInstanceUID} {study}: status "
                + (f"0x{code:04X}" if code is not None else "none (connection lost)")
            )

    def _retrieved(
        self, responses: Iterator[tuple[Dataset, Dataset | None]], query: Dataset, within: float
    ) -> int | None:
        """Walk a C-GET/C-MOVE's responses under a deadline; the completed sub-operations.

        The DIMSE timeout only bounds the gap between two responses; a PACS trickling
        instances could run for ever, so a timer aborts the association at the deadline.
        A final status other than success, or any failed sub-operation, raises.
        """
        study_uid = str(query.get("StudyInstanceUID", ""))
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            self._assoc.abort()

        timer = threading.Timer(within, expire)
        timer.daemon = True
        timer.start()
        final: Dataset | None = None
        try:
            for status, _identifier in responses:
                code = _status_code(status)
                if code is None:
                    break  # connection lost, aborted or timed out: judged below
                if code not in _PENDING:
                    final = status
        finally:
            timer.cancel()
        if expired.is_set():
            raise PacsUnavailable(
                f"{self.where}: study {study_uid} not retrieved within {within:g} s"
            )
        if final is None:
            raise PacsUnavailable(
                f"{self.where}: study {study_uid}: no final response (connection lost or "
                "timed out)"
            )
        code = int(final.Status)
        failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
        if code_to_category(code) != "Success" or failed:
            raise PacsUnavailable(
                f"{self.where}: study {study_uid}: status 0x{code:04X}, "
                f"{failed} failed sub-operation(s)"
            )
        completed = final.get("NumberOfCompletedSuboperations")
        return int(completed) if completed not in (None, "") else None


def _application_entity(calling_ae: str, timeout: float) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = min(timeout, _MAX_CONNECT_SECONDS)
    return ae


def _request_storage(ae: AE, sop_classes: Sequence[str]) -> None:
    wanted = sorted(set(sop_classes))
    for sop_class in wanted:
        ae.add_requested_context(sop_class)
    # The common storage contexts too, so a PACS that lacks one SOP class still associates.
    for context in StoragePresentationContexts[: _MAX_CONTEXTS - len(wanted)]:
        if context.abstract_syntax is not None and context.abstract_syntax not in wanted:
            ae.add_requested_context(context.abstract_syntax)


def _store_handler(
    file_instance: InstanceSink, where: str, study_uid: str | None
) -> Callable[[Event], int]:
    def on_store(event: Event) -> int:
        request = event.request
        assert isinstance(request, C_STORE)  # EVT_C_STORE only ever carries a C-STORE
        sop_uid = str(request.AffectedSOPInstanceUID)
        try:
            file_instance(sop_uid, event.encoded_dataset(include_meta=True))
        except OSError:
            log.exception(
                "%s: instance %s of study %s could not be filed", where, sop_uid, study_uid
            )
            return _STORE_OUT_OF_RESOURCES
        return _STORE_SUCCESS

    return on_store


def _status_code(status: Dataset | None) -> int | None:
    """The Status of a response; None when there was none (connection lost, timed out)."""
    if not status or "Status" not in status:
        return None
    return int(status.Status)


def _asked(query: Dataset) -> str:
    """The query, for messages: its level and study, never its patient keys."""
    level = str(query.get("QueryRetrieveLevel", "")).lower()
    study_uid = str(query.get("StudyInstanceUID", "") or "")
    return f"the {level} query" + (f" of study {study_uid}" if study_uid else "")
