"""TimescaleDB's own scheduler in the test databases, read and driven with plain SQL (independent of db/).

On this machine's PostgreSQL 15.20 every run by TimescaleDB's scheduler fails; on newer minors it may succeed.
Tests ask the probe job (migration 0008) which case they are in and check the matching branch.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Engine

PROBE = "fleet_scheduler_probe"
#: Bounded wait for a run of TimescaleDB's scheduler (it starts a due job within a second or two).
RUN_TIMEOUT = 90.0
POLICY_PROCS = ("policy_refresh_continuous_aggregate", "policy_compression", "policy_retention")

_STATS = sa.text(
    "SELECT CAST(s.last_run_started_at AS text) AS started, s.last_run_status AS status,"
    " CAST(s.last_run_duration AS text) AS duration"
    " FROM timescaledb_information.jobs j LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id"
    " WHERE j.job_id = :id"
)


def probe_id(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = :p"), {"p": PROBE}
        ).scalar_one()


def job_stats(engine: Engine, job_id: int) -> sa.Row:
    with engine.connect() as conn:
        return conn.execute(_STATS, {"id": job_id}).one()


def run_in_timescaledb(engine: Engine, job_id: int, timeout: float = RUN_TIMEOUT) -> str:
    """Have TimescaleDB's scheduler run `job_id` now (`alter_job(next_start => now())`); wait for the run to
    finish; its status ('Success' or 'Failed')."""
    before = job_stats(engine, job_id).started
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT alter_job(:id, next_start => now())"), {"id": job_id})
    deadline = time.monotonic() + timeout
    while True:
        row = job_stats(engine, job_id)
        if row.started != before and row.status is not None and row.duration is not None:
            return row.status
        assert time.monotonic() < deadline, f"TimescaleDB did not run job {job_id} within {timeout}s: {row}"
        time.sleep(0.2)


def probe_status(engine: Engine) -> str:
    """'Success' or 'Failed': how TimescaleDB's runs end on this server (runs the probe if it never ran)."""
    job = probe_id(engine)
    status = job_stats(engine, job).status
    return status if status is not None else run_in_timescaledb(engine, job)


def wait_for_scheduler(engine: Engine, present: bool, timeout: float = 60.0) -> None:
    """Wait until TimescaleDB's scheduler for this database is (or is no longer) in pg_stat_activity."""
    q = sa.text(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
        " AND backend_type = 'TimescaleDB Background Worker Scheduler')"
    )
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            if conn.execute(q).scalar_one() == present:
                return
        assert time.monotonic() < deadline, f"scheduler present={not present} after {timeout}s"
        time.sleep(0.2)


def hand_back_all(engine: Engine) -> None:
    """Give every job `fleet jobs run` took over back to TimescaleDB (plain SQL), as a fresh database has it."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "SELECT alter_job(t.job_id, scheduled => true) FROM timescaledb_job_takeovers t"
                " JOIN timescaledb_information.jobs j ON j.job_id = t.job_id"
            )
        )
        conn.execute(sa.text("DELETE FROM timescaledb_job_takeovers"))


def user_job_ids(engine: Engine) -> dict[int, str]:
    """TimescaleDB jobs >= 1000 other than the probe: {id: proc_name}."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT job_id, proc_name FROM timescaledb_information.jobs WHERE job_id >= 1000 AND proc_name <> :p"
            ),
            {"p": PROBE},
        ).all()
    return dict(rows)


def jobs_fleet_runs(engine_kind: str, engine: Engine) -> set[int]:
    """The TimescaleDB jobs `fleet jobs run` must run on this engine now, derived from TimescaleDB's own state:
    all of them without a working TimescaleDB scheduler (embedded; probe failing), else those already taken over
    or whose last run by TimescaleDB failed."""
    ids = user_job_ids(engine)
    if engine_kind == "embedded" or probe_status(engine) == "Failed":
        return set(ids)
    with engine.connect() as conn:
        taken = set(conn.execute(sa.text("SELECT job_id FROM timescaledb_job_takeovers")).scalars())
        failed = set(
            conn.execute(
                sa.text("SELECT job_id FROM timescaledb_information.job_stats WHERE last_run_status = 'Failed'")
            ).scalars()
        )
    return (taken | failed) & set(ids)
