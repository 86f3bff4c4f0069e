"""What the GPU's memory allows: data-sheet and measured bandwidth, the KV cache a decode step
reads, and the decode roofline (steps/s ≤ bandwidth ÷ bytes read a step)."""

from __future__ import annotations

import time

import torch
from transformers import Gemma3TextConfig

COPY_BYTES = 2 * 1024**3  # each buffer of the device-to-device copy
COPY_REPEATS = 20
SMOKE_COPY_BYTES = 64 * 1024**2
GIB = 1024**3


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
        sync(device)
        started = time.perf_counter()
        for _ in range(COPY_REPEATS):
            dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - started)
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return 2 * nbytes * COPY_REPEATS / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
