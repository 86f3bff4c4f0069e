"""Filing a received instance: parse the header, write the file durably, index it.

The spool is the source of truth: a file is fsynced before it is indexed, and at
start-up every spooled file missing from the index is indexed (``reconcile``), so an
instance that was acknowledged survives a crash at any point.
"""

from __future__ import annotations

import logging
from io import BytesIO
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from node.store.index import Filed, Index
from node.store.meta import InstanceMeta, InvalidInstance, UnreadableData
from node.store.spool import Spool

log = logging.getLogger(__name__)


def read_header(source: bytes | Path) -> Dataset:
    """The data set without pixel data; InvalidInstance when it is not DICOM."""
    try:
        handle = BytesIO(source) if isinstance(source, bytes) else source
        return dcmread(handle, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError) as e:
        raise UnreadableData(f"not a readable DICOM data set ({type(e).__name__}: {e})") from e


class Ingest:
    def __init__(self, spool: Spool, index: Index, *, reopen_on_late: bool) -> None:
        self.spool = spool
        self.index = index
        self.reopen_on_late = reopen_on_late

    def accept(self, part10: bytes, *, calling_ae: str | None) -> tuple[InstanceMeta, Filed]:
        """File a DICOM Part 10 byte stream; raises InvalidInstance for bad input."""
        header = read_header(part10)
        meta = InstanceMeta.from_dataset(
            header,
            transfer_syntax_uid=str(header.file_meta.get("TransferSyntaxUID", "")),
            calling_ae=calling_ae,
        )
        path = self.spool.path_for(meta.study_uid, meta.series_uid, meta.sop_uid)
        self.spool.write(path, part10)
        reopen = self.reopen_on_late and not meta.is_own_result
        filed = self.index.file_instance(meta, str(path), reopen=reopen)
        return meta, filed

    def reconcile(self) -> int:
        """Index spooled files the index lacks (a crash between fsync and commit)."""
        removed = self.spool.remove_partial_files()
        if removed:
            log.info("removed %d partial files left by an interrupted write", removed)
        known = self.index.known_sop_uids()
        added = 0
        for path in self.spool.files():
            try:
                header = read_header(path)
                meta = InstanceMeta.from_dataset(
                    header,
                    transfer_syntax_uid=str(header.file_meta.get("TransferSyntaxUID", "")),
                    calling_ae=None,
                )
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
