"""Bounded time for the API's units of work, even when the database cannot answer at all.

Two bounds apply to every API request's statements (`StatementBounds`, per request class, from the settings):

- the server's own `statement_timeout` and `lock_timeout`: a slow statement, or one queued behind a lock (a
  hand-run migration holding a hot table), is cancelled by the server and the request answers 503;
- a client-side deadline (`Deadlines`): a server that is frozen (SIGSTOP, a hung host, a network partition that
  drops packets without a reset) cancels nothing, and libpq has no read timeout, so a thread waiting for its
  answer would wait forever and take a gunicorn thread with it. The deadline is the statement timeout plus a
  grace; when it passes, the connection's socket is shut down under the waiting thread, which then fails at once
  with "server closed the connection" (an OperationalError: a 503 with Retry-After); the pool discards that
  connection. A COMMIT whose answer never came may or may not have been applied: ingest is idempotent, so the
  device's retry is stored once either way.

The bounds are per unit of work (a pool checkout to its checkin), read from `request_bounds`, a context variable
that the API sets for each request; the CLI and the jobs set none, so their long refreshes and compressions are
not bounded here. TCP keepalives (KEEPALIVE_CONNECT_ARGS) notice a peer that vanished on an idle pooled connection.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

#: libpq's TCP keepalives and user timeout for every connection: an idle pooled connection to a host that
#: vanished is noticed within about 5 + 3 x 2 s (instead of the kernel's 2 hours), and data left unacknowledged
#: for 10 s fails the connection. Ignored on Unix sockets. They cannot notice a frozen server on a host that is up:
#: its kernel still acknowledges; `Deadlines` covers that.
KEEPALIVE_CONNECT_ARGS: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


#: The watchdog's resolution: a deadline is enforced up to this late.
TICK_S = 0.1


@dataclass(frozen=True)
class StatementBounds:
    """A request class's bounds: PostgreSQL's statement_timeout and lock_timeout, milliseconds (0: none)."""

    statement_ms: int
    lock_ms: int

    def startup_options(self) -> str:
        """The bounds as libpq startup options (`-c name=value`): a connection's defaults, at no round trip."""
        return f"-c statement_timeout={self.statement_ms} -c lock_timeout={self.lock_ms}"


#: The bounds of the request this thread is serving; None outside API requests (CLI, jobs): no bound.
request_bounds: contextvars.ContextVar[StatementBounds | None] = contextvars.ContextVar(
    "fleet_request_bounds", default=None
)


class Deadlines:
    """One thread per process that shuts down the socket of a connection whose unit of work outlived its deadline.

    `arm` when a connection is checked out for a request, `disarm` when it is checked in. Cheap on the hot path: a
    heap push under a lock, and the thread sleeps until the earliest deadline."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, tuple[Any, float]] = {}  # token -> (psycopg connection, seconds allowed)
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self.abandoned = 0

    def arm(self, dbapi_connection: Any, seconds: float) -> int:
        """Watch `dbapi_connection` for `seconds`; returns the token that disarms it."""
        token = next(self._tokens)
        deadline = time.monotonic() + seconds
        with self._lock:
            self._ensure_thread()
            self._armed[token] = (dbapi_connection, seconds)
            heapq.heappush(self._heap, (deadline, token))
            if self._heap[0][1] == token:
                self._lock.notify()
        return token

    def disarm(self, token: int) -> None:
        """The unit of work ended in time (its heap entry is dropped when it comes up)."""
        with self._lock:
            self._armed.pop(token, None)

    def _ensure_thread(self) -> None:
        # Threads do not survive fork: a gunicorn worker forked from a master that armed once needs its own.
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="fleet-db-deadlines", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._heap:
                    self._lock.wait()
                deadline, token = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    # At least a tick: most entries were disarmed long before they come up, and waking for each
                    # one (hundreds a second under load) would cost the workers' threads the GIL that often.
                    self._lock.wait(max(wait, TICK_S))
                    continue
                heapq.heappop(self._heap)
                expired = self._armed.pop(token, None)
                # Under the lock: the connection cannot be checked in (disarm waits) and handed to another request
                # before its socket is shut.
                if expired is not None:
                    self._abandon(*expired)

    def _abandon(self, dbapi_connection: Any, seconds: float) -> None:
        try:
            fd = dbapi_connection.pgconn.socket
            # shutdown() on a duplicate of the descriptor wakes the thread blocked in poll() on it (close() would
            # not); the connection is then broken, and psycopg says so to that thread.
            with socket.socket(fileno=os.dup(fd)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except Exception as exc:  # already closed, not a socket: nothing waits on it
            logger.debug("deadline passed on a connection that is already gone: %s", exc)
            return
        self.abandoned += 1
        logger.warning("database gave no answer within %.1f s: connection abandoned (the request answers 503)", seconds)


#: The process's watchdog, shared by every engine of the process.
DEADLINES = Deadlines()
