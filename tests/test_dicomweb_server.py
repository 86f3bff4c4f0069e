"""The node as a DICOMweb server (QIDO-RS, WADO-RS) against real clients: dicomweb-client,
Orthanc's DICOMweb plugin, plain HTTP for the failure paths and CORS.

One node for the module, with a bearer token and one allowed CORS origin. It holds:
a chest radiograph the (tiny) model reports on, a 300-slice CT sent by C-STORE, a study of
compressed and multi-frame objects sent by STOW-RS (stored byte for byte as posted, so
"as stored" answers are compared with the posted bytes), and a two-instance study whose
file the tests delete behind the index's back.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import Dataset
from pydicom.encaps import get_frame
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from fixtures.series import make_cr_study, make_ct_series, source_path
from node.store.catalog import Catalog
from node.store.catalog_records import (
    Filters,
    NotInCatalog,
    Page,
    TextField,
    TextMatch,
    ValueRange,
)
from node.store.index import Index
from node.store.meta import InstanceMeta
from node.store.models import Job
from tests.conftest import instance_meta, node_config, storescu
from tests.peers import NodeProcess, Orthanc, wait_for

TOKEN_ENV = "MGN_DICOMWEB_TEST_TOKEN"
TOKEN = "dicomweb-test-token-7c1f"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VIEWER_ORIGIN = "http://viewer.example:3000"
CT_SLICES = 300
PATIENT_NAME = "Doe^Jane"


def _tag(keyword: str) -> str:
    return f"{pydicom.datadict.tag_for_keyword(keyword):08X}"


def _value(answer: dict[str, Any], keyword: str) -> Any:
    values = answer.get(_tag(keyword), {}).get("Value") or [None]
    return values[0]


@dataclass
class Sent:
    """One instance as sent: its UIDs, and the bytes when STOW-RS stored them as posted."""

    study_uid: str
    series_uid: str
    sop_uid: str
    path: Path
    posted: bytes | None = None


@dataclass
class Served:
    node: NodeProcess
    url: str
    data_dir: Path
    cr: Sent
    ct: list[Sent]
    compressed: dict[str, Sent]  # by source file name
    fragile: list[Sent]

    @property
    def root(self) -> str:
        return f"{self.url}/dicom-web"

    def client(self) -> DICOMwebClient:
        return DICOMwebClient(url=self.root, headers=AUTH)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        headers = {**AUTH, **kwargs.pop("headers", {})}
        return requests.get(f"{self.root}{path}", headers=headers, timeout=60, **kwargs)


def _copy(source: str, out: Path, study_uid: str, *, patient: str, date: str, number: int) -> Sent:
    """A pydicom test file with new UIDs and identity, in its own transfer syntax."""
    ds = pydicom.dcmread(source_path(source))
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = patient
    ds.PatientID = "DW-COMP-1"
    ds.StudyDate = date
    ds.SeriesNumber = number
    ds.InstanceNumber = 1
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{number:02d}-{source}"
    ds.save_as(path, enforce_file_format=True)
    return Sent(study_uid, ds.SeriesInstanceUID, ds.SOPInstanceUID, path, path.read_bytes())


def _stow(url: str, files: list[Sent]) -> None:
    boundary = "dw-test-boundary"
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + (sent.posted or b"")
            + b"\r\n"
            for sent in files
        )
        + f"--{boundary}--\r\n".encode()
    )
    answer = requests.post(
        f"{url}/dicom-web/studies",
        data=body,
        headers={
            **AUTH,
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        },
        timeout=60,
    )
    assert answer.status_code == 200, answer.text


def _sent(path: Path) -> Sent:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return Sent(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), path)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, test_model: Path) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("dicomweb")
    config_path, config = node_config(
        workdir,
        test_model,
        node={
            "stable_seconds": 1,
            "http_token_env": TOKEN_ENV,
            "cors_origins": [VIEWER_ORIGIN],
        },
        # Only the chest radiograph is work: the other studies are just held.
        routing=[
            {
                "name": "chest radiograph",
                "match": {"modality": ["CR", "DX"], "body_part": ["CHEST"]},
                "task": "cxr-report",
            }
        ],
        localization={"findings": ["pneumothorax"], "max_findings": 1},
        priors={"enabled": False},
    )
    url = f"http://127.0.0.1:{config['node']['http_port']}"
    port = config["node"]["port"]
    inbox = workdir / "in"

    cr_path = make_cr_study(inbox / "cr", patient_id="DW-CR-1", study_date="20240315")
    ds = pydicom.dcmread(cr_path)
    ds.PatientName = PATIENT_NAME
    ds.StudyTime = "101500"
    ds.save_as(cr_path)
    ct_paths = make_ct_series(
        inbox / "ct", CT_SLICES, source="CT_small.dcm", patient_id="DW-CT-1", marker=False
    )
    for path in ct_paths:  # a study of another year, for date ranges
        ct = pydicom.dcmread(path)
        ct.StudyDate, ct.StudyTime = "20230610", "083000"
        ct.save_as(path)
    compressed_uid = generate_uid()
    compressed = {
        name: _copy(
            name,
            inbox / "comp",
            compressed_uid,
            patient="Compressed^Carl",
            date="20220101",
            number=n,
        )
        for n, name in enumerate(
            [
                "emri_small_jpeg_ls_lossless.dcm",  # 10 frames, JPEG-LS
                "emri_small_RLE.dcm",  # 10 frames, RLE
                "emri_small.dcm",  # 10 frames, native
                "693_J2KR.dcm",  # one 512² CT frame, JPEG 2000
                "SC_rgb_jpeg_dcmtk.dcm",  # colour, JPEG baseline
            ],
            start=1,
        )
    }
    fragile_uid = generate_uid()
    fragile = [
        _copy(
            "CT_small.dcm", inbox / "fragile", fragile_uid, patient="F^F", date="20200101", number=n
        )
        for n in (1, 2)
    ]

    with pytest.MonkeyPatch.context() as env:
        env.setenv(TOKEN_ENV, TOKEN)  # NodeProcess passes its environment on to the node
        node = NodeProcess(config_path, workdir / "node.log", port).start()
    try:
        sent = storescu(port, [cr_path, *ct_paths])
        assert sent.returncode == 0, sent.stderr
        _stow(url, list(compressed.values()) + fragile)
        yield Served(
            node=node,
            url=url,
            data_dir=Path(config["node"]["data_dir"]),
            cr=_sent(cr_path),
            ct=[_sent(p) for p in ct_paths],
            compressed=compressed,
            fragile=fragile,
        )
    finally:
        node.stop()


def _multipart(response: requests.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related answer."""
    content_type = response.headers["Content-Type"]
    assert content_type.startswith("multipart/related"), content_type
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    parts = []
    for chunk in response.content.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.partition(b"\r\n\r\n")
        headers = dict(
            line.split(": ", 1) for line in head.decode().strip().splitlines() if ": " in line
        )
        parts.append((headers["Content-Type"], body[: -len(b"\r\n")]))
    return parts


# -- QIDO-RS ---------------------------------------------------------------------------


def test_study_search_matches_pages_and_answers_what_a_study_list_needs(served: Served) -> None:
    client = served.client()
    everything = client.search_for_studies()
    uids = {_value(s, "StudyInstanceUID") for s in everything}
    assert uids == {
        served.cr.study_uid,
        served.ct[0].study_uid,
        served.compressed["emri_small.dcm"].study_uid,
        served.fragile[0].study_uid,
    }

    (cr,) = client.search_for_studies(search_filters={"PatientName": "doe*"})  # any case
    assert _value(cr, "PatientName") == {"Alphabetic": PATIENT_NAME}
    assert _value(cr, "StudyInstanceUID") == served.cr.study_uid
    for keyword in (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ReferringPhysicianName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyID",
        "StudyDescription",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ):
        assert _tag(keyword) in cr, keyword
    assert _value(cr, "RetrieveURL") == f"{served.root}/studies/{served.cr.study_uid}"
    assert client.search_for_studies(search_filters={"PatientName": "D?e^J*"}) != []
    assert client.search_for_studies(search_filters={"PatientName": "Doe"}) == []  # whole value

    (ct,) = client.search_for_studies(search_filters={"StudyDate": "20230101-20231231"})
    assert _value(ct, "StudyInstanceUID") == served.ct[0].study_uid
    assert _value(ct, "ModalitiesInStudy") == "CT"
    assert _value(ct, "NumberOfStudyRelatedSeries") == 1
    assert _value(ct, "NumberOfStudyRelatedInstances") == CT_SLICES
    by_tag = client.search_for_studies(search_filters={"00080061": "CR"})  # ModalitiesInStudy
    assert [_value(s, "StudyInstanceUID") for s in by_tag] == [served.cr.study_uid]
    older = client.search_for_studies(search_filters={"StudyDate": "-20221231"})
    assert {_value(s, "StudyInstanceUID") for s in older} == {
        served.compressed["emri_small.dcm"].study_uid,
        served.fragile[0].study_uid,
    }
    newer = client.search_for_studies(search_filters={"StudyDate": "20240101-"})
    assert [_value(s, "StudyInstanceUID") for s in newer] == [served.cr.study_uid]
    morning = client.search_for_studies(
        search_filters={"StudyDate": "20230610", "StudyTime": "08-0830"}
    )
    assert [_value(s, "StudyInstanceUID") for s in morning] == [served.ct[0].study_uid]
    assert client.search_for_studies(search_filters={"AccessionNumber": "NO-SUCH"}) == []

    # limit/offset page through the same order; includefield narrows nothing away
    pages = [client.search_for_studies(limit=2, offset=offset) for offset in (0, 2, 4)]
    assert [len(p) for p in pages] == [2, 2, 0]
    paged = [_value(s, "StudyInstanceUID") for page in pages for s in page]
    assert paged == [_value(s, "StudyInstanceUID") for s in everything]
    (with_fields,) = client.search_for_studies(
        search_filters={"StudyInstanceUID": served.cr.study_uid},
        fields=["StudyDescription", "00080090"],
    )
    assert _tag("StudyDescription") in with_fields

    # a list of UIDs, with a backslash as DICOM writes it
    listed = served.get(
        "/studies",
        params={"StudyInstanceUID": f"{served.cr.study_uid}\\{served.ct[0].study_uid}"},
    )
    assert listed.status_code == 200
    assert len(listed.json()) == 2


def test_series_and_instance_searches(served: Served) -> None:
    client = served.client()
    comp = served.compressed["emri_small.dcm"].study_uid
    series = client.search_for_series(study_instance_uid=comp)
    assert len(series) == 5
    assert {_value(s, "Modality") for s in series} == {"MR", "CT", "OT"}
    assert all(_value(s, "NumberOfSeriesRelatedInstances") == 1 for s in series)
    assert [_value(s, "SeriesNumber") for s in series] == [1, 2, 3, 4, 5]
    (ct_series,) = client.search_for_series(
        study_instance_uid=comp, search_filters={"Modality": "CT"}
    )
    assert _value(ct_series, "SeriesInstanceUID") == served.compressed["693_J2KR.dcm"].series_uid

    # across all studies, a series carries its study's attributes
    everywhere = client.search_for_series(search_filters={"SeriesNumber": "4"})
    assert [_value(s, "StudyInstanceUID") for s in everywhere] == [comp]
    assert _value(everywhere[0], "PatientName") == {"Alphabetic": "Compressed^Carl"}

    ct = served.ct
    instances = client.search_for_instances(
        study_instance_uid=ct[0].study_uid, series_instance_uid=ct[0].series_uid, limit=500
    )
    assert len(instances) == CT_SLICES
    numbers = [_value(i, "InstanceNumber") for i in instances]
    assert numbers == sorted(numbers)
    (one,) = client.search_for_instances(
        study_instance_uid=ct[0].study_uid, search_filters={"InstanceNumber": "7"}
    )
    assert _value(one, "Rows") == 128 and _value(one, "Columns") == 128
    assert _value(one, "AvailableTransferSyntaxUID") == ExplicitVRLittleEndian
    multiframe = client.search_for_instances(
        search_filters={"SOPInstanceUID": served.compressed["emri_small_RLE.dcm"].sop_uid}
    )
    assert _value(multiframe[0], "NumberOfFrames") == 10
    assert _value(multiframe[0], "StudyInstanceUID") == comp  # unscoped: study attributes too


# -- WADO-RS: instances and metadata -----------------------------------------------------


def test_retrieve_gives_the_stored_files_as_they_are(served: Served) -> None:
    client = served.client()
    comp = served.compressed
    study_uid = comp["emri_small.dcm"].study_uid
    raw = served.get(
        f"/studies/{study_uid}", headers={"Accept": 'multipart/related; type="application/dicom"'}
    )
    assert raw.status_code == 200
    parts = _multipart(raw)
    assert sorted(body for _, body in parts) == sorted(s.posted or b"" for s in comp.values())
    j2k = comp["693_J2KR.dcm"]
    j2k_part = next(c for c, body in parts if body == j2k.posted)
    assert j2k_part == "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.90"

    instance = client.retrieve_instance(j2k.study_uid, j2k.series_uid, j2k.sop_uid)
    assert instance.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    assert instance.SOPInstanceUID == j2k.sop_uid

    # C-STORE'd: the file the node spooled, byte for byte
    ct = served.ct[0]
    index = Index(f"sqlite:///{served.data_dir / 'index.sqlite'}")
    try:
        (held,) = Catalog(index.engine).retrievable(ct.study_uid, ct.series_uid, ct.sop_uid)
    finally:
        index.close()
    (part,) = _multipart(
        served.get(f"/studies/{ct.study_uid}/series/{ct.series_uid}/instances/{ct.sop_uid}")
    )
    assert part == (
        "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
        Path(held.path).read_bytes(),
    )

    series = client.retrieve_series(served.ct[0].study_uid, served.ct[0].series_uid)
    assert {ds.SOPInstanceUID for ds in series} == {s.sop_uid for s in served.ct}
    sent = {s.sop_uid: s.path for s in served.ct[:5]}
    for ds in series:
        if ds.SOPInstanceUID in sent:
            assert ds.PixelData == pydicom.dcmread(sent[ds.SOPInstanceUID]).PixelData

    study = client.retrieve_study(served.cr.study_uid)
    assert served.cr.sop_uid in {ds.SOPInstanceUID for ds in study}


def test_retrieve_transcodes_losslessly_when_asked(served: Served) -> None:
    client = served.client()
    for name in ("693_J2KR.dcm", "emri_small_jpeg_ls_lossless.dcm"):
        sent = served.compressed[name]
        native = client.retrieve_instance(
            sent.study_uid,
            sent.series_uid,
            sent.sop_uid,
            media_types=(("application/dicom", ExplicitVRLittleEndian),),
        )
        assert native.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert native.SOPInstanceUID == sent.sop_uid  # the same instance, decoded
        original = pydicom.dcmread(io.BytesIO(sent.posted or b""))
        assert np.array_equal(native.pixel_array, original.pixel_array)


def test_metadata_with_bulk_data_uris(served: Served) -> None:
    client = served.client()
    ct = served.ct[0]
    meta = client.retrieve_instance_metadata(ct.study_uid, ct.series_uid, ct.sop_uid)
    assert _value(meta, "SOPInstanceUID") == ct.sop_uid
    assert _value(meta, "PatientName") == {"Alphabetic": "MGN^DW-CT-1"}
    pixel = meta[_tag("PixelData")]
    assert "Value" not in pixel and "InlineBinary" not in pixel
    uri = pixel["BulkDataURI"]
    assert uri.startswith(f"{served.root}/studies/{ct.study_uid}/series/")
    (bulk,) = client.retrieve_bulkdata(uri)
    assert bulk == pydicom.dcmread(ct.path).PixelData

    j2k = served.compressed["693_J2KR.dcm"]
    (compressed_meta,) = client.retrieve_series_metadata(j2k.study_uid, j2k.series_uid)
    assert compressed_meta[_tag("PixelData")]["vr"] == "OB"
    assert _value(compressed_meta, "AvailableTransferSyntaxUID") == "1.2.840.10008.1.2.4.90"
    study_meta = client.retrieve_study_metadata(j2k.study_uid)
    assert len(study_meta) == 5
    # each one reads back into a data set
    assert Dataset.from_json(compressed_meta, lambda _uri: b"").Rows == 512


def test_metadata_of_a_300_slice_series(served: Served) -> None:
    ct = served.ct[0]
    answer = served.get(f"/studies/{ct.study_uid}/series/{ct.series_uid}/metadata")
    assert answer.status_code == 200
    items = answer.json()
    assert len(items) == CT_SLICES
    sent = {instance.sop_uid for instance in served.ct}
    assert {item["00080018"]["Value"][0] for item in items} == sent
    # Pixel data stays behind a BulkDataURI; no item carries it inline.
    assert all("BulkDataURI" in item["7FE00010"] for item in items)
    assert not any("InlineBinary" in item["7FE00010"] for item in items)


# -- WADO-RS: frames and rendered ---------------------------------------------------------


def test_frames_native_compressed_and_multiframe(served: Served) -> None:
    client = served.client()
    ct = served.ct[0]
    (native,) = client.retrieve_instance_frames(ct.study_uid, ct.series_uid, ct.sop_uid, [1])
    assert native == pydicom.dcmread(ct.path).PixelData

    jls = served.compressed["emri_small_jpeg_ls_lossless.dcm"]
    source = pydicom.dcmread(io.BytesIO(jls.posted or b""))
    frames = client.retrieve_instance_frames(
        jls.study_uid, jls.series_uid, jls.sop_uid, [2, 5], media_types=("image/jls",)
    )
    assert frames == [
        get_frame(source.PixelData, i, number_of_frames=10) for i in (1, 4)
    ]  # the stored JPEG-LS codestreams

    j2k = served.compressed["693_J2KR.dcm"]
    (decoded,) = client.retrieve_instance_frames(
        j2k.study_uid,
        j2k.series_uid,
        j2k.sop_uid,
        [1],
        media_types=("application/octet-stream",),
    )
    original = pydicom.dcmread(io.BytesIO(j2k.posted or b"")).pixel_array
    assert np.array_equal(np.frombuffer(decoded, original.dtype).reshape(original.shape), original)

    # as stored, whatever it is (what OHIF's image loader asks for): media type per part
    rle = served.compressed["emri_small_RLE.dcm"]
    answer = served.get(
        f"/studies/{rle.study_uid}/series/{rle.series_uid}/instances/{rle.sop_uid}/frames/1,10",
        headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"},
    )
    assert answer.status_code == 200
    parts = _multipart(answer)
    assert [c for c, _ in parts] == ["image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5"] * 2
    rle_source = pydicom.dcmread(io.BytesIO(rle.posted or b""))
    assert parts[1][1] == get_frame(rle_source.PixelData, 9, number_of_frames=10)

    native_mf = served.compressed["emri_small.dcm"]
    frame3 = client.retrieve_instance_frames(
        native_mf.study_uid, native_mf.series_uid, native_mf.sop_uid, [3]
    )[0]
    expected = pydicom.dcmread(io.BytesIO(native_mf.posted or b"")).pixel_array[2]
    assert np.array_equal(np.frombuffer(frame3, expected.dtype).reshape(expected.shape), expected)


def test_rendered_and_thumbnail_pictures(served: Served) -> None:
    client = served.client()
    cr = served.cr
    png = client.retrieve_instance_rendered(
        cr.study_uid,
        cr.series_uid,
        cr.sop_uid,
        media_types=("image/png",),
        params={"viewport": "256,256"},
    )
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG"
    # RG1 is 1955 rows by 1841 columns: fitted into 256² it is 256 tall
    assert picture.size == (round(1841 * 256 / 1955), 256)
    # MONOCHROME1: the highest stored values are shown darkest
    grey = np.asarray(picture.convert("L"), dtype=np.float64)
    stored = pydicom.dcmread(cr.path).pixel_array.astype(np.float32)
    small = np.asarray(Image.fromarray(stored).resize(picture.size), dtype=np.float64)
    assert np.corrcoef(grey.ravel(), small.ravel())[0, 1] < -0.5
    jpeg = client.retrieve_instance_rendered(cr.study_uid, cr.series_uid, cr.sop_uid)
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"

    ct = served.ct[0]
    windowed = served.get(
        f"/studies/{ct.study_uid}/series/{ct.series_uid}/instances/{ct.sop_uid}/rendered",
        params={"window": "40,80,linear", "viewport": "64,64"},
        headers={"Accept": "image/png"},
    )
    assert windowed.status_code == 200
    wide = served.get(
        f"/studies/{ct.study_uid}/series/{ct.series_uid}/instances/{ct.sop_uid}/rendered",
        params={"window": "40,4000", "viewport": "64,64"},
        headers={"Accept": "image/png"},
    )
    narrow_pixels = np.asarray(Image.open(io.BytesIO(windowed.content)))
    wide_pixels = np.asarray(Image.open(io.BytesIO(wide.content)))
    assert narrow_pixels.shape == wide_pixels.shape == (64, 64)
    assert narrow_pixels.std() > wide_pixels.std()  # a narrow window spreads the grey levels

    mf = served.compressed["emri_small_jpeg_ls_lossless.dcm"]
    frame = client.retrieve_instance_frames_rendered(
        mf.study_uid, mf.series_uid, mf.sop_uid, [4], media_types=("image/png",)
    )
    assert Image.open(io.BytesIO(frame)).size == (64, 64)

    thumbnail = served.get(
        f"/studies/{cr.study_uid}/series/{cr.series_uid}/thumbnail",
        params={"viewport": "100,100"},
    )
    assert thumbnail.status_code == 200
    assert thumbnail.headers["Content-Type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumbnail.content)).size) == 100
    study_thumb = served.get(f"/studies/{served.compressed['emri_small.dcm'].study_uid}/thumbnail")
    assert study_thumb.status_code == 200
    colour = served.compressed["SC_rgb_jpeg_dcmtk.dcm"]
    rgb = served.get(
        f"/studies/{colour.study_uid}/series/{colour.series_uid}/instances/{colour.sop_uid}"
        "/thumbnail",
        headers={"Accept": "image/png"},
    )
    assert rgb.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(rgb.content)).mode == "RGB"


# -- the node's own results ---------------------------------------------------------------


def _wait_for_the_report(served: Served) -> None:
    def job_done() -> bool:
        studies = requests.get(f"{served.url}/api/studies", headers=AUTH, timeout=10).json()
        return any(
            job["state"] == "done"
            for study in studies
            if study["study_instance_uid"] == served.cr.study_uid
            for job in study["jobs"]
        )

    try:
        wait_for(job_done, timeout=240, what="the chest radiograph's job to finish")
    except TimeoutError:
        pytest.fail(f"the job did not finish; node log:\n{served.node.log()}")


def test_the_node_s_results_are_part_of_their_study(served: Served) -> None:
    cr = served.cr
    _wait_for_the_report(served)
    client = served.client()
    series = client.search_for_series(study_instance_uid=cr.study_uid)
    modalities = sorted(_value(s, "Modality") for s in series)
    assert modalities == ["CR", "PR", "SR"]
    (study,) = client.search_for_studies(search_filters={"StudyInstanceUID": cr.study_uid})
    assert study[_tag("ModalitiesInStudy")]["Value"] == ["CR", "PR", "SR"]
    assert _value(study, "NumberOfStudyRelatedSeries") == 3
    assert _value(study, "NumberOfStudyRelatedInstances") == 3

    (sr_series,) = [s for s in series if _value(s, "Modality") == "SR"]
    (sr,) = client.retrieve_series(cr.study_uid, _value(sr_series, "SeriesInstanceUID"))
    assert sr.Modality == "SR"
    assert sr.StudyInstanceUID == cr.study_uid
    assert sr.VerificationFlag == "UNVERIFIED"
    assert "TEST MODEL" in sr.SeriesDescription
    (sr_meta,) = client.retrieve_series_metadata(
        cr.study_uid, _value(sr_series, "SeriesInstanceUID")
    )
    assert sr_meta[_tag("ContentSequence")]["Value"]  # the report, inline for a viewer


# -- Orthanc's DICOMweb plugin as a client -------------------------------------------------


def test_orthanc_queries_and_retrieves_a_study_through_its_dicomweb_plugin(
    served: Served, orthanc: Orthanc
) -> None:
    orthanc.start(dicomweb_servers={"node": {"Url": f"{served.root}/", "HttpHeaders": AUTH}})
    study_uid = served.compressed["emri_small.dcm"].study_uid
    found = orthanc.post(
        "/dicom-web/servers/node/qido",
        {"Uri": "/studies", "Arguments": {"PatientName": "compressed*"}},
    )
    # Orthanc hands the answer on in its own shape: {"Name", "vr", "Value" as text}
    assert [s[_tag("StudyInstanceUID")]["Value"] for s in found] == [study_uid]
    assert found[0][_tag("PatientName")]["Value"] == "Compressed^Carl"
    series = orthanc.post("/dicom-web/servers/node/get", {"Uri": f"/studies/{study_uid}/series"})
    assert len(series) == 5

    orthanc.post("/dicom-web/servers/node/retrieve", {"Resources": [{"Study": study_uid}]})
    (study_id,) = orthanc.post(
        "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}
    )
    instances = orthanc.get(f"/studies/{study_id}/instances")
    held = {i["MainDicomTags"]["SOPInstanceUID"] for i in instances}
    assert held == {s.sop_uid for s in served.compressed.values()}


# -- failure paths ------------------------------------------------------------------------


def test_unknown_uids_are_404_naming_them(served: Served) -> None:
    ct = served.ct[0]
    unknown = "1.2.3.4.5.6.7.8.9"
    answer = served.get(f"/studies/{unknown}")
    assert answer.status_code == 404 and unknown in answer.json()["detail"]
    answer = served.get(f"/studies/{ct.study_uid}/series/{unknown}/metadata")
    assert answer.status_code == 404
    assert f"series {unknown} is not in study {ct.study_uid}" in answer.json()["detail"]
    answer = served.get(f"/studies/{ct.study_uid}/series/{ct.series_uid}/instances/{unknown}")
    assert answer.status_code == 404 and unknown in answer.json()["detail"]
    # a series of another study is not in this one
    cr = served.cr
    assert served.get(f"/studies/{cr.study_uid}/series/{ct.series_uid}").status_code == 404
    frames = served.get(
        f"/studies/{ct.study_uid}/series/{ct.series_uid}/instances/{ct.sop_uid}/frames/2"
    )
    assert frames.status_code == 404 and "has 1 frame(s); frame 2" in frames.json()["detail"]
    # a search that matches nothing is 204 without a body
    empty = served.get("/studies", params={"StudyInstanceUID": unknown})
    assert empty.status_code == 204 and empty.content == b""


def test_malformed_queries_are_400_naming_the_parameter(served: Served) -> None:
    for params, named in (
        ({"StudyDate": "2024-01-01-2024-12-31"}, "StudyDate"),
        ({"StudyDate": "20241301"}, "StudyDate"),
        ({"StudyDate": "20241231-20240101"}, "ends before it starts"),
        ({"StudyTime": "2500"}, "StudyTime"),
        ({"limit": "-1"}, "limit"),
        ({"offset": "many"}, "offset"),
        ({"NoSuchAttribute": "1"}, "NoSuchAttribute"),
        ({"StudyInstanceUID": "1.2.x"}, "not a UID"),
        ({"SeriesNumber": "one"}, "SeriesNumber"),
    ):
        answer = served.get("/studies", params=params)
        assert answer.status_code == 400, params
        assert named in answer.json()["detail"], (params, answer.text)
    contradiction = served.get(
        f"/studies/{served.cr.study_uid}/series", params={"StudyInstanceUID": "1.2.3"}
    )
    assert contradiction.status_code == 400
    assert "excludes" in contradiction.json()["detail"]
    ignored = served.get("/studies", params={"PatientAge": "040Y", "fuzzymatching": "true"})
    assert ignored.status_code == 200
    assert "PatientAge" in ignored.headers["Warning"]
    assert "fuzzymatching" in ignored.headers["Warning"]
    ct = served.ct[0]
    base = f"/studies/{ct.study_uid}/series/{ct.series_uid}/instances/{ct.sop_uid}"
    assert served.get(f"{base}/frames/0").status_code == 400
    assert served.get(f"{base}/rendered", params={"window": "40,0"}).status_code == 400
    assert served.get(f"{base}/rendered", params={"viewport": "big"}).status_code == 400


def test_unsatisfiable_accept_is_406_naming_what_can_be_sent(served: Served) -> None:
    j2k = served.compressed["693_J2KR.dcm"]
    base = f"/studies/{j2k.study_uid}/series/{j2k.series_uid}/instances/{j2k.sop_uid}"
    frames = served.get(
        f"{base}/frames/1", headers={"Accept": 'multipart/related; type="image/jls"'}
    )
    assert frames.status_code == 406
    assert "image/jp2" in frames.json()["detail"]
    lossy = served.get(
        base,
        headers={
            "Accept": 'multipart/related; type="application/dicom"; '
            "transfer-syntax=1.2.840.10008.1.2.4.50"
        },
    )
    assert lossy.status_code == 406 and "1.2.840.10008.1.2.4.90" in lossy.json()["detail"]
    assert served.get(f"{base}/rendered", headers={"Accept": "image/gif"}).status_code == 406
    xml = served.get(
        f"{base}/metadata", headers={"Accept": "multipart/related; type=application/dicom+xml"}
    )
    assert xml.status_code == 406
    assert served.get("/studies", headers={"Accept": "application/dicom+xml"}).status_code == 406


def test_no_token_is_401(served: Served) -> None:
    for path in ("/studies", f"/studies/{served.cr.study_uid}/metadata"):
        answer = requests.get(f"{served.root}{path}", timeout=10)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = requests.get(
        f"{served.root}/studies", headers={"Authorization": "Bearer nope"}, timeout=10
    )
    assert wrong.status_code == 401


def test_a_file_deleted_behind_the_index_s_back(served: Served) -> None:
    gone, kept = served.fragile
    # STOW-RS stored the posted bytes as they are: that is how the file is found
    spooled = next(
        p for p in (served.data_dir / "spool").rglob("*.dcm") if p.read_bytes() == gone.posted
    )
    spooled.unlink()

    study = served.get(f"/studies/{gone.study_uid}")
    assert study.status_code == 206
    assert gone.sop_uid in study.headers["Warning"]
    assert [body for _, body in _multipart(study)] == [kept.posted]
    alone = served.get(
        f"/studies/{gone.study_uid}/series/{gone.series_uid}/instances/{gone.sop_uid}"
    )
    assert alone.status_code == 404
    assert gone.sop_uid in alone.json()["detail"] and "missing" in alone.json()["detail"]
    metadata = served.get(f"/studies/{gone.study_uid}/metadata")
    assert metadata.status_code == 206 and len(metadata.json()) == 1
    frames = served.get(
        f"/studies/{gone.study_uid}/series/{gone.series_uid}/instances/{gone.sop_uid}/frames/1"
    )
    assert frames.status_code == 404
    assert "Traceback" not in served.node.log(tail=None)


def test_cors_preflight_only_for_the_configured_origin(served: Served) -> None:
    def preflight(origin: str) -> requests.Response:
        return requests.options(
            f"{served.root}/studies",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization, accept",
            },
            timeout=10,
        )

    allowed = preflight(VIEWER_ORIGIN)
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == VIEWER_ORIGIN
    assert "authorization" in allowed.headers["Access-Control-Allow-Headers"].lower()
    refused = preflight("http://elsewhere.example")
    assert "Access-Control-Allow-Origin" not in refused.headers
    # the request that follows a preflight: answered with the origin, Warning readable
    real = served.get("/studies", headers={"Origin": VIEWER_ORIGIN})
    assert real.headers["Access-Control-Allow-Origin"] == VIEWER_ORIGIN
    assert "warning" in real.headers["Access-Control-Expose-Headers"].lower()


def test_audit_trail_records_queries_and_retrieves_without_patient_data(served: Served) -> None:
    ct = served.ct[0]
    base = f"/studies/{ct.study_uid}/series/{ct.series_uid}/instances/{ct.sop_uid}"
    for path in ("", "/frames/1", "/bulkdata/7FE00010", "/rendered", "/thumbnail"):
        assert served.get(base + path).status_code == 200, path
    served.get("/studies", params={"PatientName": "Doe*", "limit": "5"})
    served.get(f"/studies/{ct.study_uid}/series/{ct.series_uid}/metadata")
    lines = [
        json.loads(line)
        for line in (served.data_dir / "audit.jsonl").read_text().splitlines()
        if '"dicomweb-' in line
    ]
    queries = [e for e in lines if e["event"] == "dicomweb-query"]
    assert {"query": ["PatientName=(withheld)", "limit=5"]}.items() <= queries[-1].items()
    assert queries[-1]["level"] == "study" and queries[-1]["matches"] == 1
    retrieves = [e for e in lines if e["event"] == "dicomweb-retrieve"]
    assert {
        "retrieved": "metadata",
        "study_uid": ct.study_uid,
        "series_uids": [ct.series_uid],
        "instances": CT_SLICES,
        "peer_address": "127.0.0.1",
    }.items() <= retrieves[-1].items()
    assert {e["retrieved"] for e in retrieves} >= {
        "instances",
        "metadata",
        "frames",
        "bulkdata",
        "rendered",
        "thumbnail",
    }
    trail = (served.data_dir / "audit.jsonl").read_text()
    for patient_value in ("Doe", "DW-CR-1", "Compressed^Carl", "DW-COMP-1"):
        assert patient_value not in trail
        assert patient_value not in served.node.log(tail=None)


# -- the catalog's SQL on both databases ------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Index]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    else:
        url = request.getfixturevalue("postgres").fresh_database("dicomweb_catalog")
    opened = Index(url)
    yield opened
    opened.close()


def _file(index: Index, study: str, sop: int, **attributes: Any) -> InstanceMeta:
    series = attributes.pop("series", 1)
    modality = attributes.pop("modality", "CR")
    meta = replace(instance_meta(study, sop, series=series, modality=modality), **attributes)
    index.file_instance(meta, f"/nowhere/{meta.sop_uid}.dcm", reopen=False)
    return meta


def test_catalog_matches_alike_on_sqlite_and_postgresql(index: Index) -> None:
    """Wildcards, case, ranges, relational keys, counts with the node's results, paging."""
    names = {"1.1": "Müller^Jürgen", "1.2": "MULLER^ANNA", "1.3": "A.B^C"}
    for n, (study, name) in enumerate(names.items()):
        for sop in (1, 2):
            _file(
                index,
                study,
                sop,
                patient_name=name,
                patient_id=f"P{n}",
                study_date=f"2024010{n + 1}",
                study_time="101500",
                series_number=1,
                instance_number=3 - sop,
            )
    with index.writing() as session:
        job = Job(study_id=1, task="cxr-report", rule="chest", series_uids=["1.1.1"])
        session.add(job)
        session.flush()
        job_id = job.id
    report = replace(instance_meta("1.1", 1, series=9, modality="SR"), series_number=9)
    came_back = instance_meta("1.1", 1, series=8, modality="PR", own=True)
    index.file_results(job_id, [(report, "/r/sr.dcm"), (came_back, "/r/pr.dcm")])
    index.file_instance(came_back, "/spool/pr.dcm", reopen=False)  # the PACS sent it back
    catalog = Catalog(index.engine)
    page = Page(limit=10)

    def studies(**filters: Any) -> list[str]:
        found = catalog.search_studies(Filters(**filters), page).records
        return sorted(r.study.study_uid for r in found)

    def name(pattern: str) -> tuple[TextMatch, ...]:
        return (TextMatch(TextField.PATIENT_NAME, pattern),)

    assert studies(text=name("müller*")) == ["1.1"]  # case folded beyond ASCII
    assert studies(text=name("m?ller*")) == ["1.1", "1.2"]
    assert studies(text=name("a.b^c")) == ["1.3"]
    assert studies(text=name("a?b^c")) == ["1.3"]
    assert studies(text=name("AxB^C")) == []  # '.' is a character, not a wildcard
    assert studies(text=(TextMatch(TextField.PATIENT_ID, "p1"),)) == []  # IDs keep their case
    assert studies(text=(TextMatch(TextField.PATIENT_ID, "P*"),)) == ["1.1", "1.2", "1.3"]
    assert studies(study_date=ValueRange("20240102", None)) == ["1.2", "1.3"]
    assert studies(study_date=ValueRange(None, "20240101")) == ["1.1"]
    assert studies(modalities_in_study=("SR",)) == ["1.1"]
    assert studies(sop_uids=("1.3.1.2",)) == ["1.3"]

    (first,) = catalog.search_studies(Filters(study_uids=("1.1",)), page).records
    assert first.modalities == ("CR", "PR", "SR")
    assert (first.series_count, first.instance_count) == (3, 4)  # 2 CR, the SR, the PR once

    series = catalog.search_series(Filters(study_uids=("1.1",)), page).records
    assert [(s.series.series_uid, s.instance_count) for s in series] == [
        ("1.1.1", 2),
        ("1.1.9", 1),
        ("1.1.8", 1),
    ]
    instances = catalog.search_instances(Filters(study_uids=("1.1",), modalities=("CR",)), page)
    assert [i.instance_number for i in instances.records] == [1, 2]
    assert not any(i.is_result for i in instances.records)
    (sr,) = catalog.search_instances(Filters(sop_uids=("1.1.9.1",)), page).records
    assert sr.is_result and sr.path == "/r/sr.dcm"

    pages = [catalog.search_studies(Filters(), Page(limit=2, offset=o)) for o in (0, 2)]
    assert [len(p.records) for p in pages] == [2, 1] and [p.more for p in pages] == [True, False]

    with pytest.raises(NotInCatalog, match="series 1.2.1 is not in study 1.1"):
        catalog.retrievable("1.1", "1.2.1")
    assert len(catalog.retrievable("1.1")) == 4
