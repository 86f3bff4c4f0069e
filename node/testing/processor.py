"""The test model's tokenizer and processor: Gemma 3's token layout and chat template,
MedGemma's 896×896 image processing, a byte-fallback BPE trained on the node's own texts.
"""

from __future__ import annotations

import json
import string
from typing import Any

from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import Gemma3Processor, GemmaTokenizer
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

from node.inference.answers import THINKING_END  # not special in Gemma: decoding keeps it
from node.inference.budgets import IMAGE_SIZE
from node.testing.answers import ANSWERS
from node.testing.training_data import tokenizer_corpus


class TestModelError(RuntimeError):
    """The test checkpoint could not be built to answer as intended."""


# MedGemma's image processing (IMAGE_SIZE), unchanged, so the imaging code's output is
# treated identically.
IMAGE_MEAN_STD = 0.5
# A 56-pixel patch gives 16×16 patches at 896, pooled 4×4 to 16 tokens an image: the
# vision tower stays cheap even for an 85-slice volume.
PATCH_SIZE = 56
TOKENS_PER_IMAGE = 16

# Gemma 3's token names; ids here are small, in Gemma's order where it has one.
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")
TURN_TOKENS = ("<start_of_turn>", "<end_of_turn>")
IMAGE_TOKENS = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
}
BYTE_TOKENS = tuple(f"<0x{i:02X}>" for i in range(256))  # byte fallback, as in Gemma's vocab
TRAINED_VOCAB_SIZE = 1024

# Gemma 3's chat template (the one shipped with google/gemma-3-4b-it and MedGemma).
CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate '
    'user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)


def _build_tokenizer() -> GemmaTokenizer:
    """A byte-fallback BPE laid out as Gemma's, built by the very class MedGemma loads with."""
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Gemma's own normalizer; the split only keeps merges inside words while learning them.
    bpe.normalizer = normalizers.Replace(" ", "▁")
    bpe.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    reserved = [*SPECIAL_TOKENS, *TURN_TOKENS, *IMAGE_TOKENS.values(), THINKING_END, *BYTE_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=TRAINED_VOCAB_SIZE,
        special_tokens=reserved,
        initial_alphabet=list(string.printable.replace(" ", "▁")),
        show_progress=False,
    )
    bpe.train_from_iterator(tokenizer_corpus(), trainer)
    trained = json.loads(bpe.to_str())["model"]
    # GemmaTokenizer hands merges to tokenizers' BPE, which takes pairs.
    merges: Any = [tuple(pair) for pair in trained["merges"]]
    tokenizer = GemmaTokenizer(
        vocab=trained["vocab"],
        merges=merges,
        extra_special_tokens=dict(IMAGE_TOKENS),
    )
    tokenizer.add_special_tokens(
        {"extra_special_tokens": list(TURN_TOKENS)}, replace_extra_special_tokens=False
    )
    tokenizer.add_tokens([THINKING_END], special_tokens=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_processor() -> Gemma3Processor:
    """The processor MedGemma loads with, around the test tokenizer (checked to round-trip
    every fixed answer)."""
    image_processor = Gemma3ImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[IMAGE_MEAN_STD] * 3,
        image_std=[IMAGE_MEAN_STD] * 3,
        resample=Image.Resampling.BILINEAR,
        do_resize=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
    )
    tokenizer = _build_tokenizer()
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=TOKENS_PER_IMAGE,
    )
    _check_round_trip(tokenizer)
    return processor


def _check_round_trip(tokenizer: GemmaTokenizer) -> None:
    for answer in ANSWERS.values():
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if tokenizer.decode(ids, skip_special_tokens=True) != answer:
            raise TestModelError(f"the test tokenizer does not round-trip {answer!r}")


def token_id(tokenizer: GemmaTokenizer, token: str) -> int:
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int):
        raise TestModelError(f"token {token!r} is missing from the test tokenizer")
    return found
