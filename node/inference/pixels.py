"""The Gemma 3 image processor's pixel values, the same numbers in a fraction of the time.

The checkpoint's processor (``Gemma3ImageProcessorPil``; the torchvision one is not
installed beside the CPU torch) resizes each image with PIL, then rescales it in float64
and normalizes it in float32 with numpy: about 27 ms an image, 2.3 s for a CT's 85
slices. Only the resize mixes pixels; rescaling and normalizing map each 8-bit value to
one float. So: the same PIL resize (same size, resampling filter and ``reducing_gap``),
then a 256-entry table per channel built by running the processor's own ``rescale`` and
``normalize`` on the values 0–255; the caller and any free pool threads share the images
(PIL and numpy let go of the GIL while they work). tests/test_model_pixels.py checks the
result against the processor's own output, value for value, for chest, CT, MR and slide
inputs.

A job thread resizes a prompt's images ahead (:meth:`ModelPixels.prepare`) while the model
answers another job, and keeps them as 8-bit pixels: a CT's 85 slices are 205 MB so, where
their float32 values are 820 MB. The values are looked up when the prompt's turn at the
model comes (about 2 ms an image), into one buffer used again from call to call: a fresh
820 MB costs a page fault on each of its 200,000 pages when first written (0.6 s here,
and up to 10 s when the virtual machine has to find the memory).

Anything this path doesn't cover (pan-and-scan, another size or filter, an image that is
not 8-bit RGB, a processor of another kind) goes to the processor unchanged.
"""

from __future__ import annotations

import itertools
import logging
import mmap
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature

from node.inference.request import Prompt

__all__ = ["ModelPixels", "PreparedPrompt"]

log = logging.getLogger(__name__)

# The processor's switches this path reproduces, with the values it needs.
_REQUIRED = {"do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True}
_PER_CALL_SWITCHES = ("do_pan_and_scan", "do_convert_rgb")

_T = TypeVar("_T")


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt whose images are resized already; None where the fast path doesn't cover
    them (the processor then makes their values when the prompt's turn comes)."""

    prompt: Prompt
    # One (row, column, channel) uint8 array an image: 2.4 MB each, which the allocator
    # reuses, where one 205 MB block for a CT would be mapped afresh (a page fault per 4 KB)
    # for every CT.
    resized: tuple[np.ndarray, ...] | None


class ModelPixels:
    """A drop-in for the processor's ``image_processor`` that takes the fast path."""

    def __init__(self, image_processor: Any, *, threads: int | None = None) -> None:
        self.slow = image_processor
        size = getattr(image_processor, "size", None)
        height, width = getattr(size, "height", None), getattr(size, "width", None)
        self._size = (int(width), int(height)) if height and width else None
        self._resample = getattr(image_processor, "resample", None)
        self.fast = self._size is not None and all(
            getattr(image_processor, name, None) is value for name, value in _REQUIRED.items()
        ) and not getattr(image_processor, "do_pan_and_scan", False)
        self._table = self._value_table() if self.fast else None
        self._same_table = self._table is not None and bool((self._table == self._table[0]).all())
        self._threads = threads or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="pixels")
        self._local = threading.local()  # the prepared images the current call may use
        self._values = _ValuesBuffer(self._size or (0, 0))

    def __getattr__(self, name: str) -> Any:
        # Everything the processor asks of its image processor besides the call itself.
        return getattr(self.slow, name)

    def __call__(
        self, images: Any = None, return_tensors: Any = None, **kwargs: Any
    ) -> BatchFeature:
        flat = _flatten(images)
        if not self._covers(flat, kwargs):
            answer: BatchFeature = self.slow(images, return_tensors=return_tensors, **kwargs)
            return answer
        pixels = self.values(self._gather(flat))
        return BatchFeature(
            data={
                "pixel_values": torch.from_numpy(pixels) if return_tensors == "pt" else pixels,
                "num_crops": [0] * len(pixels),
            },
            tensor_type=return_tensors,
        )

    def prepare(self, prompt: Prompt) -> PreparedPrompt:
        """The prompt with its images resized, now (by the caller's thread, with any of the
        pool's that are free)."""
        images = prompt.images
        if not self._covers(images, {}):
            return PreparedPrompt(prompt, None)
        return PreparedPrompt(prompt, self.resize(images))

    @contextmanager
    def ready(self, prepared: Sequence[PreparedPrompt]) -> Iterator[None]:
        """While the processor runs on these prompts, their resized images stand in."""
        self._local.rows = {
            id(image): (item.resized, row)
            for item in prepared
            if item.resized is not None
            for row, image in enumerate(item.prompt.images)
        }
        try:
            yield
        finally:
            self._local.rows = {}

    def _gather(self, images: list[Image.Image]) -> tuple[np.ndarray, ...]:
        """The images resized: prepared ones as they are, the rest resized now."""
        rows: dict[int, tuple[tuple[np.ndarray, ...], int]] = getattr(self._local, "rows", {})
        found = [rows.get(id(image)) for image in images]
        first = found[0]
        if first is not None and len(first[0]) == len(images) and all(
            f is not None and f[0] is first[0] and f[1] == k for k, f in enumerate(found)
        ):
            return first[0]  # one prepared prompt, all of its images in order: no copy
        missing = [image for image, f in zip(images, found, strict=True) if f is None]
        resized = self.resize(missing) if missing else None
        if resized is not None and len(missing) == len(images):
            return resized
        fresh = iter(resized if resized is not None else ())
        return tuple(next(fresh) if f is None else f[0][f[1]] for f in found)

    def resize(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, ...]:
        """The images as the processor resizes them, (row, column, channel) uint8 each."""
        started = time.perf_counter()
        resized = tuple(self._shared(len(images), lambda index: self._resize_one(images[index])))
        log.info("%d image(s) resized in %.3f s", len(images), time.perf_counter() - started)
        return resized

    def values(self, resized: tuple[np.ndarray, ...]) -> np.ndarray:
        """The pixel values (image, channel, row, column), float32, as the processor makes
        them of these resized images: one table lookup per value."""
        out = self._values.lend(len(resized))
        # Runs of images, not one task an image: each call into numpy gives the GIL back
        # and must win it again, up to 5 ms each while the job threads keep it busy.
        runs = min(self._threads, len(resized))
        bounds = [int(bound) for bound in np.linspace(0, len(resized), runs + 1)]

        def look_up(run: int) -> None:
            start, stop = bounds[run], bounds[run + 1]
            self._look_up(resized[start:stop], out[start:stop])

        self._shared(runs, look_up)
        return out

    def _shared(self, count: int, work: Callable[[int], _T]) -> list[_T]:
        """``[work(0), …, work(count - 1)]``, done by the caller and whichever pool threads
        are free: the caller never waits in the pool's queue (a chest image behind a CT's
        85 slices, the model's next call behind both), and an idle machine lends all its
        cores."""
        taken = itertools.count()
        lock = threading.Lock()
        results: dict[int, _T] = {}

        def take_turns() -> None:
            while True:
                with lock:
                    index = next(taken)
                if index >= count:
                    return
                results[index] = work(index)

        helpers = [self._pool.submit(take_turns) for _ in range(min(self._threads, count) - 1)]
        try:
            take_turns()
        finally:
            for helper in helpers:
                if not helper.cancel():  # started: it finishes the item in hand
                    helper.result()  # and raises what it raised
        return [results[index] for index in range(count)]

    def _resize_one(self, image: Image.Image) -> np.ndarray:
        assert self._size is not None
        return np.asarray(image.resize(self._size, resample=self._resample, reducing_gap=None))

    def _look_up(self, resized: tuple[np.ndarray, ...], out: np.ndarray) -> None:
        assert self._table is not None
        for image, values in zip(resized, out, strict=True):
            planes = image.transpose(2, 0, 1)  # (channel, row, column), as ``values``
            # One call per image: numpy turns the indices into a 64-bit copy first, 19 MB
            # an image (the heap's to reuse) where a whole CT's would be 3 GB.
            if self._same_table:  # Gemma 3: mean and std alike for every channel
                np.take(self._table[0], planes, out=values, mode="clip")
                continue
            for channel in range(3):
                np.take(self._table[channel], planes[channel], out=values[channel], mode="clip")

    def _covers(self, images: Sequence[Any], kwargs: dict[str, Any]) -> bool:
        if not self.fast or not images:
            return False
        if kwargs.get("do_pan_and_scan") or kwargs.get("do_convert_rgb") is False:
            return False
        for name, value in kwargs.items():
            if name in _PER_CALL_SWITCHES or name.startswith("pan_and_scan_"):
                continue  # settled above; pan-and-scan's sizes matter only when it is on
            if value is not None and value != getattr(self.slow, name, value):
                return False  # a per-call setting this path doesn't reproduce
        return all(isinstance(i, Image.Image) and i.mode == "RGB" for i in images)

    def _value_table(self) -> np.ndarray:
        """What the processor's own rescale and normalize make of each 8-bit value."""
        values = np.broadcast_to(np.arange(256, dtype=np.uint8), (3, 1, 256)).copy()
        scaled = self.slow.rescale(values, scale=self.slow.rescale_factor)
        normal = self.slow.normalize(scaled, mean=self.slow.image_mean, std=self.slow.image_std)
        return np.ascontiguousarray(np.asarray(normal)[:, 0, :])


class _ValuesBuffer:
    """One float32 buffer for the pixel values of a model call, used again by the next:
    the model takes one call at a time, so one is enough. While the values it lent are
    still held (a caller keeping a call's tensors), the next call gets a new array."""

    def __init__(self, size: tuple[int, int]) -> None:
        self._width, self._height = size
        self._buffer: np.ndarray | None = None
        self._lent: weakref.ref[np.ndarray] | None = None
        self._lock = threading.Lock()

    def lend(self, images: int) -> np.ndarray:
        shape = (images, 3, self._height, self._width)
        with self._lock:
            if self._lent is not None and self._lent() is not None:
                return np.empty(shape, dtype=np.float32)  # the last values are still in use
            if self._buffer is None or len(self._buffer) < images:
                # Plain anonymous memory: numpy asks for transparent huge pages on arrays
                # this large, and faulting those in (with compaction) took 3 s a CT here.
                memory = mmap.mmap(-1, int(np.prod(shape)) * 4)
                self._buffer = np.frombuffer(memory, dtype=np.float32).reshape(shape)
            view = self._buffer[:images]
            self._lent = weakref.ref(view)
            return view


def _flatten(images: Any) -> list[Any]:
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return [image for item in images for image in _flatten(item)]
    return [images]
