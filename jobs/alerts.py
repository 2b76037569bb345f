"""Alert evaluation as a job (`scan_alerts`, called by the scheduler and by `fleet alerts scan`, cli/alerts.py).

`scan_alerts(engine, settings)` runs one scan (db.alerts.scan) in one transaction, with the thresholds and
windows of the settings and the database's clock (`policy_failed` alerts are evaluated by the scheduler's alerts
job: jobs/scheduler.py `evaluate_policy_alerts`). Invariants:

- Safe to re-run: a scan opens an alert only where none is open, refreshes the open ones whose condition
  holds, resolves those whose condition cleared; a re-run on unchanged data changes only `last_seen_at`.
- One scan at a time: each takes a transaction-scoped advisory lock first (db.alerts.lock_scans), so a
  second scan (the scheduler's, an operator's) waits and then evaluates what the first committed.
- Even without that lock, concurrent scans cannot open two alerts for one device and kind: alerts are opened
  with INSERT ... ON CONFLICT DO NOTHING on the partial unique index `alerts_one_open_per_device_and_kind`,
  and a scan that conflicts with an uncommitted insert waits for it, then does nothing.
- All or nothing: a scan that fails (database gone) leaves no partial result behind.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Engine

import db
from config import Settings
from db import alerts

logger = logging.getLogger(__name__)


def scan_parameters(settings: Settings) -> dict[str, Any]:
    """db.alerts.scan's thresholds and windows: the settings' (their one declaration is in config/)."""
    return {
        "window": timedelta(hours=settings.alert_window_hours),
        "correlation_window": timedelta(hours=settings.correlation_window_hours),
        "efficiency_threshold": settings.efficiency_alert_threshold,
        "silent_minutes": settings.silent_minutes,
        "min_readings": settings.alert_min_readings,
        "correlation_min_match_rate": settings.correlation_min_match_rate,
        "min_ac_kwh": settings.alert_min_ac_kwh,
    }


def scan_alerts(engine: Engine, settings: Settings) -> alerts.ScanStats:
    """One alert scan with the settings' thresholds and windows, by the database's clock; one transaction."""
    with db.transaction(engine) as conn:
        alerts.lock_scans(conn)
        stats = alerts.scan(conn, **scan_parameters(settings))
    for kind, counts in stats.by_kind().items():
        logger.info(
            "alert scan %s: opened %d, refreshed %d, resolved %d",
            kind,
            counts.opened,
            counts.refreshed,
            counts.resolved,
        )
    return stats
