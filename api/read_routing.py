"""Where reads go when a replica is configured (DATABASE_READ_URL): the replica while it answers and keeps up,
else the primary, or a 503 where FLEET_READ_REPLICA_FALLBACK=unavailable.

A thread per API process probes the replica every FLEET_READ_REPLICA_CHECK_S (requests never wait for a probe):
is it reachable, and how far behind is its replay (0 when it has replayed everything it received, else the age
of the last transaction it replayed). A replica that is unreachable, or lags more than
FLEET_READ_REPLICA_MAX_LAG_S, is left until a probe finds it well again. A read that fails on the replica marks
it down at once (an engine `handle_error` event), so only the reads already in flight fail with it (503, retried
by the client). Reported at /ready (`replica`) and /metrics (fleet_read_replica_usable,
fleet_read_replica_lag_seconds, fleet_reads_fallen_back_total).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from dataclasses import asdict, dataclass
from typing import Any, Literal

import sqlalchemy as sa
from flask import Flask, current_app
from prometheus_client import Counter, Gauge
from sqlalchemy import event
from sqlalchemy.engine import Engine
from werkzeug.exceptions import ServiceUnavailable

from api import problems
from config.logs import redact

logger = logging.getLogger(__name__)

Fallback = Literal["primary", "unavailable"]
FALLBACKS: tuple[Fallback, ...] = ("primary", "unavailable")

_PROBE = sa.text(
    "SELECT pg_is_in_recovery() AS standby,"
    " CASE WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
    "      ELSE COALESCE(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) END AS lag_s"
)

REPLICA_USABLE = Gauge(
    "fleet_read_replica_usable",
    "1 while reads go to the read replica (DATABASE_READ_URL), 0 while it is down or lagging; lowest over workers.",
    multiprocess_mode="livemin",
)
REPLICA_LAG = Gauge(
    "fleet_read_replica_lag_seconds",
    "The read replica's replay lag at the last probe, seconds; highest over workers.",
    multiprocess_mode="livemax",
)
READS_FALLEN_BACK = Counter(
    "fleet_reads_fallen_back_total",
    "Reads sent to the primary (or answered 503) because the read replica was down or lagging, by outcome.",
    ["outcome"],
)


@dataclass(frozen=True)
class ReplicaState:
    usable: bool
    reason: str  # "ok", or why not
    lag_s: float | None
    checked_at: float | None  # time.monotonic() of the probe


class ReplicaUnavailable(ServiceUnavailable):
    """The read replica is down or lagging and FLEET_READ_REPLICA_FALLBACK=unavailable."""


class ReadRouter:
    """Hands out the engine a read should use; see the module docstring."""

    def __init__(
        self,
        primary: Engine,
        replica: Engine | None,
        *,
        max_lag_s: float,
        fallback: Fallback,
        check_every_s: float,
    ) -> None:
        self.primary = primary
        self.replica = replica
        self.max_lag_s = max_lag_s
        self.fallback = fallback
        self.check_every_s = check_every_s
        self._state = ReplicaState(True, "ok", None, None)  # until the first probe: as configured
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        if replica is not None:
            # Through a weak reference: the engine must not keep a dropped app's router (and its probe) alive.
            router = weakref.ref(self)

            def on_error(context: Any) -> None:
                if (alive := router()) is not None:
                    alive._on_error(context)

            event.listen(replica, "handle_error", on_error)

    def engine(self) -> Engine:
        """The engine for a read now; ReplicaUnavailable (a 503) when the replica may not be replaced."""
        if self.replica is None:
            return self.primary
        self._ensure_prober()
        state = self._state
        if state.usable:
            return self.replica
        if self.fallback == "unavailable":
            READS_FALLEN_BACK.labels("unavailable").inc()
            raise ReplicaUnavailable(f"the read replica is not usable ({state.reason}); retry later")
        READS_FALLEN_BACK.labels("primary").inc()
        return self.primary

    def describe(self) -> dict[str, Any] | None:
        """For /ready: the replica's state and where reads go; None without a replica."""
        if self.replica is None:
            return None
        self._ensure_prober()
        state = self._state
        reads_go_to = "replica" if state.usable else ("primary" if self.fallback == "primary" else "nowhere (503)")
        described = {k: v for k, v in asdict(state).items() if k != "checked_at"}
        return {**described, "reads_go_to": reads_go_to, "max_lag_s": self.max_lag_s}

    def probe(self) -> ReplicaState:
        """Probe the replica now and record what was found."""
        assert self.replica is not None
        try:
            with self.replica.connect() as conn:
                row = conn.execute(_PROBE).one()
        except sa.exc.SQLAlchemyError as exc:
            state = ReplicaState(False, f"unreachable: {_first_line(exc)}", None, time.monotonic())
        else:
            lag = float(row.lag_s)
            if lag > self.max_lag_s:
                state = ReplicaState(False, f"lagging {lag:.1f} s > {self.max_lag_s:g} s", lag, time.monotonic())
            else:
                state = ReplicaState(True, "ok", lag, time.monotonic())
        self._set(state)
        return state

    def _set(self, state: ReplicaState) -> None:
        if state.usable != self._state.usable:
            log = logger.info if state.usable else logger.warning
            log("read replica %s", "usable again: reads go to it" if state.usable else f"not usable: {state.reason}")
        self._state = state
        REPLICA_USABLE.set(1 if state.usable else 0)
        if state.lag_s is not None:
            REPLICA_LAG.set(state.lag_s)

    def _on_error(self, context: Any) -> None:
        # A lost connection or a failed connect: the replica itself. A statement that failed there (a timeout, a
        # conflict with recovery) says nothing about the replica's health.
        if context.is_disconnect or context.connection is None:
            self._set(ReplicaState(False, f"failed a read: {_first_line(context.original_exception)}", None, None))

    def _ensure_prober(self) -> None:
        # Threads do not survive fork: each gunicorn worker starts its own on its first read.
        if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._pid != os.getpid() or self._thread is None or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=_probe_while_used, args=(weakref.ref(self),), name="fleet-replica-probe", daemon=True
                )
                self._thread.start()


def _probe_while_used(router_ref: weakref.ref[ReadRouter]) -> None:
    """Probe until the router is gone (an app that was dropped: tests build many)."""
    while (router := router_ref()) is not None:
        try:
            router.probe()
        except Exception:  # a bug must not end the probing: the state would freeze
            logger.exception("read replica probe failed")
        pause = router.check_every_s
        del router  # no strong reference while sleeping
        time.sleep(pause)


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    return redact((str(cause).strip().splitlines() or [type(cause).__name__])[0])[:200]


def init_app(app: Flask, router: ReadRouter) -> None:
    """Reads of this app go through `router`; its 503 is a problem document with Retry-After, as a database
    outage's."""

    app.extensions["fleet.read_router"] = router

    def replica_unavailable(exc: ReplicaUnavailable) -> Any:
        body = problems.problem_document(503, "Service Unavailable", str(exc.description))
        return body, 503, {"Content-Type": problems.PROBLEM_JSON, "Retry-After": str(problems.RETRY_AFTER_S)}

    app.register_error_handler(ReplicaUnavailable, replica_unavailable)


def read_engine() -> Engine:
    """The engine the current request's reads use (see ReadRouter.engine)."""
    router: ReadRouter = current_app.extensions["fleet.read_router"]
    return router.engine()
