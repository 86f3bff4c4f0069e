"""``medgemma-node run``: files in, result objects out, no network; what the model saw is saved."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import yaml
from pydicom import Dataset, dcmread
from pydicom.uid import Comprehensive3DSRStorage

from fixtures.documents import make_encapsulated_pdf
from fixtures.series import make_cr_study, make_ct_series
from fixtures.wsi import make_wsi_series
from tests.dicom_tools import dciodvfy_errors, pixelmed_sr_errors
from tests.peers import NODE_BIN


def _config(tmp_path: Path, test_model: Path) -> Path:
    config = tmp_path / "node.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "node": {"data_dir": str(tmp_path / "data")},
                "model": {"engine": "test", "path": str(test_model), "max_new_tokens": 80},
            }
        )
    )
    return config


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NODE_BIN), "run", *map(str, args)], capture_output=True, text=True, timeout=600
    )


def test_run_writes_valid_srs_and_model_inputs(tmp_path: Path, test_model: Path) -> None:
    config = _config(tmp_path, test_model)
    inputs = tmp_path / "in"
    cr = make_cr_study(inputs / "cr", patient_id="RUN-CR")
    ct = make_ct_series(inputs / "ct", n_slices=12)
    (inputs / "not-dicom.txt").write_text("hello")
    out, saved = tmp_path / "out", tmp_path / "saved"
    result = _run(inputs, "--config", config, "--out", out, "--save-inputs", saved)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "not-dicom.txt" in result.stderr  # skipped with a reason, not a crash
    written = sorted(out.rglob("*.dcm"))
    assert len(written) == 2
    studies = {str(dcmread(p).StudyInstanceUID) for p in written}
    assert studies == {str(dcmread(cr).StudyInstanceUID), str(dcmread(ct[0]).StudyInstanceUID)}
    for path in written:
        assert dcmread(path).SOPClassUID == Comprehensive3DSRStorage  # TID 1500, every task
        assert dciodvfy_errors(path) == []
        assert pixelmed_sr_errors(path) == []
    loud = "TEST MODEL"
    assert loud in result.stderr  # said at start-up, not only inside the results

    cr_inputs = next(saved.glob("*cxr-report"))
    assert sorted(p.name for p in cr_inputs.glob("*.png")) == ["000.png"]
    assert "Describe this X-ray." in (cr_inputs / "prompt.txt").read_text()
    ct_inputs = next(saved.glob("*ct-volume"))
    assert len(list(ct_inputs.glob("*.png"))) == 12
    meta = json.loads((ct_inputs / "meta.json").read_text())
    assert meta["slice_indices"] == list(range(12))
    assert meta["z_positions"] == sorted(meta["z_positions"])
    assert meta["padding"] == {"top": 0, "bottom": 0, "left": 0, "right": 0}  # 512² slices
    assert meta["region"] == {"text": "the head", "source": "BodyPartExamined"}  # 693_UNCR
    prompt = (ct_inputs / "prompt.txt").read_text()
    assert prompt.startswith(
        "You are an instructor teaching medical students. You are analyzing a contiguous block "
        "of CT slices from the head. Please review the slices provided below carefully.\n"
    )
    assert prompt.index("SLICE 1") < prompt.index("SLICE 12")


def test_clinical_context_reaches_the_volume_question_not_the_chest_report(
    tmp_path: Path, test_model: Path
) -> None:
    """The CT question takes the evaluation form with the indication; the chest report is
    the quick-start prompt exactly, and its SR claims no context it didn't use."""
    config = _config(tmp_path, test_model)
    cr = make_cr_study(tmp_path / "in" / "cr", patient_id="CTX-1")
    ct = make_ct_series(tmp_path / "in" / "ct", n_slices=6, patient_id="CTX-2")
    for path in [cr, *ct]:
        ds = dcmread(path)
        ds.ReasonForTheRequestedProcedure = "Fever and cough"
        ds.save_as(path, enforce_file_format=True)
    out, saved = tmp_path / "out", tmp_path / "saved"
    result = _run(tmp_path / "in", "--config", config, "--out", out, "--save-inputs", saved)
    assert result.returncode == 0, result.stderr[-3000:]
    ct_inputs = next(saved.glob("*ct-volume"))
    assert (
        'After looking at the indication and patient history "Indication: Fever and cough.'
        in (ct_inputs / "prompt.txt").read_text()
    )
    meta = json.loads((ct_inputs / "meta.json").read_text())
    assert meta["context_sources"][0] == "ReasonForTheRequestedProcedure"
    cr_inputs = next(saved.glob("*cxr-report"))
    assert "After looking" not in (cr_inputs / "prompt.txt").read_text()
    assert json.loads((cr_inputs / "meta.json").read_text())["context"] is None
    reports = {
        str(ds.StudyInstanceUID): p
        for p in out.rglob("*.dcm")
        if (ds := dcmread(p)).SOPClassUID == Comprehensive3DSRStorage
    }
    ct_texts = _sr_texts(reports[str(dcmread(ct[0]).StudyInstanceUID)])
    cr_texts = _sr_texts(reports[str(dcmread(cr).StudyInstanceUID)])
    assert any("Fever and cough" in text for text in ct_texts)
    assert any("No acute cardiopulmonary abnormality" in text for text in cr_texts)
    assert not any("Fever and cough" in text for text in cr_texts)


def _items(ds: Dataset) -> Iterator[Dataset]:
    """Every content item of the tree, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _sr_texts(path: Path) -> list[str]:
    sr = dcmread(path)
    return [str(element.value) for element in sr.iterall() if element.keyword == "TextValue"]


def test_lab_report_from_an_encapsulated_pdf(tmp_path: Path, test_model: Path) -> None:
    pdf = make_encapsulated_pdf(tmp_path / "in", patient_id="LAB-1", pages=2)
    out, saved = tmp_path / "out", tmp_path / "saved"
    config = _config(tmp_path, test_model)
    result = _run(pdf, "--config", config, "--out", out, "--save-inputs", saved)
    assert result.returncode == 0, result.stderr[-3000:]
    (sr_path,) = out.rglob("*.dcm")
    texts = _sr_texts(sr_path)
    # the test model's JSON, validated and carried as a line of text and a coded number
    assert "1 lab test(s) extracted from 2 page(s)." in texts
    assert any(t.startswith("Hemoglobin: 13.5 g/dL (reference 12.0-16.0)") for t in texts)
    [number] = [item for item in _items(dcmread(sr_path)) if item.ValueType == "NUM"]
    concept = number.ConceptNameCodeSequence[0]
    assert (concept.CodeValue, concept.CodingSchemeDesignator) == ("718-7", "LN")  # LOINC
    value = number.MeasuredValueSequence[0]
    assert float(value.NumericValue) == 13.5
    assert value.MeasurementUnitsCodeSequence[0].CodeValue == "g/dL"
    assert dciodvfy_errors(sr_path) == []
    assert pixelmed_sr_errors(sr_path) == []
    inputs = next(saved.glob("*lab-report"))
    assert sorted(p.name for p in inputs.glob("*.png")) == ["000.png", "001.png"]
    assert "Clinical Data Extraction Specialist" in (inputs / "prompt.txt").read_text()


def test_whole_slide_image_gets_a_description(tmp_path: Path, test_model: Path) -> None:
    files = make_wsi_series(tmp_path / "in", patient_id="WSI-1")
    out, saved = tmp_path / "out", tmp_path / "saved"
    result = _run(
        tmp_path / "in",
        "--config",
        _config(tmp_path, test_model),
        "--out",
        out,
        "--save-inputs",
        saved,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sr_path,) = out.rglob("*.dcm")
    assert any("Benign breast tissue" in t for t in _sr_texts(sr_path))
    sr = dcmread(sr_path)
    assert sr.StudyInstanceUID == dcmread(files[0]).StudyInstanceUID
    assert dciodvfy_errors(sr_path) == []
    assert pixelmed_sr_errors(sr_path) == []
    # The evidence is the pyramid level the patches were cut from (about 10X).
    [study] = sr.CurrentRequestedProcedureEvidenceSequence
    [series] = study.ReferencedSeriesSequence
    cited = {str(ref.ReferencedSOPInstanceUID) for ref in series.ReferencedSOPSequence}
    headers = [dcmread(f, stop_before_pixels=True) for f in files]
    level = {str(h.SOPInstanceUID) for h in headers if h.SOPInstanceUID in cited}
    assert level == cited and len(cited) >= 1
    spacing = {
        round(
            float(h.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing[0]), 4
        )
        for h in headers
        if h.SOPInstanceUID in cited
    }
    assert spacing == {0.001}  # 1 µm/px: 10X
    inputs = next(saved.glob("*wsi"))
    meta = json.loads((inputs / "meta.json").read_text())
    assert round(meta["magnification"]) == 10
    # The fixture's BodyPartExamined is COLON; nothing names the procedure.
    assert meta["tissue"] == {"text": "colon", "source": "BodyPartExamined"}
    assert meta["procedure"] == {"text": None, "source": "none"}
    prompt = (inputs / "prompt.txt").read_text()
    assert prompt.startswith(
        "You are an instructor teaching medical students. For education purposes, provide a "
        "brief descriptive text for the set of pathology patches extracted from a pathology "
        "slide. Consider the tissue type and procedure (below) when deciding what to include "
        "in the descriptive text.\ncolon, unknown:\n<image>"
    )  # the notebook's text first, patches after
    assert meta["patch_positions"] and all(
        row % 896 == 0 and column % 896 == 0 for row, column in meta["patch_positions"]
    )
