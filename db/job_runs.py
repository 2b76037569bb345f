"""The `job_runs` table: one row per scheduled job, its last run, and the lease of a run in progress.

A run is claimed with one conditional UPDATE (`claim_run`): it succeeds only if the job is due (never ran,
or its last start is at least `every` ago) and no other scheduler holds an unexpired lease on it. On a real
PostgreSQL server the row lock serialises concurrent claims (the loser re-checks the updated row and finds the
job no longer due); on the embedded engine every statement is serialised anyway. Either way exactly one
claimer wins each due time. `finish_run` records the outcome only if the row still carries the winner's claim.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection

from db.schema import job_runs

#: job_runs name of a TimescaleDB job run by `fleet jobs run` (engines without background workers).
TIMESCALEDB_JOB_PREFIX = "timescaledb_job_"


def timescaledb_job_name(job_id: int) -> str:
    """The job_runs name of TimescaleDB job `job_id`."""
    return f"{TIMESCALEDB_JOB_PREFIX}{job_id}"


@dataclass(frozen=True)
class JobRun:
    """The last run of one job as recorded in job_runs."""

    job_name: str
    holder: str | None
    started_at: datetime | None
    finished_at: datetime | None
    lease_until: datetime | None
    result: str | None
    error: str | None
    stats: dict[str, Any]
    run_count: int
    failure_count: int


@dataclass(frozen=True)
class Claim:
    """A run this scheduler won: only it may record the outcome."""

    job_name: str
    holder: str
    started_at: datetime


_ENSURE = sa.text("INSERT INTO job_runs (job_name) VALUES (:name) ON CONFLICT (job_name) DO NOTHING")
_CLAIM = sa.text(
    """
    UPDATE job_runs
       SET holder = :holder, started_at = now(), finished_at = NULL, lease_until = now() + :lease,
           result = 'running', error = NULL, run_count = run_count + 1
     WHERE job_name = :name
       AND (started_at IS NULL OR started_at + :every <= now())
       AND (result IS DISTINCT FROM 'running' OR lease_until <= now() OR :exclusive)
    RETURNING started_at
    """
)
_FINISH = sa.text(
    """
    UPDATE job_runs
       SET finished_at = now(), lease_until = NULL, result = :result, error = :error, stats = :stats,
           failure_count = failure_count + CASE WHEN :result = 'failed' THEN 1 ELSE 0 END
     WHERE job_name = :name AND holder = :holder AND started_at = :started_at
    """
).bindparams(sa.bindparam("stats", type_=JSONB))
_NOW = sa.text("SELECT now()")


def ensure_jobs(conn: Connection, names: list[str]) -> None:
    """Create the rows of jobs seen for the first time (they are due at once)."""
    for name in names:
        conn.execute(_ENSURE, {"name": name})


def get_runs(conn: Connection, names: list[str] | None = None) -> dict[str, JobRun]:
    """The recorded runs, by job name (all jobs when `names` is None)."""
    q = sa.select(job_runs).order_by(job_runs.c.job_name)
    if names is not None:
        q = q.where(job_runs.c.job_name.in_(names))
    return {r["job_name"]: JobRun(**r) for r in conn.execute(q).mappings()}


def db_now(conn: Connection) -> datetime:
    """The database's clock (all due times are judged by it, never by a scheduler's own clock)."""
    now: datetime = conn.execute(_NOW).scalar_one()
    return now


def is_due(run: JobRun | None, every: timedelta, now: datetime) -> bool:
    """Whether a job with last run `run` is due at `now` (the same test as claim_run, minus the lease)."""
    return run is None or run.started_at is None or run.started_at + every <= now


def claim_run(
    conn: Connection, name: str, holder: str, *, every: timedelta, lease: timedelta, exclusive: bool = False
) -> Claim | None:
    """Claim the due run of `name` for `holder`; None if it is not due or another scheduler holds it.

    `exclusive`: the caller holds a session advisory lock for this job, so a 'running' row can only be left by
    a scheduler that died, and its lease is ignored."""
    conn.execute(_ENSURE, {"name": name})
    started = conn.execute(
        _CLAIM, {"name": name, "holder": holder, "every": every, "lease": lease, "exclusive": exclusive}
    ).scalar_one_or_none()
    return Claim(name, holder, started) if started is not None else None


def finish_run(conn: Connection, claim: Claim, *, ok: bool, error: str | None, stats: dict[str, Any]) -> bool:
    """Record the outcome of a claimed run; False if another scheduler has taken the job over since."""
    stats = json.loads(json.dumps(stats, default=str))
    updated = conn.execute(
        _FINISH,
        {
            "name": claim.job_name,
            "holder": claim.holder,
            "started_at": claim.started_at,
            "result": "succeeded" if ok else "failed",
            "error": error,
            "stats": stats,
        },
    )
    return updated.rowcount == 1
