"""What the test model is trained on: prompts built by the node's own prompt functions, each
with its task's fixed answer, and the text its tokenizer learns its merges from.

Images are noise, gradients and flat fields and contexts random words, so the answers
can't hang on an image or a wording. No torch here.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
from PIL import Image

from node.inference import prompts
from node.inference.request import Prompt
from node.testing.answers import (
    ANSWERS,
    LAB_ANSWER,
    LOCALIZE_ANSWER,
    LONGITUDINAL_ANSWER,
    REPORT_ANSWER,
    VERDICTS_ANSWER,
    VOLUME_ANSWER,
    WSI_ANSWER,
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


def tokenizer_corpus() -> Iterator[str]:
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


def task_prompts(rng: random.Random, count: int) -> Iterator[tuple[Prompt, str]]:
    for _ in range(count):
        yield (
            prompts.cxr_report_prompt(_random_image(rng)),
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
