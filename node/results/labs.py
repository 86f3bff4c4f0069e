"""Lab tests as coded SR content: a LOINC or named concept, a UCUM unit, the range as text.

A lab report's tests become TID 1501 measurement groups in the TID 1500 report
(:mod:`node.results.tid1500`): one group per test whose result is a number,
holding one TID 300 NUM item. The concept name is LOINC for a handful of common
tests *when the unit matches the LOINC property* (glucose in mg/dL is 2345-7, in
mmol/L another code), otherwise a code of this node's private scheme whose
meaning is the test's name as the report printed it. The unit is UCUM: the
report's unit when it is a UCUM expression (after the usual rewrites, "IU" →
"[IU]", "10^3" → "10*3"), else a UCUM annotation ``{…}`` carrying it, or "1"
when the report gives none. The reference range travels as the TID 312 Normal
Range description. Results that are not a plain number ("Negative", "<0.5")
get no group: their text line (:func:`lab_text`) carries them. Pure.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Measurement,
    MeasurementProperties,
    MeasurementsAndQualitativeEvaluations,
    NormalRangeProperties,
    TrackingIdentifier,
)
from pydicom import Dataset

from node.inference.answers import LabResult
from node.results.content import derived_uid

__all__ = [
    "LAB_SCHEME",
    "LabConcept",
    "lab_concept",
    "lab_measurement_group",
    "lab_number",
    "lab_scheme_identification",
    "lab_text",
    "ucum_unit",
]

logger = logging.getLogger(__name__)

# PS3.3 8.2: private coding schemes are designated "99…" and should be identified
# in the Coding Scheme Identification Sequence (see lab_scheme_identification).
LAB_SCHEME = "99MGNLAB"
_LAB_SCHEME_NAME = "medgemma-node lab test names (code = hash of the printed name)"
_LO_MAX = 64
_TRACKING_ID_MAX = 64


@dataclass(frozen=True)
class _Loinc:
    code: str
    meaning: str  # the LOINC long common name (ALT, AST abbreviated to fit LO's 64 characters)
    units: frozenset[str]  # UCUM units of the LOINC property (mass/volume, moles/volume…)


def _loinc(code: str, meaning: str, *units: str) -> _Loinc:
    return _Loinc(code, meaning, frozenset(units))


_COUNT_UNITS = ("10*3/uL", "10*9/L", "/uL", "10*3/mm3", "/mm3")
_HEMOGLOBIN = _loinc("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", "g/L", "mg/dL")
_WBC = _loinc("6690-2", "Leukocytes [#/volume] in Blood by Automated count", *_COUNT_UNITS)
_PLATELETS = _loinc("777-3", "Platelets [#/volume] in Blood by Automated count", *_COUNT_UNITS)
_GLUCOSE = _loinc("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", "g/L", "mg/L")
_CREATININE = _loinc("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", "mg/L")
_SODIUM = _loinc("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", "meq/L")
_POTASSIUM = _loinc("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", "meq/L")
_CHLORIDE = _loinc("2075-0", "Chloride [Moles/volume] in Serum or Plasma", "mmol/L", "meq/L")
_BUN = _loinc("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "mg/dL")
_ALT = _loinc("1742-6", "ALT [Enzymatic activity/volume] in Serum or Plasma", "U/L", "[IU]/L")
_AST = _loinc("1920-8", "AST [Enzymatic activity/volume] in Serum or Plasma", "U/L", "[IU]/L")
_BILIRUBIN = _loinc("1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", "mg/dL")
_HEMATOCRIT = _loinc(
    "4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count", "%", "L/L"
)
_HBA1C = _loinc("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%")
_TSH = _loinc("3016-3", "Thyrotropin [Units/volume] in Serum or Plasma", "m[IU]/L", "u[IU]/mL")
_CRP = _loinc("1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "mg/L", "mg/dL")

# Test names as reports print them (lower case, punctuation as spaces) → LOINC.
_LOINC_BY_NAME: dict[str, _Loinc] = {
    **dict.fromkeys(("hemoglobin", "haemoglobin", "hgb", "hb"), _HEMOGLOBIN),
    **dict.fromkeys(
        (
            "wbc",
            "wbc count",
            "white blood cells",
            "white blood cell count",
            "white cell count",
            "leukocytes",
            "leukocyte count",
            "total leukocyte count",
        ),
        _WBC,
    ),
    **dict.fromkeys(("platelets", "platelet count", "plt"), _PLATELETS),
    **dict.fromkeys(("glucose", "serum glucose", "plasma glucose", "glucose serum"), _GLUCOSE),
    **dict.fromkeys(("creatinine", "serum creatinine", "creatinine serum"), _CREATININE),
    **dict.fromkeys(("sodium", "na", "serum sodium"), _SODIUM),
    **dict.fromkeys(("potassium", "k", "serum potassium"), _POTASSIUM),
    **dict.fromkeys(("chloride", "cl", "serum chloride"), _CHLORIDE),
    **dict.fromkeys(("bun", "urea nitrogen", "blood urea nitrogen"), _BUN),
    **dict.fromkeys(
        ("alt", "sgpt", "alt sgpt", "alanine aminotransferase", "alanine transaminase"), _ALT
    ),
    **dict.fromkeys(
        ("ast", "sgot", "ast sgot", "aspartate aminotransferase", "aspartate transaminase"), _AST
    ),
    **dict.fromkeys(("total bilirubin", "bilirubin total", "t bilirubin"), _BILIRUBIN),
    **dict.fromkeys(("hematocrit", "haematocrit", "hct"), _HEMATOCRIT),
    **dict.fromkeys(
        ("hba1c", "hemoglobin a1c", "haemoglobin a1c", "a1c", "glycated hemoglobin"), _HBA1C
    ),
    **dict.fromkeys(("tsh", "thyroid stimulating hormone", "thyrotropin"), _TSH),
    **dict.fromkeys(("crp", "c reactive protein"), _CRP),
}

# Lab spellings of units → UCUM, looked up in lower case without spaces after "μ"/"µ"
# became "u".
_UCUM_REWRITES = {
    "iu/l": "[IU]/L",
    "miu/l": "m[IU]/L",
    "uiu/ml": "u[IU]/mL",
    "miu/ml": "m[IU]/mL",
    "meq/l": "meq/L",
    "10^3/ul": "10*3/uL",
    "x10^3/ul": "10*3/uL",
    "k/ul": "10*3/uL",
    "thou/ul": "10*3/uL",
    "10^9/l": "10*9/L",
    "x10^9/l": "10*9/L",
    "10^12/l": "10*12/L",
    "x10^12/l": "10*12/L",
    "10^6/ul": "10*6/uL",
    "x10^6/ul": "10*6/uL",
    "m/ul": "10*6/uL",
    "cells/ul": "/uL",
    "mcg/dl": "ug/dL",
    "mcg/l": "ug/L",
    "mm/hr": "mm/h",
    "mm/1hr": "mm/h",
}

# A conservative UCUM grammar: prefixed atoms (with an optional integer exponent)
# joined by "." or "/", an optional leading "/" or power of ten, "%" alone.
_PREFIX = r"(?:da|[YZEPTGMkhdcmunpfazy])?"
_ATOM = r"(?:g|L|l|mol|eq|U|\[IU\]|kat|s|min|h|d|m|mm\[Hg\]|Cel|\[ppm\]|\[ppb\]|osm|\[pH\]|\[iU\])"
_TERM = rf"(?:{_PREFIX}{_ATOM}(?:-?\d+)?|10\*\d+|\{{[^{{}}]*\}})"
_UCUM = re.compile(rf"^(?:%|1|/?{_TERM}(?:[./]{_TERM})*)$")
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")


@dataclass(frozen=True)
class LabConcept:
    """The concept naming a test; ``is_loinc`` False for this node's named concepts."""

    concept: CodedConcept
    is_loinc: bool


def lab_text(result: LabResult) -> str:
    """One lab test as a line a reader scans: name, result, unit, range, then the rest."""
    line = f"{result.name}: {result.result}"
    if result.unit:
        line += f" {result.unit}"
    if result.range:
        line += f" (reference {result.range})"
    extras = [
        f"{label} {value}"
        for label, value in (
            ("panel", result.panel),
            ("method", result.method),
            ("specimen", result.specimen),
            ("collected", result.sample_collection_time),
        )
        if value
    ]
    return line + (f"; {'; '.join(extras)}" if extras else "")


def lab_number(result: LabResult) -> int | float | None:
    """The result as a number when it is written as one ("13.5", "+2", ".5"), else None.

    Integers stay integers ("45" is written 45, not 45.0). A comma is not read as
    a decimal mark: "1,234" could be either.
    """
    text = result.result.strip()
    if not _NUMBER.match(text):
        return None
    return float(text) if "." in text else int(text)


def ucum_unit(unit: str | None) -> CodedConcept:
    """The UCUM concept for a unit as a lab report prints it.

    UCUM expressions are kept (after the rewrites above); anything else becomes
    the annotation ``{unit}`` (UCUM's unit 1 with a note), and no unit "1".
    """
    text = (unit or "").strip()
    if not text:
        return CodedConcept("1", "UCUM", "no units")
    normal = text.replace("μ", "u").replace("µ", "u")
    code = _UCUM_REWRITES.get(normal.lower().replace(" ", ""), normal)
    if not _UCUM.match(code):
        # Braces and non-ASCII are not allowed inside an annotation.
        safe = "".join(c for c in normal if c.isascii() and c.isprintable() and c not in "{}")
        code = f"{{{safe.strip() or 'unit'}}}"
    return CodedConcept(code, "UCUM", text[:_LO_MAX])


def _name_key(name: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", name.lower()).split())


def lab_concept(result: LabResult, unit: CodedConcept) -> LabConcept:
    """LOINC when the name and the unit's property match a known test, else a named code."""
    loinc = _LOINC_BY_NAME.get(_name_key(result.name))
    if loinc is not None and unit.value in loinc.units:
        return LabConcept(CodedConcept(loinc.code, "LN", loinc.meaning), is_loinc=True)
    digest = hashlib.sha256(_name_key(result.name).encode()).hexdigest()[:12].upper()
    name = result.name.strip()[:_LO_MAX] or "unnamed test"
    return LabConcept(CodedConcept(f"T{digest}", LAB_SCHEME, name), is_loinc=False)


def lab_measurement_group(
    result: LabResult, index: int, algorithm: AlgorithmIdentification, document_uid: str
) -> MeasurementsAndQualitativeEvaluations | None:
    """TID 1501 group with one NUM for a numeric result; None for any other result."""
    value = lab_number(result)
    if value is None:
        return None
    unit = ucum_unit(result.unit)
    concept = lab_concept(result, unit).concept
    properties = None
    if result.range and result.range.strip():
        properties = MeasurementProperties(
            normal_range_properties=NormalRangeProperties(
                values=[], description=result.range.strip()
            )
        )
    measurement = Measurement(name=concept, value=value, unit=unit, properties=properties)
    tracking = TrackingIdentifier(
        uid=derived_uid("lab", document_uid, str(index), result.name),
        identifier=f"lab {index}: {result.name}"[:_TRACKING_ID_MAX],
    )
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, algorithm_id=algorithm, measurements=[measurement]
    )


def lab_scheme_identification() -> Dataset:
    """The Coding Scheme Identification item naming :data:`LAB_SCHEME`."""
    item = Dataset()
    item.CodingSchemeDesignator = LAB_SCHEME
    item.CodingSchemeName = _LAB_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "medgemma-node"
    return item
