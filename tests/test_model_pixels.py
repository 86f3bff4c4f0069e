"""The node's model inputs against the checkpoint processor's own, value for value.

The engine computes pixel values its own faster way (node/inference/pixels.py) and, with
a prepared prompt, ahead of the model's turn. Whatever the route, every tensor the model
receives must equal what the Gemma 3 processor loaded untouched from the same checkpoint
makes of the same conversation: chest radiograph, CT, MR, slide patches, document pages,
and a batch of two.
"""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from fixtures.documents import make_encapsulated_pdf
from fixtures.series import make_cr_study, make_ct_series, make_mr_series
from fixtures.wsi import make_wsi_series
from node.imaging.document import document_to_pages
from node.imaging.radiograph import radiograph_to_image
from node.imaging.volume import series_to_volume_input
from node.imaging.wsi import wsi_to_patches
from node.inference.engine import TransformersEngine
from node.inference.pixels import ModelPixels
from node.inference.prompts import (
    chat_messages,
    cxr_localize_prompt,
    cxr_report_prompt,
    lab_report_prompt,
    volume_prompt,
    wsi_prompt,
)
from node.inference.request import Prompt


@pytest.fixture(scope="module")
def official(test_model: Path) -> object:
    """The checkpoint's processor as transformers loads it, nothing replaced."""
    processor = AutoProcessor.from_pretrained(test_model, local_files_only=True)
    processor.tokenizer.padding_side = "left"
    assert not isinstance(processor.image_processor, ModelPixels)
    return processor


def _official_inputs(processor: object, prompts: list[Prompt]) -> dict[str, torch.Tensor]:
    batch = processor.apply_chat_template(  # type: ignore[attr-defined]
        [chat_messages(prompt) for prompt in prompts],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True},
    )
    return dict(batch)


@pytest.fixture
def fast_images(engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many images each call of the fast path resized (a spy: it calls through)."""
    counts: list[int] = []
    resize = engine.pixels.resize

    def counted(images: list[Image.Image]) -> object:
        counts.append(len(images))
        return resize(images)

    monkeypatch.setattr(engine.pixels, "resize", counted)
    return counts


def _assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        assert got[key].shape == value.shape, key
        assert torch.equal(got[key], value), f"{key} differs from the processor's"


def _cxr(tmp: Path) -> Prompt:
    return cxr_report_prompt(radiograph_to_image(make_cr_study(tmp / "cr")).image)


def _ct(tmp: Path) -> Prompt:
    volume = series_to_volume_input(make_ct_series(tmp / "ct", 40))
    return volume_prompt(volume.images, "CT")


def _mr(tmp: Path) -> Prompt:
    volume = series_to_volume_input(make_mr_series(tmp / "mr", 20))
    return volume_prompt(volume.images, "MR")


def _wsi(tmp: Path) -> Prompt:
    patches = wsi_to_patches(make_wsi_series(tmp / "wsi")).patches
    return wsi_prompt(patches, tissue="Colon", procedure="Biopsy")


def _pages(tmp: Path) -> Prompt:
    pdf = make_encapsulated_pdf(tmp / "doc", pages=2)
    return lab_report_prompt(document_to_pages([pdf]).pages)


@pytest.mark.parametrize("make", [_cxr, _ct, _mr, _wsi, _pages], ids=lambda f: f.__name__[1:])
def test_inputs_equal_the_processors(
    make: object,
    engine: TransformersEngine,
    official: object,
    tmp_path: Path,
    fast_images: list[int],
) -> None:
    prompt = make(tmp_path)  # type: ignore[operator]
    assert prompt.images, "the prompt must carry images for this test to mean anything"
    expected = _official_inputs(official, [prompt])
    _assert_same(engine.inputs([prompt]), expected)
    assert fast_images == [len(prompt.images)], "the fast path must be the one under test"
    # Prepared ahead, as a job thread does while the model answers another job: the
    # processor's call then computes nothing more.
    prepared = engine.prepare(prompt)
    _assert_same(engine.inputs([prepared]), expected)
    assert fast_images == [len(prompt.images)] * 2


def test_a_batch_of_prepared_prompts_equals_the_processors(
    engine: TransformersEngine, official: object, tmp_path: Path, fast_images: list[int]
) -> None:
    image = radiograph_to_image(make_cr_study(tmp_path / "cr")).image
    report = cxr_report_prompt(image)
    localize = cxr_localize_prompt(image.copy(), "pleural effusion")
    expected = _official_inputs(official, [report, localize])
    prepared = [engine.prepare(report), engine.prepare(localize)]
    _assert_same(engine.inputs(prepared), expected)
    assert fast_images == [1, 1]
    _assert_same(engine.inputs([prepared[0], localize]), expected)
    assert fast_images == [1, 1, 1]  # only the unprepared one computed then


def test_what_the_fast_path_does_not_cover_goes_to_the_processor(
    engine: TransformersEngine, official: object, fast_images: list[int]
) -> None:
    # A greyscale and an RGBA image: the processor converts them itself.
    grey = Image.linear_gradient("L").resize((300, 200))
    rgba = Image.new("RGBA", (64, 96), (10, 200, 30, 128))
    for image in (grey, rgba):
        prompt = cxr_report_prompt(image)
        _assert_same(engine.inputs([prompt]), _official_inputs(official, [prompt]))
    assert fast_images == []


def test_the_values_buffer_used_again_holds_only_the_new_call_s_values(
    engine: TransformersEngine, official: object, tmp_path: Path
) -> None:
    """A model call's pixel values go into one buffer used again by the next call (a new
    820 MB one costs seconds of page faults): a smaller prompt after a CT gets exactly its
    own values in the CT's old buffer; while a call's values are still held, the next call
    gets new memory and both stay right."""

    def address(inputs: dict[str, torch.Tensor]) -> int:
        return int(inputs["pixel_values"].data_ptr())

    ct = engine.inputs([engine.prepare(_ct(tmp_path))])
    first = address(ct)
    del ct
    gc.collect()
    mr = _mr(tmp_path)
    expected = _official_inputs(official, [mr])
    held = engine.inputs([engine.prepare(mr)])
    assert address(held) == first, "the values buffer was not used again"
    _assert_same(held, expected)
    again = engine.inputs([mr])
    assert address(again) != first, "values still held were overwritten"
    _assert_same(again, expected)
    _assert_same(held, expected)


def test_a_prompt_is_prepared_while_every_pixel_thread_is_busy(
    engine: TransformersEngine, official: object, tmp_path: Path
) -> None:
    """Resizing is shared between the calling thread and whichever pool threads are free:
    with all of them held by other work (another job's CT), a prompt is still prepared, by
    its caller alone, and its values are the processor's."""
    pixels = engine.pixels
    release = threading.Event()
    holding = [pixels._pool.submit(release.wait) for _ in range(pixels._threads)]
    try:
        ct = _ct(tmp_path)
        prepared = engine.prepare(ct)  # would wait forever if it queued behind the holders
        assert not any(hold.done() for hold in holding), "the pool was busy all along"
        _assert_same(engine.inputs([prepared]), _official_inputs(official, [ct]))
    finally:
        release.set()


@pytest.mark.parametrize(("level", "expected"), [(0, -1.0), (51, -0.6), (255, 1.0)])
def test_pixel_values_are_the_recipe_s_by_hand(
    engine: TransformersEngine, level: int, expected: float
) -> None:
    """../shared/MEDGEMMA.md: resize to 896×896 (bilinear), mean and std 0.5. A flat image
    stays flat under a bilinear resize, so every value is (level / 255 − 0.5) / 0.5:
    0 → −1, 51 → 2·51/255 − 1 = −0.6, 255 → 1."""
    flat = Image.new("RGB", (300, 200), (level, level, level))
    prepared = engine.prepare(cxr_report_prompt(flat))
    assert prepared.resized is not None
    assert [image.shape for image in prepared.resized] == [(896, 896, 3)]
    values = engine.inputs([prepared])["pixel_values"]
    assert values.shape == (1, 3, 896, 896)
    assert float(values.min()) == pytest.approx(expected, abs=1e-6)
    assert float(values.max()) == pytest.approx(expected, abs=1e-6)
