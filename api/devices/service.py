"""Status and listings: one read transaction per call."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine, RowMapping

import db
from db import devices


def get_meter(engine: Engine, meter_id: str) -> RowMapping:
    """Newest state of one meter (NotFound if it never reported)."""
    with db.transaction(engine) as conn:
        return devices.get_meter(conn, meter_id)


def get_vehicle(engine: Engine, vehicle_id: str) -> RowMapping:
    """Newest state of one vehicle (NotFound if it never reported)."""
    with db.transaction(engine) as conn:
        return devices.get_vehicle(conn, vehicle_id)


def list_meters(engine: Engine, args: dict[str, Any], limit: int, offset: int) -> tuple[list[RowMapping], int]:
    """One page of meters matching the query args, and the number matching in all."""
    with db.transaction(engine) as conn:
        return devices.list_meters(conn, devices.MeterFilters(**args), limit, offset)


def list_vehicles(engine: Engine, args: dict[str, Any], limit: int, offset: int) -> tuple[list[RowMapping], int]:
    """One page of vehicles matching the query args, and the number matching in all."""
    with db.transaction(engine) as conn:
        return devices.list_vehicles(conn, devices.VehicleFilters(**args), limit, offset)
