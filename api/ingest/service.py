"""Ingest: validated readings -> one transaction writing history and current state for both device kinds.

A batch of one device kind is one statement (db/readings.py), atomic by itself: it runs without BEGIN/COMMIT.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

import db
from api import metrics
from db import readings
from db.readings import MeterReading, VehicleReading


@dataclass(frozen=True)
class IngestResult:
    received: int
    stored: int
    duplicates: int


def ingest(engine: Engine, batch: list[MeterReading | VehicleReading]) -> IngestResult:
    """Store every new reading once (history + current state, one transaction) and count the duplicates."""
    meters = [r for r in batch if isinstance(r, MeterReading)]
    vehicles = [r for r in batch if isinstance(r, VehicleReading)]
    if meters and vehicles:
        with db.transaction(engine) as conn:
            meters_stored = readings.insert_meter_readings(conn, meters).stored
            vehicles_stored = readings.insert_vehicle_readings(conn, vehicles).stored
    else:
        # One device kind (every single reading): its dual write is ONE statement, atomic on its own, so it runs
        # in autocommit mode: no BEGIN and COMMIT round trips. Measured on the native engine (one connection,
        # interleaved A/B): -17 % CPU per single reading (client + PostgreSQL), +20 % readings/s.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            meters_stored = readings.insert_meter_readings(conn, meters).stored
            vehicles_stored = readings.insert_vehicle_readings(conn, vehicles).stored
    # Counted once committed: a batch that rolled back stored nothing.
    metrics.record_ingest("meter", stored=meters_stored, duplicates=len(meters) - meters_stored)
    metrics.record_ingest("vehicle", stored=vehicles_stored, duplicates=len(vehicles) - vehicles_stored)
    stored = meters_stored + vehicles_stored
    return IngestResult(received=len(batch), stored=stored, duplicates=len(batch) - stored)
