"""The chest pipeline's results, made by the real (tiny) Gemma 3 checkpoint: a TID 1500 report
with the localized finding, a GSPS and a burned-in capture, each valid for the reference tools."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    SecondaryCaptureImageStorage,
)

from fixtures.series import make_cr_study
from node.config import LocalizationSettings, Output, Task
from node.imaging.radiograph import radiograph_to_image
from node.inference.answers import Box
from node.inference.engine import TransformersEngine
from node.pipeline.tasks import TaskInput, TaskOutcome, run_task
from node.priors.retrieve import prior_report_texts
from node.results.boxes import map_box
from node.results.codes import coded_finding
from node.testing.checkpoint import LOCALIZE_BOX, LOCALIZE_LABEL, REPORT_ANSWER
from tests.dicom_tools import dciodvfy_errors, pixelmed_sr_errors, write_tmp

ALL_OUTPUTS = frozenset({Output.SR, Output.GSPS, Output.SC})


@pytest.fixture(scope="module")
def cr_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cr_study(tmp_path_factory.mktemp("cr"), patient_id="CXR-RESULTS")


def _run(cr_path: Path, engine: TransformersEngine, **options: object) -> TaskOutcome:
    job = TaskInput(Task.CXR_REPORT, {"series": [cr_path]}, **options)  # type: ignore[arg-type]
    return run_task(job, engine)


@pytest.fixture(scope="module")
def localized(cr_path: Path, engine: TransformersEngine) -> TaskOutcome:
    return _run(
        cr_path,
        engine,
        localization=LocalizationSettings(findings=[LOCALIZE_LABEL]),
        outputs=ALL_OUTPUTS,
    )


def _expected_box(cr_path: Path) -> np.ndarray:
    y0, x0, y1, x1 = LOCALIZE_BOX
    mapped = map_box(Box(LOCALIZE_LABEL, y0, x0, y1, x1), radiograph_to_image(cr_path))
    assert not isinstance(mapped, str), mapped
    return mapped.corners()


def test_localized_report_gives_sr_gsps_and_sc_that_validate(
    localized: TaskOutcome, cr_path: Path, tmp_path: Path
) -> None:
    sr, gsps, sc = localized.results
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert gsps.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage
    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    source = pydicom.dcmread(cr_path, stop_before_pixels=True)
    for ds in localized.results:
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.PatientID == "CXR-RESULTS"
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert "TEST MODEL" in ds.SeriesDescription
        path = write_tmp(ds, tmp_path)
        assert dciodvfy_errors(path) == [], ds.SOPClassUID.name
    sr_path = tmp_path / f"{sr.SOPInstanceUID}.dcm"
    assert pixelmed_sr_errors(sr_path) == []
    dsrdump = shutil.which("dsrdump")
    assert dsrdump is not None
    dumped = subprocess.run([dsrdump, str(sr_path)], capture_output=True, text=True, check=False)
    assert dumped.returncode == 0, dumped.stderr
    assert "Imaging Measurement Report" in dumped.stdout
    assert localized.record["findings"] == [LOCALIZE_LABEL]
    assert localized.record["comparison"] is False


def test_round_trip_reads_the_box_back_in_source_pixels(
    localized: TaskOutcome, cr_path: Path, tmp_path: Path
) -> None:
    sr = localized.results[0]
    back = hd.sr.srread(write_tmp(sr, tmp_path))
    assert isinstance(back.content, hd.sr.MeasurementReport)
    [group] = back.content.get_planar_roi_measurement_groups()
    assert group.finding_type == coded_finding(LOCALIZE_LABEL).concept
    assert group.roi is not None
    np.testing.assert_allclose(group.roi.value, _expected_box(cr_path), atol=0.01)
    # the GSPS draws the same rectangle on the same image
    gsps = localized.results[1]
    annotation = gsps.GraphicAnnotationSequence[0]
    [rectangle] = annotation.GraphicObjectSequence
    corners = np.array(rectangle.GraphicData, dtype=float).reshape(-1, 2)
    np.testing.assert_allclose(corners, _expected_box(cr_path), atol=0.01)
    [image] = annotation.ReferencedImageSequence
    assert image.ReferencedSOPInstanceUID == pydicom.dcmread(cr_path).SOPInstanceUID


def test_report_text_is_kept_as_findings_and_impression(localized: TaskOutcome) -> None:
    sr = localized.results[0]
    texts = {
        str(item.ConceptNameCodeSequence[0].CodeMeaning): str(item.TextValue)
        for item in _items(sr)
        if "TextValue" in item
    }
    assert texts["Findings"].startswith("The lungs are clear.")
    assert texts["Impression"] == "No acute cardiopulmonary abnormality."
    assert sr.VerificationFlag == "UNVERIFIED"


def _items(ds: Dataset) -> list[Dataset]:
    found: list[Dataset] = []
    for item in ds.get("ContentSequence", []):
        found.append(item)
        found.extend(_items(item))
    return found


def test_a_normal_report_asks_for_no_boxes_and_sends_no_gsps(
    cr_path: Path, engine: TransformersEngine
) -> None:
    # The fixed report negates every finding it names ("No pleural effusion or pneumothorax").
    outcome = _run(cr_path, engine, outputs=ALL_OUTPUTS)
    assert outcome.record["findings"] == []
    classes = [ds.SOPClassUID for ds in outcome.results]
    assert classes == [Comprehensive3DSRStorage, SecondaryCaptureImageStorage]
    assert outcome.results[1].BurnedInAnnotation == "YES"


def test_a_rerun_names_the_earlier_report_as_its_predecessor(
    localized: TaskOutcome, cr_path: Path, engine: TransformersEngine, tmp_path: Path
) -> None:
    earlier = write_tmp(localized.results[0], tmp_path)
    outcome = _run(cr_path, engine, previous_results=(earlier,))
    [sr] = outcome.results  # default outputs: SR and GSPS, and no box to draw
    [study] = sr.PredecessorDocumentsSequence
    [series] = study.ReferencedSeriesSequence
    [ref] = series.ReferencedSOPSequence
    assert ref.ReferencedSOPInstanceUID == localized.results[0].SOPInstanceUID
    assert sr.SeriesInstanceUID != localized.results[0].SeriesInstanceUID
    assert dciodvfy_errors(write_tmp(sr, tmp_path)) == []


def test_the_report_reads_back_as_the_prior_report_of_a_later_study(
    localized: TaskOutcome, tmp_path: Path
) -> None:
    path = write_tmp(localized.results[0], tmp_path)
    assert prior_report_texts([path]) == [REPORT_ANSWER]


def test_localization_stops_at_max_findings(
    cr_path: Path, engine: TransformersEngine, tmp_path: Path
) -> None:
    """Five fixed findings, max_findings 2: two localization calls (their saved inputs show
    it), two findings in the record, in the order given."""
    asked = ["pleural effusion", "pneumothorax", "consolidation", "cardiomegaly", "nodule"]
    outcome = _run(
        cr_path,
        engine,
        localization=LocalizationSettings(findings=asked, max_findings=2),
        save_inputs=tmp_path / "inputs",
    )
    calls = sorted(p.name for p in (tmp_path / "inputs").glob("localize-*"))
    assert calls == ["localize-1", "localize-2"]
    assert outcome.record["findings"][:2] == asked[:2]
    assert set(outcome.record["findings"]) <= set(asked[:2])
    for number, finding in enumerate(asked[:2], start=1):
        prompt = (tmp_path / "inputs" / f"localize-{number}" / "prompt.txt").read_text()
        assert f"Where is the {finding}?" in prompt
