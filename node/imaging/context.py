"""Clinical context for the prompt: the indication and history the study itself carries.

The official evaluation prompts open with ``After looking at the indication and patient
history "…"``; this collects that text from the request attributes. Nothing is invented:
with no indication or history in the study there is no context.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset

# Where a PACS or RIS puts the reason for the exam and the history, most specific first.
INDICATION_KEYWORDS = (
    "ReasonForTheRequestedProcedure",
    "ReasonForRequestedProcedureCodeSequence",
    "ReasonForStudy",
    "RequestedProcedureComments",
    "AdmittingDiagnosesDescription",
)
HISTORY_KEYWORDS = ("AdditionalPatientHistory",)
# Says what was imaged, not why: used only beside an indication or history.
SUPPLEMENT_KEYWORDS = ("StudyDescription",)


@dataclass(frozen=True)
class ClinicalContext:
    text: str  # what goes between the quotes in the prompt
    sources: tuple[str, ...]  # the attribute keywords it came from, for the job record


def _values(ds: Dataset, keywords: tuple[str, ...]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for keyword in keywords:
        value = ds.get(keyword)
        if value in (None, ""):
            continue
        if isinstance(value, str):
            texts = [value]
        elif keyword.endswith("CodeSequence"):
            texts = [str(item.get("CodeMeaning", "")) for item in value]
        else:
            texts = [str(v) for v in value]
        for text in texts:
            flat = " ".join(str(text).split())
            if flat and (keyword, flat) not in found and flat not in {f for _, f in found}:
                found.append((keyword, flat))
    return found


def _requests(ds: Dataset) -> list[Dataset]:
    return list(ds.get("RequestAttributesSequence", []))


def clinical_context(ds: Dataset) -> ClinicalContext | None:
    """The indication and history in ``ds`` (and its request items), or None if it has none."""
    indication = _values(ds, INDICATION_KEYWORDS)
    for request in _requests(ds):
        indication += [v for v in _values(request, INDICATION_KEYWORDS) if v not in indication]
    history = _values(ds, HISTORY_KEYWORDS)
    if not indication and not history:
        return None
    supplement = _values(ds, SUPPLEMENT_KEYWORDS)
    parts: list[str] = []
    if indication:
        parts.append("Indication: " + "; ".join(text for _, text in indication))
    if history:
        parts.append("History: " + "; ".join(text for _, text in history))
    if supplement:
        parts.append("Study: " + "; ".join(text for _, text in supplement))
    sources = tuple(dict.fromkeys(k for k, _ in indication + history + supplement))
    return ClinicalContext(text=". ".join(parts) + ".", sources=sources)


def context_record(context: ClinicalContext | None) -> dict[str, object]:
    """What the job record and meta.json say about the clinical context given to the model."""
    if context is None:
        return {"context": None}
    return {"context": context.text, "context_sources": list(context.sources)}
