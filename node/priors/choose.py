"""Which earlier study is the prior, and which of its images to compare with (pure).

Study level (from the PACS's query answers): same patient (PatientID, and the issuer
when both carry one; a matching name alone never counts), same modality family,
strictly earlier than the current study, within a window, most recent first.
Instance level (after retrieval): same body part, the closest view.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom import Dataset

from node.priors.study import PriorStudy, parse_date, parse_time

__all__ = ["PriorChoice", "choose_prior", "choose_prior_image", "modality_family"]

log = logging.getLogger(__name__)

DEFAULT_WINDOW_DAYS = 730

# Modalities that are one kind of examination for comparison purposes: a chest CR
# and a chest DX are read side by side every day.
_FAMILIES: dict[str, str] = {"CR": "radiograph", "DX": "radiograph"}

# Objects that can sit in an imaging study without being an image the model could see.
_NON_IMAGE_MODALITIES = frozenset({"SR", "PR", "KO", "DOC", "REG", "SEG", "RWV", "PLAN"})

# ViewPosition preference after "same as the current image": frontal views first.
_FRONTAL_ORDER = ("PA", "AP")


@dataclass(frozen=True)
class PriorChoice:
    """The chosen prior (None when none fits) and one line per candidate saying why."""

    prior: PriorStudy | None
    reasons: list[str] = field(default_factory=list)


def modality_family(modality: str) -> str:
    """The comparison family of a modality code (CR and DX are one)."""
    code = modality.strip().upper()
    return _FAMILIES.get(code, code)


def choose_prior(
    current: Dataset,
    candidates: Sequence[PriorStudy],
    *,
    window_days: int = DEFAULT_WINDOW_DAYS,
) -> PriorChoice:
    """Pick the most recent eligible prior of ``current`` (any instance of the current study).

    Every candidate gets a reason, rejected or chosen, for the job record; reasons
    name study UIDs, never patient identifiers.
    """
    if window_days < 0:
        raise ValueError(f"window_days must be ≥ 0, got {window_days}")
    study_uid = str(current.get("StudyInstanceUID", "")).strip()
    current_when = _when(current)
    if current_when is None:
        return PriorChoice(
            None,
            [f"current study {study_uid} has no valid StudyDate: nothing can be earlier"],
        )
    families = _current_families(current)
    if not families:
        return PriorChoice(
            None, [f"current study {study_uid} has no Modality: the family can't be matched"]
        )
    patient_id = str(current.get("PatientID", "")).strip()
    if not patient_id:
        return PriorChoice(
            None, [f"current study {study_uid} has no PatientID: priors can't be matched"]
        )
    this = _Current(
        study_uid,
        patient_id,
        str(current.get("IssuerOfPatientID", "") or "").strip() or None,
        families,
        current_when,
        parse_time(current.get("StudyTime")) is not None,
    )

    reasons: list[str] = []
    eligible: list[tuple[datetime.datetime, PriorStudy]] = []
    for candidate in candidates:
        rejection = _rejection(candidate, this, window_days)
        if rejection is not None:
            reasons.append(f"rejected {candidate.study_uid}: {rejection}")
            continue
        assert candidate.when is not None  # _rejection returned None, so it has a date
        eligible.append((candidate.when, candidate))

    if not candidates:
        reasons.append("no candidate studies for this patient at the PACS")
    if not eligible:
        return PriorChoice(None, reasons)
    # Most recent first; the UID breaks ties so the choice doesn't depend on answer order.
    eligible.sort(key=lambda pair: (pair[0], pair[1].study_uid), reverse=True)
    chosen_when, chosen = eligible[0]
    days = (current_when.date() - chosen_when.date()).days
    reasons.append(f"chose {chosen.study_uid}: most recent eligible prior, {days} day(s) earlier")
    for _, other in eligible[1:]:
        reasons.append(f"not chosen {other.study_uid}: eligible but older than {chosen.study_uid}")
    log.debug("prior for study %s: %s", study_uid, chosen.study_uid)
    return PriorChoice(chosen, reasons)


def choose_prior_image(current: Dataset, prior_instances: Sequence[Dataset]) -> Dataset | None:
    """The prior image to set beside ``current``: same body part, closest ViewPosition.

    Non-image objects (SR, GSPS, KO, …, or anything without Rows/Columns) are
    skipped; with a body part on both sides a different one is excluded. Among the
    rest: the current image's own ViewPosition first, then PA, AP, an unstated view,
    any other (lateral) view; then the lowest series and instance number.
    """
    body_part = _upper(current, "BodyPartExamined")
    view = _upper(current, "ViewPosition")
    ranked: list[tuple[tuple[int, int, int], Dataset]] = []
    for ds in prior_instances:
        if not _is_image(ds):
            continue
        other_part = _upper(ds, "BodyPartExamined")
        if body_part and other_part and other_part != body_part:
            continue
        ranked.append(((_view_rank(_upper(ds, "ViewPosition"), view), *_numbers(ds)), ds))
    if not ranked:
        return None
    ranked.sort(key=lambda pair: pair[0])
    return ranked[0][1]


# --- internals -------------------------------------------------------------------


@dataclass(frozen=True)
class _Current:
    """What a candidate is compared with: the current study, read once."""

    study_uid: str
    patient_id: str
    issuer: str | None
    families: frozenset[str]
    when: datetime.datetime
    time_known: bool


def _rejection(candidate: PriorStudy, current: _Current, window_days: int) -> str | None:
    """Why ``candidate`` is not a prior, or None when it is eligible."""
    if candidate.study_uid == current.study_uid:
        return "it is the current study"
    if candidate.patient_id != current.patient_id:
        return "PatientID differs from the current study's (same name is not the same patient)"
    issuer = current.issuer
    if issuer and candidate.issuer_of_patient_id and candidate.issuer_of_patient_id != issuer:
        return "IssuerOfPatientID differs from the current study's"
    candidate_families = {
        modality_family(m) for m in candidate.modalities if m not in _NON_IMAGE_MODALITIES
    }
    if not candidate_families:
        return "the PACS gave no image modality in ModalitiesInStudy"
    if not candidate_families & current.families:
        return f"modalities {'/'.join(candidate.modalities)} are not in the current study's family"
    when = candidate.when
    if when is None:
        return "no valid StudyDate"
    if when.date() == current.when.date() and (
        candidate.study_time is None or not current.time_known
    ):
        return (
            "same day as the current study and a StudyTime is missing: can't tell which is earlier"
        )
    if when >= current.when:
        return "not earlier than the current study"
    days = (current.when.date() - when.date()).days
    if days > window_days:
        return f"{days} day(s) earlier, beyond the {window_days}-day window"
    return None


def _when(ds: Dataset) -> datetime.datetime | None:
    date = parse_date(ds.get("StudyDate"))
    if date is None:
        return None
    return datetime.datetime.combine(date, parse_time(ds.get("StudyTime")) or datetime.time())


def _current_families(current: Dataset) -> frozenset[str]:
    codes: list[str] = []
    modality = str(current.get("Modality", "") or "").strip().upper()
    if modality and modality not in _NON_IMAGE_MODALITIES:
        codes.append(modality)
    in_study = current.get("ModalitiesInStudy")
    if in_study:
        values = [in_study] if isinstance(in_study, str) else list(in_study)
        codes += [str(v).strip().upper() for v in values]
    return frozenset(modality_family(c) for c in codes if c and c not in _NON_IMAGE_MODALITIES)


def _upper(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip().upper()


def _is_image(ds: Dataset) -> bool:
    if _upper(ds, "Modality") in _NON_IMAGE_MODALITIES:
        return False
    return "Rows" in ds and "Columns" in ds


def _view_rank(view: str, current_view: str) -> int:
    if current_view and view == current_view:
        return 0
    if view in _FRONTAL_ORDER:
        return 1 + _FRONTAL_ORDER.index(view)
    if not view:
        return 1 + len(_FRONTAL_ORDER)
    return 2 + len(_FRONTAL_ORDER)


def _numbers(ds: Dataset) -> tuple[int, int]:
    def number(keyword: str) -> int:
        value = ds.get(keyword)
        try:
            return int(value) if value not in (None, "") else 0
        except (TypeError, ValueError):
            return 0

    return number("SeriesNumber"), number("InstanceNumber")
