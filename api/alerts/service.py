"""Alerts: one read transaction per call."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

import db
from db import alerts


def list_alerts(engine: Engine, args: dict[str, Any], limit: int, offset: int) -> tuple[list[alerts.Alert], int]:
    """One page of alerts matching the query args (newest opened first), and the number matching in all."""
    with db.transaction(engine) as conn:
        return alerts.list_alerts(
            conn,
            status=args["status"],
            kind=args.get("kind"),
            device_id=args.get("device_id"),
            limit=limit,
            offset=offset,
        )
