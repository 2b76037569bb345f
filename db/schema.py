"""Tables of the platform as SQLAlchemy Core metadata.

The migrations in db/migrations create these (plus the TimescaleDB objects Core cannot describe: hypertables,
continuous aggregates, policies); `fleet db check` / `alembic check` compares the two so they cannot drift.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, ExcludeConstraint

#: Longest device id accepted (API validation uses the same bound).
DEVICE_ID_MAX_LENGTH = 64

metadata = sa.MetaData(
    naming_convention={
        "uq": "%(table_name)s_%(column_0_N_name)s_key",
        "ck": "%(table_name)s_%(constraint_name)s_check",
        "pk": "%(table_name)s_pkey",
        "fk": "%(table_name)s_%(column_0_name)s_fkey",
    }
)


def _device_id(name: str) -> sa.Column[str]:
    return sa.Column(name, sa.Text, nullable=False)


def _device_id_check(name: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(f"char_length({name}) BETWEEN 1 AND {DEVICE_ID_MAX_LENGTH}", name=f"{name}_length")


# History: one row per (device, recorded_at). Hypertables partitioned by recorded_at in 1-day chunks; the
# primary key makes a retried reading a no-op (INSERT ... ON CONFLICT DO NOTHING).
meter_readings = sa.Table(
    "meter_readings",
    metadata,
    _device_id("meter_id"),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    # Energy of the reporting interval (kWh in that minute), not a running counter.
    sa.Column("kwh_consumed_ac", sa.Float(precision=53), nullable=False),
    sa.Column("voltage", sa.Float(precision=53), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("meter_id", "recorded_at"),
    sa.CheckConstraint("kwh_consumed_ac >= 0", name="kwh_consumed_ac_nonnegative"),
    _device_id_check("meter_id"),
    sa.Index("meter_readings_recorded_at_idx", sa.text("recorded_at DESC")),
)

vehicle_readings = sa.Table(
    "vehicle_readings",
    metadata,
    _device_id("vehicle_id"),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("soc", sa.Float(precision=53), nullable=False),
    sa.Column("kwh_delivered_dc", sa.Float(precision=53), nullable=False),
    sa.Column("battery_temp", sa.Float(precision=53), nullable=False),
    sa.Column("is_charging", sa.Boolean, nullable=True),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("vehicle_id", "recorded_at"),
    sa.CheckConstraint("kwh_delivered_dc >= 0", name="kwh_delivered_dc_nonnegative"),
    sa.CheckConstraint("soc BETWEEN 0 AND 100", name="soc_range"),
    _device_id_check("vehicle_id"),
    sa.Index("vehicle_readings_recorded_at_idx", sa.text("recorded_at DESC")),
)

# Current state: one row per device, upserted with the history insert. `recorded_at` is the reading's
# time; an upsert only wins when it is newer, so a late reading never moves state backwards.
meters_current = sa.Table(
    "meters_current",
    metadata,
    _device_id("meter_id"),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("kwh_consumed_ac", sa.Float(precision=53), nullable=False),
    sa.Column("voltage", sa.Float(precision=53), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("meter_id"),
    sa.Index("meters_current_recorded_at_idx", "recorded_at"),
)

vehicles_current = sa.Table(
    "vehicles_current",
    metadata,
    _device_id("vehicle_id"),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("soc", sa.Float(precision=53), nullable=False),
    sa.Column("kwh_delivered_dc", sa.Float(precision=53), nullable=False),
    sa.Column("battery_temp", sa.Float(precision=53), nullable=False),
    sa.Column("is_charging", sa.Boolean, nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("vehicle_id"),
    sa.Index("vehicles_current_recorded_at_idx", "recorded_at"),
    sa.Index("vehicles_current_soc_idx", "soc"),
)

# Which meter feeds which vehicle's charger, and when. A re-map closes the open row (valid_to) and opens a
# new one, so the past keeps its meter; the exclusion constraint makes overlapping validity impossible.
vehicle_meter_mapping = sa.Table(
    "vehicle_meter_mapping",
    metadata,
    _device_id("vehicle_id"),
    _device_id("meter_id"),
    sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
    sa.Column("valid_to", sa.DateTime(timezone=True), nullable=True),  # NULL: still in effect
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("vehicle_id", "valid_from"),
    sa.CheckConstraint("valid_to IS NULL OR valid_to > valid_from", name="validity_order"),
    ExcludeConstraint(
        ("vehicle_id", "="),
        (sa.text("tstzrange(valid_from, valid_to)"), "&&"),
        name="vehicle_meter_mapping_no_overlap",
        using="gist",
    ),
    sa.Index("vehicle_meter_mapping_meter_id_idx", "meter_id", "valid_from"),
)

# Correlation quality per vehicle and closed hour (db/correlation.py), kept by `fleet jobs run` on the Community
# edition so that closed hours of the analytics' `correlation` block and the correlation alerts never read raw
# history. `offsets` are the seconds from each of the hour's vehicle readings to its mapped meter's nearest reading
# (within the search distance), sorted: a median over any set of hours is exact from them. A hypertable
# (30-day chunks) so that old hours go by whole chunks.
vehicle_correlation_1h = sa.Table(
    "vehicle_correlation_1h",
    metadata,
    _device_id("vehicle_id"),
    sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
    sa.Column("vehicle_readings", sa.Integer, nullable=False),
    sa.Column("mapped_readings", sa.Integer, nullable=False),
    sa.Column("matched_readings", sa.Integer, nullable=False),
    sa.Column("offsets", ARRAY(sa.Float(precision=53)), nullable=False),
    sa.PrimaryKeyConstraint("vehicle_id", "bucket"),
)

# Vehicle hours below the watermark whose inputs changed after they were materialised (a late vehicle or meter
# reading, a re-map reaching into the past): the next correlation refresh recomputes them. Written by the ingest
# statement and by re-maps; emptied by the refresh.
correlation_invalidations = sa.Table(
    "correlation_invalidations",
    metadata,
    _device_id("vehicle_id"),
    sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("vehicle_id", "bucket"),
)

# One row: every hour before `materialized_until` is in vehicle_correlation_1h (a vehicle hour without a row had no
# reading); hours from it on are computed from raw readings at query time.
correlation_watermark = sa.Table(
    "correlation_watermark",
    metadata,
    sa.Column("id", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("materialized_until", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("id"),
    sa.CheckConstraint("id", name="single_row"),
)

#: Roles an API key can have; admin implicitly has every other role.
API_KEY_ROLES = ("device", "read", "admin")
#: Longest API key name (a label for operators: which device, dashboard or person holds the key).
API_KEY_NAME_MAX_LENGTH = 200

# API keys. Only a SHA-256 hash of the key is stored: keys are 32 random bytes (secrets.token_urlsafe), so
# a fast unsalted hash is enough (no dictionary or brute force can reach 256 bits of entropy) and lets a
# request find its key by an indexed equality lookup. key_prefix is the key's first characters, for display.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("key_prefix", sa.Text, nullable=False),
    sa.Column("key_hash", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("device_id", sa.Text, nullable=True),  # a device key may be bound to one device id
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),  # NULL: active
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("key_hash"),
    sa.CheckConstraint(f"role IN {API_KEY_ROLES!r}", name="role"),
    sa.CheckConstraint("device_id IS NULL OR role = 'device'", name="device_binding"),
    sa.CheckConstraint(
        f"device_id IS NULL OR char_length(device_id) BETWEEN 1 AND {DEVICE_ID_MAX_LENGTH}", name="device_id_length"
    ),
    sa.CheckConstraint(f"char_length(name) BETWEEN 1 AND {API_KEY_NAME_MAX_LENGTH}", name="name_length"),
)

#: What an alert is about; see db/migrations/versions/0004_alerts.py. These kinds are evaluated by the alert scan
#: (db/alerts.py `scan`); POLICY_ALERT_KIND (device_type `job`, migration 0008) by `evaluate_policy_alerts`.
ALERT_KINDS = ("low_efficiency", "correlation_lost", "silent_device")
#: A TimescaleDB policy job (or the Apache edition's retention job) whose last run failed; device_id: the job.
POLICY_ALERT_KIND = "policy_failed"
ALL_ALERT_KINDS = (*ALERT_KINDS, POLICY_ALERT_KIND)
ALERT_DEVICE_TYPES = ("meter", "vehicle", "job")

# Alerts: one open alert per device and kind (partial unique index), resolved rather than deleted.
alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("device_type", sa.Text, nullable=False),
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),  # NULL: open
    sa.Column("details", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.PrimaryKeyConstraint("id"),
    sa.CheckConstraint(f"kind IN {ALL_ALERT_KINDS!r}", name="kind"),
    sa.CheckConstraint(f"device_type IN {ALERT_DEVICE_TYPES!r}", name="device_type"),
    sa.CheckConstraint(f"char_length(device_id) BETWEEN 1 AND {DEVICE_ID_MAX_LENGTH}", name="device_id_length"),
    sa.CheckConstraint("resolved_at IS NULL OR resolved_at >= opened_at", name="resolution"),
    sa.Index(
        "alerts_one_open_per_device_and_kind",
        "kind",
        "device_type",
        "device_id",
        unique=True,
        postgresql_where=sa.text("resolved_at IS NULL"),
    ),
    sa.Index("alerts_opened_at_idx", "opened_at"),
)

#: Raw hypertables whose retention the project's own job enforces on the Apache edition.
RETENTION_HYPERTABLES = ("meter_readings", "vehicle_readings")
#: Results a scheduled job's last run can have; see jobs/scheduler.py.
JOB_RESULTS = ("running", "succeeded", "failed")

# Apache edition only (no retention policies there): how long `fleet jobs run` keeps each raw hypertable's
# chunks. Empty on Community, where TimescaleDB's retention policies are the source of truth.
retention_settings = sa.Table(
    "retention_settings",
    metadata,
    sa.Column("hypertable_name", sa.Text, nullable=False),
    sa.Column("drop_after", sa.Interval, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("hypertable_name"),
    sa.CheckConstraint(f"hypertable_name IN {RETENTION_HYPERTABLES!r}", name="hypertable_name"),
    sa.CheckConstraint("drop_after > INTERVAL '0'", name="drop_after_positive"),
)

# One row per scheduled job: its last run, and a lease. A scheduler claims a due run with a conditional UPDATE
# of this row (see jobs/scheduler.py), so two schedulers never run the same due job twice.
job_runs = sa.Table(
    "job_runs",
    metadata,
    sa.Column("job_name", sa.Text, nullable=False),
    sa.Column("holder", sa.Text, nullable=True),  # host:pid:token of the scheduler that ran it last
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),  # NULL: never ran
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),  # set while a run is in progress
    sa.Column("result", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("stats", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("run_count", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("failure_count", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.PrimaryKeyConstraint("job_name"),
    sa.CheckConstraint(f"result IN {JOB_RESULTS!r}", name="result"),
)

#: Why `fleet jobs run` runs a TimescaleDB job instead of TimescaleDB (migration 0008; db/timescaledb_jobs.py).
TAKEOVER_REASONS = ("scheduler_absent", "scheduler_failing", "job_failed")

# One row per TimescaleDB job that `fleet jobs run` runs (with CALL run_job) and has paused in TimescaleDB
# (alter_job scheduled => false): tells that pause apart from an operator's, and says why and since when.
timescaledb_job_takeovers = sa.Table(
    "timescaledb_job_takeovers",
    metadata,
    sa.Column("job_id", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("detail", sa.Text, nullable=True),
    sa.Column("taken_by", sa.Text, nullable=True),  # holder of the scheduler that took it over
    sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.PrimaryKeyConstraint("job_id"),
    sa.CheckConstraint(f"reason IN {TAKEOVER_REASONS!r}", name="reason"),
)


# Sign-in sessions of the operator page (migration 0010; db/ui_sessions.py): the hash of the cookie's token, the
# API key signed in with, the session's CSRF token, and when it ends.
ui_sessions = sa.Table(
    "ui_sessions",
    metadata,
    sa.Column("token_hash", sa.Text, nullable=False),
    sa.Column("key_id", sa.BigInteger, sa.ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=False),
    sa.Column("csrf_token", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("token_hash"),
    sa.CheckConstraint("expires_at > created_at", name="lifetime"),
    sa.Index("ui_sessions_expires_at_idx", "expires_at"),
    sa.Index("ui_sessions_key_id_idx", "key_id"),
)
