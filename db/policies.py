"""Archival policies: chunk intervals, retention, compression and rollup refresh windows, on both editions.

Community ('timescale'): TimescaleDB's own policy jobs (migration 0002) are the source of truth; they are read
from `timescaledb_information.jobs` and changed with `alter_job` (config and schedule, validated by each
policy's check function), all in the caller's transaction. Apache: there are no policies; raw retention is the
project's `retention_settings` table, enforced by `fleet jobs run` with `drop_chunks` (see
`drop_expired_chunks`); compression does not exist and the rollups are plain views over raw history.

`check_windows` holds the safety rules every change must pass; they are pure functions of the windows so the
CLI can explain a refusal before touching the database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection

from db.edition import EditionInfo
from db.schema import RETENTION_HYPERTABLES

#: Each raw hypertable and its hourly rollup (fixed allow-list: no other name reaches SQL).
ROLLUP_OF = {"meter_readings": "meter_readings_1h", "vehicle_readings": "vehicle_readings_1h"}
#: Width of a rollup bucket (migration 0002).
BUCKET = timedelta(hours=1)
#: How much longer than the refresh window raw history must be kept. The refresh window is aligned to whole
#: buckets (it can reach an hour further back than start_offset), retention runs on its own schedule (once a
#: day for the policy), and a refresh that covers a range whose raw chunks are gone rewrites those buckets from
#: nothing. One day (one chunk) covers all three and leaves operators a day to backfill a range the refresh
#: missed (`CALL refresh_continuous_aggregate(...)`) while its raw rows still exist.
RETENTION_MARGIN = timedelta(days=1)
#: Shortest refresh schedule accepted (each run scans the invalidated part of the whole window).
MIN_REFRESH_EVERY = timedelta(minutes=1)
#: Longest interval accepted anywhere (keeps `now() - interval` far from timestamp overflow).
MAX_INTERVAL = timedelta(days=36500)

POLICY_RETENTION = "policy_retention"
POLICY_COMPRESSION = "policy_compression"
POLICY_REFRESH = "policy_refresh_continuous_aggregate"
COMPRESSION_UNAVAILABLE = "unavailable on the Apache edition"

_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_INTERVAL_RE = re.compile(r"^(?:\d{1,6}[smhdw])+$")
_PART_RE = re.compile(r"(\d+)([smhdw])")

# --- intervals -----------------------------------------------------------------------------------------------


def parse_interval(text: str) -> timedelta:
    """'90d', '12h', '30m', '45s', '2w' or a sum such as '1d12h' ('m' is minutes) as a timedelta > 0."""
    compact = text.strip()
    if not _INTERVAL_RE.match(compact):
        raise ValueError(
            f"{text!r} is not an interval: use whole numbers with a unit s, m (minutes), h, d or w, e.g. 90d,"
            " 30m or 1d12h"
        )
    value = timedelta(seconds=sum(int(n) * _UNITS[unit] for n, unit in _PART_RE.findall(compact)))
    if value <= timedelta(0):
        raise ValueError(f"{text!r}: must be longer than zero")
    if value > MAX_INTERVAL:
        raise ValueError(f"{text!r}: at most {format_interval(MAX_INTERVAL)}")
    return value


def format_interval(value: timedelta | None) -> str | None:
    """`value` in parse_interval's syntax, largest units first: '90d', '1h30m', '29d23h' (never weeks)."""
    if value is None:
        return None
    seconds = round(value.total_seconds())
    if seconds <= 0:
        return f"{seconds}s"
    parts, rest = [], seconds
    for unit in ("d", "h", "m", "s"):
        count, rest = divmod(rest, _UNITS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


# --- windows and their safety rules ------------------------------------------------------------------------


@dataclass(frozen=True)
class Windows:
    """The archival settings of one raw hypertable and its hourly rollup (None: no such policy)."""

    hypertable: str
    raw_retention: timedelta | None = None
    compress_after: timedelta | None = None
    rollup_retention: timedelta | None = None
    refresh_start: timedelta | None = None
    refresh_end: timedelta | None = None
    refresh_every: timedelta | None = None

    @property
    def rollup(self) -> str:
        return ROLLUP_OF[self.hypertable]


@dataclass(frozen=True)
class PolicyChange:
    """What `fleet policies set` asks for; None leaves a setting as it is."""

    raw_retention: timedelta | None = None
    compress_after: timedelta | None = None
    rollup_retention: timedelta | None = None
    refresh_start: timedelta | None = None
    refresh_end: timedelta | None = None
    refresh_every: timedelta | None = None

    def as_dict(self) -> dict[str, timedelta]:
        """The settings it changes."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def applied_to(self, windows: Windows) -> Windows:
        """`windows` with this change applied."""
        # The names are Windows' timedelta settings; mypy cannot tie a dict's keys to the fields they fill.
        settings: dict[str, Any] = self.as_dict()
        return replace(windows, **settings)


#: The `fleet policies set` flag of each setting, to name it in messages.
FLAGS = {
    "raw_retention": "--raw-retention",
    "compress_after": "--compress-after",
    "rollup_retention": "--rollup-retention",
    "refresh_start": "--refresh-start",
    "refresh_end": "--refresh-end",
    "refresh_every": "--refresh-every",
}
#: Settings that exist only on the Community edition, and why.
COMMUNITY_ONLY = {
    "compress_after": f"compression is {COMPRESSION_UNAVAILABLE}",
    "rollup_retention": "on the Apache edition the rollups are plain views over raw history: they keep exactly"
    " what raw retention keeps (use --raw-retention)",
    "refresh_start": "on the Apache edition the rollups are plain views over raw history: always current, nothing"
    " to refresh",
    "refresh_end": "on the Apache edition the rollups are plain views over raw history: always current, nothing"
    " to refresh",
    "refresh_every": "on the Apache edition the rollups are plain views over raw history: always current, nothing"
    " to refresh",
}


class PolicyRefused(ValueError):
    """A change would be unsafe; `reasons` says why and what would be safe."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


class PolicyUnavailable(ValueError):
    """A setting does not exist on this edition."""


def _f(value: timedelta | None) -> str:
    return format_interval(value) or "none"


def check_windows(w: Windows, *, community: bool, max_reading_age: timedelta) -> list[tuple[str, str]]:
    """Why `w` would lose or corrupt data, as (relation, reason) pairs (empty: safe). Each reason names a safe
    alternative. `max_reading_age` is the oldest reading the API accepts (FLEET_MAX_READING_AGE_DAYS)."""
    problems: list[tuple[str, str]] = []

    def raw(reason: str) -> None:
        problems.append((w.hypertable, reason))

    def rollup(reason: str) -> None:
        problems.append((w.rollup, reason))

    if w.raw_retention is not None and w.raw_retention < max_reading_age + RETENTION_MARGIN:
        raw(
            f"raw retention {_f(w.raw_retention)} would drop readings the API still accepts (up to"
            f" {_f(max_reading_age)} old, FLEET_MAX_READING_AGE_DAYS): use --raw-retention"
            f" {_f(max_reading_age + RETENTION_MARGIN)} or more, or lower FLEET_MAX_READING_AGE_DAYS first"
        )
    if not community:
        return problems

    start, end, every = w.refresh_start, w.refresh_end, w.refresh_every
    if end is not None and end < BUCKET:
        rollup(
            f"refresh end {_f(end)} is less than one bucket ({_f(BUCKET)}): the refresh would materialise the"
            " current, still-filling hour, and real-time aggregation stops reading raw rows below the materialised"
            f" point, so the latest hour would show partial sums: use --refresh-end {_f(BUCKET)} or more"
        )
    if start is not None and end is not None:
        if start <= end:
            rollup(
                f"refresh start {_f(start)} must reach further back than refresh end {_f(end)}: use"
                f" --refresh-start {_f(end + 2 * BUCKET)} or more, or a shorter --refresh-end"
            )
        elif start - end < 2 * BUCKET:
            rollup(
                f"the refresh window ({_f(start)} to {_f(end)} ago) must cover at least two buckets"
                f" ({_f(2 * BUCKET)}): use --refresh-start {_f(end + 2 * BUCKET)} or more"
            )
        elif every is not None and every * 2 > start - end:
            rollup(
                f"refreshing every {_f(every)} over a {_f(start - end)} window: each hour passes through the window"
                " in that time and would be materialised by fewer than two runs (one missed or failed run would"
                f" leave it out for good): use --refresh-every {_f((start - end) / 2)} or less, or a wider window"
            )
    if every is not None and every < MIN_REFRESH_EVERY:
        rollup(f"refresh every {_f(every)} is too often: use {_f(MIN_REFRESH_EVERY)} or more")
    if start is not None and start < max_reading_age:
        rollup(
            f"refresh start {_f(start)} is shorter than the oldest reading the API accepts ({_f(max_reading_age)},"
            " FLEET_MAX_READING_AGE_DAYS): a late reading older than the window is stored but never materialised:"
            f" use --refresh-start {_f(max_reading_age)} or more, or lower FLEET_MAX_READING_AGE_DAYS first"
        )
    if w.raw_retention is not None and start is not None and w.raw_retention < start + RETENTION_MARGIN:
        raw(
            f"raw retention {_f(w.raw_retention)} would drop raw readings the rollups have not finished with (the"
            f" refresh re-reads the last {_f(start)}; plus a margin of {_f(RETENTION_MARGIN)} for bucket alignment,"
            f" the retention schedule and a manual backfill): use --raw-retention {_f(start + RETENTION_MARGIN)} or"
            f" more, or --refresh-start {_f(w.raw_retention - RETENTION_MARGIN)} or less"
        )
    if w.rollup_retention is not None and w.raw_retention is not None and w.rollup_retention <= w.raw_retention:
        rollup(
            f"rollup retention {_f(w.rollup_retention)} must be longer than raw retention {_f(w.raw_retention)}:"
            " once raw chunks are dropped the hourly rollups are the only history left: use --rollup-retention"
            f" {_f(w.raw_retention + timedelta(days=1))} or more"
        )
    if w.rollup_retention is not None and start is not None and w.rollup_retention <= start:
        rollup(
            f"rollup retention {_f(w.rollup_retention)} must be longer than the refresh window ({_f(start)}):"
            " the refresh would re-create buckets retention just dropped"
        )
    if w.compress_after is not None and w.raw_retention is not None and w.compress_after >= w.raw_retention:
        raw(
            f"compress after {_f(w.compress_after)} is not shorter than raw retention {_f(w.raw_retention)}: chunks"
            f" would be dropped before they are ever compressed: use --compress-after"
            f" {_f(w.raw_retention - timedelta(days=1))} or less"
        )
    return problems


def refusal_reasons(problems: list[tuple[str, str]]) -> list[str]:
    """One line per reason, naming every relation it applies to (the same change usually hits both pairs)."""
    grouped: dict[str, list[str]] = {}
    for relation, reason in problems:
        grouped.setdefault(reason, []).append(relation)
    return [f"{', '.join(relations)}: {reason}" for reason, relations in grouped.items()]


# --- reading the current state -------------------------------------------------------------------------------

_CHUNK_INTERVALS = sa.text(
    "SELECT hypertable_name, time_interval FROM timescaledb_information.dimensions"
    " WHERE hypertable_schema = 'public' AND hypertable_name IN :names AND dimension_type = 'Time'"
).bindparams(sa.bindparam("names", expanding=True))

# Timestamps of job_stats are read as text: a job that never ran has -infinity there, which psycopg cannot
# turn into a datetime.
_POLICY_JOBS = sa.text(
    """
    SELECT j.job_id, j.proc_name, j.hypertable_name, j.schedule_interval, j.scheduled,
           CAST(j.config ->> 'drop_after' AS interval) AS drop_after,
           CAST(j.config ->> 'compress_after' AS interval) AS compress_after,
           CAST(j.config ->> 'start_offset' AS interval) AS start_offset,
           CAST(j.config ->> 'end_offset' AS interval) AS end_offset,
           CAST(s.last_run_started_at AS text) AS last_run_started_at,
           CAST(s.last_successful_finish AS text) AS last_successful_finish,
           s.last_run_status, s.job_status,
           CAST(coalesce(s.next_start, j.next_start) AS text) AS next_start,
           s.total_runs, s.total_failures
    FROM timescaledb_information.jobs j
    LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
    WHERE j.hypertable_schema = 'public' AND j.hypertable_name IN :names AND j.proc_name IN :procs
    ORDER BY j.job_id
    """
).bindparams(sa.bindparam("names", expanding=True), sa.bindparam("procs", expanding=True))

_RETENTION_SETTINGS = sa.text(
    "SELECT hypertable_name, drop_after, updated_at FROM retention_settings ORDER BY hypertable_name"
)


@dataclass(frozen=True)
class PolicyJob:
    """One TimescaleDB policy job and TimescaleDB's own record of its runs (never updated by `run_job`)."""

    job_id: int
    proc_name: str
    relation: str
    schedule_interval: timedelta
    scheduled: bool
    drop_after: timedelta | None
    compress_after: timedelta | None
    start_offset: timedelta | None
    end_offset: timedelta | None
    last_run_started_at: str | None
    last_successful_finish: str | None
    last_run_status: str | None
    job_status: str | None
    next_start: str | None
    total_runs: int | None
    total_failures: int | None


def policy_jobs(conn: Connection) -> list[PolicyJob]:
    """The retention, compression and refresh policies on the platform's hypertables and rollups (Community)."""
    rows = conn.execute(
        _POLICY_JOBS,
        {
            "names": [*ROLLUP_OF, *ROLLUP_OF.values()],
            "procs": [POLICY_RETENTION, POLICY_COMPRESSION, POLICY_REFRESH],
        },
    ).mappings()
    return [
        PolicyJob(relation=r["hypertable_name"], **{k: v for k, v in r.items() if k != "hypertable_name"}) for r in rows
    ]


def chunk_intervals(conn: Connection) -> dict[str, timedelta]:
    """The time-chunk interval of each raw hypertable."""
    rows = conn.execute(_CHUNK_INTERVALS, {"names": list(ROLLUP_OF)}).all()
    return {r.hypertable_name: r.time_interval for r in rows}


def retention_settings(conn: Connection) -> dict[str, timedelta]:
    """The project's own retention per raw hypertable (Apache edition; empty on Community)."""
    return {r.hypertable_name: r.drop_after for r in conn.execute(_RETENTION_SETTINGS)}


def find_job(jobs: list[PolicyJob], proc: str, relation: str) -> PolicyJob | None:
    """The policy `proc` on `relation`, if there is one."""
    return next((j for j in jobs if j.proc_name == proc and j.relation == relation), None)


def current_windows(conn: Connection, info: EditionInfo) -> list[Windows]:
    """The archival settings in force, per raw hypertable and its rollup."""
    if not info.community:
        kept = retention_settings(conn)
        return [Windows(hypertable=t, raw_retention=kept.get(t)) for t in ROLLUP_OF]
    jobs = policy_jobs(conn)
    out = []
    for table, rollup in ROLLUP_OF.items():
        raw = find_job(jobs, POLICY_RETENTION, table)
        compression = find_job(jobs, POLICY_COMPRESSION, table)
        rollup_retention = find_job(jobs, POLICY_RETENTION, rollup)
        refresh = find_job(jobs, POLICY_REFRESH, rollup)
        out.append(
            Windows(
                hypertable=table,
                raw_retention=raw.drop_after if raw else None,
                compress_after=compression.compress_after if compression else None,
                rollup_retention=rollup_retention.drop_after if rollup_retention else None,
                refresh_start=refresh.start_offset if refresh else None,
                refresh_end=refresh.end_offset if refresh else None,
                refresh_every=refresh.schedule_interval if refresh else None,
            )
        )
    return out


# --- changing them -------------------------------------------------------------------------------------------

# Config keys come from a fixed map and are bound as a text[] path; values are bound intervals.
_ALTER_CONFIG = sa.text(
    """
    SELECT alter_job(j.job_id, config => jsonb_set(j.config, :path, to_jsonb(CAST(:value AS interval))))
    FROM timescaledb_information.jobs j
    WHERE j.hypertable_schema = 'public' AND j.hypertable_name = :relation AND j.proc_name = :proc
    """
).bindparams(sa.bindparam("path", type_=ARRAY(sa.Text)))
_ALTER_SCHEDULE = sa.text(
    """
    SELECT alter_job(j.job_id, schedule_interval => CAST(:value AS interval))
    FROM timescaledb_information.jobs j
    WHERE j.hypertable_schema = 'public' AND j.hypertable_name = :relation AND j.proc_name = :proc
    """
)
_ADD_RETENTION = sa.text("SELECT add_retention_policy(CAST(:relation AS regclass), drop_after => :value)")
_ADD_COMPRESSION = sa.text("SELECT add_compression_policy(CAST(:relation AS regclass), compress_after => :value)")
_ADD_REFRESH = sa.text(
    "SELECT add_continuous_aggregate_policy(CAST(:relation AS regclass), start_offset => :start,"
    " end_offset => :end, schedule_interval => :every)"
)
_UPSERT_RETENTION_SETTING = sa.text(
    """
    INSERT INTO retention_settings (hypertable_name, drop_after) VALUES (:relation, :value)
    ON CONFLICT (hypertable_name) DO UPDATE SET drop_after = EXCLUDED.drop_after, updated_at = now()
    """
)

# (setting, policy proc, config key, on the rollup?) for the settings that map to one config key.
_CONFIG_SETTINGS = (
    ("raw_retention", POLICY_RETENTION, "drop_after", False),
    ("compress_after", POLICY_COMPRESSION, "compress_after", False),
    ("rollup_retention", POLICY_RETENTION, "drop_after", True),
    ("refresh_start", POLICY_REFRESH, "start_offset", True),
    ("refresh_end", POLICY_REFRESH, "end_offset", True),
)


@dataclass(frozen=True)
class SettingChange:
    """One setting of one relation, before and after."""

    relation: str
    setting: str
    before: timedelta | None
    after: timedelta


@dataclass(frozen=True)
class PolicyPlan:
    """The windows before and after a change, and the individual changes (empty: nothing to do)."""

    before: list[Windows]
    after: list[Windows]
    changes: list[SettingChange] = field(default_factory=list)


def plan_change(conn: Connection, info: EditionInfo, change: PolicyChange, *, max_reading_age: timedelta) -> PolicyPlan:
    """Check `change` against the settings in force; raises PolicyUnavailable or PolicyRefused."""
    wanted = change.as_dict()
    if not info.community:
        unavailable = [f"{FLAGS[k]}: {COMMUNITY_ONLY[k]}" for k in wanted if k in COMMUNITY_ONLY]
        if unavailable:
            raise PolicyUnavailable("; ".join(unavailable))
    before = current_windows(conn, info)
    after = [change.applied_to(w) for w in before]
    problems = [p for w in after for p in check_windows(w, community=info.community, max_reading_age=max_reading_age)]
    if problems:
        raise PolicyRefused(refusal_reasons(problems))
    changes = []
    for old, new in zip(before, after, strict=True):
        for setting, value in wanted.items():
            if getattr(old, setting) != value:
                on_rollup = setting not in ("raw_retention", "compress_after")
                relation = new.rollup if on_rollup else new.hypertable
                changes.append(SettingChange(relation, setting, getattr(old, setting), value))
    return PolicyPlan(before=before, after=after, changes=changes)


def apply_plan(conn: Connection, info: EditionInfo, plan: PolicyPlan) -> None:
    """Write `plan` in the caller's transaction: alter_job / add_*_policy on Community, retention_settings
    on Apache. A policy TimescaleDB refuses raises (and the caller's transaction rolls everything back)."""
    if not info.community:
        for c in plan.changes:
            if c.relation not in RETENTION_HYPERTABLES:  # only raw retention reaches here (plan_change)
                raise PolicyUnavailable(f"{c.setting} on {c.relation}")
            conn.execute(_UPSERT_RETENTION_SETTING, {"relation": c.relation, "value": c.after})
        return
    jobs = policy_jobs(conn)
    by_key = {(c.relation, c.setting): c for c in plan.changes}
    for new in plan.after:
        for setting, proc, key, on_rollup in _CONFIG_SETTINGS:
            relation = new.rollup if on_rollup else new.hypertable
            change = by_key.get((relation, setting))
            if change is None:
                continue
            if find_job(jobs, proc, relation) is not None:
                conn.execute(_ALTER_CONFIG, {"path": [key], "value": change.after, "relation": relation, "proc": proc})
            elif proc == POLICY_RETENTION:
                conn.execute(_ADD_RETENTION, {"relation": relation, "value": change.after})
            elif proc == POLICY_COMPRESSION:
                conn.execute(_ADD_COMPRESSION, {"relation": relation, "value": change.after})
        every = by_key.get((new.rollup, "refresh_every"))
        refresh_changed = any((new.rollup, s) in by_key for s in ("refresh_start", "refresh_end", "refresh_every"))
        if find_job(jobs, POLICY_REFRESH, new.rollup) is not None:
            if every is not None:
                conn.execute(_ALTER_SCHEDULE, {"value": every.after, "relation": new.rollup, "proc": POLICY_REFRESH})
        elif refresh_changed:
            if None in (new.refresh_start, new.refresh_end, new.refresh_every):
                raise PolicyRefused(
                    [f"{new.rollup} has no refresh policy: give --refresh-start, --refresh-end and --refresh-every"]
                )
            conn.execute(
                _ADD_REFRESH,
                {
                    "relation": new.rollup,
                    "start": new.refresh_start,
                    "end": new.refresh_end,
                    "every": new.refresh_every,
                },
            )


# --- the Apache retention job's statement --------------------------------------------------------------------

# drop_chunks removes only chunks that end before the cutoff: a chunk holding any row younger than
# `drop_after` is kept whole. lock_timeout: dropping a chunk needs an exclusive lock on it; waiting behind a
# long query would queue every reader and writer of that chunk behind us, so give up and retry next run.
_LOCK_TIMEOUT = sa.text("SET LOCAL lock_timeout = '5s'")
_DROP_CHUNKS = sa.text(
    "SELECT CAST(c AS text) AS chunk FROM drop_chunks(CAST(:relation AS regclass),"
    " older_than => CAST(:cutoff AS timestamptz)) AS c"
)
_NOW = sa.text("SELECT now()")


@dataclass(frozen=True)
class DroppedChunks:
    """What one retention pass did to one hypertable."""

    hypertable: str
    drop_after: timedelta
    cutoff: datetime
    chunks: tuple[str, ...]


def drop_expired_chunks(conn: Connection, hypertable: str, drop_after: timedelta) -> DroppedChunks:
    """Drop the chunks of `hypertable` that hold only rows older than now() - drop_after (caller's transaction)."""
    if hypertable not in RETENTION_HYPERTABLES:
        raise ValueError(f"no retention for {hypertable!r}")
    conn.execute(_LOCK_TIMEOUT)
    cutoff = conn.execute(_NOW).scalar_one() - drop_after
    chunks = tuple(conn.execute(_DROP_CHUNKS, {"relation": hypertable, "cutoff": cutoff}).scalars())
    return DroppedChunks(hypertable=hypertable, drop_after=drop_after, cutoff=cutoff, chunks=chunks)


def as_jsonable(value: Any) -> Any:
    """Intervals in parse_interval's syntax, datetimes as ISO strings, containers recursively."""
    if isinstance(value, timedelta):
        return format_interval(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: as_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_jsonable(v) for v in value]
    return value
