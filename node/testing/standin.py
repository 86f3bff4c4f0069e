"""A stand-in for a GPU: the test checkpoint answering each request in a fixed time.

``bench/gpu_feed.py`` asks whether the node keeps a GPU busy: everything but the model is
the node's real work (receiving, completeness, the job queue, reading and windowing the
images, the pixel values and the processor's tensors, results, delivery), and the model
answers as a GPU would: in a fixed time that costs the CPU nothing, with the answer the
test checkpoint gives that kind of prompt (so the node's parsers and result builders run
as they do with it). Running the tiny model itself would spend CPU that, on a GPU host,
the GPU spends.

Only for ``model.engine: test``, and only when the environment asks for it:
``MEDGEMMA_STANDIN_SECONDS="0.3,1.5"`` (a request with one image, one with more), and
optionally ``MEDGEMMA_STANDIN_GATE=/path``: no request is answered until that file exists,
so a benchmark can queue a whole burst before the clock starts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from node.inference import prompts as recipe
from node.inference.engine import TransformersEngine
from node.inference.pixels import PreparedPrompt
from node.inference.request import Prompt
from node.testing import answers

log = logging.getLogger(__name__)

SECONDS_ENV = "MEDGEMMA_STANDIN_SECONDS"
GATE_ENV = "MEDGEMMA_STANDIN_GATE"


class StandInEngine:
    """``engine`` answering in a fixed time per request (the longest of a batch)."""

    def __init__(
        self, engine: TransformersEngine, *, one_image: float, more: float, gate: Path | None
    ) -> None:
        self._engine = engine
        self._seconds = (one_image, more)
        self._gate = gate
        self.label = engine.label
        self.is_test_model = engine.is_test_model

    def prepare(self, prompt: Prompt) -> PreparedPrompt:
        return self._engine.prepare(prompt)

    def generate(self, prompt: Prompt) -> str:
        return self.generate_batch([prompt])[0]

    def generate_batch(self, requests: Sequence[Prompt | PreparedPrompt]) -> list[str]:
        if self._gate is not None and not self._gate.exists():
            log.info("stand-in: holding %d request(s) until %s exists", len(requests), self._gate)
            while not self._gate.exists():
                time.sleep(0.05)
        prompts = [r.prompt if isinstance(r, PreparedPrompt) else r for r in requests]
        fixed = max(self._seconds[len(p.images) > 1] for p in prompts)
        started = time.monotonic()
        self._engine.inputs(requests)  # the CPU's part of a model call
        took = time.monotonic() - started
        if took > fixed:
            log.warning("stand-in: the inputs took %.3f s, over the fixed %.3f s", took, fixed)
        time.sleep(max(0.0, fixed - took))
        log.info("stand-in answered %d request(s) in %.3f s (fixed)", len(prompts), fixed)
        return [_answer(prompt) for prompt in prompts]


def _answer(prompt: Prompt) -> str:
    """What the test checkpoint answers a prompt of this kind (node/testing/answers.py)."""
    text = prompt.text
    if prompt.history:
        return answers.VERDICTS_ANSWER
    if prompt.system == recipe.REPORT_SYSTEM:
        return answers.REPORT_ANSWER
    for opening, answer in (
        (recipe.VOLUME_INSTRUCTION.split("{")[0], answers.VOLUME_ANSWER),
        (recipe.WSI_INSTRUCTION[:80], answers.WSI_ANSWER),
        (recipe.LAB_REPORT_PROMPT[:60], answers.LAB_ANSWER),
        (recipe.LONGITUDINAL_INSTRUCTION[:60], answers.LONGITUDINAL_ANSWER),
    ):
        if opening in text:
            return answer
    return answers.LOCALIZE_ANSWER


def stand_in_from_environment(engine: TransformersEngine) -> StandInEngine | None:
    """The stand-in the environment asks for, or None (the engine answers as it is)."""
    spec = os.environ.get(SECONDS_ENV)
    if not spec:
        return None
    try:
        one_image, more = (float(part) for part in spec.split(","))
    except ValueError as e:
        raise ValueError(f"{SECONDS_ENV} must be 'one-image,more' seconds, got {spec!r}") from e
    gate = os.environ.get(GATE_ENV)
    log.warning(
        "stand-in engine: %.3f s per one-image request, %.3f s per larger one%s",
        one_image,
        more,
        f", held until {gate} exists" if gate else "",
    )
    return StandInEngine(
        engine, one_image=one_image, more=more, gate=Path(gate) if gate else None
    )
