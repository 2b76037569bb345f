"""Mapping administration: each call is one transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine

import db
from db import mappings


def remap(engine: Engine, vehicle_id: str, meter_id: str, valid_from: datetime | None) -> mappings.RemapResult:
    """Map a vehicle to a meter from `valid_from` (default: now); Conflict if that would rewrite the past."""
    with db.transaction(engine) as conn:
        return mappings.remap_vehicle(conn, vehicle_id, meter_id, valid_from)


def list_mappings(engine: Engine, args: dict[str, Any], limit: int, offset: int) -> tuple[list[mappings.Mapping], int]:
    """One page of mappings matching the query args, and the number matching in all."""
    with db.transaction(engine) as conn:
        return mappings.list_mappings(conn, **args, limit=limit, offset=offset)
