"""Current state of meters and vehicles (the hot tables): one device, and filtered, paged fleet listings.

"Silence" is measured from the device's newest reading (`recorded_at`, indexed) to the database's `now()`,
so every API process agrees on it whatever its own clock says. `last_seen_seconds_ago` is negative when a
device's clock runs ahead of the database's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from db.errors import NotFound
from db.schema import DEVICE_ID_MAX_LENGTH, meters_current, vehicles_current


@dataclass(frozen=True)
class MeterFilters:
    """Filters of the meter listing; None means "do not filter on this"."""

    id_prefix: str | None = None
    silent_for_minutes: int | None = None


@dataclass(frozen=True)
class VehicleFilters:
    """Filters of the vehicle listing; None means "do not filter on this"."""

    id_prefix: str | None = None
    silent_for_minutes: int | None = None
    is_charging: bool | None = None
    soc_below: float | None = None


def _last_seen_seconds_ago(recorded_at: sa.Column[datetime]) -> sa.Label[float]:
    return sa.cast(sa.extract("epoch", sa.func.now() - recorded_at), sa.Float(precision=53)).label(
        "last_seen_seconds_ago"
    )


def _can_exist(device_id: str) -> bool:
    # The tables' check constraints bound the length, and PostgreSQL text cannot hold NUL: such an id was
    # never stored, and sending it would be a driver error rather than "not found".
    return 1 <= len(device_id) <= DEVICE_ID_MAX_LENGTH and "\x00" not in device_id


def _common_filters(
    id_column: sa.Column[str], recorded_at: sa.Column[datetime], id_prefix: str | None, silent_for_minutes: int | None
) -> list[sa.ColumnElement[bool]]:
    clauses: list[sa.ColumnElement[bool]] = []
    if id_prefix is not None:
        # autoescape: '%' and '_' in a prefix are literal characters, not wildcards.
        clauses.append(id_column.startswith(id_prefix, autoescape=True))
    if silent_for_minutes is not None:
        clauses.append(recorded_at < sa.func.now() - timedelta(minutes=silent_for_minutes))
    return clauses


def _page(
    conn: Connection,
    query: sa.Select[Any],
    id_column: sa.Column[str],
    where: list[sa.ColumnElement[bool]],
    limit: int,
    offset: int,
) -> tuple[list[RowMapping], int]:
    total = conn.execute(sa.select(sa.func.count()).select_from(id_column.table).where(*where)).scalar_one()
    # Ordered by the primary key: pages are deterministic and the index serves the order.
    rows = conn.execute(query.where(*where).order_by(id_column).limit(limit).offset(offset)).mappings().all()
    return list(rows), total


_METER_COLUMNS = (*meters_current.c, _last_seen_seconds_ago(meters_current.c.recorded_at))
_VEHICLE_COLUMNS = (*vehicles_current.c, _last_seen_seconds_ago(vehicles_current.c.recorded_at))


def get_meter(conn: Connection, meter_id: str) -> RowMapping:
    """Newest state of one meter; NotFound when it never reported."""
    row = None
    if _can_exist(meter_id):
        query = sa.select(*_METER_COLUMNS).where(meters_current.c.meter_id == meter_id)
        row = conn.execute(query).mappings().one_or_none()
    if row is None:
        raise NotFound(f"meter {meter_id!r} has no reading")
    return row


def get_vehicle(conn: Connection, vehicle_id: str) -> RowMapping:
    """Newest state of one vehicle; NotFound when it never reported."""
    row = None
    if _can_exist(vehicle_id):
        query = sa.select(*_VEHICLE_COLUMNS).where(vehicles_current.c.vehicle_id == vehicle_id)
        row = conn.execute(query).mappings().one_or_none()
    if row is None:
        raise NotFound(f"vehicle {vehicle_id!r} has no reading")
    return row


def list_meters(conn: Connection, filters: MeterFilters, limit: int, offset: int) -> tuple[list[RowMapping], int]:
    """One page of meters (ordered by id) matching `filters`, and how many match in all."""
    t = meters_current
    where = _common_filters(t.c.meter_id, t.c.recorded_at, filters.id_prefix, filters.silent_for_minutes)
    return _page(conn, sa.select(*_METER_COLUMNS), t.c.meter_id, where, limit, offset)


def list_vehicles(conn: Connection, filters: VehicleFilters, limit: int, offset: int) -> tuple[list[RowMapping], int]:
    """One page of vehicles (ordered by id) matching `filters`, and how many match in all."""
    t = vehicles_current
    where = _common_filters(t.c.vehicle_id, t.c.recorded_at, filters.id_prefix, filters.silent_for_minutes)
    if filters.is_charging is not None:
        # A vehicle that does not report is_charging (NULL) is neither charging nor known not to be.
        where.append(t.c.is_charging.is_(filters.is_charging))
    if filters.soc_below is not None:
        where.append(t.c.soc < filters.soc_below)
    return _page(conn, sa.select(*_VEHICLE_COLUMNS), t.c.vehicle_id, where, limit, offset)
