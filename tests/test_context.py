"""Clinical context comes from the study's request attributes, and nothing is invented."""

from __future__ import annotations

from pathlib import Path

from pydicom import Dataset, dcmread

from fixtures.series import make_cr_study
from node.imaging.context import clinical_context


def test_no_indication_or_history_gives_no_context(tmp_path: Path) -> None:
    ds = dcmread(make_cr_study(tmp_path))
    ds.StudyDescription = "CHEST PA"  # what was imaged is not a reason
    assert clinical_context(ds) is None


def test_indication_history_and_request_items(tmp_path: Path) -> None:
    ds = dcmread(make_cr_study(tmp_path))
    ds.StudyDescription = "CHEST PA"
    ds.AdditionalPatientHistory = "Smoker,\n40 pack-years"
    request = Dataset()
    request.ReasonForTheRequestedProcedure = "Cough for 3 weeks"
    request.RequestedProcedureID = "RP1"
    ds.RequestAttributesSequence = [request]
    context = clinical_context(ds)
    assert context is not None
    assert context.text == (
        "Indication: Cough for 3 weeks. History: Smoker, 40 pack-years. Study: CHEST PA."
    )
    assert context.sources == (
        "ReasonForTheRequestedProcedure",
        "AdditionalPatientHistory",
        "StudyDescription",
    )


def test_repeated_values_appear_once(tmp_path: Path) -> None:
    ds = dcmread(make_cr_study(tmp_path))
    del ds.StudyDescription
    ds.ReasonForTheRequestedProcedure = "Fever"
    request = Dataset()
    request.ReasonForTheRequestedProcedure = "Fever"
    ds.RequestAttributesSequence = [request]
    ds.AdmittingDiagnosesDescription = ["Pneumonia", "Fever"]
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "R50.9", "I10", "Fever"
    ds.ReasonForRequestedProcedureCodeSequence = [code]
    context = clinical_context(ds)
    assert context is not None and context.text == "Indication: Fever; Pneumonia."
