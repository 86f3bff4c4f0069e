"""TID 1500 measurement report and box mapping: build → write → validate → read back."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import Dataset
from pydicom.sr.codedict import codes

from fixtures.series import make_cr_study, make_ct_series, make_enhanced_ct
from node.imaging.radiograph import RadiographImage, radiograph_to_image
from node.imaging.square import Padding
from node.inference.answers import Box, LabResult
from node.results.author import ResultAuthor
from node.results.boxes import SourceBox, box_tracking_uid, map_box, map_boxes
from node.results.codes import FREE_TEXT_FINDING, coded_finding, finding_concept
from node.results.disclaimer import TEST_MODEL_BANNER
from node.results.report_input import ImageReference, LocalizedFinding
from node.results.tid1500 import build_measurement_report
from tests.dicom_tools import dciodvfy_errors, pixelmed_sr_errors, write_tmp
from tests.sr_content import evidence_uids, headers, library_uids, texts, validated_report

MODEL = "google/medgemma-1.5-4b-it"
TEST_MODEL = "TEST MODEL (/models/tiny-random)"


@pytest.fixture(scope="module")
def cr(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """The real chest CR (1955 rows × 1841 columns) with new UIDs."""
    return pydicom.dcmread(make_cr_study(tmp_path_factory.mktemp("cr")))


@pytest.fixture(scope="module")
def cr_image(cr: Dataset) -> RadiographImage:
    return radiograph_to_image(cr)


def square(rows: int, columns: int) -> RadiographImage:
    """A model input geometry without pixels that matter."""
    side = max(rows, columns)
    top, left = (side - rows) // 2, (side - columns) // 2
    return RadiographImage(
        image=Image.new("RGB", (side, side)),
        source_rows=rows,
        source_columns=columns,
        padding=Padding(top=top, bottom=side - rows - top, left=left, right=side - columns - left),
        window=None,
    )


# --- box mapping --------------------------------------------------------------------------


def test_box_maps_through_padding_to_source_pixels() -> None:
    image = square(800, 1000)  # 100 rows of padding above and below
    mapped = map_box(Box("nodule", y0=200, x0=100, y1=400, x1=300), image)
    assert mapped == SourceBox("nodule", top=100.0, left=100.0, bottom=300.0, right=300.0)


def test_real_cr_padding_is_on_the_left_and_right(cr_image: RadiographImage) -> None:
    assert (cr_image.source_rows, cr_image.source_columns) == (1955, 1841)
    assert (cr_image.padding.top, cr_image.padding.left) == (0, 57)
    mapped = map_box(Box("effusion", y0=0, x0=0, y1=1000, x1=1000), cr_image)
    # The whole square is the whole image once the padding is clipped off.
    assert mapped == SourceBox("effusion", 0.0, 0.0, 1955.0, 1841.0)


def test_box_at_the_padded_border_is_clipped() -> None:
    image = square(800, 1000)
    mapped = map_box(Box("opacity", y0=50, x0=900, y1=300, x1=1000), image)
    assert mapped == SourceBox("opacity", top=0.0, left=900.0, bottom=200.0, right=1000.0)


def test_inverted_empty_and_padding_only_boxes_are_dropped_with_reasons() -> None:
    image = square(800, 1000)
    kept, dropped = map_boxes(
        [
            Box("mass", y0=400, x0=400, y1=300, x1=500),  # inverted
            Box("line", y0=400, x0=400, y1=400, x1=500),  # empty
            Box("artefact", y0=0, x0=0, y1=90, x1=1000),  # only in the top padding
            Box("nodule", y0=500, x0=500, y1=600, x1=600),
        ],
        image,
    )
    assert [box.label for box in kept] == ["nodule"]
    assert len(dropped) == 3
    assert "'mass'" in dropped[0] and "inverted" in dropped[0]
    assert "'line'" in dropped[1] and "empty" in dropped[1]
    assert "'artefact'" in dropped[2] and "outside" in dropped[2]


def test_tracking_uid_depends_on_box_not_order() -> None:
    box = SourceBox("nodule", 1.0, 2.0, 3.0, 4.0)
    assert box_tracking_uid("1.2.3", box) == box_tracking_uid("1.2.3", box)
    assert box_tracking_uid("1.2.3", box) != box_tracking_uid("1.2.4", box)
    assert box_tracking_uid("1.2.3", box).startswith("2.25.")


# --- codes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "value", "scheme"),
    [
        ("Pneumothorax", "36118008", "SCT"),
        ("left pleural effusion", "60046008", "SCT"),
        ("Effusion", "60046008", "SCT"),
        ("CONSOLIDATION", "95436008", "SCT"),
        ("atelectasis", "46621007", "SCT"),
        ("Cardiomegaly", "8186001", "SCT"),
        ("enlarged cardiac silhouette", "8186001", "SCT"),
        ("pulmonary nodule", "27925004", "SCT"),
        ("Lung Opacity", "112001", "DCM"),
        ("pulmonary oedema", "19242006", "SCT"),
        ("rib fracture", "125605004", "SCT"),
        ("Support Devices", "49062001", "SCT"),
        ("ETT", "26412008", "SCT"),
    ],
)
def test_common_chest_findings_are_coded(label: str, value: str, scheme: str) -> None:
    concept = finding_concept(label)
    assert (concept.value, concept.scheme_designator) == (value, scheme)
    assert not coded_finding(label).is_free_text


def test_unknown_finding_falls_back_to_free_text() -> None:
    coded = coded_finding("swirly shadow near the hilum")
    assert coded.is_free_text
    assert coded.concept == FREE_TEXT_FINDING


# --- the report ---------------------------------------------------------------------------


def report(cr: Dataset, image: RadiographImage, **overrides: Any) -> tuple[Dataset, list[Any]]:
    boxes, dropped = map_boxes(
        [
            Box("Pneumothorax", y0=100, x0=550, y1=300, x1=900),
            Box("swirly shadow", y0=500, x0=200, y1=700, x1=450),
            Box("outside", y0=0, x0=0, y1=100, x1=20),  # in the left padding only
        ],
        image,
    )
    assert len(dropped) == 1
    findings = [LocalizedFinding(box.label, box) for box in boxes] + [
        LocalizedFinding("Cardiomegaly"),
    ]
    options: dict[str, Any] = {
        "narrative": "Right apical pneumothorax. Heart enlarged.",
        "impression": "Pneumothorax.",
        "author": ResultAuthor(MODEL, False),
        "task": "cxr-localize",
        "verdicts": ["Pleural effusion: stable"],
        "lab_items": [LabResult(name="Hb", result="13.1", unit="g/dL")],
        **overrides,
    }
    return build_measurement_report([cr], findings, **options), boxes


@pytest.fixture(scope="module")
def written(
    cr: Dataset, cr_image: RadiographImage, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[SourceBox]]:
    sr, boxes = report(cr, cr_image)
    return write_tmp(sr, tmp_path_factory.mktemp("sr")), boxes


def test_dciodvfy_reports_no_errors(written: tuple[Path, list[SourceBox]]) -> None:
    assert dciodvfy_errors(written[0]) == []


def test_pixelmed_validates_tid1500(written: tuple[Path, list[SourceBox]]) -> None:
    assert pixelmed_sr_errors(written[0]) == []


def test_pixelmed_helper_reports_a_broken_template(
    written: tuple[Path, list[SourceBox]], tmp_path: Path
) -> None:
    """The gate can fail: a wrong relationship in TID 1204 is reported."""
    ds = pydicom.dcmread(written[0])
    ds.ContentSequence[0].RelationshipType = "CONTAINS"
    broken = tmp_path / "broken.dcm"
    ds.save_as(broken)
    errors = pixelmed_sr_errors(broken)
    assert any("1204" in line for line in errors), errors


def test_dsrdump_parses_the_report(written: tuple[Path, list[SourceBox]]) -> None:
    dsrdump = shutil.which("dsrdump")
    assert dsrdump is not None, "dsrdump not found (Debian package dcmtk)"
    result = subprocess.run(
        [dsrdump, "+Pl", str(written[0])], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Imaging Measurement Report" in result.stdout
    assert '(36118008,SCT,"Pneumothorax")' in result.stdout


def test_round_trip_gives_findings_and_boxes_in_source_pixels(
    cr: Dataset, written: tuple[Path, list[SourceBox]]
) -> None:
    path, boxes = written
    back = hd.sr.srread(path)
    assert isinstance(back, hd.sr.Comprehensive3DSR)
    content = back.content
    assert isinstance(content, hd.sr.MeasurementReport)
    planar = content.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in planar] == ["1: Pneumothorax", "2: swirly shadow"]
    assert [g.finding_type.value for g in planar if g.finding_type] == [
        "36118008",
        FREE_TEXT_FINDING.value,
    ]
    for group, box in zip(planar, boxes, strict=True):
        assert group.roi is not None
        np.testing.assert_allclose(group.roi.value, box.corners())
        assert group.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        assert group.tracking_uid == box_tracking_uid(cr.SOPInstanceUID, box)
        [image] = hd.sr.utils.find_content_items(
            group[0], value_type=hd.sr.ValueTypeValues.IMAGE, recursive=True
        )
        assert image.referenced_sop_instance_uid == cr.SOPInstanceUID
    unboxed, lab = content.get_image_measurement_groups()
    assert unboxed.tracking_identifier == "3: Cardiomegaly"
    assert unboxed.finding_type is not None and unboxed.finding_type.value == "8186001"
    assert unboxed.source_images == []
    # The lab test is coded too: LOINC hemoglobin (mass/volume) in g/dL.
    assert lab.tracking_identifier == "lab 1: Hb"
    [measurement] = lab.get_measurements()
    assert (measurement.name.value, measurement.name.scheme_designator) == ("718-7", "LN")
    assert measurement.value == 13.1
    assert measurement.unit.value == "g/dL"


def test_round_trip_keeps_text_flags_and_patient(
    cr: Dataset, written: tuple[Path, list[SourceBox]]
) -> None:
    back = pydicom.dcmread(written[0])
    assert back.VerificationFlag == "UNVERIFIED"
    assert back.CompletionFlag == "PARTIAL"
    assert back.StudyInstanceUID == cr.StudyInstanceUID
    assert back.PatientID == cr.PatientID
    assert back.SeriesInstanceUID != cr.SeriesInstanceUID
    assert back.SeriesNumber == 9902
    assert back.BodyPartExamined == "CHEST"
    assert "cxr-localize" in back.SeriesDescription and MODEL in back.SeriesDescription
    [disclaimer] = texts(back, "Comment")
    assert disclaimer.startswith("NOT FOR DIAGNOSTIC USE.")
    assert texts(back, "Findings") == ["Right apical pneumothorax. Heart enlarged."]
    assert texts(back, "Impression") == ["Pneumothorax."]
    # The uncoded label keeps its words; verdicts and lab tests come as findings.
    assert texts(back, "Finding") == [
        "swirly shadow",
        "Pleural effusion: stable",
        "Hb: 13.1 g/dL",
    ]
    assert texts(back, "Algorithm Name")[0] == MODEL
    procedure = [
        item
        for item in back.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Procedure reported"
    ]
    assert procedure[0].ConceptCodeSequence[0].CodeValue == codes.SCT.ImagingProcedure.value


def test_test_model_is_marked(cr: Dataset, cr_image: RadiographImage, tmp_path: Path) -> None:
    sr, _ = report(cr, cr_image, author=ResultAuthor("tiny-random", True))
    path = write_tmp(sr, tmp_path)
    back = pydicom.dcmread(path)
    assert back.SeriesDescription.startswith("TEST MODEL")
    [disclaimer] = texts(back, "Comment")
    assert disclaimer.startswith(TEST_MODEL_BANNER)
    assert texts(back, "Device Observer Name") == [f"{TEST_MODEL_BANNER}: tiny-random"]
    assert dciodvfy_errors(path) == []


def build(sources: list[Dataset], findings: list[LocalizedFinding], **overrides: Any) -> Dataset:
    """The report with defaults for what a test doesn't care about."""
    options: dict[str, Any] = {
        "narrative": "Lesion.",
        "impression": None,
        "author": ResultAuthor(MODEL, False),
        "task": "ct-volume",
        **overrides,
    }
    return build_measurement_report(sources, findings, **options)


def test_no_findings_still_validates(cr: Dataset, tmp_path: Path) -> None:
    sr = build(
        [cr],
        [],
        narrative="No acute cardiopulmonary abnormality.",
        author=ResultAuthor(TEST_MODEL, True),
        task="cxr-localize",
    )
    validated_report(sr, tmp_path)


def test_non_ascii_text_switches_to_utf8(cr: Dataset, cr_image: RadiographImage) -> None:
    sr, _ = report(cr, cr_image, narrative="Pleuraerguss, Größe 3 cm")
    assert sr.SpecificCharacterSet == "ISO_IR 192"


def test_box_outside_the_source_is_refused(cr: Dataset) -> None:
    box = SourceBox("nodule", 0.0, 0.0, 3000.0, 10.0)
    with pytest.raises(ValueError, match="nodule"):
        build([cr], [LocalizedFinding("nodule", box)])


def test_empty_narrative_is_refused(cr: Dataset) -> None:
    with pytest.raises(ValueError, match="narrative"):
        build([cr], [], narrative=" ")


# --- several sources: a volume's slices, an enhanced CT's frames --------------------------


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    return headers(make_ct_series(tmp_path_factory.mktemp("ct"), n_slices=6))


def test_volume_slices_are_listed_and_referenced_per_finding(
    ct: list[Dataset], tmp_path: Path
) -> None:
    nodule = LocalizedFinding(
        "nodule",
        images=(ImageReference(ct[2].SOPInstanceUID), ImageReference(ct[3].SOPInstanceUID)),
    )
    other = LocalizedFinding("swirly shadow", images=(ImageReference(ct[5].SOPInstanceUID),))
    conclusion = "Any acute abnormality in the CT volume: yes (the model's final answer)"
    sr = build(
        ct,
        [nodule, other, LocalizedFinding("mass")],
        conclusion=conclusion,
        author=ResultAuthor(TEST_MODEL, True),
    )
    path, content = validated_report(sr, tmp_path)
    back = pydicom.dcmread(path)
    uids = [str(ds.SOPInstanceUID) for ds in ct]
    assert library_uids(back) == uids
    assert sorted(evidence_uids(back)) == sorted(uids)
    assert texts(back, "Conclusion") == [conclusion]
    assert back.BodyPartExamined == "HEAD"
    groups = content.get_image_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["1: nodule", "2: swirly shadow", "3: mass"]
    assert [[i.referenced_sop_instance_uid for i in g.source_images] for g in groups] == [
        uids[2:4],
        uids[5:6],
        [],
    ]
    assert groups[0].source_images[0].referenced_sop_class_uid == ct[2].SOPClassUID


def _library_groups(sr: Dataset) -> list[tuple[dict[str, object], list[str]]]:
    """Each Image Library Group as (its descriptors by code meaning, its images' UIDs)."""
    [library] = [
        item
        for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.ImageLibrary.value
    ]
    out = []
    for group in library.ContentSequence:
        assert group.ConceptNameCodeSequence[0].CodeValue == codes.DCM.ImageLibraryGroup.value
        shared: dict[str, object] = {}
        images: list[str] = []
        for item in group.ContentSequence:
            if item.ValueType == "IMAGE":
                assert item.RelationshipType == "CONTAINS"
                assert "ContentSequence" not in item  # the group states what they share
                images.append(str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
                continue
            assert item.RelationshipType == "HAS ACQ CONTEXT"
            assert not images, "a group's descriptors come before its images (TID 1600 row 3)"
            meaning = item.ConceptNameCodeSequence[0].CodeMeaning
            shared[meaning] = {
                "CODE": lambda i: i.ConceptCodeSequence[0].CodeValue,
                "NUM": lambda i: float(i.MeasuredValueSequence[0].NumericValue),
                "TEXT": lambda i: i.TextValue,
            }[item.ValueType](item)
        out.append((shared, images))
    return out


def test_images_that_share_descriptors_are_one_library_group(
    ct: list[Dataset], tmp_path: Path
) -> None:
    # A slice reconstructed on another matrix (a made-up 256² one) starts a second group.
    other = Dataset()
    other.update(ct[4])
    other.Rows, other.Columns = 256, 256
    sources = [*ct[:4], other, ct[5]]
    path, _ = validated_report(build(sources, []), tmp_path)  # dciodvfy and PixelMed
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    rows, columns = int(ct[0].Rows), int(ct[0].Columns)
    assert _library_groups(pydicom.dcmread(path)) == [
        (
            {
                "Modality": "CT",
                "Pixel Data Rows": rows,
                "Pixel Data Columns": columns,
            },
            [*uids[:4], uids[5]],
        ),
        (
            {
                "Modality": "CT",
                "Pixel Data Rows": 256,
                "Pixel Data Columns": 256,
            },
            [uids[4]],
        ),
    ]


def test_frames_of_an_enhanced_ct_are_referenced_by_number(tmp_path: Path) -> None:
    path, _ = make_enhanced_ct(tmp_path / "ect", n_frames=5)
    [ect] = headers([path])
    uid = ect.SOPInstanceUID
    finding = LocalizedFinding("lesion", images=(ImageReference(uid, 4), ImageReference(uid, 2)))
    _, content = validated_report(build([ect], [finding]), tmp_path)
    [group] = content.get_image_measurement_groups()
    [image] = group.source_images
    assert image.referenced_sop_instance_uid == uid
    assert image.referenced_frame_numbers == [2, 4]


@pytest.mark.parametrize(
    ("finding", "message"),
    [
        (LocalizedFinding("x", images=(ImageReference("1.2.3"),)), "not among"),
        (
            LocalizedFinding("x", box=SourceBox("x", 0, 0, 1, 1), images=(ImageReference("1"),)),
            "box",
        ),
    ],
)
def test_references_to_no_source_are_refused(
    ct: list[Dataset], finding: LocalizedFinding, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build(ct, [finding])


def test_a_frame_the_source_lacks_is_refused(ct: list[Dataset]) -> None:
    finding = LocalizedFinding("x", images=(ImageReference(ct[0].SOPInstanceUID, 2),))
    with pytest.raises(ValueError, match="has 1 frame"):
        build(ct, [finding])


def test_sources_of_two_studies_or_none_are_refused(ct: list[Dataset], cr: Dataset) -> None:
    with pytest.raises(ValueError) as caught:
        build([*ct, cr], [])
    assert str(cr.StudyInstanceUID) in str(caught.value)
    with pytest.raises(ValueError, match="at least one"):
        build([], [])
