"""Lab tests in the TID 1500 report: LOINC where name and unit fit, UCUM units, the range as
text, every test's line kept; build → write → validate → read back."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset

from fixtures.documents import make_encapsulated_pdf, make_scanned_document
from node.inference.answers import LabResult
from node.results.author import ResultAuthor
from node.results.labs import LAB_SCHEME, lab_concept, lab_number, lab_text, ucum_unit
from node.results.tid1500 import build_measurement_report
from tests.sr_content import evidence_uids, headers, library_uids, texts, validated_report

TEST_MODEL = "TEST MODEL (/models/tiny-random)"

LABS = [
    LabResult("Hemoglobin", "13.5", "g/dL", "12.0-16.0", panel="CBC"),
    LabResult("WBC", "7.2", "x10^9/L", "4.0-11.0"),
    LabResult("Ferritin", "45", "ng/mL"),
    LabResult("HIV antibody", "Negative"),
    LabResult("Glucose", "5.5", "mmol/L"),  # moles, not 2345-7's mass/volume
]


def lab_report(sources: list[Dataset], labs: list[LabResult] = LABS) -> Dataset:
    return build_measurement_report(
        sources,
        [],
        narrative=f"{len(labs)} lab test(s) extracted from 1 page(s).",
        impression=None,
        author=ResultAuthor(TEST_MODEL, True),
        task="lab-report",
        lab_items=labs,
    )


@pytest.fixture(scope="module")
def pdf(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return headers([make_encapsulated_pdf(tmp_path_factory.mktemp("pdf"))])[0]


def test_lab_tests_become_coded_numbers(pdf: Dataset, tmp_path: Path) -> None:
    path, content = validated_report(lab_report([pdf]), tmp_path)
    back = pydicom.dcmread(path)
    # A PDF is no image: evidence only, and no image library.
    assert evidence_uids(back) == [pdf.SOPInstanceUID]
    assert library_uids(back) == []
    groups = content.get_image_measurement_groups()
    assert [g.tracking_identifier for g in groups] == [
        "lab 1: Hemoglobin",
        "lab 2: WBC",
        "lab 3: Ferritin",
        "lab 5: Glucose",
    ]
    measured = [g.get_measurements()[0] for g in groups]
    assert [(m.name.value, m.name.scheme_designator) for m in measured] == [
        ("718-7", "LN"),
        ("6690-2", "LN"),
        (lab_concept(LABS[2], ucum_unit("ng/mL")).concept.value, LAB_SCHEME),
        (lab_concept(LABS[4], ucum_unit("mmol/L")).concept.value, LAB_SCHEME),
    ]
    assert [m.name.meaning for m in measured[2:]] == ["Ferritin", "Glucose"]
    assert [m.value for m in measured] == [13.5, 7.2, 45, 5.5]
    assert [m.unit.value for m in measured] == ["g/dL", "10*9/L", "ng/mL", "mmol/L"]
    assert [m.unit.meaning for m in measured] == ["g/dL", "x10^9/L", "ng/mL", "mmol/L"]
    ranges = texts(back, "Normal Range description")
    assert ranges == ["12.0-16.0", "4.0-11.0"]
    # The private scheme is identified; every test keeps its line of text.
    [scheme] = back.CodingSchemeIdentificationSequence
    assert scheme.CodingSchemeDesignator == LAB_SCHEME
    assert texts(back, "Finding") == [lab_text(lab) for lab in LABS]
    assert texts(back, "Finding")[0] == "Hemoglobin: 13.5 g/dL (reference 12.0-16.0); panel CBC"


def test_a_scanned_document_is_listed_without_a_modality_code(tmp_path: Path) -> None:
    """DOC is not in CID 29: the library entry leaves the optional Modality descriptor out."""
    [scan] = headers([make_scanned_document(tmp_path / "scan", pages=2)])
    assert scan.Modality == "DOC" and scan.NumberOfFrames == 2
    path, _ = validated_report(lab_report([scan], LABS[:1]), tmp_path)
    back = pydicom.dcmread(path)
    assert library_uids(back) == [scan.SOPInstanceUID]
    assert "CodingSchemeIdentificationSequence" not in back  # only LOINC used
    assert texts(back, "Modality") == []


@pytest.mark.parametrize(
    ("unit", "code"),
    [
        ("g/dL", "g/dL"),
        ("mg/dl", "mg/dl"),
        ("mmol/L", "mmol/L"),
        ("µmol/L", "umol/L"),
        ("x10^9/L", "10*9/L"),
        ("10^3/uL", "10*3/uL"),
        ("IU/L", "[IU]/L"),
        ("mIU/L", "m[IU]/L"),
        ("mEq/L", "meq/L"),
        ("cells/µL", "/uL"),
        ("%", "%"),
        ("U/L", "U/L"),
        ("mm/hr", "mm/h"),
        ("bananas per µL", "{bananas per uL}"),
        ("ratio{x}", "{ratiox}"),
        ("", "1"),
        (None, "1"),
    ],
)
def test_units_become_ucum(unit: str | None, code: str) -> None:
    concept = ucum_unit(unit)
    assert (concept.value, concept.scheme_designator) == (code, "UCUM")


@pytest.mark.parametrize(
    ("result", "number"),
    [
        ("13.5", 13.5),
        ("45", 45),
        ("+2", 2),
        (".5", 0.5),
        ("<0.5", None),
        ("Negative", None),
        ("1,234", None),
        ("", None),
    ],
)
def test_only_plain_numbers_are_numbers(result: str, number: float | None) -> None:
    value = lab_number(LabResult("x", result))
    assert value == number
    assert type(value) is type(number)


@pytest.mark.parametrize(
    ("name", "unit", "loinc"),
    [
        ("Haemoglobin", "g/L", "718-7"),
        ("Platelet count", "10^3/uL", "777-3"),
        ("Serum Creatinine", "mg/dL", "2160-0"),
        ("Na", "mmol/L", "2951-2"),
        ("Potassium", "mEq/L", "2823-3"),
        ("Chloride", "mmol/L", "2075-0"),
        ("BUN", "mg/dL", "3094-0"),
        ("ALT (SGPT)", "U/L", "1742-6"),
        ("AST", "IU/L", "1920-8"),
        ("Total Bilirubin", "mg/dL", "1975-2"),
        ("Hematocrit", "%", "4544-3"),
        ("HbA1c", "%", "4548-4"),
        ("TSH", "mIU/L", "3016-3"),
        ("C-Reactive Protein", "mg/L", "1988-5"),
        ("Glucose", "mg/dL", "2345-7"),
    ],
)
def test_common_tests_get_loinc_when_the_unit_fits(name: str, unit: str, loinc: str) -> None:
    concept = lab_concept(LabResult(name, "1", unit), ucum_unit(unit))
    assert concept.is_loinc
    assert (concept.concept.value, concept.concept.scheme_designator) == (loinc, "LN")
    assert len(concept.concept.meaning) <= 64


def test_a_known_test_in_another_unit_keeps_its_name() -> None:
    """Creatinine in µmol/L is another LOINC code than 2160-0's mass/volume."""
    concept = lab_concept(LabResult("Creatinine", "80", "µmol/L"), ucum_unit("µmol/L"))
    assert not concept.is_loinc
    assert concept.concept.scheme_designator == LAB_SCHEME
    assert concept.concept.meaning == "Creatinine"
