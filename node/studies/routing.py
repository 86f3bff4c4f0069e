"""Routing rules: the first rule a series matches decides its task; series are grouped per rule."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pydicom.uid import UID

from node.config import Match, Rule
from node.store.index import PlannedJob
from node.store.meta import InstanceMeta


class SeriesLike(Protocol):
    """What a rule can look at, one per series: an index row or ``SeriesFacts``."""

    @property
    def series_uid(self) -> str: ...
    @property
    def modality(self) -> str | None: ...
    @property
    def body_part(self) -> str | None: ...
    @property
    def sop_class_uid(self) -> str | None: ...
    @property
    def image_type(self) -> str | None: ...  # backslash-joined
    @property
    def description(self) -> str | None: ...
    @property
    def calling_ae(self) -> str | None: ...


@dataclass(frozen=True)
class SeriesFacts:
    """A series' routing facts without an index (``medgemma-node run``, tests)."""

    series_uid: str
    modality: str | None
    body_part: str | None
    sop_class_uid: str | None
    image_type: str | None
    description: str | None
    calling_ae: str | None

    @classmethod
    def from_instance(cls, meta: InstanceMeta) -> SeriesFacts:
        return cls(
            series_uid=meta.series_uid,
            modality=meta.modality,
            body_part=meta.body_part,
            sop_class_uid=meta.sop_class_uid,
            image_type=meta.image_type,
            description=meta.series_description,
            calling_ae=meta.calling_ae,
        )


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


def matches(match: Match, facts: SeriesLike) -> bool:
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


def plan_jobs(series: Sequence[SeriesLike], rules: Sequence[Rule]) -> list[PlannedJob]:
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
