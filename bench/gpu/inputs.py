"""The studies the bench sends: noise images through the node's own prompts, and their tensors."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import Gemma3Processor

from node.inference.budgets import IMAGE_SIZE, MAX_VOLUME_SLICES
from node.inference.prompts import chat_messages, cxr_report_prompt, volume_prompt
from node.inference.request import Prompt

REPORT_NEW_TOKENS = 300
CT_SLICES = MAX_VOLUME_SLICES
CT_NEW_TOKENS = 300
SMOKE_CT_SLICES = 2
SMOKE_NEW_TOKENS = 16


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
