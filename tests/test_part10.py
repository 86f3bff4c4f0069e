"""The hand-packed file meta group equals pydicom's own encoding, byte for byte."""

from __future__ import annotations

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import JPEG2000Lossless, generate_uid
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dsutils import encode_file_meta

from node.store.part10 import PREAMBLE, part10_prefix


@pytest.mark.parametrize("source_ae", [None, "CT01", "ODDLEN"])
@pytest.mark.parametrize("sop_uid", ["1.2.3.4", "1.2.3.45", generate_uid()])
def test_prefix_matches_pydicom(sop_uid: str, source_ae: str | None) -> None:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = JPEG2000Lossless
    meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = PYNETDICOM_IMPLEMENTATION_VERSION
    if source_ae:
        meta.SourceApplicationEntityTitle = source_ae
    expected = PREAMBLE + encode_file_meta(meta)
    got = part10_prefix("1.2.840.10008.5.1.4.1.1.2", sop_uid, str(JPEG2000Lossless), source_ae)
    assert got == expected
