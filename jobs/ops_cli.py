"""`fleet policies show|set` and `fleet jobs run`: archival policies and the scheduler, for operators.

Registered on the main group in jobs/cli.py. Exit codes: 0 done; 1 database or job failure; 2 bad usage (an
interval that does not parse, a setting that does not exist on this edition); 3 a policy change refused as
unsafe (nothing was changed).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

import click
import sqlalchemy as sa
from sqlalchemy.engine import Connection

import db
from api.config import Settings
from db import edition, job_runs, policies
from db.policies import format_interval
from jobs.cli_support import cli_engine, emit, load_settings
from jobs.scheduler import Outcome, Scheduler

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3


class _Refused(click.ClickException):
    exit_code = EXIT_REFUSED


class _Unavailable(click.ClickException):
    exit_code = EXIT_USAGE


@contextmanager
def _database_errors(action: str) -> Iterator[None]:
    try:
        yield
    except sa.exc.ProgrammingError as exc:  # e.g. job_runs missing: schema behind the code
        raise click.ClickException(
            f"cannot {action}: {exc.__cause__ or exc}\n(is the schema at head? `fleet db current`, `fleet db upgrade`)"
        ) from None
    except sa.exc.SQLAlchemyError as exc:  # refused connection, TimescaleDB refusing a policy, ...
        raise click.ClickException(f"cannot {action}: {exc.__cause__ or exc}") from None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# --- policies show -----------------------------------------------------------------------------------------


def _fleet_job_info(name: str, every: timedelta, runs: dict[str, job_runs.JobRun], now: datetime) -> dict[str, Any]:
    run = runs.get(name)
    started = run.started_at if run else None
    return {
        "job": name,
        "run_by": "fleet jobs run",
        "schedule_interval": format_interval(every),
        "last_run_started_at": _iso(started),
        "last_run_finished_at": _iso(run.finished_at if run else None),
        "last_result": run.result if run else None,
        "last_error": run.error if run else None,
        "next_run": _iso(started + every) if started else None,
        "due": job_runs.is_due(run, every, now),
    }


def _policy_info(
    job: policies.PolicyJob | None, fleet_runs_it: bool, runs: dict[str, job_runs.JobRun], now: datetime
) -> dict[str, Any] | None:
    if job is None:
        return None
    timescaledb = {
        "last_run_started_at": job.last_run_started_at,
        "last_successful_finish": job.last_successful_finish,
        "last_run_status": job.last_run_status,
        "job_status": job.job_status,
        "next_start": job.next_start,
        "total_runs": job.total_runs,
        "total_failures": job.total_failures,
    }
    if fleet_runs_it:
        # run_job does not update TimescaleDB's job_stats: our job_runs row is the record.
        info = _fleet_job_info(job_runs.timescaledb_job_name(job.job_id), job.schedule_interval, runs, now)
    else:
        info = {
            "job": job_runs.timescaledb_job_name(job.job_id),
            "run_by": "TimescaleDB background workers",
            "schedule_interval": format_interval(job.schedule_interval),
            "last_run_started_at": job.last_run_started_at,
            "last_run_finished_at": job.last_successful_finish,
            "last_result": job.last_run_status,
            "last_error": None,
            "next_run": job.next_start,
            "due": None,
        }
    return {"job_id": job.job_id, "scheduled": job.scheduled, **info, "timescaledb_stats": timescaledb}


def policies_report(conn: Connection, settings: Settings) -> dict[str, Any]:
    """Everything `fleet policies show` reports, JSON-ready."""
    info = edition.describe(conn)
    fleet_runs_policies = info.community and not policies.timescaledb_runs_policies(conn, info)
    chunks = policies.chunk_intervals(conn)
    runs = job_runs.get_runs(conn)
    now = job_runs.db_now(conn)
    if not info.community:
        runner = "no policies on the Apache edition: retention is `fleet jobs run`'s own drop_chunks job"
    elif fleet_runs_policies:
        runner = "`fleet jobs run` (this engine has no TimescaleDB background workers: nothing runs them otherwise)"
    else:
        runner = "TimescaleDB background workers"
    report: dict[str, Any] = {
        "edition": {
            "license": info.license,
            "community": info.community,
            "timescaledb_version": info.timescaledb_version,
            "server_version": info.server_version,
            "embedded": info.embedded,
        },
        "policies_run_by": runner,
        "hypertables": [],
        "aggregates": [],
    }
    if info.community:
        jobs = policies.policy_jobs(conn)
        for table, rollup in policies.ROLLUP_OF.items():
            retention = policies.find_job(jobs, policies.POLICY_RETENTION, table)
            compression = policies.find_job(jobs, policies.POLICY_COMPRESSION, table)
            report["hypertables"].append(
                {
                    "name": table,
                    "chunk_interval": format_interval(chunks.get(table)),
                    "retention": {
                        "drop_after": format_interval(retention.drop_after) if retention else None,
                        "by": "TimescaleDB policy" if retention else None,
                        "job": _policy_info(retention, fleet_runs_policies, runs, now),
                    },
                    "compression": {
                        "available": True,
                        "compress_after": format_interval(compression.compress_after) if compression else None,
                        "job": _policy_info(compression, fleet_runs_policies, runs, now),
                    },
                }
            )
            refresh = policies.find_job(jobs, policies.POLICY_REFRESH, rollup)
            rollup_retention = policies.find_job(jobs, policies.POLICY_RETENTION, rollup)
            report["aggregates"].append(
                {
                    "name": rollup,
                    "source": table,
                    "kind": "continuous aggregate (real-time)",
                    "refresh": {
                        "start_offset": format_interval(refresh.start_offset) if refresh else None,
                        "end_offset": format_interval(refresh.end_offset) if refresh else None,
                        "schedule_interval": format_interval(refresh.schedule_interval) if refresh else None,
                        "job": _policy_info(refresh, fleet_runs_policies, runs, now),
                    },
                    "retention": {
                        "drop_after": format_interval(rollup_retention.drop_after) if rollup_retention else None,
                        "job": _policy_info(rollup_retention, fleet_runs_policies, runs, now),
                    },
                }
            )
    else:
        kept = policies.retention_settings(conn)
        every = timedelta(seconds=settings.jobs_retention_every_seconds)
        retention_job = _fleet_job_info("retention", every, runs, now)
        for table, rollup in policies.ROLLUP_OF.items():
            report["hypertables"].append(
                {
                    "name": table,
                    "chunk_interval": format_interval(chunks.get(table)),
                    "retention": {
                        "drop_after": format_interval(kept.get(table)),
                        "by": "fleet jobs run" if table in kept else None,
                        "job": retention_job if table in kept else None,
                    },
                    "compression": {"available": False, "reason": policies.COMPRESSION_UNAVAILABLE},
                }
            )
            report["aggregates"].append(
                {
                    "name": rollup,
                    "source": table,
                    "kind": "plain view",
                    "refresh": None,
                    "retention": None,
                    "note": f"plain view over {table} on the Apache edition: always current (nothing to refresh),"
                    " keeps exactly what raw retention keeps",
                }
            )
    report["scheduler_jobs"] = [
        {
            "job": r.job_name,
            "holder": r.holder,
            "last_run_started_at": _iso(r.started_at),
            "last_run_finished_at": _iso(r.finished_at),
            "last_result": r.result,
            "last_error": r.error,
            "runs": r.run_count,
            "failures": r.failure_count,
        }
        for r in runs.values()
    ]
    return report


def _when(text: str | None) -> str | None:
    """A timestamp (ISO, or PostgreSQL's text form) as 'YYYY-MM-DD HH:MM:SSZ'; other text as it is."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except ValueError:
        return text  # e.g. -infinity


def _job_line(label: str, job: dict[str, Any] | None) -> str:
    if job is None:
        return f"  {label:<34} no job"
    last = _when(job["last_run_started_at"]) or "never"
    result = job["last_result"] or "-"
    nxt = "due now" if job.get("due") else _when(job["next_run"]) or "-"
    ident = f"job {job['job_id']}" if job.get("job_id") is not None else job["job"]
    every = job["schedule_interval"] or "-"
    line = f"  {label:<34} {ident:<10} every {every:<6} last {last}  result {result}  next {nxt}"
    if job.get("last_error"):
        line += f"\n  {'':<34} error: {job['last_error']}"
    return line


def render_report(report: dict[str, Any]) -> str:
    """The human form of policies_report."""
    ed = report["edition"]
    lines = [
        f"TimescaleDB {ed['timescaledb_version']} {'Community' if ed['community'] else 'Apache'} edition"
        f"{' (embedded engine)' if ed['embedded'] else ''}; policies run by: {report['policies_run_by']}",
        "",
        f"{'hypertable':<20} {'chunk':<7} {'retention':<28} compression",
    ]
    for h in report["hypertables"]:
        ret = h["retention"]
        retention = f"{ret['drop_after']} ({ret['by']})" if ret["drop_after"] else "none (kept forever)"
        comp = h["compression"]
        if not comp["available"]:
            compression = comp["reason"]
        else:
            compression = f"after {comp['compress_after']}" if comp["compress_after"] else "no policy"
        lines.append(f"{h['name']:<20} {h['chunk_interval'] or '-':<7} {retention:<28} {compression}")
    lines += ["", f"{'aggregate':<20} {'kind':<34} refresh window / retention"]
    for a in report["aggregates"]:
        if a["refresh"] is None:
            lines.append(f"{a['name']:<20} {a['kind']:<34} {a['note']}")
            continue
        r = a["refresh"]
        window = (
            f"refresh from {r['start_offset']} to {r['end_offset']} ago every {r['schedule_interval']}"
            if r["job"]
            else "no refresh policy"
        )
        kept = f"kept {a['retention']['drop_after']}" if a["retention"]["drop_after"] else "kept forever"
        lines.append(f"{a['name']:<20} {a['kind']:<34} {window}; {kept}")
    lines += ["", "jobs:"]
    for h in report["hypertables"]:
        if h["retention"]["job"] is not None:
            lines.append(_job_line(f"{h['name']} retention", h["retention"]["job"]))
        if h["compression"].get("job") is not None:
            lines.append(_job_line(f"{h['name']} compression", h["compression"]["job"]))
    for a in report["aggregates"]:
        if a["refresh"] is not None:
            lines.append(_job_line(f"{a['name']} refresh", a["refresh"]["job"]))
            lines.append(_job_line(f"{a['name']} retention", a["retention"]["job"]))
    others = [j for j in report["scheduler_jobs"] if not j["job"].startswith(job_runs.TIMESCALEDB_JOB_PREFIX)]
    for j in others:
        if j["job"] == "retention" and not report["edition"]["community"]:
            continue  # listed with the hypertables
        line = f"  {j['job']:<34} last {_when(j['last_run_started_at']) or 'never'}  result {j['last_result'] or '-'}"
        lines.append(line + (f"\n  {'':<34} error: {j['last_error']}" if j["last_error"] else ""))
    return "\n".join(lines)


@click.group("policies")
def policies_group() -> None:
    """Retention, compression and rollup refresh: show them, change them safely."""


@policies_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def policies_show(as_json: bool) -> None:
    """Chunk interval, retention, compression, refresh windows and job runs, per hypertable and aggregate.

    Intervals are printed in the syntax `fleet policies set` takes (90d, 1h, 30m)."""
    settings = load_settings()
    with _database_errors("read the policies"), cli_engine(settings).connect() as conn:
        report = policies_report(conn, settings)
    emit(as_json, report, render_report(report))


# --- policies set ------------------------------------------------------------------------------------------


def _interval_option(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    if value is None:
        return None
    try:
        return policies.parse_interval(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


_INTERVAL_HELP = "Interval: a whole number and a unit s, m (minutes), h, d or w, e.g. 90d."


@policies_group.command("set")
@click.option("--raw-retention", callback=_interval_option, help="Drop raw readings older than this (both tables).")
@click.option("--rollup-retention", callback=_interval_option, help="Drop hourly rollups older than this (Community).")
@click.option("--compress-after", callback=_interval_option, help="Compress raw chunks older than this (Community).")
@click.option("--refresh-start", callback=_interval_option, help="Refresh window reaches back this far (Community).")
@click.option("--refresh-end", callback=_interval_option, help="Refresh window stops this long before now (Community).")
@click.option("--refresh-every", callback=_interval_option, help="Run the refresh this often (Community).")
@click.option("--dry-run", is_flag=True, help="Check and show the change; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def policies_set(
    raw_retention: timedelta | None,
    rollup_retention: timedelta | None,
    compress_after: timedelta | None,
    refresh_start: timedelta | None,
    refresh_end: timedelta | None,
    refresh_every: timedelta | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Change retention, compression and refresh windows, all in one transaction.

    \b
    Intervals: a whole number and a unit s, m (minutes), h, d or w, e.g. 90d, 12h, 30m.
    Refused (exit 3, nothing changed) when the result would lose or corrupt data:
      - raw retention shorter than the refresh start offset plus a day (raw rows
        dropped before the rollups are done with them), or than the oldest reading
        the API accepts (FLEET_MAX_READING_AGE_DAYS) plus a day;
      - rollup retention not longer than raw retention;
      - refresh end under one hour, end not before start, a window under two hours,
        or a refresh schedule longer than half the window;
      - refresh start shorter than FLEET_MAX_READING_AGE_DAYS;
      - compress-after not shorter than raw retention.
    Community: alter_job on TimescaleDB's policies (add_*_policy where one is missing).
    Apache: only --raw-retention exists (the project's own retention job); compression and
    refresh do not (exit 2)."""
    change = policies.PolicyChange(
        raw_retention=raw_retention,
        compress_after=compress_after,
        rollup_retention=rollup_retention,
        refresh_start=refresh_start,
        refresh_end=refresh_end,
        refresh_every=refresh_every,
    )
    if not change.as_dict():
        raise click.UsageError(f"nothing to change: give at least one of {', '.join(policies.FLAGS.values())}")
    settings = load_settings()
    max_age = timedelta(days=settings.max_reading_age_days)
    try:
        with (
            _database_errors("change the policies (nothing was changed)"),
            db.transaction(cli_engine(settings)) as conn,
        ):
            info = edition.describe(conn)
            plan = policies.plan_change(conn, info, change, max_reading_age=max_age)
            if not dry_run:
                policies.apply_plan(conn, info, plan)
            report = policies_report(conn, settings)  # read back inside the transaction that changed it
    except policies.PolicyUnavailable as exc:
        raise _Unavailable(f"not available on the Apache edition: {exc}") from None
    except policies.PolicyRefused as exc:
        raise _Refused("refused, nothing was changed:\n  - " + "\n  - ".join(exc.reasons)) from None
    changes = [
        {
            "relation": c.relation,
            "setting": c.setting,
            "before": format_interval(c.before),
            "after": format_interval(c.after),
        }
        for c in plan.changes
    ]
    verb = "would change" if dry_run else "changed"
    if not changes:
        human = "nothing to change: these settings are already in force"
    else:
        human = f"{verb}:\n" + "\n".join(
            f"  {c['relation']}: {c['setting'].replace('_', ' ')} {c['before'] or 'none'} -> {c['after']}"
            for c in changes
        )
    if not info.community:
        human += f"\ncompression: {policies.COMPRESSION_UNAVAILABLE}"
    data = {"dry_run": dry_run, "applied": bool(changes) and not dry_run, "changes": changes, "policies": report}
    emit(as_json, data, human)


# --- jobs run ----------------------------------------------------------------------------------------------


@click.group("jobs")
def jobs_group() -> None:
    """The scheduler for what the database cannot schedule itself (retention on Apache, policies on an
    engine without background workers, alert evaluation, CHECKPOINT on the embedded engine)."""


def _outcome_line(o: Outcome) -> str:
    took = f"{o.seconds:.2f}s" if o.seconds is not None else "-"
    nxt = o.next_run.isoformat(timespec="seconds") if o.next_run else "-"
    detail = o.error or o.description
    return f"{o.job:<22} {o.status:<10} {took:>8}  next {nxt:<25}  {detail}"


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    logger = logging.getLogger("jobs.scheduler")

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():  # a second signal: stop now, even in the middle of a job
            raise SystemExit(128 + signum)
        logger.warning("%s: stopping after the current job (send it again to stop at once)", name)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@jobs_group.command("run")
@click.option("--once", is_flag=True, help="Run the jobs that are due now, then exit (1 if one failed).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (long-running: one line per run).")
def jobs_run(once: bool, as_json: bool) -> None:
    """Run due jobs on their schedules until SIGTERM/SIGINT (or once, with --once).

    \b
    Several copies may run at once (e.g. on two hosts): each due run of each job
    is claimed by exactly one of them (job_runs row; on a real PostgreSQL server
    also a session advisory lock per job). On SIGTERM/SIGINT the current job
    finishes, then the scheduler exits 0; a second signal stops it at once.
    Intervals: FLEET_JOBS_TICK_SECONDS, FLEET_JOBS_RETENTION_EVERY_SECONDS,
    FLEET_JOBS_ALERTS_EVERY_SECONDS, FLEET_JOBS_CHECKPOINT_EVERY_SECONDS; TimescaleDB
    policies run on their own schedule_interval. Job logs go to stderr."""
    settings = load_settings()
    logging.getLogger("jobs").setLevel(settings.log_level)
    scheduler = Scheduler(cli_engine(settings), settings)
    if once:
        with _database_errors("run the jobs"):
            outcomes = scheduler.tick()
        failed = [o for o in outcomes if o.status == "failed"]
        human = "\n".join(_outcome_line(o) for o in outcomes) or "no jobs"
        emit(
            as_json,
            {"holder": scheduler.holder, "jobs": [o.as_dict() for o in outcomes], "failed": len(failed)},
            human,
        )
        if failed:
            sys.exit(EXIT_FAILED)
        return

    def report(outcomes: list[Outcome]) -> None:
        if as_json:
            for o in outcomes:
                if o.status in ("succeeded", "failed"):
                    click.echo(json.dumps({"holder": scheduler.holder, **o.as_dict()}))

    stop = threading.Event()
    with _stop_on_signals(stop):
        scheduler.run_forever(stop, report)
