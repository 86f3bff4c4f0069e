"""Inference: the test checkpoint through the real Gemma 3 loading and generation code.

The tiny model is built once per session (~15-25 s on 2 cores); a second build, by the
data-directory fallback, doubles as the check that builds are deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from node.config import ModelSettings, Task
from node.inference import engine as engine_module
from node.inference import prompts
from node.inference.answers import (
    AnswerError,
    Comparison,
    FindingVerdict,
    LabResult,
    final_answer,
    parse_boxes,
    parse_lab_results,
    parse_longitudinal,
    parse_wsi_description,
    report_sections,
    strip_thinking,
    yes_no,
)
from node.inference.engine import (
    ModelLoadError,
    TransformersEngine,
    find_medgemma_weights,
    load_engine,
)
from node.inference.request import TEST_MODEL_LABEL, Prompt
from node.testing.checkpoint import (
    ANSWERS,
    IMAGE_SIZE,
    LAB_ANSWER,
    LOCALIZE_ANSWER,
    LOCALIZE_BOX,
    LOCALIZE_LABEL,
    LONGITUDINAL_ANSWER,
    MARKER_NAME,
    REPORT_ANSWER,
    TOKENS_PER_IMAGE,
    VERDICTS_ANSWER,
    VOLUME_ANSWER,
    WSI_ANSWER,
    build_test_model,
    is_test_model,
)

NOT_CACHED = "medgemma-node-tests/not-in-any-cache"


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def test_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_model(tmp_path_factory.mktemp("inference") / "test-model", seed=0)


@pytest.fixture(scope="session")
def engine(test_model_dir: Path) -> TransformersEngine:
    loaded = load_engine(ModelSettings(engine="test", path=test_model_dir), Path("unused-data-dir"))
    assert isinstance(loaded, TransformersEngine)
    return loaded


def _noise(seed: int, size: tuple[int, int] = (512, 512), mode: str = "L") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = (3,) if mode == "RGB" else ()
    pixels = rng.integers(0, 256, size=(size[1], size[0], *channels), dtype=np.uint8)
    return Image.fromarray(pixels, mode=mode)


def _gradient(width: int = 640, height: int = 480) -> Image.Image:
    row = np.linspace(0, 255, width).astype(np.uint8)
    return Image.fromarray(np.tile(row, (height, 1)), mode="L")


def _images() -> list[Image.Image]:
    return [_noise(1), _noise(2, (700, 700), "RGB"), _gradient(), Image.new("L", (300, 300))]


# --- the test checkpoint -------------------------------------------------------------------------


def test_checkpoint_is_gemma3_with_medgemma_image_processing(test_model_dir: Path) -> None:
    assert is_test_model(test_model_dir)
    marker = json.loads((test_model_dir / MARKER_NAME).read_text())
    assert "Not MedGemma" in marker["warning"]
    assert marker["answers"] == ANSWERS
    config = json.loads((test_model_dir / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForConditionalGeneration"]
    assert config["mm_tokens_per_image"] == TOKENS_PER_IMAGE
    processor_config = json.loads((test_model_dir / "processor_config.json").read_text())
    image = processor_config["image_processor"]
    assert image["size"] == {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    assert image["image_mean"] == image["image_std"] == [0.5, 0.5, 0.5]
    assert image["resample"] == Image.Resampling.BILINEAR


def test_engine_names_the_test_model(engine: TransformersEngine, test_model_dir: Path) -> None:
    assert engine.is_test_model
    assert engine.label.startswith(TEST_MODEL_LABEL)
    assert str(test_model_dir) in engine.label


def test_report_prompt_gives_the_fixed_report(engine: TransformersEngine) -> None:
    for image in _images():
        answer = engine.generate(prompts.cxr_report_prompt(image))
        assert answer == REPORT_ANSWER
    sections = report_sections(answer)
    assert set(sections) == {"FINDINGS", "IMPRESSION"}
    assert sections["IMPRESSION"] == "No acute cardiopulmonary abnormality."


@pytest.mark.parametrize(("modality", "slices"), [("CT", 1), ("CT", 12), ("MR", 3)])
def test_volume_prompt_gives_the_fixed_answer(
    engine: TransformersEngine, modality: prompts.VolumeModality, slices: int
) -> None:
    volume = [_noise(seed) if seed % 2 else _gradient(512, 512) for seed in range(slices)]
    question = prompts.volume_finding_question("pleural effusion", modality)
    for asked in (None, question):
        prompt = prompts.volume_prompt(volume, modality, question=asked, context="abdominal pain")
        answer = engine.generate(prompt)
        assert answer == VOLUME_ANSWER
        assert final_answer(answer) == "no"
        assert yes_no(answer) is False


def test_localize_prompt_gives_the_fixed_boxes(engine: TransformersEngine) -> None:
    for finding in ("opacity", "left lower lobe consolidation"):
        answer = engine.generate(prompts.cxr_localize_prompt(_noise(7, (600, 600)), finding))
        assert answer == LOCALIZE_ANSWER
    (box,) = parse_boxes(answer)
    assert box.label == LOCALIZE_LABEL
    assert (box.y0, box.x0, box.y1, box.x1) == LOCALIZE_BOX
    assert box.to_pixels(600, 600) == (90.0, 120.0, 270.0, 360.0)
    assert final_answer(answer) == LOCALIZE_LABEL


@pytest.mark.parametrize(
    ("patches", "tissue", "procedure"),
    [(1, "breast", "core needle biopsy"), (7, None, "excision"), (20, "colon", None)],
)
def test_wsi_prompt_gives_the_fixed_description(
    engine: TransformersEngine, patches: int, tissue: str | None, procedure: str | None
) -> None:
    slide = [
        _noise(seed, (256, 256), "RGB") if seed % 3 else _gradient() for seed in range(patches)
    ]
    answer = engine.generate(prompts.wsi_prompt(slide, tissue=tissue, procedure=procedure))
    assert answer == WSI_ANSWER
    assert parse_wsi_description(answer) == WSI_ANSWER


@pytest.mark.parametrize("pages", [1, 3, 8])
def test_lab_report_prompt_gives_the_fixed_tests(engine: TransformersEngine, pages: int) -> None:
    document = [
        _noise(seed, (600, 800)) if seed % 2 else _gradient(600, 800) for seed in range(pages)
    ]
    answer = engine.generate(prompts.lab_report_prompt(document))
    assert answer == LAB_ANSWER
    assert [result.name for result in parse_lab_results(answer)] == ["Hemoglobin"]


# The official strings, written out here by hand from ../shared/MEDGEMMA.md (not taken
# from node.inference.prompts), so a drift in the node's copy fails these tests.
NOTEBOOK_LONGITUDINAL = (
    "Provide a comparison of these two images and include details from\n"
    "the image which students should take note of when reading longitudinal CXR\n"
)
NOTEBOOK_CT_INSTRUCTION = (
    "You are an instructor teaching medical students. You are analyzing a contiguous block "
    "of CT slices from the center of the abdomen. Please review the slices provided below "
    "carefully."
)
NOTEBOOK_WSI_TEXT = (
    "You are an instructor teaching medical students. For education purposes, provide a "
    "brief descriptive text for the set of pathology patches extracted from a pathology "
    "slide. Consider the tissue type and procedure (below) when deciding what to include in "
    "the descriptive text.\n"
)


@pytest.mark.parametrize(
    ("prior_report", "context"),
    [(None, None), (REPORT_ANSWER, None), ("Small right effusion.", "Follow-up of pneumonia.")],
)
def test_longitudinal_turns_give_the_fixed_comparison_then_verdicts(
    engine: TransformersEngine, prior_report: str | None, context: str | None
) -> None:
    pairs = [(_noise(11), _noise(12, (700, 700), "RGB")), (_gradient(), _noise(13, (300, 420)))]
    for prior, current in pairs:
        comparison = prompts.cxr_longitudinal_prompt(prior, current)
        answer = engine.generate(comparison)
        assert answer == LONGITUDINAL_ANSWER
        follow_up = prompts.longitudinal_verdict_prompt(
            comparison, answer, prior_report=prior_report, context=context
        )
        assert engine.generate(follow_up) == VERDICTS_ANSWER
    assert parse_longitudinal(answer) == Comparison(summary=LONGITUDINAL_ANSWER, verdicts=[])
    assert parse_longitudinal(VERDICTS_ANSWER).verdicts == [
        FindingVerdict(finding="right lower lobe opacity", verdict="improved"),
        FindingVerdict(finding="heart size", verdict="stable"),
    ]


def test_longitudinal_first_turn_is_the_notebook_prompt_exactly(
    engine: TransformersEngine,
) -> None:
    prior, current = _noise(21, (96, 96)), _gradient(96, 80)
    prompt = prompts.cxr_longitudinal_prompt(prior, current)
    assert prompt.system is None and prompt.history == ()
    assert prompt.max_new_tokens == 600
    assert prompt.content == (prior, current, NOTEBOOK_LONGITUDINAL)  # no per-image labels
    tokenizer = engine._processor.tokenizer
    first_ids = engine.inputs([prompt])["input_ids"][0].tolist()
    first = tokenizer.decode(first_ids)
    assert first.startswith("<bos><start_of_turn>user\n\n\n<start_of_image>")
    # The chat template trims the notebook string's final newline; the inner one stays.
    assert first.endswith(
        "Provide a comparison of these two images and include details from\nthe image which "
        "students should take note of when reading longitudinal CXR"
        "<end_of_turn>\n<start_of_turn>model\n"
    )
    assert first_ids.count(tokenizer.image_token_id) == 2 * TOKENS_PER_IMAGE

    follow_up = prompts.longitudinal_verdict_prompt(
        prompt, "No change.", prior_report="FINDINGS: Right lower lobe\nopacity.", context="Fever."
    )
    assert follow_up.images == [prior, current]
    inputs = engine.inputs([follow_up])
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(tokenizer.image_token_id) == 2 * TOKENS_PER_IMAGE
    assert tuple(inputs["pixel_values"].shape) == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    # The notebook's turn comes first, untouched; the node's question is a later turn.
    assert tokenizer.decode(ids) == first + (
        "No change.<end_of_turn>\n<start_of_turn>user\n"
        'After looking at the indication and patient history "Fever."... '
        'The report of the prior image was: "FINDINGS: Right lower lobe opacity.". '
        "For each finding in your comparison, give a verdict on its own line, in the form "
        '"FINDING: <finding> | <verdict>", where <verdict> is one of Improved, Stable or '
        "Worsened.<end_of_turn>\n<start_of_turn>model\n"
    )


def test_volume_prompt_layout_and_image_tokens(engine: TransformersEngine) -> None:
    slices = [_noise(seed, (128, 128)) for seed in range(3)]
    prompt = prompts.volume_prompt(
        slices, "CT", question="Is the liver normal?", region="the center of the abdomen"
    )
    assert prompt.system is None
    assert prompt.content == (
        NOTEBOOK_CT_INSTRUCTION,
        slices[0],
        "SLICE 1",
        slices[1],
        "SLICE 2",
        slices[2],
        "SLICE 3",
        "Is the liver normal?",
    )
    assert prompt.max_new_tokens == 2000
    unplaced = prompts.volume_prompt(slices[:1], "CT", region=None)
    assert unplaced.content[0] == (
        "You are an instructor teaching medical students. You are analyzing a contiguous block "
        "of CT slices. Please review the slices provided below carefully."
    )
    inputs = engine.inputs([prompt])
    ids = inputs["input_ids"][0].tolist()
    tokenizer = engine._processor.tokenizer
    assert ids.count(tokenizer.image_token_id) == len(slices) * TOKENS_PER_IMAGE
    assert ids.count(tokenizer.convert_tokens_to_ids("<start_of_image>")) == len(slices)
    assert tuple(inputs["pixel_values"].shape) == (len(slices), 3, IMAGE_SIZE, IMAGE_SIZE)
    text = tokenizer.decode(ids)
    assert text.startswith("<bos><start_of_turn>user\n" + NOTEBOOK_CT_INSTRUCTION)
    assert text.index("SLICE 1") < text.index("SLICE 2") < text.index("SLICE 3")
    assert text.endswith("Is the liver normal?<end_of_turn>\n<start_of_turn>model\n")


def test_wsi_prompt_is_the_notebook_text_before_the_patches(engine: TransformersEngine) -> None:
    patches = [_noise(seed, (96, 96), "RGB") for seed in range(3)]
    prompt = prompts.wsi_prompt(patches, tissue=" colon\n", procedure="core  needle biopsy")
    text = NOTEBOOK_WSI_TEXT + "colon, core needle biopsy:"
    assert prompt.system is None
    assert prompt.content == (text, *patches)  # no per-patch labels
    assert prompt.max_new_tokens == prompts.WSI_MAX_NEW_TOKENS
    for tissue in (None, "", "  "):
        unknown = prompts.wsi_prompt(patches[:1], tissue=tissue, procedure=None)
        assert unknown.content[0] == NOTEBOOK_WSI_TEXT + "unknown, unknown:"
    inputs = engine.inputs([prompt])
    ids = inputs["input_ids"][0].tolist()
    tokenizer = engine._processor.tokenizer
    assert ids.count(tokenizer.image_token_id) == len(patches) * TOKENS_PER_IMAGE
    decoded = tokenizer.decode(ids)
    assert decoded.startswith("<bos><start_of_turn>user\n" + text + "\n\n<start_of_image>")
    assert decoded.endswith("<end_of_image>\n\n<end_of_turn>\n<start_of_turn>model\n")


def test_lab_report_prompt_is_the_official_text_after_the_pages(
    engine: TransformersEngine,
) -> None:
    pages = [_gradient(60, 80), _noise(3, (60, 80))]
    prompt = prompts.lab_report_prompt(pages)
    official = (
        "You are a Clinical Data Extraction Specialist. Your job is to parse lab reports with "
        "high precision. From the given lab report, extract all lab tests into a JSON list. "
        "Each test object in the list must include: name, result, unit, range, panel, method, "
        "specimen, sample_collection_time (formatted as DD-MM-YYYY HH:MM:SS)"
    )
    assert prompt == Prompt(
        system=None,
        content=(*pages, official),
        max_new_tokens=prompts.LAB_REPORT_MAX_NEW_TOKENS,
    )
    text = engine._processor.tokenizer.decode(engine.inputs([prompt])["input_ids"][0])
    assert text.startswith("<bos><start_of_turn>user\n\n\n<start_of_image>")
    assert text.endswith(official + "<end_of_turn>\n<start_of_turn>model\n")


def test_report_prompt_folds_system_into_the_user_turn(engine: TransformersEngine) -> None:
    prompt = prompts.cxr_report_prompt(_gradient())
    text = engine._processor.tokenizer.decode(engine.inputs([prompt])["input_ids"][0])
    assert text == (
        "<bos><start_of_turn>user\nYou are an expert radiologist.\n\n\n\n<start_of_image>"
        + "<image_soft_token>" * TOKENS_PER_IMAGE
        + "<end_of_image>\n\nDescribe this X-ray.<end_of_turn>\n<start_of_turn>model\n"
    )


def test_context_stays_one_quoted_line(engine: TransformersEngine) -> None:
    prompt = prompts.volume_prompt([_gradient()], "CT", context='history "quoted"\nsecond line')
    text = engine._processor.tokenizer.decode(engine.inputs([prompt])["input_ids"][0])
    assert text.endswith(
        'After looking at the indication and patient history "history "quoted" second line"... '
        'Is there "any acute abnormality" in the CT volume? You may write out your argument '
        'before stating your final answer "Final Answer: yes" or "Final Answer: no".'
        "<end_of_turn>\n<start_of_turn>model\n"
    )


def test_engine_test_builds_the_test_model_once_and_deterministically(
    tmp_path: Path, test_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = ModelSettings(engine="test")
    first = load_engine(settings, tmp_path)
    built = tmp_path / "test-model"
    assert first.is_test_model and str(built) in first.label
    weights = "model.safetensors"
    assert (built / weights).read_bytes() == (test_model_dir / weights).read_bytes()

    def refuse(out_dir: Path, *, seed: int = 0) -> Path:
        raise AssertionError(f"rebuilt the test model in {out_dir}")

    monkeypatch.setattr(engine_module, "build_test_model", refuse)
    again = load_engine(settings, tmp_path)
    assert again.generate(prompts.cxr_report_prompt(_gradient())) == REPORT_ANSWER
    # A checkpoint an older release built (other fixed answers, or trained on other
    # prompts) is rebuilt, not served.
    marker = built / MARKER_NAME
    current = json.loads(marker.read_text())
    for key, stale in (
        ("answers", {**current["answers"], "report": "an older release's answer"}),
        ("training", "trained on an older release's prompts"),
    ):
        marker.write_text(json.dumps({**current, key: stale}))
        with pytest.raises(AssertionError, match="rebuilt the test model"):
            load_engine(settings, tmp_path)


def test_missing_medgemma_weights_stop_the_node_instead_of_the_test_model(tmp_path: Path) -> None:
    """A configuration that names MedGemma never falls back to the test checkpoint."""
    with pytest.raises(ModelLoadError) as failed:
        load_engine(ModelSettings(name=NOT_CACHED), tmp_path)
    message = str(failed.value)
    assert "no MedGemma weights" in message and f"{NOT_CACHED} (model.name)" in message
    assert "Hugging Face cache (" in message and "huggingface-cli download" in message
    assert "model.engine: test" in message
    assert not (tmp_path / "test-model").exists()  # nothing built behind the operator's back


def test_the_test_checkpoint_runs_only_on_purpose(tmp_path: Path, test_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="test checkpoint, not MedGemma.*model.engine: test"):
        load_engine(ModelSettings(path=test_model_dir), tmp_path)
    other = tmp_path / "someone-elses"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ModelLoadError, match="holds something other than the test checkpoint"):
        load_engine(ModelSettings(engine="test", path=other), tmp_path)
    assert (other / "notes.txt").read_text() == "keep me"


# --- finding and loading weights -----------------------------------------------------------------


def test_missing_model_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match=str(missing)):
        load_engine(ModelSettings(path=missing), tmp_path)


def test_broken_checkpoint_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match=str(broken)):
        load_engine(ModelSettings(path=broken), tmp_path)


def test_weights_are_found_in_the_hugging_face_cache(tmp_path: Path) -> None:
    repo = tmp_path / "models--google--medgemma-1.5-4b-it"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model-00001-of-00002.safetensors").write_bytes(b"")
    settings = ModelSettings(name="google/medgemma-1.5-4b-it")
    assert find_medgemma_weights(settings, cache_dir=tmp_path) == snapshot
    assert find_medgemma_weights(ModelSettings(name=NOT_CACHED), cache_dir=tmp_path) is None


# --- prompts and answers, no model -----------------------------------------------------------


def test_prompt_limits_are_enforced() -> None:
    with pytest.raises(ValueError, match="at least one slice"):
        prompts.volume_prompt([], "CT")
    too_many = [_gradient(8, 8)] * (prompts.MAX_VOLUME_SLICES + 1)
    with pytest.raises(ValueError, match="got 86"):
        prompts.volume_prompt(too_many, "MR")
    with pytest.raises(ValueError, match="640x480"):
        prompts.cxr_localize_prompt(_gradient(), "nodule")
    patch = _gradient(8, 8)
    with pytest.raises(ValueError, match="at least one patch"):
        prompts.wsi_prompt([], tissue="skin", procedure="excision")
    with pytest.raises(ValueError, match="at most 125 patches, got 126"):
        prompts.wsi_prompt([patch] * 126, tissue="skin", procedure="excision")
    assert len(prompts.wsi_prompt([patch] * 125, tissue=None, procedure=None).images) == 125
    with pytest.raises(ValueError, match="at least one page"):
        prompts.lab_report_prompt([])
    with pytest.raises(ValueError, match="got 86"):
        prompts.lab_report_prompt([patch] * (prompts.MAX_LAB_REPORT_PAGES + 1))


def test_context_takes_the_evaluation_form() -> None:
    image = _gradient()
    question = (
        'Is there "any acute abnormality" in the CT volume? You may write out your argument '
        'before stating your final answer "Final Answer: yes" or "Final Answer: no".'
    )
    volume = prompts.volume_prompt([image], "CT", context="  Fever.\n Cough  for 3 days. ")
    assert volume.content[-1] == (
        'After looking at the indication and patient history "Fever. Cough for 3 days."... '
        + question
    )
    assert prompts.volume_prompt([image], "CT", context=" \n").content[-1] == question
    # The chest report is the quick-start prompt, with no place for a context.
    assert prompts.cxr_report_prompt(image).content == (image, "Describe this X-ray.")


def test_task_defaults_cover_every_task() -> None:
    assert set(prompts.DEFAULT_MAX_NEW_TOKENS) == set(Task)
    prompt = prompts.cxr_report_prompt(_gradient())
    assert prompt == Prompt(
        system="You are an expert radiologist.",
        content=(prompt.content[0], "Describe this X-ray."),
        max_new_tokens=prompts.DEFAULT_MAX_NEW_TOKENS[Task.CXR_REPORT],
    )


def test_answer_parsers_reject_malformed_answers() -> None:
    assert strip_thinking("trace<unused95>  answer \n") == "answer"
    assert yes_no('so...\nFinal Answer: "Yes".') is True
    assert yes_no("no verdict here") is None
    with pytest.raises(AnswerError, match="no ```json"):
        parse_boxes("Final Answer: opacity")
    with pytest.raises(AnswerError, match="not valid JSON"):
        parse_boxes("```json\n[{]\n```")
    with pytest.raises(AnswerError, match="y0 < y1"):
        parse_boxes('```json\n[{"box_2d": [600, 1, 200, 5], "label": "x"}]\n```')


def test_lab_answer_parses_into_one_result() -> None:
    assert parse_lab_results(LAB_ANSWER) == [
        LabResult(
            name="Hemoglobin",
            result="13.5",
            unit="g/dL",
            range="12.0-16.0",
            panel="CBC",
            method=None,
            specimen="Blood",
            sample_collection_time="01-02-2026 08:30:00",
        )
    ]


def test_lab_results_are_read_bare_and_normalised() -> None:
    answer = (
        "thinking<unused95>Here are the tests:\n"
        '[{"name": " Glucose ", "result": 5.4, "unit": "", "sample_collection_time": '
        '"2026-02-01T08:30:00", "flag": "H"},\n'
        ' {"name": "Sodium", "result": "140", "sample_collection_time": "1-2-2026 8:30"},\n'
        ' {"name": "Potassium", "result": "4.1", "sample_collection_time": "02/01/2026 08:30"}]'
        "\nFinal Answer: done"
    )
    glucose, sodium, potassium = parse_lab_results(answer)
    assert (glucose.name, glucose.result, glucose.unit) == ("Glucose", "5.4", None)
    assert glucose.sample_collection_time == "01-02-2026 08:30:00"
    assert not glucose.sample_collection_time_raw
    assert glucose.ignored_keys == ("flag",)
    assert sodium.sample_collection_time == "01-02-2026 08:30:00"
    # Day-first or month-first can't be told apart: kept as written, and flagged.
    assert potassium.sample_collection_time == "02/01/2026 08:30"
    assert potassium.sample_collection_time_raw
    assert parse_lab_results("```json\n[]\n```") == []


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("The patient is doing well.", r"no JSON list of lab tests: 'The patient is doing well\.'"),
        ("x" * 200, r"'x{80}\.\.\.'"),
        ('```json\n[{"name": "Hb", "result": "13.5",]\n```', "not valid JSON"),
        ('[{"name": "Hb", "result": "13.5"}', "not valid JSON"),
        ('```json\n{"name": "Hb", "result": "13.5"}\n```', "must be a JSON list, got dict"),
        ('[{"name": "Hb", "result": "1"}, "Na 140"]', "lab test 1 is not an object"),
        ('[{"name": "Hb", "result": "1"}, {"name": "Na"}]', "lab test 1: 'result' is missing"),
        ('[{"name": "  ", "result": "1"}]', "lab test 0: 'name' is empty"),
        ('[{"name": "Hb", "result": null}]', "lab test 0: 'result' is null"),
        ('[{"name": "Hb", "result": "1", "unit": ["g/dL"]}]', "lab test 0: 'unit' must be"),
        ('[{"name": "Hb", "result": true}]', "lab test 0: 'result' must be"),
    ],
)
def test_lab_parser_names_what_is_wrong(answer: str, message: str) -> None:
    with pytest.raises(AnswerError, match=message):
        parse_lab_results(answer)


def test_longitudinal_verdicts_are_read_in_either_form() -> None:
    answer = (
        "trace<unused95>The effusion is larger.\n"
        "finding: Pleural effusion | WORSENED\n"
        "- **FINDING:** heart size | (B) Stable\n"
        "FINDING: nodule | A\n"
        "Pneumothorax: (A) Improved\n"
        "Edema - (c) worsened.\n"
        "The lines are: unchanged."
    )
    comparison = parse_longitudinal(answer)
    assert comparison.summary == "The effusion is larger.\nThe lines are: unchanged."
    assert comparison.verdicts == [
        FindingVerdict("Pleural effusion", "worsened"),
        FindingVerdict("heart size", "stable"),
        FindingVerdict("nodule", "improved"),
        FindingVerdict("Pneumothorax", "improved"),
        FindingVerdict("Edema", "worsened"),
    ]
    assert comparison.unread == ()


def test_longitudinal_answer_without_verdicts_keeps_the_text() -> None:
    assert parse_longitudinal("  No interval change.\n") == Comparison(
        summary="No interval change.", verdicts=[]
    )
    odd = "Better.\nFINDING: effusion | Resolved\nFINDING: heart | (A) Worsened"
    comparison = parse_longitudinal(odd)
    assert comparison.verdicts == []
    assert comparison.summary == odd  # unreadable verdict lines are kept, and named
    assert comparison.unread == ("FINDING: effusion | Resolved", "FINDING: heart | (A) Worsened")
    for empty in ("", " \n ", "a trace<unused95>  "):
        with pytest.raises(AnswerError, match="longitudinal answer is empty"):
            parse_longitudinal(empty)


def test_wsi_description_must_not_be_empty() -> None:
    assert parse_wsi_description("  Benign skin.\n") == "Benign skin."
    for empty in ("", " \n ", "a trace<unused95>  "):
        with pytest.raises(AnswerError, match="WSI answer is empty"):
            parse_wsi_description(empty)
