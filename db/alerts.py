"""Alerts: evaluate the fleet's alert conditions in a few set-based statements, and list alerts.

Kinds (db.schema.ALERT_KINDS):

- `low_efficiency` (vehicle): efficiency (DC delivered / AC consumed) over the evaluation window is below the
  threshold. Totals come from `db.analytics.vehicle_totals` (hourly sums joined through the mapping per hour,
  continuous aggregates on Community, hypertables on Apache), so the alert fires for exactly the vehicles
  the fleet view flags `belowThreshold` over the same window.
- `correlation_lost` (vehicle): the vehicle's readings no longer line up with those of its mapped meter
  (clock skew, or a mapping to the wrong or a dead meter): the share of its readings with a reading of the
  meter mapped at that instant within ±MATCH_TOLERANCE_SECONDS is below the minimum match rate, or the
  median clock offset exceeds that tolerance. The analytics report's `correlation` rule (db/correlation.py),
  for every vehicle at once: closed hours from the hourly correlation rollup on Community.
- `silent_device` (meter or vehicle): the device's newest reading (`recorded_at` in the current-state
  tables, as the listings' silentForMinutes) is older than `silent_minutes` before `now`.

Windows: `now` defaults to the database's clock (statement_timestamp(): after any wait for the scan lock),
so every process agrees. The efficiency kind judges the last `window` of *complete* hours,
[floor_hour(now) - window, floor_hour(now)), and the correlation kind the last `correlation_window` of complete
hours: hourly sums cannot be split, and the current hour is still arriving (a vehicle reading whose meter
reading is a few seconds behind in ingest would otherwise look unmatched). The correlation window is 1 h by
default; on Apache (and for hours not yet in the correlation rollup) it reads raw readings, 1.2M rows an hour for
10,000 vehicles and their meters.

Judging: a vehicle needs `min_readings` readings on each side in the window (and at least `min_ac_kwh` of
AC for efficiency, so an idle vehicle whose charger only draws standby power is not "0 % efficient"). A
vehicle that falls short is not judged: its alert is neither opened, refreshed nor resolved. Its last
verdict stands and `last_seen_at` shows when that verdict was last confirmed; a vehicle that stopped
reporting is reported by `silent_device`, not silently declared healthy.

Invariants:

- One open alert per device and kind: the partial unique index `alerts_one_open_per_device_and_kind`
  (kind, device_type, device_id WHERE resolved_at IS NULL; a meter and a vehicle may share an id). Alerts
  are opened with INSERT ... ON CONFLICT DO NOTHING on that index, so two concurrent scans cannot open two
  alerts for one device and kind: the second insert waits for the first transaction and then does nothing
  (or inserts, if the first rolled back). Nothing errors.
- Each kind is one statement (data-modifying CTEs over one evaluation): refresh the open alerts whose
  condition holds (last_seen_at, details), resolve those whose condition cleared (resolved_at; details keep
  what fired and gain `resolution`, what cleared it), open the missing ones. Safe to re-run: a second scan
  with the same data changes only last_seen_at.
- Alerts are never deleted; a device's next alert of a kind is a new row, so its history stays readable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from db import analytics, correlation, edition
from db.schema import ALERT_KINDS, DEVICE_ID_MAX_LENGTH, alerts, meters_current, vehicles_current

HOUR = timedelta(hours=1)

#: First key of the two-int advisory lock that serialises scans (see lock_scans); two-int keys never
#: collide with one-bigint ones such as the migration lock, nor with the mapping lock's class.
SCAN_LOCK_CLASS = 0x616C72  # "alr"

AlertStatus = Literal["open", "resolved", "all"]
ALERT_STATUSES: tuple[AlertStatus, ...] = ("open", "resolved", "all")

#: What an evaluation is: a query of (device_type, device_id, firing, details), one row per judged device.
Evaluation = sa.Select[Any] | sa.CompoundSelect[Any] | sa.TextualSelect

# Times inside `details` are written in UTC whatever the session's time zone (the engines' differ).
_ISO_UTC = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'


@dataclass(frozen=True)
class KindStats:
    """What one scan did for one kind."""

    opened: int = 0
    refreshed: int = 0
    resolved: int = 0


@dataclass(frozen=True)
class ScanStats:
    """What one scan evaluated and did, per kind."""

    now: datetime
    #: The complete hours the efficiency kind judged: [window_start, window_end).
    window_start: datetime
    window_end: datetime
    #: The complete hours the correlation kind judged.
    correlation_window_start: datetime
    correlation_window_end: datetime
    low_efficiency: KindStats = field(default_factory=KindStats)
    correlation_lost: KindStats = field(default_factory=KindStats)
    silent_device: KindStats = field(default_factory=KindStats)

    def by_kind(self) -> dict[str, KindStats]:
        """The per-kind counts, keyed by kind name."""
        return {kind: getattr(self, kind) for kind in ALERT_KINDS}

    @property
    def opened(self) -> int:
        return sum(s.opened for s in self.by_kind().values())

    @property
    def refreshed(self) -> int:
        return sum(s.refreshed for s in self.by_kind().values())

    @property
    def resolved(self) -> int:
        return sum(s.resolved for s in self.by_kind().values())


@dataclass(frozen=True)
class Alert:
    """One alert; resolved_at None: still open."""

    id: int
    kind: str
    device_type: str
    device_id: str
    opened_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None
    details: dict[str, Any]


def evaluation_window(now: datetime, window: timedelta) -> tuple[datetime, datetime]:
    """The complete hours a scan at `now` judges: [floor_hour(now) - window, floor_hour(now))."""
    end = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return end - window, end


def lock_scans(conn: Connection) -> None:
    """Wait for, then hold until the transaction ends, the lock that lets one scan run at a time.

    Optional for correctness (the unique index already prevents duplicates); it spares a second scan the
    work, and keeps each scan's counts those of one scan alone.
    """
    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(SCAN_LOCK_CLASS, 0)))


def scan(
    conn: Connection,
    *,
    now: datetime | None = None,
    window: timedelta,
    correlation_window: timedelta,
    efficiency_threshold: float,
    silent_minutes: int,
    min_readings: int,
    correlation_min_match_rate: float,
    min_ac_kwh: float,
    community: bool | None = None,
) -> ScanStats:
    """Open, refresh and resolve alerts of every kind; one statement per kind, inside the caller's transaction.

    The thresholds and windows have no defaults here: they are settings (FLEET_ALERT_*, declared in config/),
    passed by jobs.alerts.scan_alerts. `now` defaults to the database's clock; the windows must be whole numbers of
    hours. `community` picks the
    continuous aggregates (True) or the hypertables (False) for the efficiency totals; None reads the edition.
    """
    for name, length in (("window", window), ("correlation_window", correlation_window)):
        if length <= timedelta(0) or length % HOUR:
            raise ValueError(f"{name} must be a positive whole number of hours, got {length}")
    if not 0 < efficiency_threshold <= 1:
        raise ValueError("efficiency_threshold must be in (0, 1]")
    if not 0 < correlation_min_match_rate <= 1:
        raise ValueError("correlation_min_match_rate must be in (0, 1]")
    if silent_minutes < 1 or min_readings < 1 or min_ac_kwh < 0:
        raise ValueError("silent_minutes and min_readings must be >= 1, min_ac_kwh >= 0")
    if now is not None and now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")

    server = conn.execute(
        sa.select(
            # The clock when this statement starts, i.e. after any wait for lock_scans(), unlike now().
            sa.func.statement_timestamp().label("now"),
            sa.literal_column(edition.COMMUNITY_SQL, sa.Boolean).label("community"),
        )
    ).one()
    now = server.now if now is None else now
    community = server.community if community is None else community
    start, end = evaluation_window(now, window)
    corr_start, corr_end = evaluation_window(now, correlation_window)

    silent = _apply(conn, "silent_device", _silent_devices(now, silent_minutes), now)
    low = _apply(
        conn,
        "low_efficiency",
        _low_efficiency(community, start, end, efficiency_threshold, min_readings, min_ac_kwh),
        now,
    )
    lost = _apply(
        conn,
        "correlation_lost",
        _correlation_lost(
            corr_start,
            corr_end,
            min_readings,
            correlation_min_match_rate,
            community=community,
            watermark=correlation.materialized_until(conn) if community else None,
        ),
        now,
    )
    return ScanStats(
        now=now,
        window_start=start,
        window_end=end,
        correlation_window_start=corr_start,
        correlation_window_end=corr_end,
        low_efficiency=low,
        correlation_lost=lost,
        silent_device=silent,
    )


# --- evaluations: one row per judged device (device_type, device_id, firing, details) -----------------------


def _text(value: str) -> sa.ColumnElement[str]:
    # Typed, so that jsonb_build_object's "any" arguments are never of unknown type.
    return sa.cast(sa.literal(value), sa.Text)


def _json(**fields: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    args: list[sa.ColumnElement[Any]] = []
    for key, value in fields.items():
        args += [_text(key), value]
    return sa.func.jsonb_build_object(*args, type_=JSONB)


def _rounded(value: sa.ColumnElement[Any], decimals: int = 6) -> sa.ColumnElement[Any]:
    # Both editions sum the same readings in different orders: rounding keeps the details identical.
    return sa.func.round(sa.cast(value, sa.Numeric), decimals)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _silent_devices(now: datetime, silent_minutes: int) -> Evaluation:
    """Every meter and vehicle of the current-state tables; firing when silent for `silent_minutes`."""
    cutoff = now - timedelta(minutes=silent_minutes)
    now_p = sa.literal(now, sa.DateTime(timezone=True))

    def of(table: sa.Table, id_column: sa.Column[str], device_type: str) -> sa.Select[Any]:
        recorded_at = table.c.recorded_at
        return sa.select(
            _text(device_type).label("device_type"),
            id_column.label("device_id"),
            (recorded_at < cutoff).label("firing"),
            _json(
                lastRecordedAt=sa.func.to_char(sa.func.timezone("UTC", recorded_at), _ISO_UTC),
                silentMinutes=sa.func.round(sa.cast(sa.extract("epoch", now_p - recorded_at) / 60, sa.Numeric), 1),
                thresholdMinutes=sa.literal(silent_minutes, sa.Integer),
            ).label("details"),
        )

    return sa.union_all(
        of(meters_current, meters_current.c.meter_id, "meter"),
        of(vehicles_current, vehicles_current.c.vehicle_id, "vehicle"),
    )


def _low_efficiency(
    community: bool, start: datetime, end: datetime, threshold: float, min_readings: int, min_ac_kwh: float
) -> Evaluation:
    """Vehicles with enough readings on both sides and enough AC; firing when efficiency < threshold."""
    t = analytics.vehicle_totals(community, start, end)
    return sa.select(
        _text("vehicle").label("device_type"),
        t.c.vehicle_id.label("device_id"),
        (t.c.efficiency < threshold).label("firing"),
        _json(
            efficiency=_rounded(t.c.efficiency),
            threshold=sa.literal(threshold, sa.Float),
            totalAcConsumed=_rounded(t.c.total_ac_consumed),
            totalDcDelivered=_rounded(t.c.total_dc_delivered),
            powerLoss=_rounded(t.c.power_loss),
            meterReadings=t.c.meter_readings,
            vehicleReadings=t.c.vehicle_readings,
            windowStart=_text(_iso(start)),
            windowEnd=_text(_iso(end)),
        ).label("details"),
    ).where(
        t.c.meter_readings >= min_readings,
        t.c.vehicle_readings >= min_readings,
        t.c.total_ac_consumed >= min_ac_kwh,
        t.c.efficiency.is_not(None),  # AC > 0 and DC known
    )


# Per vehicle over the window, the shared rule of db/correlation.py (stored hours on Community, raw readings for
# the rest): only the readings with a mapping at their instant are judged, so a vehicle mapped half-way through
# the window is judged on its mapped half; the vehicles judged are those with a mapping in the window.
_CORRELATION_LOST = sa.text(
    """
    WITH mapped AS (
        SELECT vehicle_id, meter_id, valid_from, valid_to
          FROM vehicle_meter_mapping
         WHERE valid_from < :end AND (valid_to IS NULL OR valid_to > :start)
    ),
    per_vehicle AS (
        SELECT vehicle_id,
               mapped_readings AS vehicle_readings,
               matched_readings,
               median_offset_s
          FROM ("""
    + correlation.WINDOW_ALL_SQL
    + """) AS w
         WHERE mapped_readings > 0
    ),
    meters AS (
        SELECT vehicle_id, array_agg(meter_id ORDER BY valid_from) AS meter_ids
          FROM mapped
         GROUP BY vehicle_id
    ),
    judged AS (
        SELECT p.vehicle_id, vehicle_readings, matched_readings, median_offset_s, meter_ids,
               matched_readings::float8 / vehicle_readings AS match_rate
          FROM per_vehicle p
          JOIN meters USING (vehicle_id)
         WHERE vehicle_readings >= :min_readings
    )
    SELECT CAST('vehicle' AS text) AS device_type,
           vehicle_id AS device_id,
           (match_rate < :min_match_rate
            OR median_offset_s IS NULL
            OR abs(median_offset_s) > :tolerance_s) AS firing,
           jsonb_build_object(
               'matchRate', round(match_rate::numeric, 6),
               'minMatchRate', CAST(:min_match_rate AS float8),
               'medianOffsetSeconds', round(median_offset_s::numeric, 3),
               'toleranceSeconds', CAST(:tolerance_s AS float8),
               'vehicleReadings', vehicle_readings,
               'matchedReadings', matched_readings,
               'meterIds', to_jsonb(meter_ids),
               'windowStart', CAST(:start_iso AS text),
               'windowEnd', CAST(:end_iso AS text)
           ) AS details
      FROM judged
    """
)


def _correlation_lost(
    start: datetime,
    end: datetime,
    min_readings: int,
    min_match_rate: float,
    *,
    community: bool,
    watermark: datetime | None,
) -> Evaluation:
    """Mapped vehicles with enough readings; firing when their readings stopped lining up with the meter's."""
    return _CORRELATION_LOST.bindparams(
        **correlation.window_params(start, end, community=community, watermark=watermark),
        start_iso=_iso(start),
        end_iso=_iso(end),
        min_readings=min_readings,
        min_match_rate=min_match_rate,
    ).columns(
        sa.column("device_type", sa.Text),
        sa.column("device_id", sa.Text),
        sa.column("firing", sa.Boolean),
        sa.column("details", JSONB),
    )


# --- applying an evaluation: one statement ------------------------------------------------------------------


def _apply(conn: Connection, kind: str, evaluated: Evaluation, now: datetime) -> KindStats:
    """Refresh, resolve and open `kind`'s alerts from `evaluated` in one statement; the counts of each."""
    # Referenced three times, so PostgreSQL materialises it: the evaluation runs once per statement.
    e = evaluated.cte("evaluated")
    a = alerts
    now_p = sa.literal(now, sa.DateTime(timezone=True))
    open_for_device = sa.and_(
        a.c.kind == kind,
        a.c.resolved_at.is_(None),
        a.c.device_type == e.c.device_type,
        a.c.device_id == e.c.device_id,
    )
    refreshed = (
        sa.update(a)
        .where(open_for_device, e.c.firing)
        # greatest(): a scan asked about an earlier instant never moves an alert's times backwards.
        .values(last_seen_at=sa.func.greatest(now_p, a.c.last_seen_at), details=e.c.details)
        .returning(a.c.id)
        .cte("refreshed")
    )
    resolved = (
        sa.update(a)
        .where(open_for_device, sa.not_(e.c.firing))
        .values(
            resolved_at=sa.func.greatest(now_p, a.c.opened_at),
            details=a.c.details.op("||")(_json(resolution=e.c.details)),
        )
        .returning(a.c.id)
        .cte("resolved")
    )
    opened = (
        pg_insert(a)
        .from_select(
            ["kind", "device_type", "device_id", "opened_at", "last_seen_at", "details"],
            sa.select(_text(kind), e.c.device_type, e.c.device_id, now_p, now_p, e.c.details).where(e.c.firing),
        )
        # The one-open-alert index: a device with an open alert (this statement's refresh, or a concurrent
        # scan's insert, which this waits for) gets no second one.
        .on_conflict_do_nothing(
            index_elements=[a.c.kind, a.c.device_type, a.c.device_id], index_where=a.c.resolved_at.is_(None)
        )
        .returning(a.c.id)
        .cte("opened")
    )

    def count(cte: sa.CTE) -> sa.ScalarSelect[int]:
        return sa.select(sa.func.count()).select_from(cte).scalar_subquery()

    row = conn.execute(
        sa.select(count(opened).label("opened"), count(refreshed).label("refreshed"), count(resolved).label("resolved"))
    ).one()
    return KindStats(opened=row.opened, refreshed=row.refreshed, resolved=row.resolved)


# --- listing ------------------------------------------------------------------------------------------------


def list_alerts(
    conn: Connection,
    *,
    status: AlertStatus = "open",
    kind: str | None = None,
    device_id: str | None = None,
    limit: int | None = 100,
    offset: int = 0,
) -> tuple[list[Alert], int]:
    """One page of alerts, newest opened first, and how many match in all.

    `status` open (default), resolved or all; `kind` and `device_id` filter exactly.
    """
    if status not in ALERT_STATUSES:
        raise ValueError(f"status must be one of {ALERT_STATUSES}, got {status!r}")
    if kind is not None and kind not in ALERT_KINDS:
        raise ValueError(f"kind must be one of {ALERT_KINDS}, got {kind!r}")
    a = alerts
    where: list[sa.ColumnElement[bool]] = []
    if status == "open":
        where.append(a.c.resolved_at.is_(None))
    elif status == "resolved":
        where.append(a.c.resolved_at.is_not(None))
    if kind is not None:
        where.append(a.c.kind == kind)
    if device_id is not None:
        if not 1 <= len(device_id) <= DEVICE_ID_MAX_LENGTH or "\x00" in device_id:
            return [], 0  # could never have been stored
        where.append(a.c.device_id == device_id)
    total = conn.execute(sa.select(sa.func.count()).select_from(a).where(*where)).scalar_one()
    rows = conn.execute(
        sa.select(a).where(*where).order_by(a.c.opened_at.desc(), a.c.id.desc()).limit(limit).offset(offset)
    ).mappings()
    return [Alert(**{c.name: r[c.name] for c in a.c}) for r in rows], total


# --- policy failures (kind `policy_failed`, device_type `job`: migration 0008) -------------------------------


def evaluate_policy_alerts(conn: Connection, failing: dict[str, tuple[bool, dict[str, Any]]]) -> KindStats:
    """Open, refresh and resolve `policy_failed` alerts from {job name: (last run failed, details)}, in one
    statement in the caller's transaction (same invariants as the device kinds). A job absent from `failing`
    (never ran, or gone) keeps its alert as it is."""
    from db.schema import POLICY_ALERT_KIND  # here, not at the top: this section is all the policy kind adds

    if not failing:
        return KindStats()
    evaluated = sa.select(
        sa.values(
            sa.column("device_type", sa.Text),
            sa.column("device_id", sa.Text),
            sa.column("firing", sa.Boolean),
            sa.column("details", JSONB),
            name="policies",
        ).data([("job", name, firing, details) for name, (firing, details) in sorted(failing.items())])
    )
    now = conn.execute(sa.select(sa.func.statement_timestamp())).scalar_one()
    return _apply(conn, POLICY_ALERT_KIND, evaluated, now)
