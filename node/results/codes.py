"""Coded chest findings: the model's free-text labels → SNOMED CT / DCM concepts.

A PACS or a downstream registry can only aggregate findings that are coded, so
the common chest radiograph labels get a concept. Where pydicom's dictionary
(which follows DICOM PS3.16) has the concept, it is used from there; the few
that PS3.16 does not list are written out with their SNOMED CT identifiers.
Anything else keeps its words: ``finding_concept`` falls back to a generic
"Finding" concept and the caller records the label as text, so nothing the
model said is replaced by a wrong code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

__all__ = [
    "FREE_TEXT_FINDING",
    "CodedFinding",
    "coded_finding",
    "finding_concept",
    "finding_vocabulary",
]

# The fallback value: SNOMED CT "Clinical finding" is the root of all findings,
# true of any label; the label itself then travels as text beside it.
FREE_TEXT_FINDING = CodedConcept("404684003", "SCT", "Clinical finding")

_PYDICOM = {
    "pneumothorax": codes.SCT.Pneumothorax,  # 36118008
    "pleural effusion": codes.SCT.PleuralEffusion,  # 60046008
    "pulmonary edema": codes.SCT.PulmonaryEdema,  # 19242006
    "nodule": codes.SCT.Nodule,  # 27925004
    "mass": codes.SCT.Mass,  # 4147007
    "opacity": codes.DCM.Opacity,  # 112001
    "infiltrate": codes.DCM.Infiltrate,  # 112121
    "fibrosis": codes.SCT.Fibrosis,  # 112674009
    "lesion": codes.SCT.Lesion,  # 52988006
    "catheter": codes.SCT.Catheter,  # 19923001
    "endotracheal tube": codes.SCT.EndotrachealTube,  # 26412008
    "central venous catheter": codes.SCT.CentralVenousCatheter,  # 52124006
    "pacemaker": codes.DCM.Pacemaker,  # 111171
    "tube": codes.SCT.Tube,  # 83059008
    "stent": codes.SCT.Stent,  # 65818007
}

# Not in PS3.16's context groups (or, for cardiomegaly, listed there under a
# concept id SNOMED CT now gives another meaning), so spelled out here.
_SNOMED = {
    "consolidation": ("95436008", "Lung consolidation"),
    "atelectasis": ("46621007", "Atelectasis"),
    "cardiomegaly": ("8186001", "Cardiomegaly"),
    "pneumonia": ("233604007", "Pneumonia"),
    "emphysema": ("87433001", "Pulmonary emphysema"),
    "fracture": ("125605004", "Fracture of bone"),
    "support device": ("49062001", "Device"),
}

# Words the model (or a CheXpert-style label set) uses for the same concept.
_SYNONYMS = {
    "pneumothoraces": "pneumothorax",
    "ptx": "pneumothorax",
    "effusion": "pleural effusion",
    "pleural effusions": "pleural effusion",
    "pleural fluid": "pleural effusion",
    "edema": "pulmonary edema",
    "oedema": "pulmonary edema",
    "pulmonary oedema": "pulmonary edema",
    "lung nodule": "nodule",
    "pulmonary nodule": "nodule",
    "nodules": "nodule",
    "lung mass": "mass",
    "pulmonary mass": "mass",
    "lung opacity": "opacity",
    "airspace opacity": "opacity",
    "opacities": "opacity",
    "lung consolidation": "consolidation",
    "airspace consolidation": "consolidation",
    "atelectases": "atelectasis",
    "enlarged heart": "cardiomegaly",
    "enlarged cardiac silhouette": "cardiomegaly",
    "cardiac enlargement": "cardiomegaly",
    "pulmonary emphysema": "emphysema",
    "rib fracture": "fracture",
    "fractures": "fracture",
    "support devices": "support device",
    "device": "support device",
    "medical device": "support device",
    "line": "catheter",
    "lines": "catheter",
    "central line": "central venous catheter",
    "cvc": "central venous catheter",
    "picc": "central venous catheter",
    "picc line": "central venous catheter",
    "ett": "endotracheal tube",
    "et tube": "endotracheal tube",
    "ng tube": "tube",
    "nasogastric tube": "tube",
    "chest tube": "tube",
    "lines and tubes": "support device",
}

_LATERALITY = re.compile(r"^(?:left|right|bilateral|l|r)\s+|\s+\((?:left|right)\)$")


@dataclass(frozen=True)
class CodedFinding:
    """A finding label with its concept; ``is_free_text`` when nothing fitted."""

    label: str
    concept: CodedConcept
    is_free_text: bool


def _normalise(label: str) -> str:
    words = " ".join(re.sub(r"[_\-/]+", " ", label).lower().split())
    return _LATERALITY.sub("", words).strip(" .:;,")


def coded_finding(label: str) -> CodedFinding:
    """The concept for ``label`` (case, a leading side and separators ignored)."""
    key = _normalise(label)
    key = _SYNONYMS.get(key, key)
    if key in _PYDICOM:
        return CodedFinding(label, CodedConcept.from_code(_PYDICOM[key]), is_free_text=False)
    if key in _SNOMED:
        value, meaning = _SNOMED[key]
        return CodedFinding(label, CodedConcept(value, "SCT", meaning), is_free_text=False)
    return CodedFinding(label, FREE_TEXT_FINDING, is_free_text=True)


def finding_concept(label: str) -> CodedConcept:
    """The coded concept for ``label``; :data:`FREE_TEXT_FINDING` when none fits."""
    return coded_finding(label).concept


def finding_vocabulary() -> dict[str, str]:
    """Every term coded here, canonical or synonym (lower case) → its canonical label.

    For reading reports: a finding named in prose can only be coded if its words
    are found, so the text matcher uses exactly the terms ``coded_finding`` knows.
    """
    vocabulary = {label: label for label in (*_PYDICOM, *_SNOMED)}
    vocabulary.update(_SYNONYMS)
    return vocabulary
