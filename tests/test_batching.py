"""Batching: requests from several threads go to the real (tiny) Gemma 3 model together and
each gets its own answer; shapes are not mixed; running out of GPU memory halves the batch."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from node.inference import prompts
from node.inference.answers import parse_boxes
from node.inference.batching import BatchingEngine
from node.inference.engine import TransformersEngine
from node.inference.request import Prompt
from node.testing.checkpoint import LOCALIZE_BOX, REPORT_ANSWER, VOLUME_ANSWER


def _image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (448, 448, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _answers(engine: BatchingEngine, requests: Sequence[Prompt]) -> list[str]:
    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(engine.generate, requests))


def test_concurrent_requests_share_a_batch_and_keep_their_answers(
    engine: TransformersEngine,
) -> None:
    batching = BatchingEngine(engine, max_batch=4, wait_seconds=1.0)
    requests = [
        prompts.cxr_report_prompt(_image(1)),
        prompts.cxr_localize_prompt(_image(2), "opacity"),
        prompts.cxr_report_prompt(_image(3)),
    ]
    report, localized, second_report = _answers(batching, requests)
    assert report == second_report == REPORT_ANSWER
    [box] = parse_boxes(localized)
    assert (box.y0, box.x0, box.y1, box.x1) == LOCALIZE_BOX
    assert batching.batches_run == [3]  # one generate call for the three
    # a batch of one answers exactly as the unbatched engine does
    assert batching.generate(requests[1]) == engine.generate(requests[1])
    assert batching.label == engine.label and batching.is_test_model


def test_prompts_with_other_image_counts_are_not_padded_together(
    engine: TransformersEngine,
) -> None:
    batching = BatchingEngine(engine, max_batch=4, wait_seconds=1.0)
    volume = prompts.volume_prompt([_image(n) for n in range(3)], "CT")
    answers = _answers(
        batching,
        [prompts.cxr_report_prompt(_image(4)), volume, prompts.cxr_report_prompt(_image(5))],
    )
    assert answers == [REPORT_ANSWER, VOLUME_ANSWER, REPORT_ANSWER]
    assert sorted(batching.batches_run) == [1, 2]


class _SmallGpu(TransformersEngine):
    """The real engine on a device that holds one request at a time: larger batches raise
    the error CUDA raises (no GPU here to run out of)."""

    def generate_batch(self, requests: Sequence[Prompt]) -> list[str]:
        if len(requests) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().generate_batch(requests)


def test_out_of_memory_halves_the_batch_and_every_request_is_answered(test_model: Path) -> None:
    small = _SmallGpu(test_model)
    batching = BatchingEngine(small, max_batch=4, wait_seconds=1.0)
    answers = _answers(batching, [prompts.cxr_report_prompt(_image(n)) for n in range(4)])
    assert answers == [REPORT_ANSWER] * 4
    assert batching.max_batch == 1  # stays small from then on
    assert batching.batches_run == [1, 1, 1, 1]


def test_an_engine_error_reaches_every_request_of_its_batch(engine: TransformersEngine) -> None:
    batching = BatchingEngine(engine, max_batch=2, wait_seconds=1.0)
    broken = Prompt(system=None, content=(_image(6), "x"), max_new_tokens=0)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(batching.generate, broken) for _ in range(2)]
        errors = [future.exception(timeout=120) for future in futures]
    assert all(error is not None for error in errors), errors
    # and the engine goes on answering afterwards
    assert batching.generate(prompts.cxr_report_prompt(_image(7))) == REPORT_ANSWER


def test_an_engine_without_batches_is_refused() -> None:
    with pytest.raises(TypeError, match="cannot generate batches"):
        BatchingEngine(object(), max_batch=2)
