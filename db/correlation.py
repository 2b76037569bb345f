"""Correlation quality: how well each vehicle's readings line up in time with its mapped meter's.

One rule, used by the analytics report's `correlation` block and by the `correlation_lost` alerts: every vehicle
reading takes the meter mapped to the vehicle at the reading's instant, and the offset (seconds, positive when the
vehicle's clock runs ahead) to that meter's nearest reading within OFFSET_SEARCH_SECONDS (ties to the earlier
one); a reading is *matched* when that offset is within MATCH_TOLERANCE_SECONDS. Rather than one index probe per
reading, each vehicle's readings and its meter's readings are merged in time order, and every vehicle reading
takes the latest meter reading at or before it (a running max) and the earliest at or after it (a running min
in reverse order): two sorts of the window's rows.

Hourly rows (vehicle, hour: readings, mapped readings, matched readings, the sorted offsets) are the unit. A window
is the sum of its hours, and its median offset the median of the union of their offsets, which is exact. On the
Community edition `fleet jobs run` keeps closed hours in `vehicle_correlation_1h` (`refresh_batch`), so a window
reads the stored hours below the watermark and computes only the newer ones from raw readings (the real-time
part, like a continuous aggregate's). On Apache every hour is computed from raw readings; both give the same
numbers (a test).

Late data: the ingest statement (db/readings.py) and re-maps (db/mappings.py) log the vehicle hours whose inputs
changed once the hour ended more than INVALIDATION_MARGIN ago; the refresh recomputes them. A refresh materialises
an hour only SETTLE after it ended, later than that margin: a reading is missed only if its ingest transaction
stayed open between its statement and its commit for longer than SETTLE - INVALIDATION_MARGIN (3 minutes),
which the single-statement ingest never does. Until a refresh has run, the watermark is NULL and everything is
read from raw readings: slower, never wrong.

Concurrency invariant: refreshes are serialised by a row lock on `correlation_watermark` (one batch per
transaction); within a batch the invalidations are deleted first and the hours computed afterwards, in later
snapshots, so an invalidation logged concurrently is either seen with its reading or left for the next batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

HOUR = timedelta(hours=1)
#: A vehicle reading "has" a meter reading when the mapped meter reported within this many seconds of it.
MATCH_TOLERANCE_SECONDS = 5.0
#: How far from a vehicle reading its meter's nearest reading is looked for, to measure the clock offset.
#: Under half the devices' 60 s reporting interval, so the nearest reading is the same minute's.
OFFSET_SEARCH_SECONDS = 29.0
#: A closed hour is materialised this long after it ended (readings still in flight have landed by then).
SETTLE = timedelta(minutes=5)
#: Readings for hours that ended longer ago than this are logged as invalidations by the ingest statement.
#: Shorter than SETTLE: the difference is how long an ingest transaction may stay open without a risk.
INVALIDATION_MARGIN = timedelta(minutes=2)
#: Hours materialised per refresh batch (one transaction each): bounds a batch's time when catching up.
BATCH_HOURS = 6

# Per vehicle and hour of [start, end): the readings, those with a mapping at their instant, those matched, and
# the sorted offsets. {vehicle_filter} is "" (every vehicle) or the filter on :vehicle_ids; it is one of the two
# fixed fragments below, never input. Meter readings are looked up by an array of the meters involved, so that
# for one vehicle the meters' primary key is probed instead of the whole window being scanned.
_RAW_HOURS = """
    WITH v AS (
        SELECT v.vehicle_id, v.recorded_at, map.meter_id
          FROM vehicle_readings v
          LEFT JOIN vehicle_meter_mapping map
            ON map.vehicle_id = v.vehicle_id
           AND map.valid_from <= v.recorded_at
           AND (map.valid_to IS NULL OR v.recorded_at < map.valid_to)
         WHERE v.recorded_at >= CAST(:raw_start AS timestamptz) AND v.recorded_at < CAST(:end AS timestamptz)
               {vehicle_filter}
    ), pairs AS (
        SELECT DISTINCT vehicle_id, meter_id FROM v WHERE meter_id IS NOT NULL
    ), events AS (
        SELECT vehicle_id, meter_id, recorded_at AS t, true AS is_vehicle FROM v
        UNION ALL
        SELECT p.vehicle_id, p.meter_id, m.recorded_at, false
          FROM meter_readings m
          JOIN pairs p ON p.meter_id = m.meter_id
         WHERE m.meter_id = ANY (ARRAY(SELECT DISTINCT meter_id FROM pairs))
           AND m.recorded_at >= CAST(:raw_start AS timestamptz) - make_interval(secs => :search_s)
           AND m.recorded_at <= CAST(:end AS timestamptz) + make_interval(secs => :search_s)
    ), neighbours AS (
        -- At equal times meter readings sort first (false < true), so "at or before" includes them.
        SELECT vehicle_id, meter_id, t, is_vehicle,
               max(t) FILTER (WHERE NOT is_vehicle)
                   OVER (PARTITION BY vehicle_id, meter_id ORDER BY t, is_vehicle ROWS UNBOUNDED PRECEDING)
                   AS meter_before,
               min(t) FILTER (WHERE NOT is_vehicle)
                   OVER (PARTITION BY vehicle_id, meter_id ORDER BY t DESC, is_vehicle ROWS UNBOUNDED PRECEDING)
                   AS meter_after
          FROM events
    ), readings AS (
        SELECT vehicle_id, meter_id, t,
               CASE WHEN before_s <= :search_s AND (after_s IS NULL OR before_s <= after_s) THEN before_s
                    WHEN after_s <= :search_s THEN -after_s
               END AS offset_s
          FROM (SELECT vehicle_id, meter_id, t,
                       extract(epoch FROM t - meter_before)::float8 AS before_s,
                       extract(epoch FROM meter_after - t)::float8 AS after_s
                  FROM neighbours
                 WHERE is_vehicle) AS d
    )
    SELECT vehicle_id,
           time_bucket(INTERVAL '1 hour', t) AS bucket,
           CAST(count(*) AS integer) AS vehicle_readings,
           CAST(count(meter_id) AS integer) AS mapped_readings,
           CAST(count(*) FILTER (WHERE abs(offset_s) <= :tolerance_s) AS integer) AS matched_readings,
           coalesce(array_agg(offset_s ORDER BY offset_s) FILTER (WHERE offset_s IS NOT NULL),
                    CAST('{{}}' AS float8[])) AS offsets
      FROM readings
     GROUP BY vehicle_id, time_bucket(INTERVAL '1 hour', t)
"""
_ALL_VEHICLES = ""
_SOME_VEHICLES = "AND v.vehicle_id = ANY (CAST(:vehicle_ids AS text[]))"
_STORED_ALL = ""
_STORED_SOME = "AND vehicle_id = ANY (CAST(:vehicle_ids AS text[]))"

# Per vehicle over a window: stored hours [start, stored_end) plus raw hours [raw_start, end).
_WINDOW = """
    WITH hours AS (
        SELECT vehicle_id, bucket, vehicle_readings, mapped_readings, matched_readings, offsets
          FROM vehicle_correlation_1h
         WHERE bucket >= CAST(:start AS timestamptz) AND bucket < CAST(:stored_end AS timestamptz) {stored_filter}
        UNION ALL
        SELECT * FROM ({raw_hours}) AS raw_hours
    ), counts AS (
        SELECT vehicle_id,
               CAST(sum(vehicle_readings) AS integer) AS vehicle_readings,
               CAST(sum(mapped_readings) AS integer) AS mapped_readings,
               CAST(sum(matched_readings) AS integer) AS matched_readings
          FROM hours
         GROUP BY vehicle_id
    ), medians AS (
        SELECT vehicle_id, percentile_cont(0.5) WITHIN GROUP (ORDER BY o) AS median_offset_s
          FROM hours CROSS JOIN LATERAL unnest(offsets) AS o
         GROUP BY vehicle_id
    )
    SELECT c.vehicle_id, c.vehicle_readings, c.mapped_readings, c.matched_readings, m.median_offset_s
      FROM counts c
      LEFT JOIN medians m USING (vehicle_id)
"""


def _raw_hours(vehicle_filter: str) -> str:
    return _RAW_HOURS.format(vehicle_filter=vehicle_filter)


#: The per-vehicle window statement for every vehicle, as SQL text to use as a subquery (db/alerts.py); its
#: parameters are those of `window_params`. Columns: vehicle_id, vehicle_readings, mapped_readings,
#: matched_readings, median_offset_s.
WINDOW_ALL_SQL = _WINDOW.format(stored_filter=_STORED_ALL, raw_hours=_raw_hours(_ALL_VEHICLES))
_WINDOW_ONE = sa.text(_WINDOW.format(stored_filter=_STORED_SOME, raw_hours=_raw_hours(_SOME_VEHICLES)))


def _upsert(vehicle_filter: str) -> sa.TextClause:
    # A vehicle hour's readings never go away (history is insert-only), so an upsert of the recomputed rows
    # replaces every stored row that changed.
    return sa.text(
        "INSERT INTO vehicle_correlation_1h"
        " (vehicle_id, bucket, vehicle_readings, mapped_readings, matched_readings, offsets) "
        + _raw_hours(vehicle_filter)
        + " ON CONFLICT (vehicle_id, bucket) DO UPDATE SET vehicle_readings = EXCLUDED.vehicle_readings,"
        " mapped_readings = EXCLUDED.mapped_readings, matched_readings = EXCLUDED.matched_readings,"
        " offsets = EXCLUDED.offsets"
    )


_MATERIALIZE = _upsert(_ALL_VEHICLES)
_REMATERIALIZE = _upsert(_SOME_VEHICLES)
_LOCK_WATERMARK = sa.text(
    "SELECT materialized_until, statement_timestamp() AS now FROM correlation_watermark FOR UPDATE"
)
_WATERMARK = sa.text("SELECT materialized_until FROM correlation_watermark")
_SET_WATERMARK = sa.text("UPDATE correlation_watermark SET materialized_until = :until")
_FIRST_READING = sa.text("SELECT min(recorded_at) FROM vehicle_readings")
_TAKE_INVALIDATIONS = sa.text(
    "DELETE FROM correlation_invalidations WHERE bucket < :until RETURNING vehicle_id, bucket"
)
_PENDING_INVALIDATIONS = sa.text("SELECT count(*) FROM correlation_invalidations WHERE bucket < :until")


@dataclass(frozen=True)
class WindowCorrelation:
    """One vehicle's correlation over a window."""

    vehicle_id: str
    #: every reading of the vehicle in the window
    vehicle_readings: int
    #: the readings with a mapping at their instant
    mapped_readings: int
    #: the readings with a reading of the mapped meter within MATCH_TOLERANCE_SECONDS
    matched_readings: int
    #: median offset in seconds over the readings with a meter reading within OFFSET_SEARCH_SECONDS
    median_offset_seconds: float | None


def floor_hour(t: datetime) -> datetime:
    """The start of t's hour (time zones with whole-hour offsets only: the platform works in UTC)."""
    return t.replace(minute=0, second=0, microsecond=0)


def materialized_until(conn: Connection) -> datetime | None:
    """Up to where closed hours are stored (None: nothing is, every hour is computed from raw readings)."""
    return conn.execute(_WATERMARK).scalar_one_or_none()


def window_params(start: datetime, end: datetime, *, community: bool, watermark: datetime | None) -> dict[str, object]:
    """Bind parameters of the window statements for [start, end): stored hours below the watermark on
    Community, raw readings for the rest (all of it on Apache)."""
    stored_end = start
    if community and watermark is not None:
        stored_end = min(max(watermark, start), end)
    return {
        "start": start,
        "stored_end": stored_end,
        "raw_start": stored_end,
        "end": end,
        "search_s": OFFSET_SEARCH_SECONDS,
        "tolerance_s": MATCH_TOLERANCE_SECONDS,
    }


def vehicle_window(
    conn: Connection,
    vehicle_id: str,
    start: datetime,
    end: datetime,
    *,
    community: bool,
    watermark: datetime | None,
) -> WindowCorrelation:
    """One vehicle's correlation over [start, end) (whole hours); `watermark` as `materialized_until` read it (the
    caller reads it with its other probes: one round trip fewer on the request path)."""
    params = window_params(start, end, community=community, watermark=watermark)
    row = conn.execute(_WINDOW_ONE, {**params, "vehicle_ids": [vehicle_id]}).one_or_none()
    if row is None:
        return WindowCorrelation(vehicle_id, 0, 0, 0, None)
    return WindowCorrelation(
        vehicle_id, row.vehicle_readings, row.mapped_readings, row.matched_readings, row.median_offset_s
    )


# --- keeping the rollup (Community) -----------------------------------------------------------------------


@dataclass(frozen=True)
class RefreshBatch:
    """What one refresh batch (one transaction) did."""

    #: the watermark before and after the batch
    materialized_from: datetime | None
    materialized_until: datetime | None
    #: closed hours newly materialised, and the vehicle-hour rows they wrote
    hours: int
    vehicle_hours: int
    #: logged invalidations taken, and the vehicle-hour rows recomputed for them
    invalidations: int
    recomputed_vehicle_hours: int
    #: the watermark reached the newest settled hour (or `until`): nothing left for another batch
    caught_up: bool
    seconds: float


def refresh_batch(conn: Connection, *, batch_hours: int = BATCH_HOURS, until: datetime | None = None) -> RefreshBatch:
    """Materialise up to `batch_hours` closed hours beyond the watermark and recompute the invalidated ones, in
    the caller's transaction (which must commit it: it holds the watermark row's lock until then). `until` stops
    the watermark earlier than the newest settled hour (a whole hour; tests and backfills)."""
    t0 = time.monotonic()
    state = conn.execute(_LOCK_WATERMARK).one()
    upto = floor_hour(state.now - SETTLE)
    if until is not None:
        upto = min(upto, floor_hour(until))
    watermark = state.materialized_until
    if watermark is None:
        first = conn.execute(_FIRST_READING).scalar_one()
        watermark = upto if first is None else min(floor_hour(first), upto)
    new_until = max(watermark, min(upto, watermark + batch_hours * HOUR))

    # First take the invalidations, then compute (later snapshots): see the module docstring.
    taken = conn.execute(_TAKE_INVALIDATIONS, {"until": new_until}).all()
    vehicle_hours = 0
    if new_until > watermark:
        vehicle_hours = conn.execute(
            _MATERIALIZE,
            {
                "raw_start": watermark,
                "end": new_until,
                "search_s": OFFSET_SEARCH_SECONDS,
                "tolerance_s": MATCH_TOLERANCE_SECONDS,
            },
        ).rowcount
    by_hour: dict[datetime, list[str]] = {}
    for r in taken:
        if r.bucket < watermark:  # newer hours were just computed whole
            by_hour.setdefault(r.bucket, []).append(r.vehicle_id)
    recomputed = 0
    for bucket, vehicle_ids in sorted(by_hour.items()):
        recomputed += conn.execute(
            _REMATERIALIZE,
            {
                "raw_start": bucket,
                "end": bucket + HOUR,
                "vehicle_ids": vehicle_ids,
                "search_s": OFFSET_SEARCH_SECONDS,
                "tolerance_s": MATCH_TOLERANCE_SECONDS,
            },
        ).rowcount
    conn.execute(_SET_WATERMARK, {"until": new_until})
    return RefreshBatch(
        materialized_from=state.materialized_until,
        materialized_until=new_until,
        hours=int((new_until - watermark) / HOUR),
        vehicle_hours=vehicle_hours,
        invalidations=len(taken),
        recomputed_vehicle_hours=recomputed,
        caught_up=new_until >= upto,
        seconds=round(time.monotonic() - t0, 3),
    )


def pending(conn: Connection) -> tuple[datetime | None, int]:
    """The watermark and the number of logged invalidations below it (ops: how far behind the rollup is)."""
    watermark = materialized_until(conn)
    if watermark is None:
        return None, 0
    return watermark, conn.execute(_PENDING_INVALIDATIONS, {"until": watermark}).scalar_one()


# The hourly rollups' retention (migration 0002's policy on vehicle_readings_1h), if any.
_ROLLUP_RETENTION = sa.text(
    "SELECT CAST(config ->> 'drop_after' AS interval) FROM timescaledb_information.jobs"
    " WHERE proc_name = 'policy_retention' AND hypertable_name = 'vehicle_readings_1h'"
)
_DROP_EXPIRED = sa.text(
    "SELECT count(*) FROM drop_chunks('vehicle_correlation_1h', older_than => now() - CAST(:drop_after AS interval))"
)


def drop_expired(conn: Connection) -> int:
    """Drop the rollup's chunks older than the hourly rollups' retention; the number of chunks dropped."""
    drop_after = conn.execute(_ROLLUP_RETENTION).scalar_one_or_none()
    if drop_after is None:
        return 0
    dropped: int = conn.execute(_DROP_EXPIRED, {"drop_after": drop_after}).scalar_one()
    return dropped
