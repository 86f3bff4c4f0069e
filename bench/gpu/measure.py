"""Timing ``generate`` as the node calls it, and the batch sweep of one study."""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import Gemma3ForConditionalGeneration, Gemma3Processor
from transformers.generation.streamers import BaseStreamer

from bench.gpu.inputs import Study, on_device, preprocess
from bench.gpu.roofline import decode_roofline, kv_bytes, sync

WARMUP_NEW_TOKENS = 8


class _FirstTokenClock(BaseStreamer):
    """``generate`` puts the prompt, then each step's tokens: the second put is the first token."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self.puts = 0
        self.first_token_at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2:
            sync(self._device)
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


@dataclass(frozen=True)
class Run:
    prefill_seconds: float  # generate() called → first token on the host
    decode_seconds: float  # first token → last token
    generate_seconds: float


def generate_once(
    model: Gemma3ForConditionalGeneration,
    inputs: dict[str, torch.Tensor],
    new_tokens: int,
    device: torch.device,
) -> Run:
    """One greedy ``generate`` as TransformersEngine calls it, forced to ``new_tokens``."""
    clock = _FirstTokenClock(device)
    sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            streamer=clock,
        )
    sync(device)
    ended = time.perf_counter()
    generated = output.shape[-1] - inputs["input_ids"].shape[-1]
    if generated != new_tokens or clock.first_token_at is None:
        raise RuntimeError(f"asked for {new_tokens} new tokens, generate made {generated}")
    return Run(clock.first_token_at - started, ended - clock.first_token_at, ended - started)


def measure_batch(
    model: Gemma3ForConditionalGeneration,
    inputs: dict[str, torch.Tensor],
    batch: int,
    study: Study,
    device: torch.device,
    dtype: torch.dtype,
    repeats: int,
    *,
    warm_up: bool,
) -> tuple[list[Run], int | None]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows = on_device(inputs, batch, device, dtype)
    if warm_up:  # kernels, cuBLAS handles, the allocator's first blocks
        generate_once(model, rows, min(WARMUP_NEW_TOKENS, study.new_tokens), device)
    runs = [generate_once(model, rows, study.new_tokens, device) for _ in range(repeats)]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return runs, peak


def sweep(
    model: Gemma3ForConditionalGeneration,
    processor: Gemma3Processor,
    study: Study,
    device: torch.device,
    dtype: torch.dtype,
    *,
    weight_bytes: int,
    bandwidths: dict[str, float],
    max_batch: int,
    min_gain: float,
    repeats: int,
) -> dict[str, Any]:
    inputs, preprocess_seconds = preprocess(processor, study.prompt)
    prompt_tokens = int(inputs["input_ids"].shape[-1])
    print(
        f"{study.title}: {prompt_tokens} prompt tokens, {study.new_tokens} new tokens, "
        f"processor {preprocess_seconds:.2f} s a study (CPU)",
        flush=True,
    )
    element_bytes = torch.finfo(dtype).bits // 8
    text = model.config.text_config
    points: list[dict[str, Any]] = []
    best = 0.0
    stopped = f"reached --max-batch {max_batch}"
    batch = 1
    while batch <= max_batch:
        oom: str | None = None
        try:
            runs, peak = measure_batch(
                model, inputs, batch, study, device, dtype, repeats, warm_up=batch == 1
            )
        except torch.cuda.OutOfMemoryError as e:
            oom = str(e).splitlines()[0]
        if oom is not None:  # out of the except block: the failed call's tensors are free
            gc.collect()
            torch.cuda.empty_cache()
            points.append({"batch": batch, "out_of_memory": oom})
            stopped = f"out of GPU memory at batch {batch}"
            print(f"  batch {batch:>4}: out of GPU memory", flush=True)
            break
        prefill = statistics.median(r.prefill_seconds for r in runs)
        decode = statistics.median(r.decode_seconds for r in runs)
        latency = statistics.median(r.generate_seconds for r in runs)
        steps_per_second = (study.new_tokens - 1) / decode
        prep = batch * preprocess_seconds
        roofline = {
            name: decode_roofline(
                weight_bytes,
                text,
                element_bytes,
                prompt_tokens=prompt_tokens,
                new_tokens=study.new_tokens,
                batch=batch,
                bandwidth=bandwidth,
            )
            for name, bandwidth in bandwidths.items()
        }
        point = {
            "batch": batch,
            "prefill_seconds": prefill,
            "decode_seconds": decode,
            "decode_steps_per_second": steps_per_second,
            "decode_tokens_per_second": batch * steps_per_second,
            "latency_seconds": latency,
            "studies_per_hour": batch * 3600 / latency,
            "preprocess_seconds": prep,
            "latency_with_preprocess_seconds": latency + prep,
            "studies_per_hour_with_preprocess": batch * 3600 / (latency + prep),
            "peak_memory_bytes": peak,
            "roofline_steps_per_second": roofline,
            "roofline_tokens_per_second": {k: batch * v for k, v in roofline.items()},
            "fraction_of_roofline": {k: steps_per_second / v for k, v in roofline.items()},
            "runs": [asdict(r) for r in runs],
        }
        points.append(point)
        print(f"  batch {batch:>4}: {point['latency_seconds']:.2f} s", flush=True)
        if batch > 1 and point["studies_per_hour"] < best * min_gain:
            stopped = (
                f"batch {batch} gained less than {min_gain - 1:.0%} over the best smaller batch"
            )
            break
        best = max(best, point["studies_per_hour"])
        batch *= 2
    measured = [p for p in points if "out_of_memory" not in p]
    best_point = max(measured, key=lambda p: p["studies_per_hour"]) if measured else None
    return {
        "title": study.title,
        "images": len(study.prompt.images),
        "prompt_tokens": prompt_tokens,
        "new_tokens": study.new_tokens,
        "preprocess_seconds_per_study": preprocess_seconds,
        "kv_cache_bytes_per_row_at_end": kv_bytes(
            text, prompt_tokens + study.new_tokens, element_bytes
        ),
        "best_batch": best_point["batch"] if best_point else None,
        "stopped": stopped,
        "points": points,
    }
