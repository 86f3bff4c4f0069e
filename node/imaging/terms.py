"""What a study says it is of, in the words the official prompts use.

Two official prompts name what they look at: the CT notebook's instruction ("a
contiguous block of CT slices from the center of the abdomen") and the pathology
notebook's last line (``{tissue}, {procedure}:``, e.g. "colon, biopsy:"). The node
fills them from the study's own attributes, and each :class:`Term` says which
attribute it came from, so the job record can show why the model was told what it was.
Nothing is guessed: with no attribute to go on, the term is None and the prompt says so
in the way its caller chooses.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pydicom import Dataset

# The CT notebook's own phrase; it is written for the abdomen.
ABDOMEN_REGION = "the center of the abdomen"

# BodyPartExamined defined terms (PS3.16 Annex L, CID 4031) and the phrase the
# instruction uses for each; an unlisted value is used in lower case.
_BODY_PART_REGIONS = {
    "ABDOMEN": ABDOMEN_REGION,
    "CHEST": "the chest",
    "THORAX": "the chest",
    "HEAD": "the head",
    "BRAIN": "the brain",
    "NECK": "the neck",
    "HEADNECK": "the head and neck",
    "PELVIS": "the pelvis",
    "ABDOMENPELVIS": "the abdomen and pelvis",
    "CHESTABDOMEN": "the chest and abdomen",
    "CHESTABDPELVIS": "the chest, abdomen and pelvis",
    "SPINE": "the spine",
    "CSPINE": "the cervical spine",
    "TSPINE": "the thoracic spine",
    "LSPINE": "the lumbar spine",
}
# Words in a StudyDescription that name a region, tried in order (the more specific first).
_DESCRIPTION_REGIONS = (
    (r"\babd(omen)?\b.*\bpelvis\b", "the abdomen and pelvis"),
    (r"\babd(omen|ominal)?\b", ABDOMEN_REGION),
    (r"\b(chest|thorax|thoracic|lung)s?\b", "the chest"),
    (r"\b(head|brain|cranial)\b", "the head"),
    (r"\bneck\b", "the neck"),
    (r"\bpelvi[sc]\b", "the pelvis"),
    (r"\bspine\b", "the spine"),
)

# Procedures a pathology StudyDescription names, longest first so "core needle biopsy"
# beats "biopsy".
_PROCEDURE_WORDS = (
    "core needle biopsy",
    "punch biopsy",
    "excisional biopsy",
    "polypectomy",
    "resection",
    "excision",
    "biopsy",
    "cytology",
    "curettage",
    "amputation",
)
# TID 8002: the preparation step whose value is the collection procedure (SCT 17636008).
_SPECIMEN_COLLECTION_CODE = "17636008"
_SPECIMEN_COLLECTION_MEANING = "specimen collection"


@dataclass(frozen=True)
class Term:
    """A word or phrase for a prompt and the attribute it was read from."""

    text: str | None  # None: the study doesn't say
    source: str  # attribute keyword (or path), or "none"

    def as_record(self) -> dict[str, str | None]:
        return {"text": self.text, "source": self.source}


NOT_GIVEN = Term(None, "none")


def volume_region(ds: Dataset) -> Term:
    """The region phrase for the volume instruction: BodyPartExamined, else StudyDescription."""
    body_part = _flat(ds.get("BodyPartExamined"))
    if body_part:
        key = re.sub(r"[^A-Z]", "", body_part.upper())
        return Term(_BODY_PART_REGIONS.get(key, f"the {body_part.lower()}"), "BodyPartExamined")
    description = _flat(ds.get("StudyDescription")).lower()
    for pattern, phrase in _DESCRIPTION_REGIONS:
        if re.search(pattern, description):
            return Term(phrase, "StudyDescription")
    return NOT_GIVEN


def slide_tissue(ds: Dataset) -> Term:
    """What the slide is of: the specimen's description or anatomy, else the body part."""
    for specimen in ds.get("SpecimenDescriptionSequence", []):
        text = _flat(specimen.get("SpecimenShortDescription"))
        if text:
            return Term(text.lower(), "SpecimenShortDescription")
        if meaning := _first_meaning(specimen.get("PrimaryAnatomicStructureSequence")):
            return Term(meaning.lower(), "PrimaryAnatomicStructureSequence")
    body_part = _flat(ds.get("BodyPartExamined"))
    if body_part:
        return Term(body_part.lower(), "BodyPartExamined")
    if meaning := _first_meaning(ds.get("AnatomicRegionSequence")):
        return Term(meaning.lower(), "AnatomicRegionSequence")
    return NOT_GIVEN


def slide_procedure(ds: Dataset) -> Term:
    """How the tissue was taken: the specimen's collection step, the procedure code, or a
    procedure named in the StudyDescription."""
    for meaning in _collection_procedures(ds):
        return Term(meaning.lower(), "SpecimenPreparationSequence (Specimen Collection)")
    if meaning := _first_meaning(ds.get("ProcedureCodeSequence")):
        return Term(meaning.lower(), "ProcedureCodeSequence")
    description = _flat(ds.get("StudyDescription")).lower()
    for word in _PROCEDURE_WORDS:
        if re.search(rf"\b{word}\b", description):
            return Term(word, "StudyDescription")
    return NOT_GIVEN


def _collection_procedures(ds: Dataset) -> Iterator[str]:
    for specimen in ds.get("SpecimenDescriptionSequence", []):
        for step in specimen.get("SpecimenPreparationSequence", []):
            for item in step.get("SpecimenPreparationStepContentItemSequence", []):
                names = item.get("ConceptNameCodeSequence", [])
                values = item.get("ConceptCodeSequence", [])
                if not names or not values:
                    continue
                named = (
                    str(names[0].get("CodeValue", "")) == _SPECIMEN_COLLECTION_CODE
                    or _flat(names[0].get("CodeMeaning")).lower() == _SPECIMEN_COLLECTION_MEANING
                )
                meaning = _flat(values[0].get("CodeMeaning"))
                if named and meaning:
                    yield meaning


def _first_meaning(codes: Sequence[Dataset] | None) -> str:
    """The first non-blank CodeMeaning of a code sequence; "" when there is none."""
    return next((m for code in codes or [] if (m := _flat(code.get("CodeMeaning")))), "")


def _flat(value: object) -> str:
    return " ".join(str(value).split()) if value not in (None, "") else ""
