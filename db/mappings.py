"""Which meter feeds which vehicle's charger, and when: re-maps that never rewrite the past.

A vehicle's mappings form a chain of half-open validity ranges [valid_from, valid_to); the last one is open
(valid_to NULL). A re-map closes the open range at the new start and opens the next one, so the hours before
the re-map keep their meter. A start before the open range's start, or before any stored range's end, would
change history and is refused (Conflict).

Concurrency: a re-map takes a transaction-scoped advisory lock on the vehicle, then locks the vehicle's rows
(SELECT ... FOR UPDATE). The advisory lock also serialises a vehicle's very first mapping (no row to lock
yet), and because it is taken before the SELECT, the SELECT's snapshot (READ COMMITTED) sees whatever the
previous holder committed. The exclusion constraint `vehicle_meter_mapping_no_overlap` stays the last line
of defence for writers that skip both; its violation is reported as Conflict too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from db.correlation import INVALIDATION_MARGIN
from db.edition import COMMUNITY_SQL
from db.errors import Conflict
from db.schema import vehicle_meter_mapping

#: First key of the two-int advisory lock taken per vehicle (the second is hashtext(vehicle_id)); two-int
#: keys never collide with one-bigint ones such as the migration lock.
MAPPING_LOCK_CLASS = 0x6D6170  # "map"

#: Constraints whose violation means "a concurrent or overlapping mapping won", not a bug.
_CONFLICT_CONSTRAINTS = frozenset(
    {
        "vehicle_meter_mapping_no_overlap",
        "vehicle_meter_mapping_pkey",
        "vehicle_meter_mapping_validity_order_check",
    }
)


# Community: a re-map from a past instant changes which meter the vehicle's readings from then on pair with, so
# every closed hour since is logged for the correlation rollup to recompute (db/correlation.py).
_INVALIDATE_FROM = sa.text(
    """
    INSERT INTO correlation_invalidations (vehicle_id, bucket)
    SELECT :vehicle_id, bucket
      FROM generate_series(greatest(time_bucket(INTERVAL '1 hour', CAST(:valid_from AS timestamptz)),
                                    -- no hour before the vehicle's first reading can change (none: no hour)
                                    (SELECT coalesce(time_bucket(INTERVAL '1 hour', min(recorded_at)), 'infinity')
                                       FROM vehicle_readings WHERE vehicle_id = :vehicle_id)),
                           time_bucket(INTERVAL '1 hour', clock_timestamp() - CAST(:margin AS interval))
                           - INTERVAL '1 hour',
                           INTERVAL '1 hour') AS bucket
     WHERE """
    + COMMUNITY_SQL
    + """
    ON CONFLICT DO NOTHING
    """
)


@dataclass(frozen=True)
class Mapping:
    """One assignment of a meter to a vehicle, valid in [valid_from, valid_to); valid_to None: still in effect."""

    vehicle_id: str
    meter_id: str
    valid_from: datetime
    valid_to: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class RemapResult:
    """The mapping in effect after a re-map, and whether the re-map created it (False: it was a no-op)."""

    mapping: Mapping
    created: bool


def _mapping(row: sa.RowMapping) -> Mapping:
    return Mapping(**{c.name: row[c.name] for c in vehicle_meter_mapping.c})


def remap_vehicle(conn: Connection, vehicle_id: str, meter_id: str, valid_from: datetime | None = None) -> RemapResult:
    """Map `vehicle_id` to `meter_id` from `valid_from` (default: the database's current time) on.

    Closes the open mapping at `valid_from`. Re-mapping to the meter already in effect is a no-op that returns
    the open mapping. Raises Conflict when `valid_from` would rewrite the past.
    """
    if valid_from is not None and valid_from.utcoffset() is None:
        raise ValueError("valid_from must be timezone-aware")
    t = vehicle_meter_mapping
    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MAPPING_LOCK_CLASS, sa.func.hashtext(vehicle_id))))
    if valid_from is None:
        # The clock after the lock, not now() (the transaction's start): a re-map that waited for a concurrent
        # one must start after it, or "now" would already be in the past.
        valid_from = conn.execute(sa.select(sa.func.clock_timestamp())).scalar_one()
    rows = conn.execute(
        sa.select(t).where(t.c.vehicle_id == vehicle_id).order_by(t.c.valid_from).with_for_update()
    ).mappings()
    history = [_mapping(r) for r in rows]
    current = next((m for m in history if m.valid_to is None), None)

    if current is not None:
        if current.meter_id == meter_id:
            return RemapResult(current, created=False)
        if valid_from <= current.valid_from:
            raise Conflict(
                f"vehicle {vehicle_id!r} is mapped to meter {current.meter_id!r} since"
                f" {current.valid_from.isoformat()}; a re-map must start after that"
                f" (validFrom {valid_from.isoformat()} would rewrite the past)"
            )
    else:
        ended = [m.valid_to for m in history if m.valid_to is not None]
        if ended and valid_from < max(ended):
            raise Conflict(
                f"vehicle {vehicle_id!r} has a mapping until {max(ended).isoformat()}; a new mapping must start"
                f" at or after that (validFrom {valid_from.isoformat()} would rewrite the past)"
            )

    try:
        if current is not None:
            conn.execute(
                sa.update(t)
                .where(t.c.vehicle_id == vehicle_id, t.c.valid_from == current.valid_from)
                .values(valid_to=valid_from)
            )
        row = conn.execute(
            sa.insert(t).values(vehicle_id=vehicle_id, meter_id=meter_id, valid_from=valid_from).returning(*t.c)
        ).mappings()
        created = _mapping(row.one())
        conn.execute(
            _INVALIDATE_FROM, {"vehicle_id": vehicle_id, "valid_from": valid_from, "margin": INVALIDATION_MARGIN}
        )
        return RemapResult(created, created=True)
    except sa.exc.IntegrityError as exc:
        constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
        if constraint not in _CONFLICT_CONSTRAINTS:
            raise
        raise Conflict(
            f"vehicle {vehicle_id!r}: the mapping from {valid_from.isoformat()} overlaps a stored one"
            " (a concurrent re-map won); read the mappings and retry"
        ) from exc


def list_mappings(
    conn: Connection,
    vehicle_id: str | None = None,
    meter_id: str | None = None,
    at: datetime | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> tuple[list[Mapping], int]:
    """Mappings (by vehicle, then valid_from), optionally only those in effect at instant `at`, one page of
    `limit` from `offset`; and how many match in all."""
    t = vehicle_meter_mapping
    where: list[sa.ColumnElement[bool]] = []
    if vehicle_id is not None:
        where.append(t.c.vehicle_id == vehicle_id)
    if meter_id is not None:
        where.append(t.c.meter_id == meter_id)
    if at is not None:
        where += [t.c.valid_from <= at, sa.or_(t.c.valid_to.is_(None), t.c.valid_to > at)]
    total = conn.execute(sa.select(sa.func.count()).select_from(t).where(*where)).scalar_one()
    query = sa.select(t).where(*where).order_by(t.c.vehicle_id, t.c.valid_from).limit(limit).offset(offset)
    return [_mapping(r) for r in conn.execute(query).mappings()], total
