"""Upgrades keep the index: Alembic migrations on SQLite and PostgreSQL, and an index an
earlier release made (``create_all``, no migrations) upgraded and served."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pydicom import dcmread
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from fixtures.series import make_cr_study
from node.config import load_settings
from node.store import schema
from node.store.index import Index, make_engine
from node.store.models import Base, Instance, Job, JobState, Series, Study, StudyState
from tests.conftest import node_config
from tests.peers import NodeProcess, Postgres, wait_for


def _differences(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))
    finally:
        engine.dispose()


def test_migrations_build_exactly_the_models_schema_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    Index(url).close()
    assert _differences(url) == []
    engine = make_engine(url)
    with engine.connect() as connection:
        assert schema.current(connection) == schema.head()
    engine.dispose()


def test_migrations_build_exactly_the_models_schema_on_postgresql(postgres: Postgres) -> None:
    url = postgres.fresh_database("schema_check")
    Index(url).close()
    Index(url).close()  # a second node starting on it finds it current
    assert _differences(url) == []


def test_an_index_from_a_newer_release_is_refused_by_name(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    Index(url).close()
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(schema.SchemaError, match="revision 9999, which this release doesn't"):
        schema.upgrade(engine)
    engine.dispose()


def _legacy_index(url: str, cr: Path, spool: Path) -> dict[str, int]:
    """An index as a release before migrations left it: a routed CR study with jobs in
    every state, and a skipped study, in the baseline schema (what that release's
    ``create_all`` made) without ``alembic_version``. Returns job ids by state.

    The rows are written with today's models, then the schema is migrated down to the
    baseline, which also runs every downgrade on a populated index."""
    engine = make_engine(url)  # makes the data directory, as the node does
    Base.metadata.create_all(engine)
    ds = dcmread(cr, stop_before_pixels=True)
    stored = spool / "legacy" / cr.name
    stored.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(cr, stored)
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    ids: dict[str, int] = {}
    with Session(engine) as session, session.begin():
        study = Study(study_uid=str(ds.StudyInstanceUID), state=StudyState.ROUTED)
        series = Series(study=study, series_uid=str(ds.SeriesInstanceUID), modality="CR")
        session.add_all(
            [
                study,
                series,
                Instance(
                    series=series,
                    sop_uid=str(ds.SOPInstanceUID),
                    sop_class_uid=str(ds.SOPClassUID),
                    transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                    path=str(stored),
                ),
                Study(study_uid="1.2.826.0.1.3680043.8.498.1", state=StudyState.SKIPPED),
            ]
        )
        jobs = {}
        for state in JobState:
            job = Job(
                study=study,
                task="cxr-report",
                rule="chest",
                series_uids=[str(ds.SeriesInstanceUID)],
                state=state,
                created_at=long_ago,
                error="an earlier failure" if state is JobState.FAILED else None,
            )
            if state is JobState.RUNNING:
                # A worker of the old release that died with the job in hand.
                job.worker, job.lease_until, job.attempts = "gone-host:4242", long_ago, 1
            jobs[state.value] = job
        session.add_all(jobs.values())
        session.flush()
        ids = {state: job.id for state, job in jobs.items()}
    with engine.begin() as connection:
        config = schema._config(connection)
        command.stamp(config, "head")
        command.downgrade(config, "0001")
        connection.execute(text("DROP TABLE alembic_version"))
    engine.dispose()
    return ids


def test_an_index_from_before_migrations_is_upgraded_and_served(
    tmp_path: Path, test_model: Path
) -> None:
    config_path, config = node_config(
        tmp_path, test_model, localization={"enabled": False}, priors={"enabled": False}
    )
    settings = load_settings(config_path)
    url = settings.node.resolved_database_url
    cr = make_cr_study(tmp_path / "in", patient_id="UPGRADE-1")
    ids = _legacy_index(url, cr, settings.node.data_dir / "spool")

    upgraded = subprocess.run(
        [sys.executable, "-m", "node.cli", "db", "upgrade", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"index schema: {schema.head()} (up to date)" in upgraded.stdout
    assert "predates schema migrations" in upgraded.stderr

    node = NodeProcess(config_path, tmp_path / "node.log", config["node"]["port"]).start()
    index = Index(url)
    try:

        def unfinished_done() -> bool:
            states = {job.id: job.state for job in index.jobs()}
            return all(states[ids[s]] == JobState.DONE for s in ("queued", "running"))

        wait_for(unfinished_done, timeout=240, what="the queued and the orphaned job to finish")
    finally:
        node.stop()
    states = {job.id: job.state for job in index.jobs()}
    # Nothing lost, nothing else touched: finished jobs keep their state, no job was added.
    assert len(states) == len(JobState), node.log()
    for state in ("done", "failed", "undelivered", "superseded"):
        assert states[ids[state]] == state
    failed = next(job for job in index.jobs() if job.id == ids["failed"])
    assert failed.error == "an earlier failure"
    with index.session() as session:
        assert session.scalar(select(func.count()).select_from(Study)) == 2
        assert session.scalar(select(func.count()).select_from(Instance)) == 1
    index.close()
