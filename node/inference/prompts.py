"""Prompts as the official MedGemma 1.5 notebooks and evaluations build them.

The strings are kept verbatim (typos included) because the model was tuned on
them; a "cleaned up" wording is a different, untested prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from PIL import Image

from node.config import Task
from node.inference.budgets import MAX_LAB_REPORT_PAGES, MAX_VOLUME_SLICES, MAX_WSI_PATCHES
from node.inference.request import Prompt

VolumeModality = Literal["CT", "MR"]

REPORT_SYSTEM = "You are an expert radiologist."
REPORT_INSTRUCTION = "Describe this X-ray."

# The evaluation prompts put the indication/history in front of the question like this.
CONTEXT_PREFIX = 'After looking at the indication and patient history "{context}"... '

# The CT notebook's instruction, its region phrase ("from the center of the abdomen" in
# the notebook) filled from the study; with no region known the phrase is left out.
VOLUME_INSTRUCTION = (
    "You are an instructor teaching medical students. You are analyzing a contiguous block "
    "of {modality} slices{region}. Please review the slices provided below carefully."
)
VOLUME_REGION = " from {region}"
VOLUME_SLICE_LABEL = "SLICE {number}"
VOLUME_FINDING_QUESTION = (
    'Is there "{finding}" in the {modality} volume? You may write out your argument before '
    'stating your final answer "Final Answer: yes" or "Final Answer: no".'
)
# No finding asked about: the evaluation form with the broadest "finding".
VOLUME_DEFAULT_FINDING = "any acute abnormality"
# The evaluation question names an MR series an "MRI volume".
_VOLUME_NOUN: dict[VolumeModality, str] = {"CT": "CT", "MR": "MRI"}

LOCALIZE_PROMPT = (
    "Instructions:\n"
    "The following user query will require outputting bounding boxes. The format of bounding "
    "boxes coordinates is [y0, x0, y1, x1] where (y0, x0) must be top-left corner and (y1, x1) "
    "the bottom-right corner. This implies that x0 < x1 and y0 < y1. Always normalize the x and "
    "y coordinates the range [0, 1000], meaning that a bounding box starting at 15% of the image "
    "width would be associated with an x coordinate of 150. You MUST output a single parseable "
    "json list of objects enclosed into ```json...``` brackets, for instance "
    '```json[{{"box_2d": [800, 3, 840, 471], "label": "car"}}, {{"box_2d": [400, 22, 600, 73], '
    '"label": "dog"}}]``` is a valid output. Now answer to the user query.\n\n'
    'Remember "left" refers to the patient\'s left side where the heart is and sometimes '
    "underneath an L in the upper right corner of the image.\n\n"
    "Query:\n"
    "Where is the {finding}? Don't give a final answer without reasoning. Output the final answer "
    'in the format "Final Answer: X" where X is a JSON list of objects. The object needs a '
    '"box_2d" and "label" key. Answer:'
)

# Longitudinal chest X-ray: the notebook's prompt exactly, a triple-quoted string with a
# newline after "from" and one at the end (the chat template trims the last). One user
# turn, prior image then current image then this text, no per-image labels, no system turn.
LONGITUDINAL_INSTRUCTION = (
    "Provide a comparison of these two images and include details from\n"
    "the image which students should take note of when reading longitudinal CXR\n"
)
# The node's additions, asked in a second turn of the same conversation so the official
# first turn stays untouched: one verdict line a finding, so the node can code the change.
# The three words are MS-CXR-T's answer options, whose evaluation asks for "(A) Improved",
# "(B) Stable" or "(C) Worsened" (the parser takes the letters too). The prior image's
# report (the node's own earlier findings) and the clinical context go in front of it.
LONGITUDINAL_PRIOR_REPORT = 'The report of the prior image was: "{report}". '
LONGITUDINAL_VERDICT_QUESTION = (
    "For each finding in your comparison, give a verdict on its own line, in the form "
    '"FINDING: <finding> | <verdict>", where <verdict> is one of Improved, Stable or Worsened.'
)

# Whole-slide images: the pathology notebook's text exactly; its last line is
# "{tissue}, {procedure}:" after a newline (the notebook's example: "colon, biopsy:").
# One user turn, the text first, then the patches, unlabelled.
WSI_INSTRUCTION = (
    "You are an instructor teaching medical students. For education purposes, provide a "
    "brief descriptive text for the set of pathology patches extracted from a pathology "
    "slide. Consider the tissue type and procedure (below) when deciding what to include "
    "in the descriptive text."
)
WSI_TISSUE_PROCEDURE = "{tissue}, {procedure}:"
# Said instead of a tissue or procedure the slide's metadata doesn't give: inventing one
# would steer the description.
WSI_UNKNOWN = "unknown"

# Lab reports: the technical report's extraction prompt (appendix B, table 11) exactly as
# MEDGEMMA.md quotes it: one line, the sentences joined by single spaces. (An earlier
# reading of the table's layout put line breaks after the first two sentences.)
LAB_REPORT_PROMPT = (
    "You are a Clinical Data Extraction Specialist. Your job is to parse lab reports with "
    "high precision. "
    "From the given lab report, extract all lab tests into a JSON list. "
    "Each test object in the list must include: name, result, unit, range, panel, method, "
    "specimen, sample_collection_time (formatted as DD-MM-YYYY HH:MM:SS)"
)

REPORT_MAX_NEW_TOKENS = 600
VOLUME_MAX_NEW_TOKENS = 2000
LOCALIZE_MAX_NEW_TOKENS = 1000
# The longitudinal notebook's value.
LONGITUDINAL_MAX_NEW_TOKENS = 600
# The verdict turn: a dozen "FINDING: … | …" lines at most.
LONGITUDINAL_VERDICT_MAX_NEW_TOKENS = 200
# No official notebook value for these two. A WSI answer is a final-diagnosis line or a
# few sentences; a lab report's JSON takes ~60-80 tokens per test, so 4096 holds ~50
# tests and stays inside the model's 8192-token output limit.
WSI_MAX_NEW_TOKENS = 512
LAB_REPORT_MAX_NEW_TOKENS = 4096

DEFAULT_MAX_NEW_TOKENS: dict[Task, int] = {
    Task.CXR_REPORT: REPORT_MAX_NEW_TOKENS,
    Task.CXR_LONGITUDINAL: LONGITUDINAL_MAX_NEW_TOKENS,
    Task.CT_VOLUME: VOLUME_MAX_NEW_TOKENS,
    Task.MR_VOLUME: VOLUME_MAX_NEW_TOKENS,
    Task.WSI: WSI_MAX_NEW_TOKENS,
    Task.LAB_REPORT: LAB_REPORT_MAX_NEW_TOKENS,
}


def _with_context(text: str, context: str | None) -> str:
    if context is None or not context.strip():
        return text
    # Collapse line breaks so the history stays inside its quotes on one line.
    flat = " ".join(context.split())
    return CONTEXT_PREFIX.format(context=flat) + text


def cxr_report_prompt(
    image: Image.Image, *, max_new_tokens: int = REPORT_MAX_NEW_TOKENS
) -> Prompt:
    """The quick-start report prompt exactly: system role, the image, then the instruction.

    No clinical context: the recipe's report prompt has none (the evaluation form that
    carries it is the volumes' question), and a prefix the model wasn't shown for reports
    is a different, untested prompt.
    """
    return Prompt(
        system=REPORT_SYSTEM, content=(image, REPORT_INSTRUCTION), max_new_tokens=max_new_tokens
    )


def volume_finding_question(finding: str, modality: VolumeModality) -> str:
    """The evaluation's yes/no question about one finding."""
    if not finding.strip():
        raise ValueError("finding must be a non-empty label, got an empty string")
    return VOLUME_FINDING_QUESTION.format(finding=finding.strip(), modality=_VOLUME_NOUN[modality])


def volume_prompt(
    slices: Sequence[Image.Image],
    modality: VolumeModality,
    *,
    question: str | None = None,
    context: str | None = None,
    region: str | None = None,
    max_new_tokens: int = VOLUME_MAX_NEW_TOKENS,
) -> Prompt:
    """One user turn: instruction, then each slice followed by ``SLICE n``, the question last.

    ``question`` is the full question text; None asks the evaluation's yes/no question
    about any acute abnormality. ``context`` (indication, history) prefixes the question.
    ``region`` completes the instruction's "from …" (the notebook: "the center of the
    abdomen"); None leaves the phrase out.
    """
    if modality not in _VOLUME_NOUN:
        raise ValueError(f"modality must be one of {sorted(_VOLUME_NOUN)}, got {modality!r}")
    if not slices:
        raise ValueError(f"a {modality} volume prompt needs at least one slice, got none")
    if len(slices) > MAX_VOLUME_SLICES:
        raise ValueError(
            f"a {modality} volume prompt takes at most {MAX_VOLUME_SLICES} slices, "
            f"got {len(slices)}; sample them first"
        )
    asked = (
        question
        if question is not None
        else volume_finding_question(VOLUME_DEFAULT_FINDING, modality)
    )
    where = VOLUME_REGION.format(region=region.strip()) if region and region.strip() else ""
    instruction = VOLUME_INSTRUCTION.format(modality=_VOLUME_NOUN[modality], region=where)
    content: list[str | Image.Image] = [instruction]
    for number, image in enumerate(slices, start=1):
        content += [image, VOLUME_SLICE_LABEL.format(number=number)]
    content.append(_with_context(asked, context))
    return Prompt(system=None, content=tuple(content), max_new_tokens=max_new_tokens)


def cxr_localize_prompt(
    image: Image.Image, finding: str, *, max_new_tokens: int = LOCALIZE_MAX_NEW_TOKENS
) -> Prompt:
    """The localization notebook's prompt; ``image`` must already be zero-padded to a square."""
    if not finding.strip():
        raise ValueError("finding must be a non-empty label, got an empty string")
    if image.width != image.height:
        raise ValueError(
            f"localization needs a square (zero-padded) image, got {image.width}x{image.height}"
        )
    text = LOCALIZE_PROMPT.format(finding=finding.strip())
    return Prompt(system=None, content=(image, text), max_new_tokens=max_new_tokens)


def cxr_longitudinal_prompt(
    prior: Image.Image,
    current: Image.Image,
    *,
    max_new_tokens: int = LONGITUDINAL_MAX_NEW_TOKENS,
) -> Prompt:
    """The longitudinal notebook's prompt, exactly: prior image, current image, its text."""
    return Prompt(
        system=None,
        content=(prior, current, LONGITUDINAL_INSTRUCTION),
        max_new_tokens=max_new_tokens,
    )


def longitudinal_verdict_prompt(
    comparison: Prompt,
    answer: str,
    *,
    prior_report: str | None = None,
    context: str | None = None,
    max_new_tokens: int = LONGITUDINAL_VERDICT_MAX_NEW_TOKENS,
) -> Prompt:
    """The follow-up turn asking one ``FINDING: <finding> | <verdict>`` line a finding.

    Same conversation: the notebook's turn and the model's ``answer`` to it come first,
    unchanged. The clinical ``context`` (evaluation form) and the ``prior_report`` (the
    node's earlier findings for the prior image) go in front of the question; a missing
    or blank one is left out.
    """
    question = LONGITUDINAL_VERDICT_QUESTION
    report = " ".join(prior_report.split()) if prior_report is not None else ""
    if report:
        question = LONGITUDINAL_PRIOR_REPORT.format(report=report) + question
    return comparison.follow_up(answer, (_with_context(question, context),), max_new_tokens)


def _label_or_unknown(value: str | None) -> str:
    flat = " ".join(value.split()) if value is not None else ""
    return flat or WSI_UNKNOWN


def wsi_prompt(
    patches: Sequence[Image.Image],
    *,
    tissue: str | None,
    procedure: str | None,
    max_new_tokens: int = WSI_MAX_NEW_TOKENS,
) -> Prompt:
    """The notebook's text, its last line "{tissue}, {procedure}:", then the patches.

    ``patches`` are the sampled 896×896 tissue patches in the sampled order. A missing
    or blank ``tissue`` or ``procedure`` is written as "unknown".
    """
    if not patches:
        raise ValueError("a WSI prompt needs at least one patch, got none")
    if len(patches) > MAX_WSI_PATCHES:
        raise ValueError(
            f"a WSI prompt takes at most {MAX_WSI_PATCHES} patches, got {len(patches)}; "
            "sample them first"
        )
    label = WSI_TISSUE_PROCEDURE.format(
        tissue=_label_or_unknown(tissue), procedure=_label_or_unknown(procedure)
    )
    text = f"{WSI_INSTRUCTION}\n{label}"
    return Prompt(system=None, content=(text, *patches), max_new_tokens=max_new_tokens)


def lab_report_prompt(
    pages: Sequence[Image.Image], *, max_new_tokens: int = LAB_REPORT_MAX_NEW_TOKENS
) -> Prompt:
    """The pages in document order, then the extraction prompt, in one user turn.

    The report's table gives only the text. Images come first as in the quick-start
    report prompt and Gemma's own examples (image, then what to do with it); with no
    system turn, as the report says MedGemma's evaluations had none.
    """
    if not pages:
        raise ValueError("a lab report prompt needs at least one page, got none")
    if len(pages) > MAX_LAB_REPORT_PAGES:
        raise ValueError(
            f"a lab report prompt takes at most {MAX_LAB_REPORT_PAGES} pages, "
            f"got {len(pages)}; split the report"
        )
    return Prompt(system=None, content=(*pages, LAB_REPORT_PROMPT), max_new_tokens=max_new_tokens)


def chat_messages(prompt: Prompt) -> list[dict[str, Any]]:
    """The Hugging Face chat format the Gemma 3 processor's template takes: earlier turns
    and the model's answers to them, then the turn to answer."""
    messages: list[dict[str, Any]] = []
    if prompt.system:
        messages.append({"role": "system", "content": [{"type": "text", "text": prompt.system}]})
    for turn in prompt.history:
        messages.append({"role": "user", "content": _parts(turn.content)})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": turn.answer}]})
    messages.append({"role": "user", "content": _parts(prompt.content)})
    return messages


def _parts(content: Sequence[str | Image.Image]) -> list[dict[str, Any]]:
    return [
        {"type": "image", "image": part}
        if isinstance(part, Image.Image)
        else {"type": "text", "text": part}
        for part in content
    ]
