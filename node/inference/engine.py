"""Engines: MedGemma in this process (transformers) or behind an OpenAI-compatible server,
or the tiny test checkpoint when the configuration asks for it (``model.engine: test``).

A configuration that names MedGemma and finds no weights stops the node: it never falls
back to the test checkpoint, whose results would reach the PACS as toy reports. The test
checkpoint says so loudly wherever it runs: its label starts with ``TEST MODEL``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from transformers import AutoModelForImageTextToText, AutoProcessor

from node.config import ModelSettings
from node.errors import reraised_as
from node.inference.answers import strip_thinking
from node.inference.pixels import ModelPixels, PreparedPrompt
from node.inference.prompts import chat_messages
from node.inference.request import TEST_MODEL_LABEL, Engine, EngineError, Prompt
from node.inference.served import OpenAIEngine, ServedModelError
from node.testing.checkpoint import build_test_model, is_current_test_model, is_test_model

logger = logging.getLogger(__name__)

TEST_MODEL_DIR = "test-model"  # under the node's data directory
CONFIG_FILE = "config.json"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")

_DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}

_BANNER_WIDTH = 76
_TEST_MODEL_WARNING = (
    "WARNING: model.engine is test. RESULTS COME FROM A TEST MODEL, NOT MEDGEMMA.",
    "The model in {path}",
    "is a tiny model that gives the same fixed answers for every image.",
    'Its output is meaningless; every result it makes is labelled "TEST MODEL".',
    "To run MedGemma set model.engine: transformers and model.path (or the cache).",
)
# How to get the weights, for the message that stops a node configured for MedGemma.
_GET_WEIGHTS = (
    "Get the weights: accept the model's terms on Hugging Face, then on a machine with "
    "network run `huggingface-cli download {name}` (copy the cache here, or the checkpoint "
    "directory and set model.path to it). To run the tiny test checkpoint instead, on "
    "purpose, set model.engine: test (its results are labelled TEST MODEL)."
)


def _test_model_banner(path: Path) -> str:
    rule = "#" * _BANNER_WIDTH
    lines = [line.format(path=path) for line in _TEST_MODEL_WARNING]
    return "\n".join([rule, *(f"#  {line}" for line in lines), rule])


class ModelLoadError(RuntimeError):
    """A model that can't be loaded; the message names the path or setting."""


# --- finding and loading weights -------------------------------------------------------------


def find_medgemma_weights(settings: ModelSettings, *, cache_dir: Path | None = None) -> Path | None:
    """The checkpoint directory to load, or None when there are no weights here.

    ``model.path``, when set, must be a checkpoint: a wrong path stops the node rather
    than quietly falling back. Otherwise the Hugging Face cache is searched for
    ``model.name`` without touching the network.
    """
    if settings.path is not None:
        _check_checkpoint(settings.path, source="model.path")
        return settings.path
    cached = try_to_load_from_cache(settings.name, CONFIG_FILE, cache_dir=cache_dir)
    if not isinstance(cached, str):
        return None
    snapshot = Path(cached).parent
    _check_checkpoint(snapshot, source=f"the Hugging Face cache copy of {settings.name}")
    return snapshot


def _check_checkpoint(path: Path, *, source: str) -> None:
    if not path.is_dir():
        raise ModelLoadError(f"{source} {path} is not a directory")
    if not (path / CONFIG_FILE).is_file():
        raise ModelLoadError(f"{source} {path} has no {CONFIG_FILE}: not a model checkpoint")
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise ModelLoadError(
            f"{source} {path} has no weight files ({', '.join(WEIGHT_PATTERNS)}); "
            "is the download complete?"
        )


def load_engine(settings: ModelSettings, data_dir: Path) -> Engine:
    """The engine the settings ask for: MedGemma in process or served, or the test model.

    Raises ModelLoadError when MedGemma is asked for and no weights are found, when
    ``model.path`` holds the test checkpoint without ``model.engine: test``, or when the
    test model's directory holds something else.
    """
    if settings.engine == "openai":
        return _served_engine(settings)
    if settings.engine == "test":
        return TransformersEngine(
            _test_checkpoint(settings, data_dir), device=settings.device, dtype=settings.dtype
        )
    weights = find_medgemma_weights(settings)
    if weights is None:
        raise ModelLoadError(
            f"no MedGemma weights: model.path is not set and {settings.name} (model.name) is "
            f"not in the Hugging Face cache ({hf_constants.HF_HUB_CACHE}). "
            + _GET_WEIGHTS.format(name=settings.name)
        )
    if is_test_model(weights):
        raise ModelLoadError(
            f"{weights} is the node's test checkpoint, not MedGemma; set model.engine: test "
            "to run it on purpose"
        )
    label = str(settings.path) if settings.path is not None else settings.name
    return TransformersEngine(weights, device=settings.device, dtype=settings.dtype, label=label)


def _test_checkpoint(settings: ModelSettings, data_dir: Path) -> Path:
    """Where the test model is (``model.path``, else under the data directory); built there
    when absent or made by an older release."""
    path = settings.path if settings.path is not None else data_dir / TEST_MODEL_DIR
    if is_current_test_model(path):
        return path
    if path.exists() and not is_test_model(path) and any(path.iterdir()):
        raise ModelLoadError(
            f"model.engine is test but {path} holds something other than the test checkpoint; "
            "point model.path at an empty or missing directory, or leave it unset"
        )
    logger.warning("building the test model in %s (model.engine is test)", path)
    return build_test_model(path)


def _served_engine(settings: ModelSettings) -> Engine:
    if not settings.url:
        raise ModelLoadError("model.url must be set when model.engine is openai")
    api_key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
    logger.info(
        "model %s at %s (%s), up to %d requests at once",
        settings.name,
        settings.url,
        f"key from ${settings.api_key_env}" if api_key else "no API key",
        settings.concurrency,
    )
    served = OpenAIEngine(
        settings.url,
        model=settings.name,
        timeout=settings.timeout_seconds,
        retries=settings.retries,
        concurrency=settings.concurrency,
        api_key=api_key or None,
        image_format=settings.image_format,
        jpeg_quality=settings.jpeg_quality,
    )
    with reraised_as(ServedModelError, ModelLoadError):
        served.check_model()
    return served


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("model.device is cuda but no CUDA device is available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """bf16 on a GPU as MedGemma is published; float32 on CPU, where bf16 is slow."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[dtype]


# --- engines ---------------------------------------------------------------------------------


class TransformersEngine:
    """A Gemma 3 checkpoint loaded exactly as the MedGemma notebooks load it."""

    def __init__(
        self, path: Path, *, device: str = "auto", dtype: str = "auto", label: str | None = None
    ) -> None:
        _check_checkpoint(path, source="model")
        self._path = path
        self.is_test_model = is_test_model(path)
        self._device = resolve_device(device)
        self._dtype = resolve_dtype(dtype, self._device)
        self.label = (
            f"{TEST_MODEL_LABEL} ({path})" if self.is_test_model else (label or str(path))
        )
        started = time.monotonic()
        try:
            self._processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            model: Any = AutoModelForImageTextToText.from_pretrained(
                path,
                dtype=self._dtype,
                # PyTorch's fused attention: no (seq × seq) matrix for an 85-slice prompt.
                attn_implementation="sdpa",
                local_files_only=True,
            )
        except Exception as e:  # transformers raises many kinds; all mean "can't load this"
            raise ModelLoadError(f"cannot load the model in {path}: {e}") from e
        self._model = model.to(self._device).eval()
        # The same pixel values as the checkpoint's image processor, made faster.
        self.pixels = ModelPixels(self._processor.image_processor)
        self._processor.image_processor = self.pixels
        # Batched generation needs prompts aligned at their ends.
        self._processor.tokenizer.padding_side = "left"
        self._pad_id = self._processor.tokenizer.pad_token_id
        logger.info(
            "loaded %s on %s as %s in %.1f s",
            self.label,
            self._device,
            self._dtype,
            time.monotonic() - started,
        )
        if self.is_test_model:
            logger.warning("\n%s", _test_model_banner(path))

    def prepare(self, prompt: Prompt) -> PreparedPrompt:
        """The prompt's CPU work (its images resized), done before its turn at the model."""
        return self.pixels.prepare(prompt)

    def inputs(self, prompts: Sequence[Prompt | PreparedPrompt]) -> dict[str, torch.Tensor]:
        """The processor's tensors for ``prompts`` (left-padded), on the model's device."""
        prepared = [
            item if isinstance(item, PreparedPrompt) else PreparedPrompt(item, None)
            for item in prompts
        ]
        with self.pixels.ready(prepared):
            batch = self._processor.apply_chat_template(
                [chat_messages(item.prompt) for item in prepared],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                processor_kwargs={"padding": True},
            )
        # Only floating tensors (pixel values) take the dtype; ids stay integers.
        return dict(batch.to(self._device, dtype=self._dtype))

    def generate(self, prompt: Prompt) -> str:
        return self.generate_batch([prompt])[0]

    def generate_batch(self, requests: Sequence[Prompt | PreparedPrompt]) -> list[str]:
        """Greedy answers to ``requests`` from one ``generate`` call, in order.

        Raises ``torch.cuda.OutOfMemoryError`` as it is, so a caller can retry smaller.
        """
        started = time.monotonic()
        prompts = [r.prompt if isinstance(r, PreparedPrompt) else r for r in requests]
        inputs = self.inputs(requests)
        prompt_tokens = inputs["input_ids"].shape[-1]
        generating = time.monotonic()
        try:
            with torch.inference_mode():
                output = self._model.generate(
                    **inputs,
                    max_new_tokens=max(p.max_new_tokens for p in prompts),
                    do_sample=False,
                )
        except torch.cuda.OutOfMemoryError:
            raise
        except (RuntimeError, ValueError) as e:
            raise EngineError(f"generation failed on {self.label}: {e}") from e
        answers = []
        generated = 0
        for row, prompt in zip(output, prompts, strict=True):
            # Left padding: every row's answer starts at the same column.
            new_tokens = row[prompt_tokens:][: prompt.max_new_tokens]
            generated += int((new_tokens != self._pad_id).sum())
            text = self._processor.decode(new_tokens, skip_special_tokens=True)
            answers.append(strip_thinking(text))
        # The bench (bench/pipeline.py) reads the model's own time from this line.
        logger.info(
            "%s: %d request(s), %d images, %d prompt tokens each: inputs in %.3f s, "
            "%d new tokens generated in %.3f s",
            self.label,
            len(prompts),
            sum(len(p.images) for p in prompts),
            prompt_tokens,
            generating - started,
            generated,
            time.monotonic() - generating,
        )
        return answers
