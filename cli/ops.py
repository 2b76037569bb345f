"""`fleet policies show|set` and `fleet jobs run`: archival policies and the scheduler, for operators.

Registered on the main group in cli/__init__.py. Exit codes: 0 done; 1 database or job failure; 2 bad usage (an
interval that does not parse, a setting that does not exist on this edition); 3 a policy change refused as
unsafe (nothing was changed).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from sqlalchemy.engine import Connection

import db
from cli.support import cli_engine, click_errors, emit, load_settings, on_stop_signals
from config import Settings
from db import correlation, edition, job_runs, policies
from db import timescaledb_jobs as tsjobs
from db.policies import format_interval
from jobs.scheduler import Outcome, Scheduler

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3


class _Refused(click.ClickException):
    exit_code = EXIT_REFUSED


class _Unavailable(click.ClickException):
    exit_code = EXIT_USAGE


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


def _timescaledb_job_info(
    job: tsjobs.TimescaleJob | None,
    health: tsjobs.SchedulerHealth,
    runs: dict[str, job_runs.JobRun],
    now: datetime,
) -> dict[str, Any] | None:
    """One TimescaleDB job: who runs it and why, its last run by either runner, and each runner's record."""
    if job is None:
        return None
    run = runs.get(job.name)
    decision = tsjobs.decide(job, health, run)
    by, started, result, error = tsjobs.last_run(job, run)
    ours = _fleet_job_info(job.name, job.schedule_interval, runs, now)
    fleet_runs_it = decision.run_by == tsjobs.RUN_BY_FLEET
    status = {None: "never ran", "failed": "Failed"}.get(result, "Success")
    return {
        "job_id": job.job_id,
        "job": job.name,
        "proc_name": job.proc_name,
        "relation": job.relation,
        "scheduled": job.scheduled,
        "run_by": decision.run_by,
        "run_by_reason": decision.reason,
        "taken_over": {
            "at": _iso(job.taken_at),
            "reason": job.takeover_reason,
            "detail": job.takeover_detail,
            "by": job.taken_by,
        }
        if job.taken_over
        else None,
        "schedule_interval": format_interval(job.schedule_interval),
        # The newest finished run, by TimescaleDB or by `fleet jobs run` (run_job is not in TimescaleDB's stats).
        "status": status,
        "last_run_by": by,
        "last_run_started_at": _iso(started),
        "last_result": result,
        "last_error": error,
        "next_run": ours["next_run"] if fleet_runs_it else _iso(job.next_start),
        "due": ours["due"] if fleet_runs_it else None,
        "timescaledb_stats": {
            "last_run_started_at": _iso(job.last_run_started_at),
            "last_successful_finish": _iso(job.last_successful_finish),
            "last_run_status": job.last_run_status,
            "last_error": job.last_error,
            "last_error_at": _iso(job.last_error_at),
            "running": job.running_in_timescaledb,
            "next_start": _iso(job.next_start),
            "total_runs": job.total_runs,
            "total_failures": job.total_failures,
        },
        "fleet_stats": {
            "last_run_started_at": ours["last_run_started_at"],
            "last_run_finished_at": ours["last_run_finished_at"],
            "last_result": ours["last_result"],
            "last_error": ours["last_error"],
            "runs": run.run_count if run else 0,
            "failures": run.failure_count if run else 0,
        },
    }


def _health_info(health: tsjobs.SchedulerHealth) -> dict[str, Any]:
    return {
        "state": health.state,
        "reason": health.reason,
        "probe_job_id": health.probe_job_id,
        "probe_last_status": health.probe_last_status,
        "probe_last_run_started_at": _iso(health.probe_last_started_at),
        "probe_last_success_at": _iso(health.probe_last_success_at),
        "probe_last_error": health.probe_last_error,
    }


def policies_report(conn: Connection, settings: Settings) -> dict[str, Any]:
    """Everything `fleet policies show` reports, JSON-ready."""
    info = edition.describe(conn)
    chunks = policies.chunk_intervals(conn)
    runs = job_runs.get_runs(conn)
    now = job_runs.db_now(conn)
    ts_jobs = tsjobs.list_jobs(conn) if info.community else []
    health = tsjobs.scheduler_health(conn, info, ts_jobs)
    by_id = {j.job_id: j for j in ts_jobs}
    runners = {tsjobs.decide(j, health, runs.get(j.name)).run_by for j in ts_jobs if not j.is_probe}
    if not info.community:
        runner = "no policies on the Apache edition: retention is `fleet jobs run`'s own drop_chunks job"
    elif runners == {tsjobs.RUN_BY_FLEET}:
        runner = f"`fleet jobs run` (TimescaleDB's scheduler cannot run them: {health.reason})"
    elif tsjobs.RUN_BY_FLEET in runners:
        runner = f"TimescaleDB, except the jobs `fleet jobs run` took over (see each job; {health.reason})"
    else:
        runner = f"TimescaleDB background workers ({health.reason})"

    def job_info(job: policies.PolicyJob | None) -> dict[str, Any] | None:
        return _timescaledb_job_info(by_id.get(job.job_id) if job else None, health, runs, now)

    report: dict[str, Any] = {
        "edition": {
            "license": info.license,
            "community": info.community,
            "timescaledb_version": info.timescaledb_version,
            "server_version": info.server_version,
            "embedded": info.embedded,
        },
        "policies_run_by": runner,
        "timescaledb_scheduler": _health_info(health),
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
                        "job": job_info(retention),
                    },
                    "compression": {
                        "available": True,
                        "compress_after": format_interval(compression.compress_after) if compression else None,
                        "job": job_info(compression),
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
                        "job": job_info(refresh),
                    },
                    "retention": {
                        "drop_after": format_interval(rollup_retention.drop_after) if rollup_retention else None,
                        "job": job_info(rollup_retention),
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
    if info.community:
        watermark, pending = correlation.pending(conn)
        report["correlation_rollup"] = {
            "name": "vehicle_correlation_1h",
            "kept_by": "`fleet jobs run` (job `correlation`)",
            "materialized_until": _iso(watermark),
            "pending_invalidations": pending,
        }
    report["timescaledb_jobs"] = [_timescaledb_job_info(j, health, runs, now) for j in ts_jobs]
    report["failing_policies"] = sorted(
        s.job for s in tsjobs.policy_statuses(conn, info, runs, health, ts_jobs) if s.failing
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
    if job.get("run_by"):
        by = f" (last run by {job['last_run_by']})" if job.get("last_run_by") else ""
        line += f"\n  {'':<34} run by {job['run_by']}{by}"
        if job.get("taken_over"):
            line += f" since {_when(job['taken_over']['at'])}: {job['taken_over']['detail']}"
    if job.get("last_error"):
        line += f"\n  {'':<34} error: {job['last_error']}"
    ts = job.get("timescaledb_stats")
    if ts and ts.get("last_run_status") == "Failed" and job.get("last_run_by") != "TimescaleDB":
        line += f"\n  {'':<34} TimescaleDB's last run ({_when(ts['last_run_started_at'])}) Failed: {ts['last_error']}"
    return line


def render_report(report: dict[str, Any]) -> str:
    """The human form of policies_report."""
    ed = report["edition"]
    lines = [
        f"TimescaleDB {ed['timescaledb_version']} {'Community' if ed['community'] else 'Apache'} edition"
        f"{' (embedded engine)' if ed['embedded'] else ''}; policies run by: {report['policies_run_by']}",
    ]
    if ed["community"]:
        sched = report["timescaledb_scheduler"]
        lines.append(f"TimescaleDB's scheduler: {sched['state']} ({sched['reason']})")
    if report["failing_policies"]:
        lines.append(f"FAILING: {', '.join(report['failing_policies'])}")
    lines += [
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
    if "correlation_rollup" in report:
        c = report["correlation_rollup"]
        done = f"complete up to {_when(c['materialized_until'])}" if c["materialized_until"] else "not materialised yet"
        lines.append(
            f"{c['name']:<20} {'kept by ' + c['kept_by']:<34} {done};"
            f" {c['pending_invalidations']} vehicle hours to recompute"
        )
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
    policy_ids = {
        j["job_id"]
        for section in (*report["hypertables"], *report["aggregates"])
        for part in section.values()
        if isinstance(part, dict)
        for j in [part.get("job")]
        if isinstance(j, dict) and j.get("job_id") is not None
    }
    for j in report.get("timescaledb_jobs", []):
        if j["job_id"] not in policy_ids:
            lines.append(_job_line(f"{j['proc_name']}{' on ' + j['relation'] if j['relation'] else ''}", j))
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
    with click_errors("read the policies"), cli_engine(settings).connect() as conn:
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
            click_errors("change the policies (nothing was changed)"),
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
            f"  {c.relation}: {c.setting.replace('_', ' ')} {format_interval(c.before) or 'none'}"
            f" -> {format_interval(c.after)}"
            for c in plan.changes
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


def _stop_after_the_current_job(stop: threading.Event) -> Callable[[int], None]:
    logger = logging.getLogger("jobs.scheduler")

    def handle(signum: int) -> None:
        if stop.is_set():  # a second signal: stop now, even in the middle of a job
            raise SystemExit(128 + signum)
        logger.warning(
            "%s: stopping after the current job (send it again to stop at once)", signal.Signals(signum).name
        )
        stop.set()

    return handle


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
        with click_errors("run the jobs"):
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
                if o.status in ("succeeded", "failed", "handed_back"):
                    click.echo(json.dumps({"holder": scheduler.holder, **o.as_dict()}))

    stop = threading.Event()
    with on_stop_signals(_stop_after_the_current_job(stop)):
        scheduler.run_forever(stop, report)
