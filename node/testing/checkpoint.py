"""A tiny Gemma 3 checkpoint, built offline, that answers the node's prompts with fixed text.

It is the real architecture (``Gemma3ForConditionalGeneration``, a SigLIP vision
tower, ``Gemma3Processor`` with MedGemma's 896×896 image processing, a
``GemmaTokenizer`` with Gemma 3's special tokens and chat template), only very
small. It loads through exactly the ``AutoProcessor`` / ``AutoModelForImageTextToText``
code that loads MedGemma, so everything around the model is exercised for real
where the weights can't be had. Its answers mean nothing: it is trained for a few
seconds to say the same thing for every image.

This module builds and recognises the checkpoint; :mod:`.answers` holds what it says,
:mod:`.processor` its tokenizer and processor, :mod:`.training_data` and :mod:`.training`
how it learns to say it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3Processor,
    Gemma3TextConfig,
    GenerationConfig,
    SiglipVisionConfig,
)
from transformers.utils import logging as hf_logging

from node.files import write_atomically
from node.inference import prompts
from node.inference.budgets import IMAGE_SIZE
from node.testing.answers import (
    ANSWERS,
    LAB_ANSWER,
    LOCALIZE_ANSWER,
    LOCALIZE_BOX,
    LOCALIZE_LABEL,
    LONGITUDINAL_ANSWER,
    REPORT_ANSWER,
    VERDICTS_ANSWER,
    VOLUME_ANSWER,
    WSI_ANSWER,
)
from node.testing.processor import (
    IMAGE_TOKENS,
    PATCH_SIZE,
    TOKENS_PER_IMAGE,
    TestModelError,
    build_processor,
    token_id,
)
from node.testing.training import train, training_examples

__all__ = [
    "ANSWERS",
    "IMAGE_SIZE",
    "LAB_ANSWER",
    "LOCALIZE_ANSWER",
    "LOCALIZE_BOX",
    "LOCALIZE_LABEL",
    "LONGITUDINAL_ANSWER",
    "MARKER_NAME",
    "REPORT_ANSWER",
    "TOKENS_PER_IMAGE",
    "VERDICTS_ANSWER",
    "VOLUME_ANSWER",
    "WSI_ANSWER",
    "TestModelError",
    "build_test_model",
    "is_current_test_model",
    "is_test_model",
]

logger = logging.getLogger(__name__)

MARKER_NAME = "medgemma_node_test_model.json"
MARKER_KIND = "medgemma-node test model"


def is_test_model(path: Path) -> bool:
    """True if ``path`` holds a checkpoint written by :func:`build_test_model`."""
    marker = path / MARKER_NAME
    if not marker.is_file():
        return False
    try:
        return bool(json.loads(marker.read_text(encoding="utf-8")).get("kind") == MARKER_KIND)
    except (OSError, ValueError):
        return False


def is_current_test_model(path: Path) -> bool:
    """True if ``path`` is a test checkpoint trained on this release's prompts and fixed
    answers.

    An older node's checkpoint answers the old prompts; the node rebuilds it rather than
    let an upgrade run a model that no longer fits what it asks.
    """
    if not is_test_model(path):
        return False
    try:
        marker = json.loads((path / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(
        marker.get("answers") == ANSWERS and marker.get("training") == training_fingerprint()
    )


def training_fingerprint() -> str:
    """Changes whenever what the test model learns could: the node's prompts, and the
    answers, tokenizer, training data and budget of this package (their source files; a
    sample of prompts would miss a change behind a random branch)."""
    digest = hashlib.sha256()
    for source in [Path(prompts.__file__), *sorted(Path(__file__).parent.glob("*.py"))]:
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def build_test_model(out_dir: Path, *, seed: int = 0) -> Path:
    """Write the tiny checkpoint to ``out_dir`` (replacing it) and return the path.

    The directory appears complete or not at all: it is built beside ``out_dir`` and
    moved into place, the marker written last.
    """
    started = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _seed_everything(seed)
    processor = build_processor()
    model = _build_model(processor)
    # 16 prompts a task: with 12 the answers did not carry over to a slide of 8 real-looking
    # patches (it gave the lab answer), though every training and held-out prompt passed.
    examples = training_examples(processor, random.Random(seed), count_per_task=16)
    held_out = training_examples(processor, random.Random(seed + 1), count_per_task=2)
    train(model, examples, held_out)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}-") as tmp:
        staging = Path(tmp) / "model"
        with _quiet_progress_bars():
            model.save_pretrained(staging)
            processor.save_pretrained(staging)
        _write_marker(staging, seed)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    logger.info("built the test model in %s in %.1f s", out_dir, time.monotonic() - started)
    return out_dir


@contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """No shard-writing progress bar in the node's log; the setting is restored after."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- model ---------------------------------------------------------------------------------


def _build_model(processor: Gemma3Processor) -> Gemma3ForConditionalGeneration:
    tokenizer = processor.tokenizer
    eos = [token_id(tokenizer, "<eos>"), token_id(tokenizer, "<end_of_turn>")]
    text_config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        query_pre_attn_scalar=32,
        # One local and one global layer, as Gemma 3 interleaves them; the global one
        # lets the answer see the instruction across an 85-slice volume.
        sliding_window=512,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=32_768,
        pad_token_id=token_id(tokenizer, "<pad>"),
        bos_token_id=token_id(tokenizer, "<bos>"),
        eos_token_id=eos,
    )
    vision_config = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        vision_use_head=False,
    )
    config = Gemma3Config(
        text_config=text_config,
        vision_config=vision_config,
        mm_tokens_per_image=TOKENS_PER_IMAGE,
        boi_token_index=token_id(tokenizer, IMAGE_TOKENS["boi_token"]),
        eoi_token_index=token_id(tokenizer, IMAGE_TOKENS["eoi_token"]),
        image_token_index=token_id(tokenizer, IMAGE_TOKENS["image_token"]),
    )
    model = Gemma3ForConditionalGeneration(config)
    # The projection starts at zero in transformers; a small random one keeps the image
    # path live (pixels do reach the language model) without swamping the text.
    projector = model.model.multi_modal_projector
    with torch.no_grad():
        projector.mm_input_projection_weight.normal_(0.0, 0.02)
    # MedGemma's generation defaults sample; the engine must turn that off itself.
    model.generation_config = GenerationConfig(
        bos_token_id=text_config.bos_token_id,
        eos_token_id=eos,
        pad_token_id=text_config.pad_token_id,
        do_sample=True,
        top_k=64,
        top_p=0.95,
    )
    return model


def _write_marker(directory: Path, seed: int) -> None:
    marker = {
        "kind": MARKER_KIND,
        "warning": "Not MedGemma. A tiny model trained to give fixed answers, for testing only.",
        "seed": seed,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "answers": ANSWERS,
        "training": training_fingerprint(),
    }
    write_atomically(directory / MARKER_NAME, json.dumps(marker, indent=2) + "\n")
