"""The statements `fleet jobs run` (jobs/scheduler.py) runs besides job_runs claims (db/job_runs.py).

- `run_timescaledb_job` and `checkpoint` cannot run inside a transaction block: they take an AUTOCOMMIT
  connection of their own.
- `job_session_lock` is a session-level advisory lock per job name: on a PostgreSQL server it keeps a second
  scheduler off a job for as long as the run lasts, and goes away with the connection if the scheduler dies.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Engine

_RUN_JOB = sa.text("CALL run_job(:job_id)")
_CHECKPOINT = sa.text("CHECKPOINT")
_TRY_LOCK = sa.text("SELECT pg_try_advisory_lock(hashtext('fleet-jobs'), hashtext(:name))")
_UNLOCK = sa.text("SELECT pg_advisory_unlock(hashtext('fleet-jobs'), hashtext(:name))")


def run_timescaledb_job(engine: Engine, job_id: int) -> None:
    """Run TimescaleDB job `job_id` now, in this session (`CALL run_job`)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(_RUN_JOB, {"job_id": job_id})


def checkpoint(engine: Engine) -> None:
    """CHECKPOINT: flush the WAL into the data files (the embedded engine has no checkpointer of its own)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(_CHECKPOINT)


@contextmanager
def job_session_lock(engine: Engine, name: str) -> Iterator[bool]:
    """Try job `name`'s advisory lock on a connection of its own; yields whether it was taken, and holds it
    (and the connection) until the block ends."""
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        got = bool(conn.execute(_TRY_LOCK, {"name": name}).scalar_one())
        try:
            yield got
        finally:
            if got:
                conn.execute(_UNLOCK, {"name": name})
    finally:
        conn.close()  # a lock left behind by an error goes with the connection
