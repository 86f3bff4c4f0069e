"""CT/MR results: which stored image each sent slice is, which slices an answer cites, and the
TID 1500 report a CT job gives (real test checkpoint), each valid for the reference tools."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage, CTImageStorage, EnhancedCTImageStorage

from fixtures.series import make_ct_series, make_enhanced_ct
from node.config import ImagingSettings, Task
from node.imaging.volume import SliceSource, sample_indices, series_to_volume_input
from node.inference.engine import TransformersEngine
from node.pipeline.tasks import TaskInput, TaskOutcome, run_task
from node.results.author import ResultAuthor
from node.results.report_input import ImageReference
from node.results.slices import (
    CITED_SLICES_LABELS,
    cited_slices,
    slice_references,
    volume_findings,
)
from node.results.tid1500 import build_measurement_report
from node.testing.checkpoint import VOLUME_ANSWER
from tests.dicom_tools import write_tmp
from tests.sr_content import evidence_uids, library_uids, texts, validated_report


def uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# --- reading the answer ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("A nodule on slice 34.", [34]),
        ("Slices 12-14 show fluid.", [12, 13, 14]),
        ("SLICE 7 and 9", [7, 9]),
        ("slices 3, 5 and 8–10", [3, 5, 8, 9, 10]),
        ("slices 12 to 14, and slice 20", [12, 13, 14, 20]),
        ("SLICE 40 through 42 or SLICE 50", [40, 41, 42, 50]),
        ("slices 9-7", [7, 8, 9]),
        ("slice 4 then slice 4 again", [4]),
        ("a 34 mm lesion on slice 4", [4]),
        ("slice 3 and 4 mm deeper", [3]),
        ("slice thickness 5 mm, no slice number given", []),
        ("slice 2.5", []),
        ("No abnormality.\nFinal Answer: no", []),
    ],
)
def test_cited_slices(text: str, numbers: list[int]) -> None:
    assert cited_slices(text) == numbers


def sent(count: int, *, multiframe: bool = False) -> list[SliceSource | None]:
    """What a volume input says its sent slices are: instance k (or frame k of one object)."""
    if multiframe:
        return [SliceSource(EnhancedCTImageStorage, "1.2.3", k + 1) for k in range(count)]
    return [SliceSource(CTImageStorage, f"1.2.3.{k + 1}") for k in range(count)]


def test_slice_numbers_map_to_the_nth_sent_image() -> None:
    references, notes = slice_references([3, 1, 3], sent(5))
    assert references == [ImageReference("1.2.3.3"), ImageReference("1.2.3.1")]
    assert notes == []
    frames, _ = slice_references([2, 5], sent(5, multiframe=True))
    assert frames == [ImageReference("1.2.3", 2), ImageReference("1.2.3", 5)]


def test_slices_not_sent_or_resampled_are_cited_with_a_note() -> None:
    references, notes = slice_references([0, 2, 6, 90], sent(5))
    assert references == [ImageReference("1.2.3.2")]
    [note] = notes
    assert "0, 6, 90" in note and "5 slice(s) were sent" in note
    references, notes = slice_references([1, 2], [None, None, None])
    assert references == []
    [note] = notes
    assert "resampled" in note and "1, 2" in note


ANSWER = (
    "There is a small nodule in the right upper lobe on slice 4. "
    "Slices 2-3 show a left pleural effusion.\n"
    "No fracture on slice 5; the airway on slice 1 is patent.\n"
    "Final Answer: yes"
)


def test_findings_take_the_slices_their_sentences_cite() -> None:
    named = volume_findings(ANSWER, sent(6), verdict=True)
    assert [(f.label, [r.sop_instance_uid for r in f.images]) for f in named.findings] == [
        ("nodule", ["1.2.3.4"]),
        ("pleural effusion", ["1.2.3.2", "1.2.3.3"]),
        # Cited in a sentence naming no finding (the fracture is denied).
        (CITED_SLICES_LABELS[True], ["1.2.3.5", "1.2.3.1"]),
    ]
    assert named.cited == [4, 2, 3, 5, 1]
    assert named.notes == []


@pytest.mark.parametrize("verdict", [True, False, None])
def test_slices_without_a_finding_are_labelled_by_the_answer(verdict: bool | None) -> None:
    named = volume_findings("Look at slices 2 and 3.", sent(4), verdict=verdict)
    [finding] = named.findings
    assert finding.label == CITED_SLICES_LABELS[verdict]
    assert finding.images == (ImageReference("1.2.3.2"), ImageReference("1.2.3.3"))


def test_a_finding_without_slices_and_an_answer_without_either() -> None:
    named = volume_findings("A mass is seen. Final Answer: yes", sent(4), verdict=True)
    assert [(f.label, f.images) for f in named.findings] == [("mass", ())]
    assert volume_findings(VOLUME_ANSWER, sent(4), verdict=False).findings == []


# --- which stored image each sent slice is -------------------------------------------------------


def test_sampled_slices_name_their_instances(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, n_slices=12)  # in position order
    volume = series_to_volume_input(paths, max_slices=5)
    indices = sample_indices(12, 5)
    assert volume.slice_indices == indices
    assert volume.slice_sources == [
        SliceSource(CTImageStorage, uid(paths[i]), None) for i in indices
    ]
    assert volume.source_instance_uids == [uid(paths[i]) for i in indices]


def test_frames_of_an_enhanced_ct_name_their_frame_numbers(tmp_path: Path) -> None:
    path, order = make_enhanced_ct(tmp_path, n_frames=6)  # frame j sits at position order[j]
    volume = series_to_volume_input([path])
    expected = [order.index(k) + 1 for k in range(6)]
    assert [s.frame_number for s in volume.slice_sources if s is not None] == expected
    assert {s.sop_instance_uid for s in volume.slice_sources if s is not None} == {uid(path)}
    assert volume.source_instance_uids == [uid(path)]


def test_resampled_slices_name_no_instance(tmp_path: Path) -> None:
    paths = make_ct_series(tmp_path, n_slices=10, plane="sagittal")
    volume = series_to_volume_input(paths, resample_axial=True)
    assert volume.resampled
    assert volume.slice_sources == [None] * len(volume.images)
    # Every slice of the stack went into the resampled images.
    assert sorted(volume.source_instance_uids) == sorted(uid(p) for p in paths)


def test_cited_slices_point_at_the_right_instances_in_a_valid_report(tmp_path: Path) -> None:
    """Answer → slice numbers → the sampled instances, through a report dciodvfy and PixelMed
    accept and highdicom reads back."""
    paths = make_ct_series(tmp_path / "ct", n_slices=20)
    volume = series_to_volume_input(paths, max_slices=8)
    named = volume_findings(ANSWER, volume.slice_sources, verdict=True)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    sources = [h for u in volume.source_instance_uids for h in headers if h.SOPInstanceUID == u]
    sr = build_measurement_report(
        sources,
        named.findings,
        narrative=ANSWER,
        impression=None,
        author=ResultAuthor("TEST MODEL", True),
        task="ct-volume",
    )
    _, content = validated_report(sr, tmp_path)
    cited = {
        group.tracking_identifier: [i.referenced_sop_instance_uid for i in group.source_images]
        for group in content.get_image_measurement_groups()
    }
    sampled = volume.slice_indices  # SLICE n is paths[sampled[n - 1]]
    assert cited == {
        "1: nodule": [uid(paths[sampled[3]])],
        "2: pleural effusion": [uid(paths[sampled[1]]), uid(paths[sampled[2]])],
        "3: abnormality": [uid(paths[sampled[4]]), uid(paths[sampled[0]])],
    }


# --- a CT job through the pipeline ----------------------------------------------------------------


@pytest.fixture(scope="module")
def ct_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_ct_series(tmp_path_factory.mktemp("ct"), n_slices=12, patient_id="CT-RESULTS")


@pytest.fixture(scope="module")
def outcome(ct_paths: list[Path], engine: TransformersEngine) -> TaskOutcome:
    job = TaskInput(Task.CT_VOLUME, {"series": ct_paths}, imaging=ImagingSettings(max_slices=6))
    return run_task(job, engine)


def test_ct_job_gives_a_valid_measurement_report(
    outcome: TaskOutcome, ct_paths: list[Path], tmp_path: Path
) -> None:
    [sr] = outcome.results
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.SeriesDescription.startswith("TEST MODEL AI ct-volume")
    source = pydicom.dcmread(ct_paths[0], stop_before_pixels=True)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.PatientID == "CT-RESULTS"
    validated_report(sr, tmp_path)
    assert outcome.record["verdict"] is False
    assert outcome.record["findings"] == []
    assert outcome.record["cited_slices"] == []


def test_ct_report_lists_the_sent_slices_and_reads_back(
    outcome: TaskOutcome, ct_paths: list[Path], tmp_path: Path
) -> None:
    [sr] = outcome.results  # validated in the test above
    content = hd.sr.srread(write_tmp(sr, tmp_path)).content
    assert isinstance(content, hd.sr.MeasurementReport)
    sent_uids = [uid(ct_paths[i]) for i in sample_indices(12, 6)]
    assert outcome.record["slice_indices"] == sample_indices(12, 6)
    assert sorted(evidence_uids(sr)) == sorted(sent_uids)
    assert library_uids(sr) == sent_uids
    [group] = content.get_image_measurement_groups()
    assert group.tracking_identifier == "no localized findings"
    assert texts(sr, "Findings") == [VOLUME_ANSWER]
    assert texts(sr, "Conclusion") == [
        "Any acute abnormality in the CT volume: no (the model's final answer)"
    ]
    assert texts(sr, "Algorithm Parameters") == ["task=ct-volume"]


def test_a_rerun_names_the_earlier_report(
    outcome: TaskOutcome, ct_paths: list[Path], engine: TransformersEngine, tmp_path: Path
) -> None:
    earlier = write_tmp(outcome.results[0], tmp_path)
    job = TaskInput(
        Task.CT_VOLUME,
        {"series": ct_paths},
        imaging=ImagingSettings(max_slices=6),
        previous_results=(earlier,),
    )
    [sr] = run_task(job, engine).results
    [study] = sr.PredecessorDocumentsSequence
    [ref] = study.ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert ref.ReferencedSOPInstanceUID == outcome.results[0].SOPInstanceUID


def test_a_resampled_stack_cites_every_instance_and_says_why(
    engine: TransformersEngine, tmp_path: Path
) -> None:
    paths = make_ct_series(tmp_path / "sag", n_slices=10, plane="sagittal")
    job = TaskInput(Task.CT_VOLUME, {"series": paths}, imaging=ImagingSettings(resample_axial=True))
    outcome = run_task(job, engine)
    assert outcome.record["resampled"] is True
    notes = outcome.record["notes"]
    assert isinstance(notes, list)
    assert any("cites no image per slice" in note for note in notes)
    [sr] = outcome.results
    validated_report(sr, tmp_path)
    assert sorted(library_uids(sr)) == sorted(uid(p) for p in paths)
