"""Requests from several job threads answered together: one ``generate`` call per batch.

A GPU decodes a batch of chest reports in about the time of one (decoding is bound by
reading the weights, not by arithmetic), so a busy department's studies share the model's
steps instead of queueing behind each other. Only requests with the same number of images
go together: a CT's 85 slices beside a one-image report would pad the report to 22k tokens.

The queue is bounded: a thread submitting to a full queue waits, so a flood of studies
waits in the index (durable) rather than in memory. A batch that runs out of GPU memory is
split in half and retried, and the batch size stays smaller from then on.

Each request's CPU work (its images resized, :meth:`TransformersEngine.prepare`) is done by
the submitting job's thread before it queues, so while the model answers one batch the
next jobs are read and prepared: with more job threads than ``max_batch`` the model never
waits on the CPU. The number of job threads bounds the inputs held in memory.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from node.inference.pixels import PreparedPrompt
from node.inference.request import Prompt

log = logging.getLogger(__name__)

GenerateBatch = Callable[[Sequence[Prompt | PreparedPrompt]], list[str]]
Prepare = Callable[[Prompt], PreparedPrompt]


@dataclass
class _Request:
    prompt: Prompt | PreparedPrompt
    answer: Future[str] = field(default_factory=Future)

    @property
    def shape(self) -> int:
        prompt = self.prompt.prompt if isinstance(self.prompt, PreparedPrompt) else self.prompt
        return len(prompt.images)


class BatchingEngine:
    """Wraps an engine with ``generate_batch``; ``generate`` is safe to call from many threads."""

    def __init__(
        self,
        engine: object,
        *,
        max_batch: int,
        wait_seconds: float = 0.05,
        queue_size: int | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        generate_batch = getattr(engine, "generate_batch", None)
        if generate_batch is None:
            raise TypeError(f"{type(engine).__name__} cannot generate batches")
        self._engine = engine
        self._generate_batch: GenerateBatch = generate_batch
        # The CPU part of a request, done on the caller's thread while the model is busy.
        self._prepare: Prepare | None = getattr(engine, "prepare", None)
        self.max_batch = max_batch
        self._wait = wait_seconds
        self._queue: queue.Queue[_Request] = queue.Queue(maxsize=queue_size or 4 * max_batch)
        self._held: deque[_Request] = deque()  # taken from the queue, waiting for their shape
        self.batches_run: list[int] = []  # sizes, for the log and the tests
        self._thread = threading.Thread(target=self._serve, name="batching", daemon=True)
        self._thread.start()

    @property
    def label(self) -> str:
        return str(getattr(self._engine, "label"))  # noqa: B009 - protocol attribute

    @property
    def is_test_model(self) -> bool:
        return bool(getattr(self._engine, "is_test_model"))  # noqa: B009

    def generate(self, prompt: Prompt) -> str:
        request = _Request(self._prepare(prompt) if self._prepare is not None else prompt)
        self._queue.put(request)  # blocks while the queue is full
        return request.answer.result()

    def _next(self, timeout: float | None) -> _Request | None:
        if self._held:
            return self._held.popleft()
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _collect(self) -> list[_Request]:
        """The oldest request and up to ``max_batch - 1`` more of its shape."""
        first = self._next(timeout=None)
        assert first is not None
        batch = [first]
        passed_over: list[_Request] = []
        deadline = time.monotonic() + self._wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and not self._held:
                break
            request = self._next(timeout=max(remaining, 0.0))
            if request is None:
                break
            (batch if request.shape == first.shape else passed_over).append(request)
        # Requests of another shape go first next time, in their order.
        self._held.extendleft(reversed(passed_over))
        return batch

    def _serve(self) -> None:
        while True:
            batch = self._collect()
            self._run(batch)

    def _run(self, batch: list[_Request]) -> None:
        try:
            answers = self._generate_batch([r.prompt for r in batch])
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if len(batch) == 1:
                batch[0].answer.set_exception(
                    RuntimeError(f"{self.label}: out of GPU memory for a single request")
                )
                return
            half = len(batch) // 2
            self.max_batch = max(1, min(self.max_batch, half))
            log.warning(
                "out of GPU memory at batch %d; retrying as %d + %d, batch size now %d",
                len(batch),
                half,
                len(batch) - half,
                self.max_batch,
            )
            self._run(batch[:half])
            self._run(batch[half:])
            return
        except Exception as e:  # the error belongs to every request in the batch
            for request in batch:
                request.answer.set_exception(e)
            return
        self.batches_run.append(len(batch))
        for request, answer in zip(batch, answers, strict=True):
            request.answer.set_result(answer)
