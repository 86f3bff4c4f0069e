"""What every result SR copies from its sources (evidence, character set, de-identification),
through the TID 1500 report: build -> write -> read back strictly -> compare, and dciodvfy."""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.uid import Comprehensive3DSRStorage, generate_uid

from node.results.author import ResultAuthor
from node.results.disclaimer import TEST_MODEL_BANNER
from node.results.sr import COMPLETION_DESCRIPTION, UTF8_CHARACTER_SET, evidence_header
from node.results.tid1500 import build_measurement_report
from tests.dicom_tools import dciodvfy_errors, dciodvfy_report, write_tmp
from tests.sr_content import content_items, evidence_uids, texts

FINDINGS = "Heart size normal.\nNo focal consolidation, effusion or pneumothorax."
MODEL = "google/medgemma-1.5-4b-it"
TEST_MODEL = "TEST MODEL (/models/tiny-random)"
SOURCE_FILES = ("RG1_UNCR.dcm", "CT_small.dcm", "MR_small.dcm")
# Beyond the three: enhanced multi-frame objects, an RGB secondary capture (Modality OT),
# and a de-identified CT (CQ500) whose header claims identity removal without a method.
MORE_SOURCE_FILES = ("693_UNCR.dcm", "emri_small.dcm", "eCT_Supplemental.dcm", "SC_rgb.dcm")


@pytest.fixture(autouse=True)
def strict_reading() -> Iterator[None]:
    """Read everything in these tests as a strict consumer would."""
    settings = pydicom.config.settings
    previous = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.RAISE
    yield
    settings.reading_validation_mode = previous


def load_source(name: str) -> Dataset:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} missing: install pydicom-data"
    return pydicom.dcmread(path, stop_before_pixels=True)


def build(sources: list[Dataset], narrative: str = FINDINGS, **overrides: Any) -> Dataset:
    options: dict[str, Any] = {
        "impression": None,
        "task": "cxr-report",
        "author": ResultAuthor(MODEL, False),
        **overrides,
    }
    return build_measurement_report(sources, [], narrative=narrative, **options)


def round_trip(sr: Dataset, tmp_path: Path) -> tuple[Path, Dataset]:
    path = write_tmp(sr, tmp_path)
    return path, pydicom.dcmread(path)


@pytest.mark.parametrize("name", SOURCE_FILES)
def test_round_trip_keeps_patient_study_and_flags(name: str, tmp_path: Path) -> None:
    source = load_source(name)
    _, back = round_trip(build([source], context_used="Cough for 3 weeks."), tmp_path)

    assert back.SOPClassUID == Comprehensive3DSRStorage
    assert back.Modality == "SR"
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.PatientID == source.PatientID
    assert back.PatientName == source.PatientName
    assert back.SeriesInstanceUID != source.SeriesInstanceUID
    assert back.SOPInstanceUID != source.SOPInstanceUID
    assert back.VerificationFlag == "UNVERIFIED"
    assert back.PreliminaryFlag == "PRELIMINARY"
    assert back.CompletionFlag == "PARTIAL"
    assert back.CompletionFlagDescription == COMPLETION_DESCRIPTION
    assert back.SeriesDescription == f"AI cxr-report {MODEL} (UNVERIFIED)"
    assert back.Manufacturer == "medgemma-node"
    assert back.SoftwareVersions == "0.1.0"
    assert back.ContentDate and back.ContentTime
    assert texts(back, "History") == ["Cough for 3 weeks."]
    if "InstitutionName" in source:
        assert back.InstitutionName == source.InstitutionName


def test_no_context_item_without_context(tmp_path: Path) -> None:
    _, back = round_trip(build([load_source("CT_small.dcm")], context_used="  "), tmp_path)
    assert texts(back, "History") == []


def test_test_model_says_so_where_a_reader_looks(tmp_path: Path) -> None:
    sr = build([load_source("RG1_UNCR.dcm")], author=ResultAuthor(TEST_MODEL, True))
    path, back = round_trip(sr, tmp_path)
    assert back.SeriesDescription.startswith("TEST MODEL")
    [disclaimer] = texts(back, "Comment")
    assert disclaimer.startswith(TEST_MODEL_BANNER)
    assert "not by MedGemma" in disclaimer and TEST_MODEL in disclaimer
    assert dciodvfy_errors(path) == []


@pytest.mark.parametrize("name", SOURCE_FILES + MORE_SOURCE_FILES)
def test_dciodvfy_reports_no_errors(name: str, tmp_path: Path) -> None:
    path = write_tmp(build([load_source(name)], context_used="Fever."), tmp_path)
    assert dciodvfy_errors(path) == []


def test_dciodvfy_warnings_come_only_from_copied_source_values(tmp_path: Path) -> None:
    """The node's own attributes draw no warnings; CT_small's Patient's Weight of 0 does."""
    path = write_tmp(build([load_source("CT_small.dcm")]), tmp_path)
    assert dciodvfy_report(path) == [
        "Warning - Value is zero for value 1 of attribute <Patient's Weight>"
    ]


def test_the_same_instance_twice_is_one_source(tmp_path: Path) -> None:
    source = load_source("MR_small.dcm")
    _, back = round_trip(build([source, source]), tmp_path)
    image_items = [i for i in content_items(back) if i.ValueType == "IMAGE"]
    assert len(image_items) == 1
    assert evidence_uids(back) == [source.SOPInstanceUID]


def test_non_ascii_text_switches_to_utf8_and_survives(tmp_path: Path) -> None:
    narrative = "Pleuraerguss links, Größe 3 cm. Épanchement pleural. 胸水"
    source = load_source("RG1_UNCR.dcm")
    path, back = round_trip(build([source], narrative, context_used="Dyspnö"), tmp_path)
    assert back.SpecificCharacterSet == UTF8_CHARACTER_SET
    assert texts(back, "Findings") == [narrative]
    assert texts(back, "History") == ["Dyspnö"]
    assert back.PatientName == source.PatientName
    assert dciodvfy_errors(path) == []


def test_ascii_text_keeps_the_source_character_set(tmp_path: Path) -> None:
    source = load_source("CT_small.dcm")
    _, back = round_trip(build([source]), tmp_path)
    assert back.SpecificCharacterSet == source.SpecificCharacterSet


def test_non_ascii_patient_name_from_latin1_source_survives_utf8(tmp_path: Path) -> None:
    [path] = get_charset_files("chrFren.dcm")
    source = pydicom.dcmread(path)
    assert source.SpecificCharacterSet == "ISO_IR 100"
    source.SOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    _, back = round_trip(build([source], "Größe 3 cm"), tmp_path)
    assert back.SpecificCharacterSet == UTF8_CHARACTER_SET
    assert str(back.PatientName) == str(source.PatientName)


def test_very_long_narrative(tmp_path: Path) -> None:
    narrative = "\n".join(f"Line {n}: no acute abnormality in segment {n}." for n in range(20_000))
    assert len(narrative) > 900_000
    path, back = round_trip(build([load_source("CT_small.dcm")], narrative), tmp_path)
    assert texts(back, "Findings") == [narrative]
    assert dciodvfy_errors(path) == []


def test_missing_type2_source_attributes_are_written_empty(tmp_path: Path) -> None:
    source = load_source("MR_small.dcm")
    del source.AccessionNumber
    del source.ReferringPhysicianName
    path, back = round_trip(build([source]), tmp_path)
    assert back.AccessionNumber == ""
    assert "AccessionNumber" not in source
    assert dciodvfy_errors(path) == []


def test_evidence_header_drops_pixels_and_keeps_the_source_intact() -> None:
    path = get_testdata_file("CT_small.dcm", download=False)
    assert path is not None
    source = pydicom.dcmread(path)
    before = copy.deepcopy(source)
    header = evidence_header(source)
    assert "PixelData" not in header and "PixelData" in source
    assert header.SOPInstanceUID == source.SOPInstanceUID
    build([source], "Größe 3 cm", context_used="x")
    assert source == before


def test_fixed_uids_make_retries_idempotent() -> None:
    source = load_source("CT_small.dcm")
    series_uid, sop_uid = generate_uid(), generate_uid()
    first = build([source], series_instance_uid=series_uid, sop_instance_uid=sop_uid)
    second = build([source], series_instance_uid=series_uid, sop_instance_uid=sop_uid)
    assert first.SeriesInstanceUID == second.SeriesInstanceUID == series_uid
    assert first.SOPInstanceUID == second.SOPInstanceUID == sop_uid
    assert build([source]).SeriesInstanceUID != build([source]).SeriesInstanceUID


def test_device_observer_uid_is_stable_per_model() -> None:
    source = load_source("CT_small.dcm")

    def observer_uid(sr: Dataset) -> str:
        [item] = [
            i
            for i in content_items(sr)
            if i.ValueType == "UIDREF"
            and i.ConceptNameCodeSequence[0].CodeMeaning == "Device Observer UID"
        ]
        return str(item.UID)

    assert observer_uid(build([source])) == observer_uid(build([source]))
    assert observer_uid(build([source])) != observer_uid(
        build([source], author=ResultAuthor(TEST_MODEL, True))
    )


def test_dsrdump_parses_the_document(tmp_path: Path) -> None:
    dsrdump = shutil.which("dsrdump")
    assert dsrdump is not None, "dsrdump not found (Debian package dcmtk)"
    sr = build([load_source("RG1_UNCR.dcm")], "Größe 3 cm", author=ResultAuthor(TEST_MODEL, True))
    result = subprocess.run(
        [dsrdump, "+Pl", "+U8", str(write_tmp(sr, tmp_path))],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Verification Flag   : UNVERIFIED" in result.stdout
    assert '"Findings")="Größe 3 cm"' in result.stdout


def test_identity_removed_without_method_is_completed(tmp_path: Path) -> None:
    source = load_source("693_UNCR.dcm")
    assert source.PatientIdentityRemoved == "YES" and "DeidentificationMethod" not in source
    _, back = round_trip(build([source]), tmp_path)
    assert back.PatientIdentityRemoved == "YES"
    assert back.DeidentificationMethod.startswith("Unknown")


@pytest.mark.parametrize(
    "name",
    [
        "chrGerm.dcm",
        "chrGreek.dcm",
        "chrH31.dcm",
        "chrH32.dcm",
        "chrHbrw.dcm",
        "chrI2.dcm",
        "chrJapMulti.dcm",
        "chrKoreanMulti.dcm",
        "chrRuss.dcm",
        "chrX1.dcm",
        "chrX2.dcm",
    ],
)
def test_character_sets_of_the_source_survive(name: str, tmp_path: Path) -> None:
    """pydicom's character-set files: the patient's name comes back as the source had it."""
    [path] = get_charset_files(name)
    source = pydicom.dcmread(path)
    sr = build([source], "FINDINGS: Größe 3 cm.", author=ResultAuthor("m", True))
    written = write_tmp(sr, tmp_path)
    back = pydicom.dcmread(written)
    assert back.PatientName == source.PatientName
    assert dciodvfy_errors(written) == []
