"""The correlation rollup job (Community edition): keeps `vehicle_correlation_1h` up to date.

Each run materialises the closed hours beyond the watermark and recomputes the logged invalidations
(db/correlation.py), one batch of at most BATCH_HOURS hours per transaction, until caught up or until
MAX_BATCHES batches ran (a first run over months of history continues in the next runs; analytics stay correct
meanwhile, reading raw readings above the watermark). Then it drops the rollup's chunks older than the hourly
rollups' retention, so correlation is kept exactly as long as energy.

Concurrency invariant: batches are serialised by the row lock on `correlation_watermark`, so two runs (two
schedulers, or a run and an operator's `fleet jobs correlation`) never materialise the same hour twice at once;
the scheduler also runs one copy at a time (jobs/scheduler.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Engine

import db
from db import correlation

logger = logging.getLogger(__name__)

#: Batches one run may do (each at most correlation.BATCH_HOURS hours).
MAX_BATCHES = 48


@dataclass(frozen=True)
class CorrelationRefreshStats:
    """What one run of the correlation job did."""

    batches: int
    hours: int
    vehicle_hours: int
    invalidations: int
    recomputed_vehicle_hours: int
    materialized_until: datetime | None
    caught_up: bool
    chunks_dropped: int
    seconds: float


def refresh_correlation(
    engine: Engine, *, max_batches: int = MAX_BATCHES, until: datetime | None = None
) -> CorrelationRefreshStats:
    """Bring the correlation rollup up to date (see the module docstring); `until` stops it at that hour."""
    t0 = time.monotonic()
    batches: list[correlation.RefreshBatch] = []
    while len(batches) < max_batches:
        with db.transaction(engine) as conn:
            batch = correlation.refresh_batch(conn, until=until)
        batches.append(batch)
        if batch.caught_up:
            break
    with db.transaction(engine) as conn:
        dropped = correlation.drop_expired(conn)
    stats = CorrelationRefreshStats(
        batches=len(batches),
        hours=sum(b.hours for b in batches),
        vehicle_hours=sum(b.vehicle_hours for b in batches),
        invalidations=sum(b.invalidations for b in batches),
        recomputed_vehicle_hours=sum(b.recomputed_vehicle_hours for b in batches),
        materialized_until=batches[-1].materialized_until,
        caught_up=batches[-1].caught_up,
        chunks_dropped=dropped,
        seconds=round(time.monotonic() - t0, 3),
    )
    logger.info("correlation rollup: %s", stats)
    return stats
