"""Command line: ``serve``, ``run``, ``jobs``, ``retry``, ``reprocess``, ``process``,
``make-test-model``.

Thin: the work is in the packages.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections import defaultdict
from pathlib import Path
from types import FrameType

from tqdm import tqdm

from node.audit import AuditEvent, AuditLog
from node.config import ConfigError, Settings, Task, load_settings
from node.logs import configure_logging
from node.store.ingest import read_header
from node.store.meta import InstanceMeta, InvalidInstance
from node.studies.routing import SeriesFacts, plan_jobs

log = logging.getLogger("node")


def _settings(path: Path | None) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as e:
        print(f"medgemma-node: {e}", file=sys.stderr)
        raise SystemExit(2) from e


def _engine(settings: Settings):  # type: ignore[no-untyped-def]
    from node.inference.engine import load_engine  # torch is heavy: import only when needed

    return load_engine(settings.model, settings.node.data_dir)


def cmd_serve(args: argparse.Namespace) -> int:
    from node.pipeline.memory import settle_long_lived_objects
    from node.service import NodeService, StartupError

    settings = _settings(args.config)
    service = NodeService(settings, verbose=args.verbose)
    # The receiving process's 230,000 objects from its imports would otherwise be walked by
    # every full collection (0.09 s, holding up C-STOREs and HTTP answers alike).
    settle_long_lived_objects()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        service.request_stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        service.start()
    except StartupError as e:
        print(f"medgemma-node: {e}", file=sys.stderr)
        service.stop()
        return 1
    service.wait()
    service.stop()
    if service.failure:
        print(f"medgemma-node: {service.failure}", file=sys.stderr)
        return 1
    return 0


def _dicom_files(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files.extend(p for p in sorted(item.rglob("*")) if p.is_file())
        elif item.is_file():
            files.append(item)
        else:
            raise SystemExit(f"medgemma-node: {item} does not exist")
    return files


def cmd_run(args: argparse.Namespace) -> int:
    from node.dispatch.deliver import save_results
    from node.pipeline.tasks import InputError, TaskInput, run_task

    settings = _settings(args.config)
    by_series: dict[str, list[Path]] = defaultdict(list)
    facts: dict[str, SeriesFacts] = {}
    study_of: dict[str, str] = {}
    for path in _dicom_files(args.paths):
        try:
            header = read_header(path)
            meta = InstanceMeta.from_dataset(header, transfer_syntax_uid="", calling_ae=None)
        except InvalidInstance as e:
            log.warning("skipping %s: %s", path, e)
            continue
        by_series[meta.series_uid].append(path)
        study_of[meta.series_uid] = meta.study_uid
        facts.setdefault(meta.series_uid, SeriesFacts.from_instance(meta))
    studies: dict[str, list[SeriesFacts]] = defaultdict(list)
    for uid, series_facts in facts.items():
        studies[study_of[uid]].append(series_facts)
    jobs: list[tuple[str, Task, list[str]]] = []
    for study_uid, study_series in studies.items():
        if args.task is not None:
            jobs.append((study_uid, Task(args.task), [s.series_uid for s in study_series]))
            continue
        planned = plan_jobs(study_series, settings.routing)
        if not planned:
            log.warning("study %s: no routing rule matched; skipped", study_uid)
        jobs.extend((study_uid, Task(p.task), p.series_uids) for p in planned)
    if not jobs:
        print("medgemma-node: nothing to do: no DICOM study matched a task", file=sys.stderr)
        return 1
    engine = _engine(settings)
    failures = 0
    for number, (study_uid, task, series_uids) in enumerate(tqdm(jobs, unit="job"), start=1):
        save = args.save_inputs / f"{number:03d}-{task.value}" if args.save_inputs else None
        files = {uid: by_series[uid] for uid in series_uids}
        try:
            task_input = TaskInput(
                task,
                files,
                save,
                settings.model.max_new_tokens,
                settings.imaging,
                localization=settings.localization,
                outputs=frozenset(settings.outputs),
            )
            outcome = run_task(task_input, engine)
        except InputError as e:
            log.error("study %s, task %s: %s", study_uid, task.value, e)
            failures += 1
            continue
        for written in save_results(outcome.results, args.out / f"{number:03d}-{task.value}"):
            print(written)
    return 1 if failures else 0


def _index(settings: Settings):  # type: ignore[no-untyped-def]
    from node.store.index import Index

    return Index(settings.node.resolved_database_url)


def cmd_jobs(args: argparse.Namespace) -> int:
    """One line per job: what a PACS administrator checks first when a result is missing."""
    index = _index(_settings(args.config))
    try:
        jobs = [job for job in index.jobs(args.study) if args.state in (None, job.state)]
        for job in jobs:
            study = index.study(job.study_id).study_uid
            sent = ",".join(job.delivered_to or []) or "-"
            print(
                f"{job.id}\t{job.state}\t{job.task}\t{study}\tattempts={job.attempts}"
                f"\tdelivered_to={sent}\t{job.error or ''}"
            )
    finally:
        index.close()
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    index = _index(settings)
    try:
        requeued = index.retry_jobs(args.jobs or None)
    finally:
        index.close()
    audit = AuditLog.from_settings(settings.node)
    audit.record_cli(AuditEvent.RETRY_REQUESTED, asked=args.jobs, job_ids=requeued)
    missing = sorted(set(args.jobs) - set(requeued))
    if missing:
        print(
            "medgemma-node: not re-queued (unknown, or neither undelivered nor failed): "
            + ", ".join(map(str, missing)),
            file=sys.stderr,
        )
    print(f"re-queued {len(requeued)} job(s): {', '.join(map(str, requeued)) or '-'}")
    return 1 if missing else 0


def cmd_reprocess(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    index = _index(settings)
    try:
        created = index.reprocess(args.study)
    except KeyError as e:
        print(f"medgemma-node: {e.args[0]}", file=sys.stderr)
        return 1
    finally:
        index.close()
    audit = AuditLog.from_settings(settings.node)
    audit.record_cli(AuditEvent.REPROCESS_REQUESTED, study_uid=args.study, job_ids=created)
    print(f"queued {len(created)} job(s) for study {args.study}: {created}")
    return 0


def cmd_process(args: argparse.Namespace) -> int:
    """Fetch a study from the PACS and file it as if the PACS had sent it; routed at once."""
    from node.studies.pull import PullError, pull_once

    settings = _settings(args.config)
    if settings.pacs is None:
        print(
            f"medgemma-node: no pacs is configured: nowhere to pull study {args.study} from",
            file=sys.stderr,
        )
        return 1
    try:
        outcome = pull_once(settings, args.study, via="cli")
    except PullError as e:
        print(f"medgemma-node: {e}", file=sys.stderr)
        return 1
    print(
        f"pulled {outcome.instances} instance(s) of study {outcome.study_uid} by "
        f"{outcome.method} ({outcome.new_instances} new); study {outcome.state}, "
        f"job(s): {outcome.job_ids}"
    )
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    """Bring the index to this release's schema, or say where it stands."""
    from node.store import schema
    from node.store.index import make_engine

    settings = _settings(args.config)
    engine = make_engine(settings.node.resolved_database_url)
    try:
        if args.action == "upgrade":
            schema.upgrade(engine)
        with engine.connect() as connection:
            found = schema.current(connection)
    except schema.SchemaError as e:
        print(f"medgemma-node: {e}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    newest = schema.head()
    state = "up to date" if found == newest else f"this release's schema is {newest}"
    print(f"index schema: {found or 'none (empty, or from before migrations)'} ({state})")
    return 0 if args.action == "current" or found == newest else 1


def cmd_make_test_model(args: argparse.Namespace) -> int:
    from node.testing.checkpoint import build_test_model

    path = build_test_model(args.dir)
    print(path)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="medgemma-node", description=__doc__)
    top.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = top.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the DICOM node")
    serve.add_argument("--config", type=Path, default=None, help="YAML file (default: embedded)")
    serve.set_defaults(func=cmd_serve)

    run = commands.add_parser("run", help="process DICOM files or folders without networking")
    run.add_argument("paths", type=Path, nargs="+")
    run.add_argument("--config", type=Path, default=None)
    run.add_argument("--out", type=Path, required=True, help="folder for the result objects")
    run.add_argument(
        "--task",
        choices=[t.value for t in Task],
        default=None,
        help="run this task on every study instead of the routing rules",
    )
    run.add_argument(
        "--save-inputs",
        type=Path,
        default=None,
        help="write the images, prompt and metadata the model receives here",
    )
    run.set_defaults(func=cmd_run)

    jobs = commands.add_parser("jobs", help="list jobs and their state")
    jobs.add_argument("--config", type=Path, default=None)
    jobs.add_argument("--study", default=None, help="only this StudyInstanceUID")
    jobs.add_argument("--state", default=None, help="e.g. undelivered, failed, queued, done")
    jobs.set_defaults(func=cmd_jobs)

    retry = commands.add_parser(
        "retry", help="queue undelivered (dead-lettered) and failed jobs again"
    )
    retry.add_argument("jobs", type=int, nargs="*", help="job ids (default: all of them)")
    retry.add_argument("--config", type=Path, default=None)
    retry.set_defaults(func=cmd_retry)

    reprocess = commands.add_parser(
        "reprocess", help="run a study's tasks again; the new report supersedes the old"
    )
    reprocess.add_argument("study", help="StudyInstanceUID")
    reprocess.add_argument("--config", type=Path, default=None)
    reprocess.set_defaults(func=cmd_reprocess)

    process = commands.add_parser(
        "process",
        help="fetch a study from the PACS (WADO-RS, C-MOVE or C-GET) and run its tasks now",
    )
    process.add_argument("study", help="StudyInstanceUID")
    process.add_argument("--config", type=Path, default=None)
    process.set_defaults(func=cmd_process)

    db = commands.add_parser(
        "db", help="the index schema: upgrade it to this release's, or show where it stands"
    )
    db.add_argument("action", choices=["upgrade", "current"])
    db.add_argument("--config", type=Path, default=None)
    db.set_defaults(func=cmd_db)

    make_model = commands.add_parser("make-test-model", help="write the tiny test checkpoint")
    make_model.add_argument("dir", type=Path)
    make_model.set_defaults(func=cmd_make_test_model)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure_logging(args.verbose)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
