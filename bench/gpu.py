"""GPU benchmark: MedGemma 1.5 4B's full architecture, random weights, on one GPU.

Issue 6. A ``Gemma3ForConditionalGeneration`` of MedGemma 1.5 4B's exact shape (below),
randomly initialised on the GPU in bf16 with SDPA attention, and the node's own prompts
through the Gemma 3 processor (the test model's tokenizer and processor, 256 tokens an
image as MedGemma has). Random weights run the same kernels on the same tensor shapes as
the real ones, so the timings are what MedGemma's would be under transformers; the text
is noise. Since a random model may
emit an end-of-turn token at any step, every row is forced to decode exactly the asked
number of tokens (``min_new_tokens = max_new_tokens``; checked after each call).

Two studies, each at batch 1, 2, 4, 8, … until out of GPU memory, until a batch adds
less than ``--min-gain`` to the throughput, or ``--max-batch``:

* chest report: 1 image (896²), ``cxr_report_prompt``, 300 new tokens;
* CT: 85 slices (896²), ``volume_prompt``, 300 new tokens (a reasoned yes/no answer;
  the notebook's cap is 2000, a longer answer adds decode steps at the decode rate).

For each: time to first token (vision tower + prefill), decode steps/s and tokens/s,
latency (``generate`` from inputs on the GPU to the last token), studies/hour =
batch × 3600 / latency, the CPU processor's time (measured for one study, × batch)
and studies/hour with it, and peak GPU memory (``torch.cuda.max_memory_allocated``).
Rows of a batch are copies of one study (identical lengths, no padding). One warm-up
call (8 new tokens) per study type, at batch 1, before its timed runs;
``torch.cuda.synchronize`` around every timing.

Decode roofline: a decode step reads every language-model weight once (the vision tower
runs only in the prefill; the tied embedding is read whole as the output projection)
plus each row's KV cache (sliding layers: at most the 1024-token window), so
steps/s ≤ bandwidth ÷ (weight bytes + batch × KV bytes), summed over the answer's steps.
The bandwidth is the data-sheet figure for the GPU where it is known and a measured
device-to-device copy (read + write bytes ÷ time); both are reported.

Run: ``python -m bench.gpu`` on a CUDA machine (``make bench-gpu``); writes
``bench/results/gpu.json``. Without CUDA it stops and says so, unless ``--smoke``: then
the same code runs on the CPU with a scaled-down model (2 layers), a 2-slice CT and
batches 1–2, writes ``bench/results/gpu-smoke.json``, and checks that the full-size
config builds (on the meta device, no memory). Smoke figures are not GPU figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3Processor,
    Gemma3TextConfig,
    GenerationConfig,
    SiglipVisionConfig,
)
from transformers.generation.streamers import BaseStreamer

from node.files import write_atomically
from node.inference.budgets import IMAGE_SIZE, MAX_VOLUME_SLICES, TOKENS_PER_IMAGE
from node.inference.prompts import chat_messages, cxr_report_prompt, volume_prompt
from node.inference.request import Prompt

REPORT_NEW_TOKENS = 300
CT_SLICES = MAX_VOLUME_SLICES
CT_NEW_TOKENS = 300
WARMUP_NEW_TOKENS = 8
MAX_BATCH = 256
MIN_GAIN = 1.05  # a batch must beat the best throughput so far by 5 % to go on doubling
COPY_BYTES = 2 * 1024**3  # each buffer of the device-to-device copy
COPY_REPEATS = 20
GIB = 1024**3

SMOKE_CT_SLICES = 2
SMOKE_NEW_TOKENS = 16
SMOKE_MAX_BATCH = 2
SMOKE_COPY_BYTES = 64 * 1024**2

RESULTS = Path("bench") / "results"

# MedGemma 1.5 4B = Gemma 3 4B (google/gemma-3-4b-it's config.json). Every value is set
# here rather than left to transformers' defaults, which are Gemma 3 2B's for the text.
# Layer types follow sliding_window_pattern 6: every sixth layer global (5 of 34).
ROPE = {
    "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
    "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
}
FULL_TEXT: dict[str, Any] = {
    "vocab_size": 262_208,
    "hidden_size": 2560,
    "intermediate_size": 10_240,
    "num_hidden_layers": 34,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "query_pre_attn_scalar": 256,
    "sliding_window": 1024,
    "sliding_window_pattern": 6,
    "rope_parameters": ROPE,
    "max_position_embeddings": 131_072,
    "hidden_activation": "gelu_pytorch_tanh",
    "rms_norm_eps": 1e-6,
    "attention_bias": False,
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
    "tie_word_embeddings": True,
}
FULL_VISION: dict[str, Any] = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": IMAGE_SIZE,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "vision_use_head": False,
}
# The smoke model: the same classes and processor, two text layers (one sliding, one
# global; a window the 2-slice CT overflows), one vision layer, the full vocabulary.
SMOKE_TEXT: dict[str, Any] = {
    **FULL_TEXT,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "query_pre_attn_scalar": 32,
    "sliding_window": 256,
    "sliding_window_pattern": 2,
}
SMOKE_VISION: dict[str, Any] = {
    **FULL_VISION,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}


def spec_bandwidth(name: str, memory_bytes: int) -> tuple[str, float] | None:
    """Data-sheet memory bandwidth (bytes/s) for a CUDA device name, or None if unknown."""
    n = name.lower()
    if "gh200" in n:  # 96 GB HBM3 and 144 GB HBM3e parts differ; measure instead
        return None
    if "h200" in n:
        return "H200", 4.8e12
    if "h100" in n:
        if "pcie" in n:
            return "H100 PCIe", 2.0e12
        if "nvl" in n:
            return "H100 NVL", 3.9e12
        return "H100 SXM", 3.35e12
    if "a100" in n:
        return ("A100 80GB", 2.0e12) if memory_bytes > 60 * GIB else ("A100 40GB", 1.555e12)
    if "l40s" in n:
        return "L40S", 0.864e12
    if "4090" in n:
        return "RTX 4090", 1.008e12
    return None


def measure_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes/s of a large ``copy_`` (each byte read once and written once), best of 3."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(3):
        _sync(device)
        started = time.perf_counter()
        for _ in range(COPY_REPEATS):
            dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - started)
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return 2 * nbytes * COPY_REPEATS / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- model -----------------------------------------------------------------------------------


def build_processor() -> Gemma3Processor:
    """The test model's tokenizer and 896² image processor, at MedGemma's 256 tokens an image.

    Its vocabulary is ~1k tokens, so every id stays below the model's 262,208.
    """
    from node.testing.processor import build_processor as build_test_processor

    small = build_test_processor()  # the test model's own
    processor = Gemma3Processor(
        image_processor=small.image_processor,
        tokenizer=small.tokenizer,
        chat_template=small.chat_template,
        image_seq_length=TOKENS_PER_IMAGE,
    )
    processor.tokenizer.padding_side = "left"  # as TransformersEngine batches
    return processor


def build_config(processor: Gemma3Processor, *, smoke: bool) -> Gemma3Config:
    tokenizer = processor.tokenizer

    def token(text: str) -> int:
        token_id = tokenizer.convert_tokens_to_ids(text)
        if not isinstance(token_id, int) or token_id >= FULL_TEXT["vocab_size"]:
            raise RuntimeError(f"token {text!r} has no usable id in the test tokenizer")
        return token_id

    text = Gemma3TextConfig(
        **(SMOKE_TEXT if smoke else FULL_TEXT),
        pad_token_id=token("<pad>"),
        bos_token_id=token("<bos>"),
        eos_token_id=[token("<eos>"), token("<end_of_turn>")],
    )
    vision = SiglipVisionConfig(**(SMOKE_VISION if smoke else FULL_VISION))
    # The image tokens take the test tokenizer's ids (MedGemma's are 255999/256000/262144).
    return Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=TOKENS_PER_IMAGE,
        boi_token_index=token("<start_of_image>"),
        eoi_token_index=token("<end_of_image>"),
        image_token_index=token("<image_soft_token>"),
    )


def build_model(
    config: Gemma3Config, device: torch.device, dtype: torch.dtype
) -> Gemma3ForConditionalGeneration:
    """Random weights allocated and initialised on ``device`` directly."""
    with device:
        model = Gemma3ForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation="sdpa"
        )
    model.to(device)  # a no-op unless some buffer was made on another device
    text = config.text_config
    model.generation_config = GenerationConfig(
        bos_token_id=text.bos_token_id,
        eos_token_id=text.eos_token_id,
        pad_token_id=text.pad_token_id,
        do_sample=False,
    )
    return model.eval()


def parameter_counts(model: Gemma3ForConditionalGeneration) -> dict[str, int]:
    """All parameters, and those a decode step reads (language model + output projection)."""

    def count(*modules: torch.nn.Module) -> int:
        seen: dict[int, int] = {}
        for module in modules:
            for p in module.parameters():
                seen[id(p)] = p.numel()  # the tied embedding / lm_head counts once
        return sum(seen.values())

    inner = model.model
    return {
        "total": count(model),
        "language_model": count(inner.language_model),
        "vision_tower": count(inner.vision_tower),
        "projector": count(inner.multi_modal_projector),
        "decode_step": count(inner.language_model, model.lm_head),
    }


def kv_bytes(text: Gemma3TextConfig, context: int, element_bytes: int) -> int:
    """KV-cache bytes one row's decode step reads at ``context`` tokens."""
    per_token_layer = 2 * text.num_key_value_heads * text.head_dim * element_bytes
    total = 0
    for kind in text.layer_types:
        span = min(context, text.sliding_window) if kind == "sliding_attention" else context
        total += span * per_token_layer
    return total


def decode_roofline(
    weight_bytes: int,
    text: Gemma3TextConfig,
    element_bytes: int,
    *,
    prompt_tokens: int,
    new_tokens: int,
    batch: int,
    bandwidth: float,
) -> float:
    """Most decode steps/s the bandwidth allows over this answer (first token excluded)."""
    steps = new_tokens - 1
    # Step i feeds token P+i-1 and attends over P+i positions.
    moved = sum(
        weight_bytes + batch * kv_bytes(text, prompt_tokens + i, element_bytes)
        for i in range(1, new_tokens)
    )
    return steps * bandwidth / moved


# --- measuring -------------------------------------------------------------------------------


class _FirstTokenClock(BaseStreamer):
    """``generate`` puts the prompt, then each step's tokens: the second put is the first token."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self.puts = 0
        self.first_token_at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2:
            _sync(self._device)
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
    _sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            streamer=clock,
        )
    _sync(device)
    ended = time.perf_counter()
    generated = output.shape[-1] - inputs["input_ids"].shape[-1]
    if generated != new_tokens or clock.first_token_at is None:
        raise RuntimeError(f"asked for {new_tokens} new tokens, generate made {generated}")
    return Run(clock.first_token_at - started, ended - clock.first_token_at, ended - started)


@dataclass(frozen=True)
class Study:
    key: str
    title: str
    prompt: Prompt
    new_tokens: int


def studies(*, smoke: bool) -> list[Study]:
    rng = np.random.default_rng(0)

    def image() -> Image.Image:  # noise: content is irrelevant to random weights
        return Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8))

    new_tokens = SMOKE_NEW_TOKENS if smoke else None
    slices = SMOKE_CT_SLICES if smoke else CT_SLICES
    report = new_tokens or REPORT_NEW_TOKENS
    ct = new_tokens or CT_NEW_TOKENS
    return [
        Study(
            "cxr_report",
            "chest report, 1 image",
            cxr_report_prompt(image(), max_new_tokens=report),
            report,
        ),
        Study(
            "ct",
            f"CT, {slices} slices",
            volume_prompt([image() for _ in range(slices)], "CT", max_new_tokens=ct),
            ct,
        ),
    ]


def preprocess(processor: Gemma3Processor, prompt: Prompt) -> tuple[dict[str, torch.Tensor], float]:
    """The processor's tensors for one study (as TransformersEngine.inputs), best time of 2."""
    best = float("inf")
    batch: Any = None
    for _ in range(2):
        started = time.perf_counter()
        batch = processor.apply_chat_template(
            [chat_messages(prompt)],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True},
        )
        best = min(best, time.perf_counter() - started)
    return dict(batch), best


def on_device(
    inputs: dict[str, torch.Tensor], batch: int, device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """``batch`` copies of one study; pixel values stack per image, in row order."""
    out = {}
    for key, value in inputs.items():
        moved = value.to(device, dtype=dtype) if value.is_floating_point() else value.to(device)
        out[key] = moved.repeat(batch, *[1] * (moved.dim() - 1))
    return out


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


# --- machine and report ----------------------------------------------------------------------


def machine(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_bytes=props.total_memory,
            gpu_multiprocessors=props.multi_processor_count,
            compute_capability=f"{props.major}.{props.minor}",
            cuda_runtime=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            driver=_nvidia_smi("driver_version"),
        )
    return info


def _nvidia_smi(field: str) -> str | None:
    try:
        result = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip().splitlines()[0] if result.stdout.strip() else None


def print_table(result: dict[str, Any], bandwidth_names: list[str]) -> None:
    print(
        f"\n{result['title']}: {result['prompt_tokens']} prompt tokens, "
        f"{result['new_tokens']} new tokens; best batch {result['best_batch']} "
        f"({result['stopped']})"
    )
    roof = " ".join(f"{'roof ' + n:>13}" for n in bandwidth_names)
    print(
        f"  {'batch':>5} {'TTFT s':>7} {'steps/s':>8} {'tok/s':>8} {roof} "
        f"{'latency s':>9} {'studies/h':>10} {'+prep/h':>9} {'peak GiB':>8}"
    )
    for p in result["points"]:
        if "out_of_memory" in p:
            print(f"  {p['batch']:>5} out of GPU memory")
            continue
        fractions = " ".join(
            f"{p['roofline_steps_per_second'][n]:7.1f} {p['fraction_of_roofline'][n]:4.0%}"
            for n in bandwidth_names
        )
        peak = f"{p['peak_memory_bytes'] / GIB:8.1f}" if p["peak_memory_bytes"] else f"{'-':>8}"
        print(
            f"  {p['batch']:>5} {p['prefill_seconds']:7.2f} {p['decode_steps_per_second']:8.1f} "
            f"{p['decode_tokens_per_second']:8.0f} {fractions} {p['latency_seconds']:9.2f} "
            f"{p['studies_per_hour']:10.0f} {p['studies_per_hour_with_preprocess']:9.0f} {peak}"
        )


def full_size_check(processor: Gemma3Processor) -> dict[str, int]:
    """Build the full-size model on the meta device (no memory): the config is valid."""
    model = build_model(build_config(processor, smoke=False), torch.device("meta"), torch.bfloat16)
    return parameter_counts(model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument(
        "--smoke", action="store_true", help="CPU, scaled-down model: proves the script runs"
    )
    parser.add_argument("--max-batch", type=int, default=None, help=f"default {MAX_BATCH}")
    parser.add_argument("--min-gain", type=float, default=MIN_GAIN)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per batch (median)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.min_gain < 1:
        parser.error("--repeats must be ≥ 1 and --min-gain ≥ 1")

    if args.smoke:
        device, dtype = torch.device("cpu"), torch.float32  # bf16 matmuls are slow on CPUs
        max_batch = args.max_batch or SMOKE_MAX_BATCH
    elif not torch.cuda.is_available():
        print(
            "bench.gpu: no CUDA device here (torch "
            f"{torch.__version__}, cuda {torch.version.cuda}); nothing measured. Run it on a "
            "GPU host with a CUDA build of torch, or pass --smoke for a CPU check of the script.",
            file=sys.stderr,
        )
        return 2
    else:
        device, dtype = torch.device("cuda"), torch.bfloat16
        max_batch = args.max_batch or MAX_BATCH

    info = machine(device)
    print(
        f"bench.gpu{' --smoke (CPU, scaled-down model: not GPU figures)' if args.smoke else ''}: "
        f"{info.get('gpu', info['cpu_model'])}, torch {info['torch']}, "
        f"transformers {info['transformers']}",
        flush=True,
    )
    bandwidths: dict[str, float] = {}
    spec = spec_bandwidth(info["gpu"], info["gpu_memory_bytes"]) if "gpu" in info else None
    if spec is not None:
        bandwidths["spec"] = spec[1]
    bandwidths["measured"] = measure_bandwidth(
        device, SMOKE_COPY_BYTES if args.smoke else COPY_BYTES
    )
    print(
        "memory bandwidth: "
        + (f"data sheet ({spec[0]}) {spec[1] / 1e12:.2f} TB/s, " if spec else "no data sheet, ")
        + f"measured copy {bandwidths['measured'] / 1e12:.2f} TB/s",
        flush=True,
    )

    processor = build_processor()
    full_counts = full_size_check(processor)
    started = time.perf_counter()
    model = build_model(build_config(processor, smoke=args.smoke), device, dtype)
    _sync(device)
    init_seconds = time.perf_counter() - started
    weights_memory = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    counts = parameter_counts(model)
    element_bytes = torch.finfo(dtype).bits // 8
    weight_bytes = counts["decode_step"] * element_bytes
    dtype_name = str(dtype).removeprefix("torch.")
    print(
        f"model: {counts['total'] / 1e9:.3f} B parameters, {counts['decode_step'] / 1e9:.3f} B "
        f"read per decode step ({weight_bytes / GIB:.2f} GiB in {dtype_name}); built in "
        f"{init_seconds:.1f} s. Full size: {full_counts['total'] / 1e9:.3f} B",
        flush=True,
    )

    out = RESULTS / ("gpu-smoke.json" if args.smoke else "gpu.json")
    payload: dict[str, Any] = {
        "smoke": args.smoke,
        "machine": info,
        "model": {
            "note": "random weights, scaled-down smoke model (not MedGemma's size)"
            if args.smoke
            else "random weights, MedGemma 1.5 4B's architecture",
            "text_config": SMOKE_TEXT if args.smoke else FULL_TEXT,
            "vision_config": SMOKE_VISION if args.smoke else FULL_VISION,
            "mm_tokens_per_image": TOKENS_PER_IMAGE,
            "layer_types": model.config.text_config.layer_types,
            "dtype": dtype_name,
            "attn_implementation": "sdpa",
            "parameters": counts,
            "decode_weight_bytes": weight_bytes,
            "init_seconds": init_seconds,
            "weights_memory_bytes": weights_memory,
            "full_size_parameters": full_counts,
        },
        "bandwidth_bytes_per_second": bandwidths,
        "bandwidth_spec_name": spec[0] if spec else None,
        "settings": {
            "max_batch": max_batch,
            "min_gain": args.min_gain,
            "repeats": args.repeats,
            "warmup_new_tokens": WARMUP_NEW_TOKENS,
            "forced_length": "min_new_tokens = max_new_tokens",
            "batch_rows": "copies of one study",
        },
        "studies": {},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    for study in studies(smoke=args.smoke):
        payload["studies"][study.key] = sweep(
            model,
            processor,
            study,
            device,
            dtype,
            weight_bytes=weight_bytes,
            bandwidths=bandwidths,
            max_batch=max_batch,
            min_gain=args.min_gain,
            repeats=args.repeats,
        )
        # Written after each study, so a run that dies later keeps what it measured.
        write_atomically(out, json.dumps(payload, indent=2) + "\n")
    for result in payload["studies"].values():
        print_table(result, list(bandwidths))
    print(
        "\n  TTFT: generate() to first token (vision + prefill); steps/s: decode steps a second "
        "per row; tok/s: × batch;\n  roof: steps/s the bandwidth allows (weights + KV read per "
        "step) and the fraction reached;\n  studies/h: batch × 3600 / latency; +prep/h: with the "
        "CPU processor's time (× batch) added."
    )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
