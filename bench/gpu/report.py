"""What the bench ran on, and the table it prints."""

from __future__ import annotations

import subprocess
from typing import Any

import torch
import transformers

from bench.gpu.roofline import GIB
from bench.machine import machine as host_machine


def machine(device: torch.device) -> dict[str, Any]:
    """The host (as every bench reports it), the libraries, and the GPU when there is one."""
    info: dict[str, Any] = {
        **host_machine(),
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
