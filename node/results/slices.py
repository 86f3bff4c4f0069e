"""Which slices a volume answer cites, and which stored images those slices were.

The volume prompt labels the n-th image it sends "SLICE n" (1-based, in sent
order; :data:`node.inference.prompts.VOLUME_SLICE_LABEL`), so an answer can say
"slice 34", "slices 12-14" or "SLICE 7 and 9". :func:`cited_slices` reads those
numbers; :func:`volume_findings` ties them to the findings named in the same
sentence (:func:`node.results.findings.named_findings`) and maps each number to
the instance (and frame) the n-th sent slice came from, as the TID 1500 report
references it. A sentence citing slices but naming no finding gives its slices
to one group labelled from the yes/no answer. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from node.imaging.volume import SliceSource
from node.results.findings import named_findings
from node.results.report_input import ImageReference, LocalizedFinding

__all__ = [
    "CITED_SLICES_LABELS",
    "VolumeFindings",
    "cited_slices",
    "slice_references",
    "volume_findings",
]

# The label of the group holding slices no named finding claims, by yes/no answer.
CITED_SLICES_LABELS: dict[bool | None, str] = {
    True: "abnormality",
    False: "no abnormality",
    None: "slices cited in the answer",
}

# One number or range: "34", "12-14", "12 to 14". A number followed by a unit is a size.
_NUMBER = r"\d+(?!\d|\.\d|\s*(?:mm|cm|ml)\b|\s*%)"
_RANGE = rf"{_NUMBER}(?:\s*(?:-|–|—|to|through|thru)\s*{_NUMBER})?"
_MENTION = re.compile(
    rf"\bslices?\b\s*(?:#|no\.|nos\.|number|numbers)?\s*"
    rf"(?P<list>{_RANGE}(?:\s*(?:,\s*and|,|and|&|or)\s*(?:slices?\s*)?{_RANGE})*)",
    re.IGNORECASE,
)
_SPLIT_RANGE = re.compile(r"\s*(?:-|–|—|to|through|thru)\s*", re.IGNORECASE)
_ITEMS = re.compile(_RANGE, re.IGNORECASE)
_MAX_RANGE = 1000
# Sentence ends: a full stop, ! or ? before white space or the end, or a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass(frozen=True)
class VolumeFindings:
    """What a volume answer names, with the images it cites, and what couldn't be cited."""

    findings: list[LocalizedFinding]
    cited: list[int]  # every slice number the answer cites, in order of first mention
    notes: list[str]  # numbers that map to no sent slice, or to no single stored image


def cited_slices(text: str) -> list[int]:
    """The slice numbers ``text`` cites ("slice 3", "slices 4-6 and 9"), each once, in order.

    A reversed range ("slices 9-7") is read forwards; numbers stay as written,
    whether or not such a slice was sent. A range spanning more than
    ``_MAX_RANGE`` numbers (no volume has that many slices sent) gives its two ends.
    """
    numbers: list[int] = []
    for mention in _MENTION.finditer(text):
        for item in _ITEMS.finditer(mention.group("list")):
            bounds = [int(part) for part in _SPLIT_RANGE.split(item.group())]
            low, high = min(bounds), max(bounds)
            span = range(low, high + 1) if high - low <= _MAX_RANGE else (low, high)
            numbers += [n for n in span if n not in numbers]
    return numbers


def slice_references(
    numbers: Sequence[int], sent: Sequence[SliceSource | None]
) -> tuple[list[ImageReference], list[str]]:
    """The images slices ``numbers`` (1-based, as the prompt labels them) were, and notes on
    numbers that name no sent slice or a resampled one (made from several images)."""
    references: list[ImageReference] = []
    outside = [n for n in numbers if not 1 <= n <= len(sent)]
    resampled: list[int] = []
    for number in numbers:
        if not 1 <= number <= len(sent):
            continue
        source = sent[number - 1]
        if source is None:
            resampled.append(number)
            continue
        reference = ImageReference(source.sop_instance_uid, source.frame_number)
        if reference not in references:
            references.append(reference)
    notes = []
    if outside:
        notes.append(
            f"answer cites slice(s) {_numbers(outside)}, but {len(sent)} slice(s) were sent: "
            "not referenced"
        )
    if resampled:
        notes.append(
            f"answer cites resampled slice(s) {_numbers(resampled)}, made from several source "
            "images: no image referenced for them"
        )
    return references, notes


def volume_findings(
    answer: str,
    sent: Sequence[SliceSource | None],
    *,
    verdict: bool | None,
) -> VolumeFindings:
    """Findings ``answer`` names, each with the images of the slices its sentences cite.

    Slices cited in sentences that name no finding (or only deny one) go to one
    more group, labelled by :data:`CITED_SLICES_LABELS` from the yes/no ``verdict``.
    """
    slices_by_label: dict[str, list[int]] = {label: [] for label in named_findings(answer)}
    unclaimed: list[int] = []
    for sentence in _SENTENCE_END.split(answer):
        numbers = cited_slices(sentence)
        if not numbers:
            continue
        labels = [label for label in named_findings(sentence) if label in slices_by_label]
        for target in [slices_by_label[label] for label in labels] or [unclaimed]:
            target += [n for n in numbers if n not in target]
    findings: list[LocalizedFinding] = []
    notes: list[str] = []
    for label in slices_by_label:
        references, dropped = slice_references(slices_by_label[label], sent)
        findings.append(LocalizedFinding(label, images=tuple(references)))
        notes += [f"{label}: {note}" for note in dropped]
    if unclaimed:
        label = CITED_SLICES_LABELS[verdict]
        references, dropped = slice_references(unclaimed, sent)
        findings.append(LocalizedFinding(label, images=tuple(references)))
        notes += [f"{label}: {note}" for note in dropped]
    return VolumeFindings(findings=findings, cited=cited_slices(answer), notes=notes)


def _numbers(numbers: Sequence[int]) -> str:
    shown = ", ".join(map(str, numbers[:10]))
    return shown + (f" (+{len(numbers) - 10} more)" if len(numbers) > 10 else "")
