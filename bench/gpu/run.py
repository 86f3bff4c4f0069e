"""The command line, `python -m bench.gpu`: the options, the run, the report written."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

import bench.gpu
from bench.gpu.inputs import studies
from bench.gpu.measure import WARMUP_NEW_TOKENS, sweep
from bench.gpu.model import (
    FULL_TEXT,
    FULL_VISION,
    SMOKE_TEXT,
    SMOKE_VISION,
    build_config,
    build_model,
    build_processor,
    full_size_check,
    parameter_counts,
)
from bench.gpu.report import machine, print_table
from bench.gpu.roofline import (
    COPY_BYTES,
    GIB,
    SMOKE_COPY_BYTES,
    measure_bandwidth,
    spec_bandwidth,
    sync,
)
from node.files import write_atomically
from node.inference.budgets import TOKENS_PER_IMAGE

MAX_BATCH = 256
MIN_GAIN = 1.05  # a batch must beat the best throughput so far by 5 % to go on doubling
SMOKE_MAX_BATCH = 2

RESULTS = Path("bench") / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu", description=(bench.gpu.__doc__ or "").split("\n")[0]
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
    sync(device)
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
