"""Filing a received instance: parse the header, write the file durably, index it.

The spool is the source of truth: a file is fsynced before it is indexed, and at
start-up every spooled file missing from the index is indexed (``reconcile``), so an
instance that was acknowledged survives a crash at any point.

Every way in (C-STORE, STOW-RS, a study pulled from the PACS) gets one answer per instance,
an :data:`node.store.outcome.IngestOutcome`, never an exception: stored (new or a duplicate)
or refused with the reason, which each transport puts into its own wire form.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID
from sqlalchemy.exc import SQLAlchemyError

from node import metrics
from node.store.index import Filed, Index
from node.store.meta import INDEXED_TAGS, InstanceMeta, InvalidInstance, UnreadableData
from node.store.outcome import IngestOutcome, Refusal, Refused, Stored
from node.store.part10 import part10_prefix
from node.store.spool import Spool

log = logging.getLogger(__name__)

# Pixel Data and everything after it (Float/Double Float Pixel Data share the group).
PIXEL_DATA_GROUP_START = Tag(0x7FE0, 0x0008)


def _before_pixel_data(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return bool(tag >= PIXEL_DATA_GROUP_START)


def read_wire_header(dataset: BytesIO, transfer_syntax: UID) -> Dataset:
    """The header of a data set as received (no file meta, no pixel data), read in place."""
    if transfer_syntax.is_deflated:
        # Deflate needs the whole stream inflated; rare enough to take the slow path.
        prefix = part10_prefix("1.2", "1.2", transfer_syntax, None)
        return read_header(prefix + dataset.getvalue())
    dataset.seek(0)
    try:
        return read_dataset(
            dataset,
            transfer_syntax.is_implicit_VR,
            transfer_syntax.is_little_endian,
            stop_when=_before_pixel_data,
            specific_tags=INDEXED_TAGS,
        )
    except (EOFError, ValueError, KeyError, TypeError, OSError, NotImplementedError) as e:
        raise UnreadableData(f"not a readable DICOM data set ({type(e).__name__}: {e})") from e
    finally:
        dataset.seek(0)


def read_header(source: bytes | Path) -> Dataset:
    """The data set without pixel data; InvalidInstance when it is not DICOM."""
    try:
        handle = BytesIO(source) if isinstance(source, bytes) else source
        return dcmread(handle, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError) as e:
        raise UnreadableData(f"not a readable DICOM data set ({type(e).__name__}: {e})") from e


class _NotFiled(RuntimeError):
    """A good instance that can't be stored now (disk full, index unreachable); the message
    is one line naming the cause."""


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _part10_meta(header: Dataset, calling_ae: str | None) -> InstanceMeta:
    """The index's view of a Part 10 file's header; InvalidInstance names what is wrong."""
    transfer_syntax = str(header.file_meta.get("TransferSyntaxUID", ""))
    return InstanceMeta.from_dataset(
        header, transfer_syntax_uid=transfer_syntax, calling_ae=calling_ae
    )


def _refused(error: Exception, sop_class_uid: str, sop_uid: str) -> Refused:
    """The refusal for what went wrong while reading or filing an instance."""
    uids = (sop_class_uid or None, sop_uid or None)
    if isinstance(error, UnreadableData):
        return Refused(Refusal.NOT_DICOM, str(error), *uids)
    if isinstance(error, InvalidInstance):
        return Refused(Refusal.INVALID, str(error), *uids)
    if isinstance(error, _NotFiled):
        return Refused(Refusal.NOT_FILED, str(error), *uids)
    # A bug or a library's surprise: the sender retries, the traceback goes to the log.
    return Refused(Refusal.FAILED, f"{type(error).__name__}: {error}", *uids, error)


@dataclass(frozen=True)
class WireInstance:
    """A C-STORE data set as it came off the wire (no file meta), with what the request says."""

    dataset: BytesIO
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: UID
    calling_ae: str | None


# What the SCP hands a C-STORE data set to: Ingest.accept_received, or the receiver of
# the instances a C-MOVE of our own asked for.
Receiver = Callable[[WireInstance], IngestOutcome]


class Ingest:
    """Files instances; every method that takes one answers with an IngestOutcome and never
    raises for it: a refused instance leaves nothing behind."""

    def __init__(self, spool: Spool, index: Index, *, reopen_on_late: bool) -> None:
        self.spool = spool
        self.index = index
        self.reopen_on_late = reopen_on_late
        # Told the study UID of each instance new to the index (the completeness watcher).
        self.on_new_instance: Callable[[str], None] | None = None

    def accept(
        self, part10: bytes, *, calling_ae: str | None, into_study: str | None = None
    ) -> IngestOutcome:
        """File a DICOM Part 10 byte stream; with ``into_study``, only an instance of it."""
        sop_class = sop_uid = ""
        try:
            header = read_header(part10)
            sop_class = str(header.get("SOPClassUID", ""))
            sop_uid = str(header.get("SOPInstanceUID", ""))
            study = str(header.get("StudyInstanceUID", ""))
            if into_study is not None and study != into_study:
                return Refused(
                    Refusal.WRONG_STUDY,
                    f"its study is {study or '(none)'}, not the request's {into_study}",
                    sop_class or None,
                    sop_uid or None,
                )
            meta = _part10_meta(header, calling_ae)
            return Stored.of(meta, self._file(meta, part10))
        except Exception as e:
            return _refused(e, sop_class, sop_uid)

    def accept_received(self, instance: WireInstance) -> IngestOutcome:
        """File a C-STORE data set as it came off the wire, without copying its pixel data."""
        try:
            header = read_wire_header(instance.dataset, instance.transfer_syntax)
            meta = InstanceMeta.from_dataset(
                header,
                transfer_syntax_uid=instance.transfer_syntax,
                calling_ae=instance.calling_ae,
            )
            prefix = part10_prefix(
                instance.sop_class_uid,
                instance.sop_instance_uid,
                instance.transfer_syntax,
                instance.calling_ae,
            )
            return Stored.of(meta, self._file(meta, prefix, instance.dataset.getbuffer()))
        except Exception as e:
            return _refused(e, instance.sop_class_uid, instance.sop_instance_uid)

    def _file(self, meta: InstanceMeta, *chunks: bytes | memoryview) -> Filed:
        """Spool, then index; _NotFiled (with nothing new left on disk) when either fails."""
        path = self.spool.path_for(meta.study_uid, meta.series_uid, meta.sop_uid)
        existed = path.exists()  # an earlier, acknowledged copy must survive a failure now
        try:
            self.spool.write(path, *chunks)
        except OSError as e:
            raise _NotFiled(f"the spool can't take it: {e.strerror or e}") from e
        reopen = self.reopen_on_late and not meta.is_own_result
        try:
            filed = self.index.file_instance(meta, str(path), reopen=reopen)
        except SQLAlchemyError as e:
            if not existed:
                path.unlink(missing_ok=True)
            raise _NotFiled(f"the index can't take it: {_first_line(e)}") from e
        metrics.instance_received(meta.modality)
        if filed is Filed.NEW and self.on_new_instance is not None:
            self.on_new_instance(meta.study_uid)
        return filed

    def reconcile(self) -> int:
        """Index spooled files the index lacks (a crash between fsync and commit)."""
        removed = self.spool.remove_partial_files()
        if removed:
            log.info("removed %d partial files left by an interrupted write", removed)
        known = self.index.known_sop_uids()
        added = 0
        for path in self.spool.files():
            try:
                meta = _part10_meta(read_header(path), None)
            except InvalidInstance as e:
                log.error("spooled file %s can't be indexed: %s", path, e)
                continue
            if meta.sop_uid in known:
                continue
            self.index.file_instance(meta, str(path), reopen=self.reopen_on_late)
            added += 1
        if added:
            log.warning("indexed %d spooled instances the index had lost", added)
        return added
