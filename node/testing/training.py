"""Teaching the test model its answers: teacher forcing on every task's prompts, until
greedy decoding reproduces each answer by a clear logit margin, checked on held-out prompts.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import torch
from transformers import BatchFeature, Gemma3ForConditionalGeneration, Gemma3Processor

from node.inference import prompts
from node.testing.processor import TestModelError, token_id
from node.testing.training_data import task_prompts

logger = logging.getLogger(__name__)

# Training budget: enough for every answer token to win by a clear margin.
_LEARNING_RATE = 3e-3
_ROUND_STEPS = 60
_MAX_ROUNDS = 20
_MIN_MARGIN = 2.0  # logit lead of the right token at every answer position


@dataclass(frozen=True)
class _Example:
    """One prompt with its target, tokenized once by the real processor."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    answer_start: int


def training_examples(
    processor: Gemma3Processor, rng: random.Random, count_per_task: int
) -> list[_Example]:
    end_of_turn = token_id(processor.tokenizer, "<end_of_turn>")
    examples: list[_Example] = []
    for prompt, answer in task_prompts(rng, count_per_task):
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


def train(
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
