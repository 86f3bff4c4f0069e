"""Completeness and routing over a real SQLite index: stable timeout, late arrivals, rules."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from node.config import Match, Rule, Settings, Task, parse_settings
from node.store.index import Filed, Index
from node.store.meta import InstanceMeta
from node.store.models import JobState, StudyState, utcnow
from node.studies.completeness import CompletenessWatcher
from node.studies.routing import SeriesFacts, matches, plan_jobs
from tests.conftest import instance_meta

STUDY = "1.2.826.0.1.3680043.8.498.1"


def _meta(sop: int, *, series: int = 1, modality: str = "CR", own: bool = False) -> InstanceMeta:
    return instance_meta(STUDY, sop, series=series, modality=modality, own=own)


def _setup(tmp_path: Path, policy: str = "rerun") -> tuple[Index, CompletenessWatcher, Settings]:
    settings = parse_settings(
        f"node: {{data_dir: {tmp_path}, stable_seconds: 5, late_arrivals: {policy}}}\n", "test"
    )
    index = Index(settings.node.resolved_database_url)
    return index, CompletenessWatcher(settings, index, count_query=None), settings


def test_study_starts_only_after_it_went_quiet(tmp_path: Path) -> None:
    index, watcher, _ = _setup(tmp_path)
    assert index.file_instance(_meta(1), "a", reopen=True) is Filed.NEW
    assert watcher.tick(utcnow() + timedelta(seconds=4)) == 0
    assert watcher.tick(utcnow() + timedelta(seconds=6)) == 1
    jobs = index.jobs(STUDY)
    assert [(j.task, j.state) for j in jobs] == [("cxr-report", JobState.QUEUED)]


@pytest.mark.parametrize(("policy", "jobs_after"), [("rerun", 2), ("ignore", 1)])
def test_late_instances_follow_the_policy(tmp_path: Path, policy: str, jobs_after: int) -> None:
    index, watcher, _ = _setup(tmp_path, policy)
    index.file_instance(_meta(1), "a", reopen=policy == "rerun")
    watcher.tick(utcnow() + timedelta(seconds=6))
    # the same instance again is no new work, whatever the policy
    assert index.file_instance(_meta(1), "a2", reopen=policy == "rerun") is Filed.DUPLICATE
    assert index.receiving_studies() == []
    index.file_instance(_meta(2), "b", reopen=policy == "rerun")
    watcher.tick(utcnow() + timedelta(seconds=6))
    assert len(index.jobs(STUDY)) == jobs_after
    assert index.instance_count(index.jobs(STUDY)[0].study_id) == 2


def test_own_results_coming_back_do_not_reopen(tmp_path: Path) -> None:
    index, watcher, _ = _setup(tmp_path)
    index.file_instance(_meta(1), "a", reopen=True)
    watcher.tick(utcnow() + timedelta(seconds=6))
    index.file_instance(_meta(1, series=2, modality="SR", own=True), "sr", reopen=False)
    assert [s.state for s in index.receiving_studies()] == []


def test_unmatched_study_is_recorded_and_skipped(tmp_path: Path) -> None:
    index, watcher, _ = _setup(tmp_path)
    index.file_instance(_meta(1, modality="US"), "a", reopen=True)
    watcher.tick(utcnow() + timedelta(seconds=6))
    with index.session() as s:
        from node.store.models import Study

        study = s.query(Study).one()
    assert study.state == StudyState.SKIPPED and "no routing rule" in (study.note or "")
    assert index.jobs(STUDY) == []


def _facts(**values: str | None) -> SeriesFacts:
    base: dict[str, str | None] = {
        "series_uid": "1",
        "modality": "CT",
        "body_part": "CHEST",
        "image_type": "ORIGINAL\\PRIMARY\\AXIAL",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "description": "Thorax 1.0 B70f",
        "calling_ae": "CT01",
    }
    base.update(values)
    return SeriesFacts(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        (Match(modality=["ct"]), True),
        (Match(modality=["MR"]), False),
        (Match(sop_class=["CTImageStorage"]), True),
        (Match(sop_class=["1.2.840.10008.5.1.4.1.1.2"]), True),
        (Match(image_type=["ORIGINAL", "AXIAL"]), True),
        (Match(image_type=["LOCALIZER"]), False),
        (Match(series_description=r"b70f"), True),
        (Match(series_description=r"^lung"), False),
        (Match(calling_ae=["CT01"], body_part=["chest"]), True),
        (Match(calling_ae=["CT02"]), False),
    ],
)
def test_rule_fields(match: Match, expected: bool) -> None:
    assert matches(match, _facts()) is expected


def test_first_matching_rule_wins_and_series_group_per_rule() -> None:
    rules = [
        Rule(name="localizers", match=Match(image_type=["LOCALIZER"]), task=Task.CT_VOLUME),
        Rule(name="ct", match=Match(modality=["CT"]), task=Task.CT_VOLUME),
    ]
    series = [
        _facts(series_uid="a"),
        _facts(series_uid="b"),
        _facts(series_uid="c", image_type="DERIVED\\SECONDARY\\LOCALIZER"),
    ]
    planned = plan_jobs(series, rules)
    assert [(p.rule, p.series_uids) for p in planned] == [("localizers", ["c"]), ("ct", ["a", "b"])]
