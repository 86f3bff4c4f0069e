"""Longitudinal verdicts: a follow-up turn, or one short question per finding?

The notebook's comparison turn is sent exactly as written; the node then needs a coded
change (Improved / Stable / Worsened, as MS-CXR-T asks) for each finding. Two ways that
leave the first turn untouched:

- ``follow-up``: one more turn in the same conversation, asking for one
  ``FINDING: <finding> | <verdict>`` line a finding (what the node does);
- ``per-finding``: a fresh conversation per finding, prior and current image again, with
  an MS-CXR-T-style question (this benchmark's own wording; the node doesn't send it).

For k findings each is measured on the test checkpoint (the real Gemma 3 processor and
architecture, tiny weights) on this CPU: requests, images encoded by the vision tower,
prompt tokens, and wall time. Prompt tokens are also given as MedGemma would count its
images (256 a picture instead of the test model's 16; text as the test tokenizer splits
it, which is close to, not exactly, Gemma's). On a GPU the vision tower and the prefill
dominate both, so "images encoded" and "MedGemma prompt tokens" are the figures to
compare; a server with prefix caching (vLLM's default) makes the follow-up's first turn
nearly free.

Run: ``python -m bench.longitudinal``. Writes ``bench/results/longitudinal.json``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.machine import machine
from node.inference import prompts
from node.inference.budgets import TOKENS_PER_IMAGE as MEDGEMMA_TOKENS_PER_IMAGE
from node.inference.engine import TransformersEngine
from node.inference.request import Prompt
from node.testing.checkpoint import TOKENS_PER_IMAGE, build_test_model

FINDINGS = ("pleural effusion", "consolidation", "pulmonary edema", "pneumothorax", "pneumonia")
# A comparison of typical length (the notebook allows 600 new tokens).
COMPARISON = (
    "Compared with the prior image, the right lower lobe opacity has decreased and the small "
    "right pleural effusion is smaller. The heart size is stable. No new consolidation or "
    "pneumothorax. Students should note the interval improvement at the right base and the "
    "unchanged position of the central venous catheter."
)
PER_FINDING_QUESTION = (
    'Compared with the first image, has the "{finding}" in the second image (A) Improved, '
    "(B) Stable or (C) Worsened? Answer with one of the three."
)
VERDICT_TOKENS = 12  # one "FINDING: … | Improved" line
PER_FINDING_TOKENS = 4  # "(A) Improved"


def _chest(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(1024, 1024), dtype=np.uint8)
    return Image.fromarray(pixels).convert("RGB")


def _prompt_tokens(engine: TransformersEngine, prompt: Prompt) -> tuple[int, int]:
    """(tokens as the test model counts them, as MedGemma would count its images)."""
    tokens = int(engine.inputs([prompt])["input_ids"].shape[-1])
    images = len(prompt.images)
    return tokens, tokens + images * (MEDGEMMA_TOKENS_PER_IMAGE - TOKENS_PER_IMAGE)


def _run(engine: TransformersEngine, requests: list[Prompt]) -> dict[str, Any]:
    counted = [_prompt_tokens(engine, prompt) for prompt in requests]
    started = time.perf_counter()
    for prompt in requests:
        engine.generate(prompt)
    return {
        "requests": len(requests),
        "images_encoded": sum(len(prompt.images) for prompt in requests),
        "prompt_tokens_test_model": sum(test for test, _ in counted),
        "prompt_tokens_medgemma": sum(medgemma for _, medgemma in counted),
        "new_tokens_asked": sum(prompt.max_new_tokens for prompt in requests),
        "seconds_cpu": round(time.perf_counter() - started, 3),
    }


def main() -> int:
    prior, current = _chest(1), _chest(2)
    comparison = prompts.cxr_longitudinal_prompt(prior, current)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        engine = TransformersEngine(build_test_model(Path(tmp) / "model"), device="cpu")
        for k in range(1, len(FINDINGS) + 1):
            follow_up = prompts.longitudinal_verdict_prompt(
                comparison, COMPARISON, max_new_tokens=VERDICT_TOKENS * k
            )
            per_finding = [
                Prompt(
                    system=None,
                    content=(prior, current, PER_FINDING_QUESTION.format(finding=finding)),
                    max_new_tokens=PER_FINDING_TOKENS,
                )
                for finding in FINDINGS[:k]
            ]
            rows.append(
                {
                    "findings": k,
                    "follow_up": _run(engine, [follow_up]),
                    "per_finding": _run(engine, per_finding),
                }
            )
    print(f"{'k':>2} | {'strategy':<11} | requests | images | MedGemma prompt tokens | CPU s")
    for row in rows:
        for name in ("follow_up", "per_finding"):
            r = row[name]
            print(
                f"{row['findings']:>2} | {name:<11} | {r['requests']:>8} "
                f"| {r['images_encoded']:>6} | {r['prompt_tokens_medgemma']:>22} "
                f"| {r['seconds_cpu']:>5}"
            )
    out = Path("bench/results/longitudinal.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
