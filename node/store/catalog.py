"""The index as DICOMweb sees it: studies, series and instances found by their attributes.

What the node holds is two kinds of instance: what senders delivered (``series`` and
``instances``) and the node's own results (``result_instances``, SR/GSPS/SC filed by the
worker). A viewer must see one study with both, so every search runs over one row set,
the ``UNION ALL`` of the two, with the result rows whose SOP Instance UID also came back
through the front door (a PACS that routes everything) left out so nothing is listed
twice. Series and their counts are grouped from those rows; a study's counts and
ModalitiesInStudy are computed for the page of studies returned only.

Matching, filtering, counting, ordering and paging all happen in SQL; nothing here loads
every study into Python. Matching follows PS3.4 C.2.2.2 as the index can: single values
(case-sensitive, except person names, which match case-insensitively as most archives
do), ``*`` and ``?`` wildcards, UID and value lists, and inclusive ranges on text that
sorts as it reads (dates YYYYMMDD, times HHMMSS.ffffff). Wildcards become anchored
regular expressions, ``(?i)`` for person names, which SQLite (Python's ``re`` through
SQLAlchemy's REGEXP) and PostgreSQL (``~``, whose ARE syntax takes the same embedded
option) read alike; LIKE would be case-insensitive on SQLite and not on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    Subquery,
    and_,
    distinct,
    exists,
    false,
    func,
    literal,
    null,
    select,
    true,
    union_all,
)
from sqlalchemy.orm import QueryableAttribute

from node.store.catalog_records import (
    Filters,
    Found,
    InstanceRecord,
    NotInCatalog,
    Page,
    SeriesAttributes,
    SeriesRecord,
    StudyAttributes,
    StudyRecord,
    ValueRange,
)
from node.store.models import Instance, ResultInstance, Series, Study

__all__ = ["Catalog"]

# Characters a regular expression reads as syntax; escaped so they match themselves.
_REGEX_SYNTAX = frozenset("\\.^$|+()[]{}")


# A column of a table or of a mapped class; both take SQL operators.
Column = ColumnElement[Any] | QueryableAttribute[Any]


_STUDY_COLUMNS = [Study.__table__.c[f.name] for f in fields(StudyAttributes)]


def _study_attributes(row: Any) -> StudyAttributes:
    return StudyAttributes(**{f.name: getattr(row, f.name) for f in fields(StudyAttributes)})


def _series_attributes(row: Any) -> SeriesAttributes:
    return SeriesAttributes(**{f.name: getattr(row, f.name) for f in fields(SeriesAttributes)})


def _matches(column: Column, pattern: str, *, ignore_case: bool) -> ColumnElement[bool]:
    if not ignore_case and "*" not in pattern and "?" not in pattern:
        return column == pattern
    regex = "".join(
        ".*" if c == "*" else "." if c == "?" else "\\" + c if c in _REGEX_SYNTAX else c
        for c in pattern
    )
    return column.regexp_match(("(?i)" if ignore_case else "") + f"^{regex}$")


def _in_range(column: Column, bounds: ValueRange) -> ColumnElement[bool]:
    conditions: list[ColumnElement[bool]] = [column.is_not(None)]
    if bounds.low is not None:
        conditions.append(column >= bounds.low)
    if bounds.high is not None:
        conditions.append(column <= bounds.high)
    return and_(*conditions)


# The two arms of the row set, as (logical name → column) maps over their own tables.
_RECEIVED: dict[str, Column] = {
    "study_id": Series.study_id,
    "series_uid": Series.series_uid,
    "modality": Series.modality,
    "series_number": Series.series_number,
    "series_description": Series.description,
    "body_part": Series.body_part,
    "sop_uid": Instance.sop_uid,
    "sop_class_uid": Instance.sop_class_uid,
    "transfer_syntax_uid": Instance.transfer_syntax_uid,
    "instance_number": Instance.instance_number,
    "rows": Instance.rows,
    "columns": Instance.columns,
    "number_of_frames": Instance.number_of_frames,
    "path": Instance.path,
    "is_result": false(),
}
_RESULTS: dict[str, Column] = {
    "study_id": ResultInstance.study_id,
    "series_uid": ResultInstance.series_uid,
    "modality": ResultInstance.modality,
    "series_number": ResultInstance.series_number,
    "series_description": ResultInstance.series_description,
    "body_part": null(),
    "sop_uid": ResultInstance.sop_uid,
    "sop_class_uid": ResultInstance.sop_class_uid,
    "transfer_syntax_uid": ResultInstance.transfer_syntax_uid,
    "instance_number": ResultInstance.instance_number,
    "rows": ResultInstance.rows,
    "columns": ResultInstance.columns,
    "number_of_frames": ResultInstance.number_of_frames,
    "path": ResultInstance.path,
    "is_result": true(),
}


@dataclass(frozen=True)
class _Arm:
    """One side of the row set: received instances, or the node's own results."""

    columns: dict[str, Column]
    received: bool

    def select(self, conditions: list[ColumnElement[bool]]) -> Select[Any]:
        statement = select(*(column.label(name) for name, column in self.columns.items()))
        if self.received:
            statement = statement.select_from(Series).join(
                Instance, Instance.series_id == Series.id
            )
        else:
            # A result the PACS sent back is filed as received too: list it once.
            statement = statement.where(~exists().where(Instance.sop_uid == ResultInstance.sop_uid))
        return statement.where(*conditions)


_ARMS = (_Arm(_RECEIVED, received=True), _Arm(_RESULTS, received=False))


# Row columns matched against a list of values in Filters, by (column, Filters field).
_SERIES_LISTS = (
    ("series_uid", "series_uids"),
    ("modality", "modalities"),
    ("series_number", "series_numbers"),
)
_INSTANCE_LISTS = (
    ("sop_uid", "sop_uids"),
    ("sop_class_uid", "sop_class_uids"),
    ("instance_number", "instance_numbers"),
)


def _arm_conditions(
    columns: dict[str, Column], f: Filters, *, instance_keys: bool
) -> list[ColumnElement[bool]]:
    """The row-level conditions of ``f`` on one arm; instance keys only when asked."""
    c = columns
    conditions: list[ColumnElement[bool]] = []
    if f.study_uids:
        # Scoped searches and retrieves touch one study's rows, not the whole table.
        conditions.append(
            c["study_id"].in_(select(Study.id).where(Study.study_uid.in_(f.study_uids)))
        )
    lists = _SERIES_LISTS + (_INSTANCE_LISTS if instance_keys else ())
    for column, values in ((c[name], getattr(f, key)) for name, key in lists):
        if values:
            conditions.append(column.in_(values))
    for match in f.text:
        if not match.field.is_study_level:
            conditions.append(_matches(c[match.field.value], match.pattern, ignore_case=False))
    return conditions


def _rows(f: Filters, *, instance_keys: bool = True) -> Subquery:
    """Every instance held (received and results) that matches ``f`` below study level."""
    arms = [
        arm.select(_arm_conditions(arm.columns, f, instance_keys=instance_keys)) for arm in _ARMS
    ]
    return union_all(*arms).subquery("held")


def _study_conditions(f: Filters) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if f.study_uids:
        conditions.append(Study.study_uid.in_(f.study_uids))
    for match in f.text:
        if match.field.is_study_level:
            column = Study.__table__.c[match.field.value]
            conditions.append(
                _matches(column, match.pattern, ignore_case=match.field.is_person_name)
            )
    if f.study_date is not None:
        conditions.append(_in_range(Study.study_date, f.study_date))
    if f.study_time is not None:
        conditions.append(_in_range(Study.study_time, f.study_time))
    if f.patient_birth_date is not None:
        conditions.append(_in_range(Study.patient_birth_date, f.patient_birth_date))
    if f.modalities_in_study:
        having = _rows(Filters(modalities=f.modalities_in_study))
        conditions.append(Study.id.in_(select(having.c.study_id)))
    return conditions


def _with_study(rows: Subquery, f: Filters) -> Select[Any]:
    """``rows`` beside their study's attributes, the study-level filters applied."""
    return (
        select(*_STUDY_COLUMNS, rows)
        .join_from(rows, Study, Study.id == rows.c.study_id)
        .where(*_study_conditions(f))
    )


def _series_order(rows: Subquery) -> tuple[ColumnElement[Any], ...]:
    """Most recently received study first, then its series by number (unnumbered last)."""
    return (Study.id.desc(), rows.c.series_number.asc().nulls_last(), rows.c.series_uid)


class Catalog:
    """Searches over what the node holds; one SQL round trip per question (two for studies)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def search_studies(self, f: Filters, page: Page) -> Found[StudyRecord]:
        conditions = _study_conditions(f)
        if f.has_series_keys or f.has_instance_keys:
            matching = _rows(f)
            conditions.append(Study.id.in_(select(matching.c.study_id)))
        statement = (
            select(Study.id, *_STUDY_COLUMNS)
            .where(*conditions)
            .order_by(Study.id.desc())  # the most recently received first
            .limit(page.limit + 1)
            .offset(page.offset)
        )
        with self.engine.connect() as connection:
            studies = list(connection.execute(statement))
            more = len(studies) > page.limit
            studies = studies[: page.limit]
            counts, modalities = self._study_totals(connection, [row.id for row in studies])
        records = [
            StudyRecord(
                study=_study_attributes(row),
                modalities=tuple(sorted(modalities.get(row.id, ()))),
                series_count=counts.get(row.id, (0, 0))[0],
                instance_count=counts.get(row.id, (0, 0))[1],
            )
            for row in studies
        ]
        return Found(records, more)

    @staticmethod
    def _study_totals(
        connection: Any, study_ids: Sequence[int]
    ) -> tuple[dict[int, tuple[int, int]], dict[int, set[str]]]:
        """(series, instances) and the modalities of each of ``study_ids`` (one page)."""
        if not study_ids:
            return {}, {}
        arms = [arm.select([arm.columns["study_id"].in_(study_ids)]) for arm in _ARMS]
        held = union_all(*arms).subquery("held")
        counts = {
            row.study_id: (int(row.series), int(row.instances))
            for row in connection.execute(
                select(
                    held.c.study_id,
                    func.count(distinct(held.c.series_uid)).label("series"),
                    func.count().label("instances"),
                ).group_by(held.c.study_id)
            )
        }
        modalities: dict[int, set[str]] = {}
        for row in connection.execute(
            select(held.c.study_id, held.c.modality).where(held.c.modality.is_not(None)).distinct()
        ):
            modalities.setdefault(row.study_id, set()).add(row.modality)
        return counts, modalities

    def search_series(self, f: Filters, page: Page) -> Found[SeriesRecord]:
        held = _rows(f, instance_keys=False)
        grouped = select(
            held.c.study_id,
            held.c.series_uid,
            func.min(held.c.modality).label("modality"),
            func.min(held.c.series_number).label("series_number"),
            func.min(held.c.series_description).label("series_description"),
            func.min(held.c.body_part).label("body_part"),
            func.count().label("instance_count"),
        ).group_by(held.c.study_id, held.c.series_uid)
        if f.has_instance_keys:
            having = _rows(f)
            grouped = grouped.where(held.c.series_uid.in_(select(having.c.series_uid)))
        series = grouped.subquery("series_held")
        statement = (
            _with_study(series, f)
            .order_by(*_series_order(series))
            .limit(page.limit + 1)
            .offset(page.offset)
        )
        with self.engine.connect() as connection:
            rows = list(connection.execute(statement))
        records = [
            SeriesRecord(
                study=_study_attributes(row),
                series=_series_attributes(row),
                instance_count=int(row.instance_count),
            )
            for row in rows[: page.limit]
        ]
        return Found(records, len(rows) > page.limit)

    def search_instances(self, f: Filters, page: Page | None) -> Found[InstanceRecord]:
        """Matching instances; ``page`` None: all of them (a retrieve, not a search)."""
        held = _rows(f)
        statement = _with_study(held, f).order_by(
            *_series_order(held), held.c.instance_number.asc().nulls_last(), held.c.sop_uid
        )
        if page is not None:
            statement = statement.limit(page.limit + 1).offset(page.offset)
        with self.engine.connect() as connection:
            rows = list(connection.execute(statement))
        more = page is not None and len(rows) > page.limit
        if page is not None:
            rows = rows[: page.limit]
        return Found([_instance_record(row) for row in rows], more)

    def retrievable(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[InstanceRecord]:
        """Every instance of a study, series or one instance, in series and instance order.

        Raises NotInCatalog naming the first UID that isn't held (or isn't where the
        request says it is: a series of another study is not in this one).
        """
        found = self.search_instances(
            Filters(
                study_uids=(study_uid,),
                series_uids=(series_uid,) if series_uid else (),
                sop_uids=(sop_uid,) if sop_uid else (),
            ),
            None,
        ).records
        if found:
            return found
        raise NotInCatalog(self._missing(study_uid, series_uid, sop_uid))

    def _missing(self, study_uid: str, series_uid: str | None, sop_uid: str | None) -> str:
        if not self._holds(Filters(study_uids=(study_uid,))):
            return f"study {study_uid} is not held by this node"
        if series_uid is None:
            return f"study {study_uid} has no instances"
        if not self._holds(Filters(study_uids=(study_uid,), series_uids=(series_uid,))):
            return f"series {series_uid} is not in study {study_uid}"
        return f"instance {sop_uid} is not in series {series_uid} of study {study_uid}"

    def _holds(self, f: Filters) -> bool:
        held = _rows(f)
        statement = select(literal(1)).select_from(held).limit(1)
        with self.engine.connect() as connection:
            return connection.execute(statement).first() is not None


def _instance_record(row: Any) -> InstanceRecord:
    return InstanceRecord(
        study=_study_attributes(row),
        series=_series_attributes(row),
        sop_uid=row.sop_uid,
        sop_class_uid=row.sop_class_uid,
        transfer_syntax_uid=row.transfer_syntax_uid,
        instance_number=row.instance_number,
        rows=row.rows,
        columns=row.columns,
        number_of_frames=row.number_of_frames,
        path=row.path,
        is_result=bool(row.is_result),
    )
