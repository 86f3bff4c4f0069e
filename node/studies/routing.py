"""Routing rules: the first rule a series matches decides its task; series are grouped per rule."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.uid import UID

from node.config import Match, Rule
from node.store.index import PlannedJob


@dataclass(frozen=True)
class SeriesFacts:
    """What a rule can look at; one per series (from its first instance)."""

    series_uid: str
    modality: str | None
    body_part: str | None
    sop_class_uid: str | None
    image_type: str | None  # backslash-joined
    description: str | None
    calling_ae: str | None


def _any_of(wanted: list[str] | None, value: str | None) -> bool:
    if wanted is None:
        return True
    return value is not None and value.strip().upper() in {w.strip().upper() for w in wanted}


def _sop_class_matches(wanted: list[str] | None, value: str | None) -> bool:
    if wanted is None:
        return True
    if value is None:
        return False
    # A rule may name the SOP class by UID or by pydicom's keyword (e.g. CTImageStorage).
    names = {value, UID(value).keyword, UID(value).name}
    return any(w in names for w in wanted)


def matches(match: Match, facts: SeriesFacts) -> bool:
    image_type = {v.strip().upper() for v in (facts.image_type or "").split("\\") if v}
    return (
        _any_of(match.modality, facts.modality)
        and _any_of(match.body_part, facts.body_part)
        and _any_of(match.calling_ae, facts.calling_ae)
        and _sop_class_matches(match.sop_class, facts.sop_class_uid)
        and (match.image_type is None or {v.upper() for v in match.image_type} <= image_type)
        and (
            match.series_description is None
            or re.search(match.series_description, facts.description or "", re.IGNORECASE)
            is not None
        )
    )


def plan_jobs(series: Sequence[SeriesFacts], rules: Sequence[Rule]) -> list[PlannedJob]:
    """One job per matched rule holding the series it matched, in rule order."""
    chosen: dict[str, list[str]] = {}
    for facts in series:
        for rule in rules:
            if matches(rule.match, facts):
                chosen.setdefault(rule.name, []).append(facts.series_uid)
                break
    return [
        PlannedJob(
            task=rule.task.value,
            rule=rule.name,
            series_uids=chosen[rule.name],
            save_inputs=rule.save_inputs,
        )
        for rule in rules
        if rule.name in chosen
    ]
