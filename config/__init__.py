"""Every environment variable the platform reads, declared once: its name, default, parser and meaning.

The API, the `fleet` CLI, the jobs and `docker/gunicorn.conf.py` all read their configuration here, with
`Settings.from_env()`. Each field of `Settings` is one variable (`setting(...)`): there is no second list to keep
in step. The README's settings table is checked against these declarations (tests/unit/test_config.py).

This package imports neither Flask nor SQLAlchemy: the CLI and the jobs load it without loading the API.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import limits
from limits.storage import SCHEMES as RATE_LIMIT_STORAGE_SCHEMES  # type: ignore[attr-defined]  # public, not in __all__

T = TypeVar("T")


class ConfigError(ValueError):
    """A variable is set to something the platform cannot use."""


@dataclass(frozen=True)
class EnvVar(Generic[T]):
    """One environment variable: its name, how to parse it, its default when unset, and what it means.

    `default_text` is how the README writes a default that is not a plain value (one derived from another
    variable, or a default that depends on the engine); None: the default itself."""

    name: str
    parse: Callable[[str], T | None]  # None: a value that means "off" (FLEET_RATE_LIMIT=off)
    default: T | None
    doc: str
    default_text: str | None = None

    def read(self, environ: Mapping[str, str]) -> T | None:
        """The parsed value, or the default when the variable is unset or empty; ConfigError naming it."""
        raw = environ.get(self.name)
        if raw is None or raw == "":
            return self.default
        try:
            return self.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{self.name}={raw!r}: {exc}") from None


def setting(
    name: str, parse: Callable[[str], T | None], default: T | None, doc: str, *, default_text: str | None = None
) -> Any:
    """Declare a `Settings` field read from the environment variable `name`."""
    return field(metadata={"env": EnvVar(name, parse, default, " ".join(doc.split()), default_text)})


N = TypeVar("N", int, float)


def _in_range(
    cast: Callable[[str], N], low: float, high: float, error: str, *, above: bool = False
) -> Callable[[str], N]:
    """A parser of one number in [low, high] ((low, high] with `above`); `high` inf means any finite number.
    Comparisons with nan are false, so nan is refused too."""

    def parse(raw: str) -> N:
        value = cast(raw)
        if not ((low < value) if above else (low <= value)) or not (value <= high and value != math.inf):
            raise ValueError(error)
        return value

    return parse


_positive_int = _in_range(int, 0, math.inf, "must be >= 0")
_at_least_one = _in_range(int, 1, math.inf, "must be a whole number >= 1")
_port = _in_range(int, 1, 65535, "must be a TCP port (1-65535)")
_days = _in_range(int, 1, 3660, "must be a whole number of days, 1 to 3660")
_hours = _in_range(int, 1, 744, "must be a whole number of hours, 1 to 744 (31 days)")
_seconds = _in_range(float, 0, math.inf, "must be a finite number of seconds >= 0")
_period = _in_range(float, 1, math.inf, "must be a finite number of seconds >= 1")
_positive_seconds = _in_range(float, 0, math.inf, "must be a finite number of seconds > 0", above=True)
_fraction = _in_range(float, 0, 1, "must be a ratio in (0, 1], e.g. 0.85", above=True)
_kwh = _in_range(float, 0, math.inf, "must be a finite number of kWh >= 0")
_positive_kwh = _in_range(float, 0, math.inf, "must be a finite number of kWh > 0", above=True)


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


def _read_fallback(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("primary", "unavailable"):
        raise ValueError("must be primary or unavailable")
    return value


def _database_url(raw: str) -> str:
    if not raw.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        raise ValueError("must be a postgresql:// URL")
    # One dialect everywhere: psycopg 3.
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if raw.startswith(prefix):
            return "postgresql+psycopg://" + raw[len(prefix) :]
    return raw


def _on_off(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no"):
        return False
    raise ValueError("must be on or off")


def _bind(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must be HOST:PORT or unix:PATH")
    return value


#: Relative to the working directory, as `scripts/run.sh` and the README use it.
_DEFAULT_ENGINE_DIR = Path("var/engine")


def embedded_database_url(host: str, port: int) -> str:
    """The URL of the embedded engine (its user and database names are accepted and ignored)."""
    return f"postgresql+psycopg://postgres:postgres@{host}:{port}/postgres?sslmode=disable"


@dataclass(frozen=True)
class Settings:
    """Everything the platform reads from its environment, parsed and checked."""

    # --- database --------------------------------------------------------------------------------------------
    database_url: str = setting(
        "DATABASE_URL",
        _database_url,
        None,
        """PostgreSQL/TimescaleDB URL. Unset: the embedded engine at FLEET_ENGINE_HOST:FLEET_ENGINE_PORT. TLS to
        the database is configured in the URL itself (e.g. ?sslmode=verify-full&sslrootcert=...).""",
        default_text="the embedded engine at `FLEET_ENGINE_HOST:FLEET_ENGINE_PORT`",
    )
    database_read_url: str | None = setting(
        "DATABASE_READ_URL",
        _database_url,
        None,
        """Optional PostgreSQL URL of a streaming replica (hot standby) of DATABASE_URL. Set: device status, device
        listings, analytics and alerts are read there (a second pool of FLEET_DB_POOL_SIZE connections per
        process, each in read-only mode, so a write sent there fails even if the URL names a primary); ingest,
        mappings, API key lookups (a revoked key must stop working at once, not after the replica catches up),
        /ready and the CLI stay on DATABASE_URL. Reads lag the primary by the replica's replay delay.""",
        default_text="unset (everything on `DATABASE_URL`)",
    )
    read_replica_max_lag_s: float = setting(
        "FLEET_READ_REPLICA_MAX_LAG_S",
        _seconds,
        30.0,
        """With DATABASE_READ_URL: a replica whose replay is further behind than this many seconds is not read from
        until it catches up (api/read_routing.py).""",
    )
    read_replica_fallback: str = setting(
        "FLEET_READ_REPLICA_FALLBACK",
        _read_fallback,
        "primary",
        """With DATABASE_READ_URL, while the replica is down or lagging: `primary` reads from the primary (more
        load there, fresh data), `unavailable` answers reads 503 with Retry-After (the primary is kept for
        ingest).""",
    )
    read_replica_check_s: float = setting(
        "FLEET_READ_REPLICA_CHECK_S",
        _positive_seconds,
        1.0,
        "With DATABASE_READ_URL: seconds between two probes of the replica (reachable? replay lag?) per process.",
    )
    db_pool_size: int = setting(
        "FLEET_DB_POOL_SIZE",
        _positive_int,
        5,
        """Connections kept per process. 0 opens a connection per unit of work and closes it afterwards, which is
        what the embedded engine wants: it serves one connection at a time, and an idle pooled connection would
        lock every other client (CLI, migrations, analysts) out.""",
    )
    db_pool_timeout: float = setting(
        "FLEET_DB_POOL_TIMEOUT",
        _seconds,
        5.0,
        """Seconds a request waits for a pooled connection before it answers 503 (gunicorn's threads per worker
        are fewer than the pool's connections, so the API waits only when connections leak or hang).""",
    )
    db_connect_timeout: int | None = setting(
        "FLEET_DB_CONNECT_TIMEOUT",
        _positive_int,
        None,
        """Seconds to wait for the database to accept a connection; 0 waits forever. Unset: 3 s for a pooled
        engine (FLEET_DB_POOL_SIZE > 0: a PostgreSQL server, where a connect takes milliseconds and a longer one
        means the server is unreachable: a request then gets its 503 within this bound instead of holding a
        worker thread for a minute), 60 s for an engine that connects per unit of work (FLEET_DB_POOL_SIZE=0,
        and the CLI: the embedded engine queues its clients for up to 60 s). A pooled engine also fails fast
        while the database is down: after a failed connect, one thread at a time tries again and the others get
        their 503 at once.""",
        default_text="`3` with a pool, `60` without",
    )

    # --- bounded time per request class (db/deadlines.py) ----------------------------------------------------
    ingest_statement_timeout_ms: int = setting(
        "FLEET_INGEST_STATEMENT_TIMEOUT_MS",
        _positive_int,
        2000,
        """PostgreSQL statement_timeout of ingest (and API key lookups), milliseconds; the connections' default,
        so the ingest path pays nothing to set it. A statement cancelled by it answers 503 with Retry-After; a
        retried reading is stored once. 0: none.""",
    )
    ingest_lock_timeout_ms: int = setting(
        "FLEET_INGEST_LOCK_TIMEOUT_MS",
        _positive_int,
        1000,
        """lock_timeout of ingest, milliseconds: a write queued behind a lock (a hand-run migration holding a hot
        table) fails fast with 503 instead of queueing every device behind it. 0: none.""",
    )
    status_statement_timeout_ms: int = setting(
        "FLEET_STATUS_STATEMENT_TIMEOUT_MS",
        _positive_int,
        2000,
        "statement_timeout of device status and listings, and of /ready's probe, milliseconds. 0: none.",
    )
    status_lock_timeout_ms: int = setting(
        "FLEET_STATUS_LOCK_TIMEOUT_MS", _positive_int, 1000, "lock_timeout of status and listings, milliseconds."
    )
    analytics_statement_timeout_ms: int = setting(
        "FLEET_ANALYTICS_STATEMENT_TIMEOUT_MS",
        _positive_int,
        10000,
        """statement_timeout of analytics and alerts, milliseconds (the fleet view over 10,000 vehicles took up to
        1.2 s under load). 0: none.""",
    )
    analytics_lock_timeout_ms: int = setting(
        "FLEET_ANALYTICS_LOCK_TIMEOUT_MS", _positive_int, 1000, "lock_timeout of analytics and alerts, milliseconds."
    )
    admin_statement_timeout_ms: int = setting(
        "FLEET_ADMIN_STATEMENT_TIMEOUT_MS",
        _positive_int,
        30000,
        "statement_timeout of admin requests (mappings: a re-map invalidates hours of rollups), milliseconds.",
    )
    admin_lock_timeout_ms: int = setting(
        "FLEET_ADMIN_LOCK_TIMEOUT_MS", _positive_int, 5000, "lock_timeout of admin requests, milliseconds."
    )
    db_deadline_grace_ms: int = setting(
        "FLEET_DB_DEADLINE_GRACE_MS",
        _positive_int,
        1000,
        """How long past its statement timeout a request's unit of work may wait for the database before the API
        abandons the connection and answers 503: the bound for a database that cannot cancel anything (frozen,
        partitioned without a reset). Milliseconds.""",
    )

    # --- embedded engine -------------------------------------------------------------------------------------
    # setting() returns a dataclasses.field (no shared default object), which ruff cannot see for a Path field.
    engine_dir: Path = setting(  # noqa: RUF009
        "FLEET_ENGINE_DIR", Path, _DEFAULT_ENGINE_DIR, "Where the embedded engine keeps its data, log and state file."
    )
    engine_host: str = setting(
        "FLEET_ENGINE_HOST",
        str,
        "127.0.0.1",
        "Loopback address the embedded engine listens on (it has no authentication: keep it on loopback).",
    )
    engine_port: int = setting(
        "FLEET_ENGINE_PORT", _port, 5499, "PostgreSQL wire-protocol port of the embedded engine."
    )
    engine_health_port: int = setting(
        "FLEET_ENGINE_HEALTH_PORT",
        _port,
        None,
        "HTTP health port of the embedded engine; unset: FLEET_ENGINE_PORT + 1.",
        default_text="`FLEET_ENGINE_PORT + 1`",
    )

    engine_stall_seconds: float = setting(
        "FLEET_ENGINE_STALL_SECONDS",
        _seconds,
        120.0,
        """The embedded engine has no statement_timeout and no query cancel: its supervisor kills and restarts it
        (2-4 s, committed data kept) when it has not answered its health check for this many seconds, so a runaway
        statement cannot block it forever. Keep it above the longest legitimate statement (a large refresh).
        0: never.""",
    )

    # --- observability and access ----------------------------------------------------------------------------
    log_level: str = setting(
        "FLEET_LOG_LEVEL", _log_level, "INFO", "Python logging level name for the API, CLI and jobs (JSON lines)."
    )
    metrics_access: str = setting(
        "FLEET_METRICS",
        _metrics_access,
        "public",
        """Who may read the Prometheus metrics at GET /metrics: `public` (no key), `read` or `admin` (an API key
        with that role, or admin), `off` (no such route). They hold no secret, only operational counts
        (requests, readings, pool use): public suits an API on loopback or an internal network; behind a public
        address use read/admin (Prometheus sends the key as an X-API-Key http_header) or block /metrics at the
        proxy.""",
    )
    key_cache_seconds: float = setting(
        "FLEET_KEY_CACHE_SECONDS",
        _seconds,
        5.0,
        """Seconds an API key lookup is cached in each API process (every ingest request needs one). A revoked
        key keeps working for up to this long in a process that saw it recently; 0 looks every request up.""",
    )
    ui_session_hours: int = setting(
        "FLEET_UI_SESSION_HOURS",
        _hours,
        12,
        """Hours a sign-in to the operator page (/ui/) lasts; revoking its key ends it sooner (at the next page).""",
    )
    rate_limit: str | None = setting(
        "FLEET_RATE_LIMIT",
        _rate_limit,
        "6000/minute",
        """Requests allowed per API key (per client address for requests without a valid key), across all
        endpoints except /health, /ready and /metrics; limits syntax, several separated by ';'. 'off' disables
        rate limiting. A key shared by many devices needs a limit to match: 10,000 meters on one key send 10,000
        readings a minute.""",
    )
    rate_limit_storage_uri: str = setting(
        "FLEET_RATE_LIMIT_STORAGE_URI",
        _rate_limit_storage,
        "memory://",
        """Where rate-limit counters live. memory:// counts per process (each gunicorn worker has its own budget);
        redis://host:6379 shares the counters between workers and hosts.""",
    )

    # --- admission control (gunicorn, api/admission.py) ------------------------------------------------------
    ingest_max_queue_ms: int = setting(
        "FLEET_INGEST_MAX_QUEUE_MS",
        _positive_int,
        1000,
        """Milliseconds an ingest request may wait for a worker thread; one that waited longer is answered 503
        with Retry-After at once, before any work, so that an overload is shed fast instead of queueing past
        every client's timeout. 0: no bound.""",
    )
    ingest_target_queue_ms: int = setting(
        "FLEET_INGEST_TARGET_QUEUE_MS",
        _positive_int,
        250,
        """The ingest bound while a worker's queue stands, i.e. no request got a thread within this many
        milliseconds for FLEET_INGEST_MAX_QUEUE_MS (a sustained overload), until the queue drains again: the
        queue, and with it the wait of the reads behind ingest, is then held near this. 0: off.""",
    )
    read_max_queue_ms: int = setting(
        "FLEET_READ_MAX_QUEUE_MS",
        _positive_int,
        5000,
        """The same bound for every other request but /health, /ready and /metrics (never shed). Longer than
        ingest's, so that dashboards keep being served while ingest is shed. 0: no bound.""",
    )
    shed_retry_after_s: int = setting(
        "FLEET_SHED_RETRY_AFTER_S",
        _at_least_one,
        5,
        """A shed request's Retry-After is a whole number of seconds drawn at random from [base, 3 x base], so
        that the devices told to come back do not all come back at once. base starts at this and doubles every
        2 s while a worker sheds more than 10 % of its ingest (api/admission.py, RetryAfter).""",
    )
    shed_retry_after_max_s: int = setting(
        "FLEET_SHED_RETRY_AFTER_MAX_S",
        _at_least_one,
        120,
        """The longest Retry-After sent (base grows to a third of it). Devices must be able to wait this long:
        under a sustained overload the excess devices have to stay away for the overload to end.""",
    )

    # --- ingest ----------------------------------------------------------------------------------------------
    max_batch: int = setting(
        "FLEET_MAX_BATCH", _positive_int, 1000, "Most readings one ingest request may carry (a gateway's batch)."
    )
    max_body_bytes: int = setting(
        "FLEET_MAX_BODY_BYTES",
        _positive_int,
        1024 * 1024,
        "Largest request body, bytes; larger bodies get 413 before they are parsed.",
        default_text="`1048576` (1 MiB)",
    )
    clock_skew_seconds: int = setting(
        "FLEET_CLOCK_SKEW_SECONDS",
        _positive_int,
        300,
        "How far in the future (device clock ahead of ours) a reading's timestamp may be, seconds.",
    )
    max_reading_age_days: int = setting(
        "FLEET_MAX_READING_AGE_DAYS",
        _positive_int,
        30,
        """Oldest reading accepted, days. Keep it within the rollups' refresh window (30 days): older readings
        would be stored but never reach the hourly aggregates.""",
    )
    max_interval_kwh: float = setting(
        "FLEET_MAX_INTERVAL_KWH",
        _positive_kwh,
        100.0,
        """Largest energy one reading may carry (kwhConsumedAc, kwhDeliveredDc), kWh. A reading's energy is that
        of its own interval (since the device's previous reading), not a cumulative meter register: a minute of
        a 350 kW charger is under 6 kWh, so 100 leaves room for a device that was offline for a while and
        refuses a register value sent by mistake.""",
    )

    # --- analytics and alerts --------------------------------------------------------------------------------
    efficiency_alert_threshold: float = setting(
        "FLEET_EFFICIENCY_ALERT_THRESHOLD",
        _fraction,
        0.85,
        "Efficiency (DC delivered / AC consumed) below which a vehicle is flagged in the fleet view and alerted on.",
    )
    alert_window_hours: int = setting(
        "FLEET_ALERT_WINDOW_HOURS", _hours, 24, "Alerts: complete hours over which efficiency is judged."
    )
    correlation_window_hours: int = setting(
        "FLEET_CORRELATION_WINDOW_HOURS",
        _hours,
        1,
        """Alerts: complete hours over which vehicle/meter correlation is judged. Short, because it reads the raw
        readings (1.2M an hour for 10,000 vehicles and their meters), not the hourly rollups.""",
    )
    correlation_min_match_rate: float = setting(
        "FLEET_CORRELATION_MIN_MATCH_RATE",
        _fraction,
        0.5,
        """Alerts: share of a vehicle's readings that must have a reading of its mapped meter within 5 s; below it
        (or with a median clock offset beyond 5 s) the pair's correlation is lost.""",
    )
    alert_min_readings: int = setting(
        "FLEET_ALERT_MIN_READINGS",
        _at_least_one,
        30,
        """Alerts: readings a vehicle (and, for efficiency, its meter) needs in a window to be judged at all; with
        fewer, its efficiency and correlation alerts are neither opened nor resolved.""",
    )
    alert_min_ac_kwh: float = setting(
        "FLEET_ALERT_MIN_AC_KWH",
        _kwh,
        1.0,
        """Alerts: AC kWh a vehicle's meter must have drawn in the window for its efficiency to be judged (an idle
        vehicle whose charger draws only standby power is not "0 % efficient").""",
    )
    silent_minutes: int = setting(
        "FLEET_SILENT_MINUTES",
        _at_least_one,
        15,
        "Alerts: minutes without a reading (by the database's clock) after which a meter or vehicle is silent.",
    )
    analytics_max_window_days: int = setting(
        "FLEET_ANALYTICS_MAX_WINDOW_DAYS",
        _days,
        31,
        """Longest window one analytics request may cover, days (the rollups keep 3 years; a bound keeps every
        response small and every query short).""",
    )

    # --- scheduler (`fleet jobs run`) ------------------------------------------------------------------------
    jobs_tick_seconds: float = setting(
        "FLEET_JOBS_TICK_SECONDS",
        _period,
        10.0,
        "Seconds between two looks for due jobs (a job runs at most this late).",
    )
    jobs_lease_seconds: float = setting(
        "FLEET_JOBS_LEASE_SECONDS",
        _period,
        900.0,
        """Seconds a claimed run keeps other scheduler copies off that job on an engine without advisory locks
        held across units of work (the embedded engine); also how long a run left behind by a crashed scheduler
        blocks that job there. Keep it above the longest run of any job.""",
    )
    jobs_retention_every_seconds: float = setting(
        "FLEET_JOBS_RETENTION_EVERY_SECONDS",
        _period,
        3600.0,
        "Apache edition: seconds between two runs of the project's retention job (drop_chunks).",
    )
    jobs_alerts_every_seconds: float = setting(
        "FLEET_JOBS_ALERTS_EVERY_SECONDS", _period, 60.0, "Seconds between two alert evaluations."
    )
    jobs_correlation_every_seconds: float = setting(
        "FLEET_JOBS_CORRELATION_EVERY_SECONDS",
        _period,
        300.0,
        """Community edition: seconds between two runs of the correlation rollup job (closed hours are
        materialised 5 minutes after they end; late readings are recomputed on the next run).""",
    )
    jobs_checkpoint_every_seconds: float = setting(
        "FLEET_JOBS_CHECKPOINT_EVERY_SECONDS",
        _period,
        300.0,
        "Embedded engine only (it has no checkpointer): seconds between two CHECKPOINTs.",
    )

    # --- gunicorn (docker/gunicorn.conf.py) -----------------------------------------------------------------
    bind: str = setting("FLEET_BIND", _bind, "127.0.0.1:8000", "Address gunicorn listens on.")
    workers: int = setting(
        "FLEET_WORKERS",
        _at_least_one,
        4,
        """gunicorn worker processes. On 2 cores 4 workers x 2 threads ingest 10-28 % more single readings and
        16-25 % more batch readings than 2 x 4 (tests/load/bench_ingest.py): ingest is CPU-bound Python, and each
        worker is one GIL.""",
    )
    threads: int = setting("FLEET_THREADS", _at_least_one, 2, "Threads per gunicorn worker.")
    backlog: int = setting(
        "FLEET_BACKLOG",
        _at_least_one,
        4096,
        """The kernel's accept queue (capped by net.core.somaxconn). With 2048 a burst of the whole fleet
        overflowed it: SYNs were retried, some fell back to SYN cookies and one device's connection closed
        unanswered.""",
    )
    worker_connections: int = setting(
        "FLEET_WORKER_CONNECTIONS",
        _at_least_one,
        5000,
        """Accepted connections each gunicorn worker may queue; 4 x 5,000 + 4,096 holds the whole 20,000-device
        fleet at once. Cut to fit the open-file limit (each holds a file descriptor).""",
    )
    request_read_timeout_s: float = setting(
        "FLEET_REQUEST_READ_TIMEOUT_S",
        _period,
        10.0,
        """Seconds a client has to send a whole request (line, headers and body) once a thread has taken it; then
        the connection is closed (408 if the app was reading the body). A total, not per read: a client dribbling
        a byte now and then (slowloris) cannot hold a thread longer.""",
    )
    response_write_timeout_s: float = setting(
        "FLEET_RESPONSE_WRITE_TIMEOUT_S",
        _period,
        30.0,
        "Seconds a client has to take a response; a reader that stalls longer is disconnected.",
    )
    access_log: bool = setting(
        "FLEET_ACCESS_LOG",
        _on_off,
        True,
        "gunicorn access lines (JSON on stdout), on or off; they cost ~7-9 % of a worker's CPU per ingest request.",
        default_text="`on`",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the settings; raises ConfigError naming the bad variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {f.name: _declaration(f.name).read(env) for f in fields(cls)}
        # Defaults derived from other variables.
        if values["engine_health_port"] is None:
            values["engine_health_port"] = values["engine_port"] + 1
        if values["database_url"] is None:
            values["database_url"] = embedded_database_url(values["engine_host"], values["engine_port"])
        return cls(**values)


def _declaration(field_name: str) -> EnvVar[Any]:
    return DECLARATIONS[field_name]


#: Each Settings field's variable, by field name.
DECLARATIONS: dict[str, EnvVar[Any]] = {f.name: f.metadata["env"] for f in fields(Settings)}
#: Each variable's declaration, by variable name.
VARIABLES: dict[str, EnvVar[Any]] = {var.name: var for var in DECLARATIONS.values()}
