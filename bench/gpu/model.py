"""MedGemma 1.5 4B's architecture with random weights, and the smoke model of the same classes."""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3Processor,
    Gemma3TextConfig,
    GenerationConfig,
    SiglipVisionConfig,
)

from node.inference.budgets import IMAGE_SIZE, TOKENS_PER_IMAGE

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


def full_size_check(processor: Gemma3Processor) -> dict[str, int]:
    """Build the full-size model on the meta device (no memory): the config is valid."""
    model = build_model(build_config(processor, smoke=False), torch.device("meta"), torch.bfloat16)
    return parameter_counts(model)
