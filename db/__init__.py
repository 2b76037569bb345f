"""The data layer: engines, transactions and queries. Knows nothing of Flask or the CLI."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from db.deadlines import DEADLINES, KEEPALIVE_CONNECT_ARGS, StatementBounds, request_bounds

#: Default connect timeouts, seconds. Pooled: a PostgreSQL server answers a connect in milliseconds, and pooled
#: connections are made rarely (at start, after an outage), so a connect still waiting after a few seconds means
#: the server is unreachable: give up and let the request fail fast (a 503 the device retries). Per unit of work:
#: the embedded engine serves one connection at a time and queues the others for up to 60 s.
POOLED_CONNECT_TIMEOUT_S = 3
UNPOOLED_CONNECT_TIMEOUT_S = 60
#: Pooled engines: after a failed connect, seconds during which further connects fail at once (see _FailFast).
FAIL_FAST_PAUSE_S = 1.0
#: Pooled engines: a connection idle at least this long is pinged (`SELECT 1`) before it is handed out (see
#: _PingAfterIdle).
PING_AFTER_IDLE_S = 2.0
#: Every statement is planned for its own parameters. psycopg prepares a statement after its 5th execution on a
#: connection, and PostgreSQL then switches to a generic plan when its estimate looks no worse: for the analytics'
#: meter hours that plan scans every meter's rows in the window, 375 ms instead of 11 ms at 1,000 meters
#: (../shared/ENGINES.md), and a generic plan cannot exclude a hypertable's chunks while planning. Custom plans keep
#: what preparing saves (parse and analysis) and cost a plan per call. tests/integration/test_plan_stability.py.
#: The embedded engine ignores startup options; there the pool size is 0 (one connection per unit of work), so no
#: statement reaches psycopg's threshold.
PLAN_CACHE_OPTION = "-c plan_cache_mode=force_custom_plan"


def make_engine(
    url: str,
    *,
    pool_size: int = 5,
    pool_timeout: float = 30.0,
    connect_timeout: int | None = None,
    read_only: bool = False,
    statement_bounds: StatementBounds | None = None,
    deadline_grace_ms: int | None = None,
) -> Engine:
    """An Engine for `url`; pool_size 0 connects per unit of work (what the one-slot embedded engine needs).

    The URL reaches libpq unchanged: TLS (`?sslmode=verify-full&sslrootcert=...&sslcert=...&sslkey=...`) and any
    other connection parameter are set there. `read_only` makes every session of this engine read-only, for the
    engine that reads from a replica (DATABASE_READ_URL). `connect_timeout` None: POOLED_CONNECT_TIMEOUT_S with a
    pool, UNPOOLED_CONNECT_TIMEOUT_S without; 0 waits forever.

    API engines (db/deadlines.py): `statement_bounds` are every connection's statement_timeout and lock_timeout
    (`transaction` tightens or loosens them for a request class that differs); with `deadline_grace_ms`, a unit of
    work done for a request (`request_bounds` set) whose answer has not come `grace` after its statement timeout
    has its connection abandoned."""
    if connect_timeout is None:
        connect_timeout = POOLED_CONNECT_TIMEOUT_S if pool_size else UNPOOLED_CONNECT_TIMEOUT_S
    options = _with_plan_cache_option(sa.engine.make_url(url).query.get("options"))
    if statement_bounds is not None:
        options = f"{options} {statement_bounds.startup_options()}"
    connect_args = {
        "connect_timeout": connect_timeout,
        "application_name": "fleet",
        "options": options,
        **KEEPALIVE_CONNECT_ARGS,
    }
    if pool_size == 0:
        engine = sa.create_engine(url, poolclass=NullPool, connect_args=connect_args)
    else:
        engine = sa.create_engine(
            url,
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=pool_timeout,
            connect_args=connect_args,
        )
        event.listen(engine, "do_connect", _FailFast(pause=FAIL_FAST_PAUSE_S))
        _PingAfterIdle(engine, idle=PING_AFTER_IDLE_S).listen()
    if read_only:
        event.listen(engine, "connect", _set_read_only)
    if statement_bounds is not None:
        _ENGINE_BOUNDS[engine] = statement_bounds
    if deadline_grace_ms is not None:
        _RequestDeadlines(engine, grace_s=deadline_grace_ms / 1000).listen()
    return engine


#: Each API engine's connection defaults (make_engine's statement_bounds).
_ENGINE_BOUNDS: weakref.WeakKeyDictionary[Engine, StatementBounds] = weakref.WeakKeyDictionary()


class _RequestDeadlines:
    """Arms DEADLINES for each checkout made while a request is served (request_bounds set); disarms at checkin."""

    def __init__(self, engine: Engine, grace_s: float) -> None:
        self.engine = engine
        self.grace_s = grace_s

    def listen(self) -> None:
        # First among the checkout listeners: the idle ping (_PingAfterIdle) runs under the deadline too.
        event.listen(self.engine, "checkout", self._checkout, insert=True)
        event.listen(self.engine, "checkin", self._checkin)

    def _checkout(self, dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        stale = record.info.pop("fleet_deadline", None)  # a checkout retried after a failed ping
        if stale is not None:
            DEADLINES.disarm(stale)
        bounds = request_bounds.get()
        if bounds is not None and bounds.statement_ms > 0:
            record.info["fleet_deadline"] = DEADLINES.arm(dbapi_connection, bounds.statement_ms / 1000 + self.grace_s)

    def _checkin(self, _dbapi_connection: Any, record: Any) -> None:
        token = record.info.pop("fleet_deadline", None)
        if token is not None:
            DEADLINES.disarm(token)


def _with_plan_cache_option(url_options: str | tuple[str, ...] | None) -> str:
    """The connection's startup `options`: the URL's own (connect_args replace them, so they are kept here) and
    PLAN_CACHE_OPTION, unless the URL sets plan_cache_mode itself."""
    given = " ".join(url_options) if isinstance(url_options, tuple) else (url_options or "")
    if "plan_cache_mode" in given:
        return given
    return f"{given} {PLAN_CACHE_OPTION}".strip()


class _PingAfterIdle:
    """Ping a pooled connection before handing it out only when it sat idle for `idle` seconds or more.

    SQLAlchemy's pool_pre_ping pings at every checkout: under load that was a round trip more per request, two for
    an ingest request (key lookup, then the write), and ~20 % of an ingest worker's time in py-spy under wrk. A
    connection in steady use has just proved itself; one that sat idle may have been closed by a server restart,
    a failover or a firewall. A connection that died while in use still fails its statement; SQLAlchemy then
    invalidates the whole pool, so each process loses one request (a 503 the client retries) per outage.
    """

    def __init__(self, engine: Engine, idle: float) -> None:
        self.engine = engine
        self.idle = idle

    def listen(self) -> None:
        event.listen(self.engine, "checkin", self._checkin)
        event.listen(self.engine, "checkout", self._checkout)

    def _checkin(self, _dbapi_connection: Any, record: Any) -> None:
        record.info["fleet_idle_since"] = time.monotonic()

    def _checkout(self, dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("fleet_idle_since")
        if since is None or time.monotonic() - since < self.idle:
            return  # new, or in steady use
        dialect = self.engine.dialect
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            # The pool discards this connection and checks out another (a new one if need be).
            raise sa.exc.DisconnectionError(f"pooled connection failed its ping: {exc}") from exc


class _FailFast:
    """Connects of a pooled engine while its database is down: one try at a time, the others fail at once.

    While connects succeed, threads connect concurrently. Once one fails (refused, timed out), the database is
    down for this process: for the next `pause` seconds, and while a retry is in flight, every connect fails at
    once with an OperationalError (a 503), instead of each holding a worker thread for up to the connect timeout
    (and a request queued behind that thread as long again) while the server is unreachable. After the pause,
    one thread tries again; the first successful connect ends it. A `do_connect` handler making the connection.
    """

    def __init__(self, pause: float = 1.0) -> None:
        self.pause = pause
        self._lock = threading.Lock()
        self._failed_at: float | None = None  # time.monotonic() of the last failed connect; None: up
        self._trying = False

    def __call__(self, dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        with self._lock:
            failed_at = self._failed_at
            retry = failed_at is not None
            if failed_at is not None and (self._trying or time.monotonic() - failed_at < self.pause):
                raise dialect.loaded_dbapi.OperationalError("the database is unreachable: the last connect failed")
            if retry:
                self._trying = True
        try:
            connection = dialect.connect(*cargs, **cparams)
        except Exception:
            with self._lock:
                self._failed_at = time.monotonic()
            raise
        else:
            with self._lock:
                self._failed_at = None
            return connection
        finally:
            if retry:
                with self._lock:
                    self._trying = False


def _set_read_only(dbapi_connection: Any, _record: Any) -> None:
    # A write sent through this engine fails ("cannot execute INSERT in a read-only transaction") even when its
    # URL names a primary (a promoted replica, a copy-paste mistake): the read engine can only read. A session
    # setting, not a connection parameter, so an `options` parameter in the URL is left alone.
    with dbapi_connection.cursor() as cur:
        cur.execute("SET default_transaction_read_only = on")
    dbapi_connection.commit()


_SET_LOCAL_BOUNDS = sa.text(
    "SELECT set_config('statement_timeout', :statement_ms, true), set_config('lock_timeout', :lock_ms, true)"
)


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A connection inside one transaction: committed when the block ends, rolled back if it raises.

    Inside an API request whose class has other bounds than the engine's connections (analytics and admin
    requests), they are set for this transaction first: one round trip, which the ingest path never pays."""
    with engine.begin() as conn:
        bounds = request_bounds.get()
        default = _ENGINE_BOUNDS.get(engine)
        if bounds is not None and default is not None and bounds != default:
            conn.execute(_SET_LOCAL_BOUNDS, {"statement_ms": str(bounds.statement_ms), "lock_ms": str(bounds.lock_ms)})
        yield conn
