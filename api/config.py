"""Typed settings from the environment: the one place every variable the platform reads is defined.

The API, the `fleet` CLI and the jobs all build their configuration here, once, with `Settings.from_env()`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar
from urllib.parse import urlsplit

import limits
from limits.storage import SCHEMES as RATE_LIMIT_STORAGE_SCHEMES

T = TypeVar("T")


class ConfigError(ValueError):
    """A variable is set to something the platform cannot use."""


@dataclass(frozen=True)
class EnvVar(Generic[T]):
    """One environment variable: its name, how to parse it, and its default when unset."""

    name: str
    parse: Callable[[str], T]
    default: T | None

    def read(self, environ: Mapping[str, str]) -> T | None:
        raw = environ.get(self.name)
        if raw is None or raw == "":
            return self.default
        try:
            return self.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{self.name}={raw!r}: {exc}") from None


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 < value < 65536:
        raise ValueError("must be a TCP port (1-65535)")
    return value


def _seconds(raw: str) -> float:
    value = float(raw)
    if not 0 <= value < float("inf"):  # also rejects nan
        raise ValueError("must be a finite number of seconds >= 0")
    return value


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0 < value <= 1:  # also rejects nan
        raise ValueError("must be a ratio in (0, 1], e.g. 0.85")
    return value


def _days(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 3660:
        raise ValueError("must be a whole number of days, 1 to 3660")
    return value


def _period(raw: str) -> float:
    value = float(raw)
    if not 1 <= value < float("inf"):  # also rejects nan
        raise ValueError("must be a finite number of seconds >= 1")
    return value


def _at_least_one(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be a whole number >= 1")
    return value


def _hours(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 744:
        raise ValueError("must be a whole number of hours, 1 to 744 (31 days)")
    return value


def _kwh(raw: str) -> float:
    value = float(raw)
    if not 0 <= value < float("inf"):  # also rejects nan
        raise ValueError("must be a finite number of kWh >= 0")
    return value


def _rate_limit(raw: str) -> str | None:
    if raw.strip().lower() == "off":
        return None
    try:
        limits.parse_many(raw)
    except ValueError:
        raise ValueError("must be a rate like '6000/minute' (several: '6000/minute;200/second'), or 'off'") from None
    return raw.strip()


def _rate_limit_storage(raw: str) -> str:
    scheme = urlsplit(raw).scheme
    # Flask-Limiter is synchronous: the async+ variants of the same backends do not apply.
    if scheme not in RATE_LIMIT_STORAGE_SCHEMES or scheme.startswith("async+"):
        raise ValueError("must be a limits storage URI such as memory:// or redis://host:6379")
    return raw


def _log_level(raw: str) -> str:
    value = raw.strip().upper()
    if not isinstance(logging.getLevelName(value), int):
        raise ValueError("must be a logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value


#: Who may read GET /metrics.
METRICS_ACCESS = ("off", "public", "read", "admin")


def _metrics_access(raw: str) -> str:
    value = raw.strip().lower()
    if value not in METRICS_ACCESS:
        raise ValueError(f"must be one of {', '.join(METRICS_ACCESS)}")
    return value


def _database_url(raw: str) -> str:
    if not raw.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        raise ValueError("must be a postgresql:// URL")
    # One dialect everywhere: psycopg 3.
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if raw.startswith(prefix):
            return "postgresql+psycopg://" + raw[len(prefix) :]
    return raw


#: PostgreSQL/TimescaleDB URL. Unset: the embedded engine at FLEET_ENGINE_HOST:FLEET_ENGINE_PORT.
#: TLS to the database is configured in the URL itself (e.g. ``?sslmode=verify-full&sslrootcert=...``).
DATABASE_URL = EnvVar("DATABASE_URL", _database_url, None)
#: Optional PostgreSQL URL of a streaming replica (hot standby) of DATABASE_URL. Set: device status, device
#: listings, analytics and alerts are read there (a second pool of FLEET_DB_POOL_SIZE connections per process,
#: each in read-only mode, so a write sent there fails even if the URL names a primary); ingest, mappings, API
#: key lookups (a revoked key must stop working at once, not after the replica catches up), /ready and the CLI
#: stay on DATABASE_URL. Reads lag the primary by the replica's replay delay. Unset: everything on DATABASE_URL.
DATABASE_READ_URL = EnvVar("DATABASE_READ_URL", _database_url, None)
#: Connections kept per process. 0 opens a connection per unit of work and closes it afterwards, which is
#: what the embedded engine wants: it serves one connection at a time, and an idle pooled connection would
#: lock every other client (CLI, migrations, analysts) out.
FLEET_DB_POOL_SIZE = EnvVar("FLEET_DB_POOL_SIZE", _positive_int, 5)
#: Seconds to wait for a pooled connection (and for the embedded engine's single connection slot).
FLEET_DB_POOL_TIMEOUT = EnvVar("FLEET_DB_POOL_TIMEOUT", float, 30.0)
#: Seconds to wait for the database to accept a connection; 0 waits forever. Unset: 3 s for a pooled engine
#: (FLEET_DB_POOL_SIZE > 0: a PostgreSQL server, where a connect takes milliseconds and a longer one means the
#: server is unreachable: a request then gets its 503 within this bound instead of holding a worker thread
#: for a minute), 60 s for an engine that connects per unit of work (FLEET_DB_POOL_SIZE=0, and the CLI: the
#: embedded engine queues its clients for up to 60 s). A pooled engine also fails fast while the database is
#: down: after a failed connect, one thread at a time tries again and the others get their 503 at once.
FLEET_DB_CONNECT_TIMEOUT = EnvVar("FLEET_DB_CONNECT_TIMEOUT", _positive_int, None)
#: Where the embedded engine keeps its data, log and state file.
FLEET_ENGINE_DIR = EnvVar("FLEET_ENGINE_DIR", Path, Path("var/engine"))
#: Loopback address the embedded engine listens on (it has no authentication: keep it on loopback).
FLEET_ENGINE_HOST = EnvVar("FLEET_ENGINE_HOST", str, "127.0.0.1")
#: PostgreSQL wire-protocol port of the embedded engine.
FLEET_ENGINE_PORT = EnvVar("FLEET_ENGINE_PORT", _port, 5499)
#: HTTP health port of the embedded engine; unset: FLEET_ENGINE_PORT + 1.
FLEET_ENGINE_HEALTH_PORT = EnvVar("FLEET_ENGINE_HEALTH_PORT", _port, None)
#: Python logging level name for the API, CLI and jobs.
FLEET_LOG_LEVEL = EnvVar("FLEET_LOG_LEVEL", _log_level, "INFO")
#: Who may read the Prometheus metrics at GET /metrics: `public` (no key), `read` or `admin` (an API key with
#: that role, or admin), `off` (no such route). They hold no secret, only operational counts (requests,
#: readings, pool use): public suits an API on loopback or an internal network; behind a public address use
#: read/admin (Prometheus sends the key as an X-API-Key http_header) or block /metrics at the proxy.
FLEET_METRICS = EnvVar("FLEET_METRICS", _metrics_access, "public")
#: Seconds an API key lookup is cached in each API process (every ingest request needs one). A revoked key
#: keeps working for up to this long in a process that saw it recently; 0 looks every request up.
FLEET_KEY_CACHE_SECONDS = EnvVar("FLEET_KEY_CACHE_SECONDS", _seconds, 5.0)
#: Requests allowed per API key (per client address for requests without a valid key), across all endpoints
#: except /health, /ready and /metrics; limits syntax, several separated by ';'. 'off' disables rate limiting.
#: A key shared by many devices needs a limit to match: 10,000 meters on one key send 10,000 readings a minute.
FLEET_RATE_LIMIT = EnvVar("FLEET_RATE_LIMIT", _rate_limit, "6000/minute")
#: Where rate-limit counters live. memory:// counts per process (each gunicorn worker has its own budget);
#: redis://host:6379 shares the counters between workers and hosts (needs the `redis` package installed).
FLEET_RATE_LIMIT_STORAGE_URI = EnvVar("FLEET_RATE_LIMIT_STORAGE_URI", _rate_limit_storage, "memory://")
#: Admission control (gunicorn, api/admission.py): milliseconds an ingest request may wait for a worker thread;
#: one that waited longer is answered 503 with Retry-After at once, before any work, so that an overload is shed
#: fast instead of queueing past every client's timeout. 0: no bound.
FLEET_INGEST_MAX_QUEUE_MS = EnvVar("FLEET_INGEST_MAX_QUEUE_MS", _positive_int, 1000)
#: Admission control: the ingest bound while a worker's queue stands, i.e. no request got a thread within this
#: many milliseconds for FLEET_INGEST_MAX_QUEUE_MS (a sustained overload), until the queue drains again: the
#: queue, and with it the wait of the reads behind ingest, is then held near this. 0: off (the max bound always).
FLEET_INGEST_TARGET_QUEUE_MS = EnvVar("FLEET_INGEST_TARGET_QUEUE_MS", _positive_int, 250)
#: Admission control: the same bound for every other request but /health, /ready and /metrics (never shed).
#: Longer than ingest's, so that dashboards keep being served while ingest is shed. 0: no bound.
FLEET_READ_MAX_QUEUE_MS = EnvVar("FLEET_READ_MAX_QUEUE_MS", _positive_int, 5000)
#: Admission control: a shed request's Retry-After is a whole number of seconds drawn at random from
#: [base, 3 x base], so that the devices told to come back do not all come back at once. base starts at this and
#: doubles every 2 s while a worker sheds more than 10 % of its ingest (api/admission.py, RetryAfter).
FLEET_SHED_RETRY_AFTER_S = EnvVar("FLEET_SHED_RETRY_AFTER_S", _at_least_one, 5)
#: Admission control: the longest Retry-After sent (base grows to a third of it). Devices must be able to wait
#: this long: under a sustained overload the excess devices have to stay away for the overload to end.
FLEET_SHED_RETRY_AFTER_MAX_S = EnvVar("FLEET_SHED_RETRY_AFTER_MAX_S", _at_least_one, 120)
#: Most readings one ingest request may carry (a batch from a gateway or a backfill).
FLEET_MAX_BATCH = EnvVar("FLEET_MAX_BATCH", _positive_int, 1000)
#: Largest ingest request body, bytes; larger bodies get 413 before they are parsed.
FLEET_MAX_BODY_BYTES = EnvVar("FLEET_MAX_BODY_BYTES", _positive_int, 1024 * 1024)
#: How far in the future (device clock ahead of ours) a reading's timestamp may be, seconds.
FLEET_CLOCK_SKEW_SECONDS = EnvVar("FLEET_CLOCK_SKEW_SECONDS", _positive_int, 300)
#: Oldest reading accepted, days. Keep it within the rollups' refresh window (30 days): older readings
#: would be stored but never reach the hourly aggregates.
FLEET_MAX_READING_AGE_DAYS = EnvVar("FLEET_MAX_READING_AGE_DAYS", _positive_int, 30)

#: Efficiency (DC delivered / AC consumed) below which a vehicle is flagged in the fleet view and alerted on.
FLEET_EFFICIENCY_ALERT_THRESHOLD = EnvVar("FLEET_EFFICIENCY_ALERT_THRESHOLD", _fraction, 0.85)
#: Alerts (`fleet alerts scan`, the scheduler): complete hours over which efficiency is judged.
FLEET_ALERT_WINDOW_HOURS = EnvVar("FLEET_ALERT_WINDOW_HOURS", _hours, 24)
#: Alerts: complete hours over which vehicle/meter correlation is judged. Short, because it reads the raw
#: readings (1.2M an hour for 10,000 vehicles and their meters), not the hourly rollups.
FLEET_CORRELATION_WINDOW_HOURS = EnvVar("FLEET_CORRELATION_WINDOW_HOURS", _hours, 1)
#: Alerts: share of a vehicle's readings that must have a reading of its mapped meter within 5 s; below it
#: (or with a median clock offset beyond 5 s) the pair's correlation is lost.
FLEET_CORRELATION_MIN_MATCH_RATE = EnvVar("FLEET_CORRELATION_MIN_MATCH_RATE", _fraction, 0.5)
#: Alerts: readings a vehicle (and, for efficiency, its meter) needs in a window to be judged at all; with
#: fewer, its efficiency and correlation alerts are neither opened nor resolved.
FLEET_ALERT_MIN_READINGS = EnvVar("FLEET_ALERT_MIN_READINGS", _at_least_one, 30)
#: Alerts: AC kWh a vehicle's meter must have drawn in the window for its efficiency to be judged (an idle
#: vehicle whose charger draws only standby power is not "0 % efficient").
FLEET_ALERT_MIN_AC_KWH = EnvVar("FLEET_ALERT_MIN_AC_KWH", _kwh, 1.0)
#: Alerts: minutes without a reading (by the database's clock) after which a meter or vehicle is silent.
FLEET_SILENT_MINUTES = EnvVar("FLEET_SILENT_MINUTES", _at_least_one, 15)
#: Longest window one analytics request may cover, days (the rollups keep 3 years; a bound keeps every
#: response small and every query short).
FLEET_ANALYTICS_MAX_WINDOW_DAYS = EnvVar("FLEET_ANALYTICS_MAX_WINDOW_DAYS", _days, 31)

#: `fleet jobs run`: seconds between two looks for due jobs (a job runs at most this late).
FLEET_JOBS_TICK_SECONDS = EnvVar("FLEET_JOBS_TICK_SECONDS", _period, 10.0)
#: `fleet jobs run`: seconds a claimed run keeps other scheduler copies off that job on an engine without
#: advisory locks held across units of work (the embedded engine); also how long a run left behind by a
#: crashed scheduler blocks that job there. Keep it above the longest run of any job.
FLEET_JOBS_LEASE_SECONDS = EnvVar("FLEET_JOBS_LEASE_SECONDS", _period, 900.0)
#: `fleet jobs run`, Apache edition: seconds between two runs of the project's retention job (drop_chunks).
FLEET_JOBS_RETENTION_EVERY_SECONDS = EnvVar("FLEET_JOBS_RETENTION_EVERY_SECONDS", _period, 3600.0)
#: `fleet jobs run`: seconds between two alert evaluations.
FLEET_JOBS_ALERTS_EVERY_SECONDS = EnvVar("FLEET_JOBS_ALERTS_EVERY_SECONDS", _period, 60.0)
#: `fleet jobs run`, Community edition: seconds between two runs of the correlation rollup job (closed hours are
#: materialised 5 minutes after they end; late readings are recomputed on the next run).
FLEET_JOBS_CORRELATION_EVERY_SECONDS = EnvVar("FLEET_JOBS_CORRELATION_EVERY_SECONDS", _period, 300.0)
#: `fleet jobs run`, embedded engine only (it has no checkpointer): seconds between two CHECKPOINTs.
FLEET_JOBS_CHECKPOINT_EVERY_SECONDS = EnvVar("FLEET_JOBS_CHECKPOINT_EVERY_SECONDS", _period, 300.0)


def embedded_database_url(host: str, port: int) -> str:
    """The URL of the embedded engine (its user and database names are accepted and ignored)."""
    return f"postgresql+psycopg://postgres:postgres@{host}:{port}/postgres?sslmode=disable"


@dataclass(frozen=True)
class Settings:
    """Everything the platform reads from its environment, parsed and checked."""

    database_url: str
    database_read_url: str | None  # None: reads go to database_url
    db_pool_size: int
    db_pool_timeout: float
    db_connect_timeout: int | None  # None: make_engine's default for the kind of engine
    engine_dir: Path
    engine_host: str
    engine_port: int
    engine_health_port: int
    log_level: str
    max_batch: int
    max_body_bytes: int
    clock_skew_seconds: int
    max_reading_age_days: int
    key_cache_seconds: float
    rate_limit: str | None  # None: rate limiting off
    rate_limit_storage_uri: str
    ingest_max_queue_ms: int  # 0: no bound
    ingest_target_queue_ms: int
    read_max_queue_ms: int  # 0: no bound
    shed_retry_after_s: int
    shed_retry_after_max_s: int
    efficiency_alert_threshold: float
    alert_window_hours: int
    correlation_window_hours: int
    correlation_min_match_rate: float
    alert_min_readings: int
    alert_min_ac_kwh: float
    silent_minutes: int
    analytics_max_window_days: int
    metrics_access: str  # off | public | read | admin
    jobs_tick_seconds: float
    jobs_lease_seconds: float
    jobs_retention_every_seconds: float
    jobs_alerts_every_seconds: float
    jobs_checkpoint_every_seconds: float
    jobs_correlation_every_seconds: float

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the settings; raises ConfigError naming the bad variable."""
        env = os.environ if environ is None else environ
        engine_host = FLEET_ENGINE_HOST.read(env)
        engine_port = FLEET_ENGINE_PORT.read(env)
        assert engine_host is not None and engine_port is not None
        health_port = FLEET_ENGINE_HEALTH_PORT.read(env) or engine_port + 1
        return cls(
            database_url=DATABASE_URL.read(env) or embedded_database_url(engine_host, engine_port),
            database_read_url=DATABASE_READ_URL.read(env),
            db_pool_size=_required(FLEET_DB_POOL_SIZE, env),
            db_pool_timeout=_required(FLEET_DB_POOL_TIMEOUT, env),
            db_connect_timeout=FLEET_DB_CONNECT_TIMEOUT.read(env),
            engine_dir=_required(FLEET_ENGINE_DIR, env),
            engine_host=engine_host,
            engine_port=engine_port,
            engine_health_port=health_port,
            log_level=_required(FLEET_LOG_LEVEL, env),
            max_batch=_required(FLEET_MAX_BATCH, env),
            max_body_bytes=_required(FLEET_MAX_BODY_BYTES, env),
            clock_skew_seconds=_required(FLEET_CLOCK_SKEW_SECONDS, env),
            max_reading_age_days=_required(FLEET_MAX_READING_AGE_DAYS, env),
            key_cache_seconds=_required(FLEET_KEY_CACHE_SECONDS, env),
            rate_limit=FLEET_RATE_LIMIT.read(env),
            rate_limit_storage_uri=_required(FLEET_RATE_LIMIT_STORAGE_URI, env),
            ingest_max_queue_ms=_required(FLEET_INGEST_MAX_QUEUE_MS, env),
            ingest_target_queue_ms=_required(FLEET_INGEST_TARGET_QUEUE_MS, env),
            read_max_queue_ms=_required(FLEET_READ_MAX_QUEUE_MS, env),
            shed_retry_after_s=_required(FLEET_SHED_RETRY_AFTER_S, env),
            shed_retry_after_max_s=_required(FLEET_SHED_RETRY_AFTER_MAX_S, env),
            efficiency_alert_threshold=_required(FLEET_EFFICIENCY_ALERT_THRESHOLD, env),
            alert_window_hours=_required(FLEET_ALERT_WINDOW_HOURS, env),
            correlation_window_hours=_required(FLEET_CORRELATION_WINDOW_HOURS, env),
            correlation_min_match_rate=_required(FLEET_CORRELATION_MIN_MATCH_RATE, env),
            alert_min_readings=_required(FLEET_ALERT_MIN_READINGS, env),
            alert_min_ac_kwh=_required(FLEET_ALERT_MIN_AC_KWH, env),
            silent_minutes=_required(FLEET_SILENT_MINUTES, env),
            analytics_max_window_days=_required(FLEET_ANALYTICS_MAX_WINDOW_DAYS, env),
            metrics_access=_required(FLEET_METRICS, env),
            jobs_tick_seconds=_required(FLEET_JOBS_TICK_SECONDS, env),
            jobs_lease_seconds=_required(FLEET_JOBS_LEASE_SECONDS, env),
            jobs_retention_every_seconds=_required(FLEET_JOBS_RETENTION_EVERY_SECONDS, env),
            jobs_alerts_every_seconds=_required(FLEET_JOBS_ALERTS_EVERY_SECONDS, env),
            jobs_checkpoint_every_seconds=_required(FLEET_JOBS_CHECKPOINT_EVERY_SECONDS, env),
            jobs_correlation_every_seconds=_required(FLEET_JOBS_CORRELATION_EVERY_SECONDS, env),
        )


def _required(var: EnvVar[T], env: Mapping[str, str]) -> T:
    value = var.read(env)
    assert value is not None, f"{var.name} has no default"
    return value
