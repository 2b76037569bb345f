"""The project's retention job for the Apache edition, where TimescaleDB has no retention policy.

For each raw hypertable in `retention_settings` it calls `drop_chunks(table, older_than => now() - drop_after)`:
only chunks whose every row is older than the cutoff go, so the job can never drop a row younger than
`drop_after`, and running it twice in a row drops nothing the second time (safe to re-run).

Concurrency invariant: one run at a time per database, enforced by the scheduler (jobs/scheduler.py) with a
session advisory lock and the `job_runs` claim; two concurrent runs would still be harmless (drop_chunks locks
each chunk, and a chunk already gone is not listed again). Each table is its own short transaction with a
lock timeout, so a long-running query holding a chunk delays only that table's drop, until the next run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.engine import Engine

import db
from db import policies

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionStats:
    """Chunks dropped per hypertable in one run."""

    tables: tuple[policies.DroppedChunks, ...]

    @property
    def chunks_dropped(self) -> int:
        return sum(len(t.chunks) for t in self.tables)


def run_retention(engine: Engine) -> RetentionStats:
    """Drop the expired chunks of every raw hypertable with a retention setting."""
    with db.transaction(engine) as conn:
        settings = policies.retention_settings(conn)
    results = []
    for table, drop_after in sorted(settings.items()):
        with db.transaction(engine) as conn:
            dropped = policies.drop_expired_chunks(conn, table, drop_after)
        logger.info(
            "retention %s: dropped %d chunks older than %s (%s)",
            table,
            len(dropped.chunks),
            dropped.cutoff.isoformat(),
            policies.format_interval(drop_after),
        )
        results.append(dropped)
    return RetentionStats(tables=tuple(results))
