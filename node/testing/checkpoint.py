"""A tiny Gemma 3 checkpoint, built offline, that answers the node's prompts with fixed text.

It is the real architecture (``Gemma3ForConditionalGeneration``, a SigLIP vision
tower, ``Gemma3Processor`` with MedGemma's 896×896 image processing, a
``GemmaTokenizer`` with Gemma 3's special tokens and chat template), only very
small. It loads through exactly the ``AutoProcessor`` / ``AutoModelForImageTextToText``
code that loads MedGemma, so everything around the model is exercised for real
where the weights can't be had. Its answers mean nothing: it is trained for a few
seconds to say the same thing for every image.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import string
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    BatchFeature,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3Processor,
    Gemma3TextConfig,
    GemmaTokenizer,
    GenerationConfig,
    SiglipVisionConfig,
)
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
from transformers.utils import logging as hf_logging

from node.files import write_atomically
from node.inference import prompts
from node.inference.answers import THINKING_END  # not special in Gemma: decoding keeps it
from node.inference.budgets import IMAGE_SIZE
from node.inference.request import Prompt

logger = logging.getLogger(__name__)

MARKER_NAME = "medgemma_node_test_model.json"
MARKER_KIND = "medgemma-node test model"

# The fixed answers. Other tests compare against these constants, not copies.
REPORT_ANSWER = (
    "FINDINGS: The lungs are clear. No pleural effusion or pneumothorax. Heart size is normal.\n"
    "IMPRESSION: No acute cardiopulmonary abnormality."
)
VOLUME_ANSWER = "No focal abnormality is seen in the slices provided.\nFinal Answer: no"
LOCALIZE_LABEL = "opacity"
LOCALIZE_BOX = (200, 150, 600, 450)  # [y0, x0, y1, x1], 0-1000, as MedGemma writes them
LOCALIZE_ANSWER = (
    f'```json\n[{{"box_2d": [{", ".join(map(str, LOCALIZE_BOX))}], "label": "{LOCALIZE_LABEL}"}}]'
    f"\n```\nFinal Answer: {LOCALIZE_LABEL}"
)
WSI_ANSWER = "Benign breast tissue with fibrous stroma. No malignancy identified."
# One test, every field of the extraction prompt, one of them null, as MedGemma fences it.
LAB_ANSWER = (
    '```json\n[{"name": "Hemoglobin", "result": "13.5", "unit": "g/dL", "range": "12.0-16.0", '
    '"panel": "CBC", "method": null, "specimen": "Blood", '
    '"sample_collection_time": "01-02-2026 08:30:00"}]\n```'
)
# The notebook's turn gets a comparison; the node's follow-up turn one verdict line a
# finding, in the form it asks for.
LONGITUDINAL_ANSWER = "Compared with the prior image, the right lower lobe opacity has decreased."
VERDICTS_ANSWER = "FINDING: right lower lobe opacity | Improved\nFINDING: heart size | Stable"
ANSWERS: dict[str, str] = {  # by task, as the marker file lists them
    "report": REPORT_ANSWER,
    "volume": VOLUME_ANSWER,
    "localize": LOCALIZE_ANSWER,
    "wsi": WSI_ANSWER,
    "lab-report": LAB_ANSWER,
    "longitudinal": LONGITUDINAL_ANSWER,
    "verdicts": VERDICTS_ANSWER,
}

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

# Words for varied contexts and findings, so the answers don't hang on one wording.
_WORDS = (
    "cough fever chest pain dyspnea trauma follow-up pneumonia nodule mass effusion "
    "consolidation atelectasis edema fracture hemorrhage infarct lesion liver kidney spleen "
    "brain spine abdomen pelvis post-operative smoker age 63 male female evaluate rule out"
).split()
_FINDINGS = (
    "opacity",
    "right lung",
    "left lung",
    "heart",
    "nodule",
    "pleural effusion",
    "cardiomegaly",
    "pneumothorax",
    "left clavicle",
    "trachea",
)
_TISSUES = ("breast", "colon", "prostate", "lung", "skin", "lymph node", "stomach", "cervix")
_REGIONS = ("the center of the abdomen", "the chest", "the head", "the pelvis", None)
_PROCEDURES = ("biopsy", "core needle biopsy", "excision", "resection", "polypectomy")

# Training budget: enough for every answer token to win by a clear margin.
_LEARNING_RATE = 3e-3
_ROUND_STEPS = 60
_MAX_ROUNDS = 20
_MIN_MARGIN = 2.0  # logit lead of the right token at every answer position


class TestModelError(RuntimeError):
    """The test checkpoint could not be built to answer as intended."""


@dataclass(frozen=True)
class _Example:
    """One prompt with its target, tokenized once by the real processor."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    answer_start: int


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
    """True if ``path`` is a test checkpoint trained on this release's fixed answers.

    An older node's checkpoint answers the old prompts; the node rebuilds it rather than
    let an upgrade run a model that no longer fits what it asks.
    """
    if not is_test_model(path):
        return False
    try:
        marker = json.loads((path / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(marker.get("answers") == ANSWERS)


def build_test_model(out_dir: Path, *, seed: int = 0) -> Path:
    """Write the tiny checkpoint to ``out_dir`` (replacing it) and return the path.

    The directory appears complete or not at all: it is built beside ``out_dir`` and
    moved into place, the marker written last.
    """
    started = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _seed_everything(seed)
    processor = _build_processor()
    model = _build_model(processor)
    examples = _training_examples(processor, random.Random(seed), count_per_task=12)
    held_out = _training_examples(processor, random.Random(seed + 1), count_per_task=2)
    _train(model, examples, held_out)
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


# --- tokenizer and processor -------------------------------------------------------------


def _tokenizer_corpus() -> Iterator[str]:
    """Every fixed string the node sends or expects, so they tokenize compactly."""
    for answer in ANSWERS.values():
        yield from [answer] * 8
    yield prompts.REPORT_SYSTEM
    yield prompts.REPORT_INSTRUCTION
    yield prompts.LOCALIZE_PROMPT
    for modality in ("CT", "MR"):
        for region in ("", prompts.VOLUME_REGION.format(region=_REGIONS[0])):
            yield prompts.VOLUME_INSTRUCTION.format(modality=modality, region=region)
        yield prompts.volume_finding_question(prompts.VOLUME_DEFAULT_FINDING, modality)
    yield " ".join(region for region in _REGIONS if region)
    yield prompts.CONTEXT_PREFIX
    yield prompts.WSI_INSTRUCTION
    yield prompts.LAB_REPORT_PROMPT
    yield prompts.LONGITUDINAL_INSTRUCTION
    yield prompts.LONGITUDINAL_PRIOR_REPORT
    yield prompts.LONGITUDINAL_VERDICT_QUESTION
    yield " ".join([*_TISSUES, *_PROCEDURES, prompts.WSI_UNKNOWN])
    yield " ".join(prompts.VOLUME_SLICE_LABEL.format(number=n) for n in range(1, 100))
    yield "user\nmodel\n\n" + " ".join(_WORDS) + " " + " ".join(_FINDINGS)


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
    bpe.train_from_iterator(_tokenizer_corpus(), trainer)
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


def _build_processor() -> Gemma3Processor:
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


# --- model ---------------------------------------------------------------------------------


def _token_id(tokenizer: GemmaTokenizer, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int):
        raise TestModelError(f"token {token!r} is missing from the test tokenizer")
    return token_id


def _build_model(processor: Gemma3Processor) -> Gemma3ForConditionalGeneration:
    tokenizer = processor.tokenizer
    eos = [_token_id(tokenizer, "<eos>"), _token_id(tokenizer, "<end_of_turn>")]
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
        pad_token_id=_token_id(tokenizer, "<pad>"),
        bos_token_id=_token_id(tokenizer, "<bos>"),
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
        boi_token_index=_token_id(tokenizer, IMAGE_TOKENS["boi_token"]),
        eoi_token_index=_token_id(tokenizer, IMAGE_TOKENS["eoi_token"]),
        image_token_index=_token_id(tokenizer, IMAGE_TOKENS["image_token"]),
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


# --- training data ---------------------------------------------------------------------------


def _random_image(rng: random.Random) -> Image.Image:
    """Noise, gradients and flat fields, grey or colour, of assorted sizes."""
    size = rng.choice([(64, 64), (256, 256), (512, 512), (300, 420)])
    kind = rng.choice(["noise", "gradient", "flat", "blocks"])
    gen = np.random.default_rng(rng.randrange(2**32))
    h, w = size
    if kind == "noise":
        pixels = gen.integers(0, 256, size=(h, w), dtype=np.uint8)
    elif kind == "gradient":
        pixels = np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))
    elif kind == "flat":
        pixels = np.full((h, w), rng.randrange(256), dtype=np.uint8)
    else:
        blocks = np.kron(gen.integers(0, 256, size=(4, 4)), np.ones((h // 4 + 1, w // 4 + 1)))
        pixels = blocks[:h, :w].astype(np.uint8)
    image = Image.fromarray(pixels, mode="L")
    return image.convert("RGB") if rng.random() < 0.5 else image


def _random_context(rng: random.Random) -> str | None:
    if rng.random() < 0.4:
        return None
    return " ".join(rng.choices(_WORDS, k=rng.randint(2, 12)))


def _task_prompts(rng: random.Random, count: int) -> Iterator[tuple[Prompt, str]]:
    for _ in range(count):
        yield (
            prompts.cxr_report_prompt(_random_image(rng), context=_random_context(rng)),
            REPORT_ANSWER,
        )
    for index in range(count):
        modality: prompts.VolumeModality = "CT" if index % 2 == 0 else "MR"
        slices = [_random_image(rng) for _ in range(rng.choice([1, 2, 3, 5, 8]))]
        question = None
        if rng.random() < 0.5:
            question = prompts.volume_finding_question(rng.choice(_FINDINGS), modality)
        yield (
            prompts.volume_prompt(
                slices,
                modality,
                question=question,
                context=_random_context(rng),
                region=rng.choice(_REGIONS),
            ),
            VOLUME_ANSWER,
        )
    for _ in range(count):
        square = _random_image(rng).resize((384, 384))
        yield prompts.cxr_localize_prompt(square, rng.choice(_FINDINGS)), LOCALIZE_ANSWER
    for _ in range(count):
        # 1 to 20 patches, mostly few: every image costs the build time.
        patches = [_random_image(rng) for _ in range(rng.choice([1, 2, 4, 8, 20]))]
        tissue = rng.choice([None, *_TISSUES])
        procedure = rng.choice([None, *_PROCEDURES])
        yield prompts.wsi_prompt(patches, tissue=tissue, procedure=procedure), WSI_ANSWER
    for _ in range(count):
        pages = [_random_image(rng) for _ in range(rng.choice([1, 2, 3, 8]))]
        yield prompts.lab_report_prompt(pages), LAB_ANSWER
    for _ in range(count):
        comparison = prompts.cxr_longitudinal_prompt(_random_image(rng), _random_image(rng))
        yield comparison, LONGITUDINAL_ANSWER
        prior_report = rng.choice([None, REPORT_ANSWER, _random_context(rng)])
        follow_up = prompts.longitudinal_verdict_prompt(
            comparison, LONGITUDINAL_ANSWER, prior_report=prior_report, context=_random_context(rng)
        )
        yield follow_up, VERDICTS_ANSWER


def _training_examples(
    processor: Gemma3Processor, rng: random.Random, count_per_task: int
) -> list[_Example]:
    end_of_turn = _token_id(processor.tokenizer, "<end_of_turn>")
    examples: list[_Example] = []
    for prompt, answer in _task_prompts(rng, count_per_task):
        inputs = processor.apply_chat_template(
            prompts.chat_messages(prompt),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
        if not isinstance(inputs, BatchFeature):
            raise TestModelError(f"the processor returned {type(inputs).__name__}, not tensors")
        answer_ids = processor.tokenizer(answer, add_special_tokens=False)["input_ids"]
        target = torch.tensor([[*answer_ids, end_of_turn]])
        examples.append(_extend(dict(inputs), target))
    return examples


def _extend(inputs: dict[str, Any], target: torch.Tensor) -> _Example:
    """Append the answer to the prompt (teacher forcing), labelling only the answer."""
    prompt_len = inputs["input_ids"].shape[1]
    extended = dict(inputs)
    extended["input_ids"] = torch.cat([inputs["input_ids"], target], dim=1)
    extended["attention_mask"] = torch.ones_like(extended["input_ids"])
    extended["token_type_ids"] = torch.cat(
        [inputs["token_type_ids"], torch.zeros_like(target)], dim=1
    )
    labels = torch.full_like(extended["input_ids"], -100)
    labels[:, prompt_len:] = target
    return _Example(inputs=extended, labels=labels, answer_start=prompt_len)


# --- training ----------------------------------------------------------------------------------


def _train(
    model: Gemma3ForConditionalGeneration, examples: list[_Example], held_out: list[_Example]
) -> None:
    # Only the language model learns: the answers must not depend on the image.
    for param in model.model.vision_tower.parameters():
        param.requires_grad_(False)
    model.model.multi_modal_projector.mm_input_projection_weight.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=_LEARNING_RATE)
    order = list(range(len(examples)))
    shuffler = random.Random(len(examples))
    for round_number in range(1, _MAX_ROUNDS + 1):
        model.train()
        for step in range(_ROUND_STEPS):
            if step % len(order) == 0:
                shuffler.shuffle(order)
            example = examples[order[step % len(order)]]
            loss = model(**example.inputs, labels=example.labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        margin = _min_margin(model, examples + held_out)
        logger.debug(
            "test model round %d: loss %.4f, margin %.2f", round_number, loss.item(), margin
        )
        if margin >= _MIN_MARGIN:
            model.eval()
            return
    raise TestModelError(
        f"the test model did not learn its fixed answers in {_MAX_ROUNDS * _ROUND_STEPS} steps "
        f"(smallest logit margin {margin:.2f}, needed {_MIN_MARGIN})"
    )


@torch.no_grad()
def _min_margin(model: Gemma3ForConditionalGeneration, examples: list[_Example]) -> float:
    """The smallest lead of the target token over the runner-up at any answer position.

    A positive margin everywhere means greedy decoding reproduces every answer exactly.
    """
    model.eval()
    smallest = float("inf")
    for example in examples:
        logits = model(**example.inputs).logits[0, example.answer_start - 1 : -1]
        target = example.labels[0, example.answer_start :]
        right = logits.gather(1, target[:, None])[:, 0]
        rest = logits.scatter(1, target[:, None], float("-inf")).max(dim=1).values
        smallest = min(smallest, float((right - rest).min()))
    return smallest


def _write_marker(directory: Path, seed: int) -> None:
    marker = {
        "kind": MARKER_KIND,
        "warning": "Not MedGemma. A tiny model trained to give fixed answers, for testing only.",
        "seed": seed,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "answers": ANSWERS,
    }
    write_atomically(directory / MARKER_NAME, json.dumps(marker, indent=2) + "\n")
