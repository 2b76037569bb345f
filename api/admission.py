"""Admission control: a request that waited too long for a worker thread is answered 503 at once.

Why: gunicorn queues what its threads cannot start yet: accepted connections (up to `worker_connections` per
worker) and the kernel's backlog. Offered more than it can serve, the queue grew until every request waited longer
than any client would. Clients timed out on readings that were then stored anyway, and dashboards waited behind
ingest (issue 14: status p99 31 s in the locust steady fleet).

How: `QueueTimedThreadWorker` (gunicorn's gthread worker) keeps two queues for its threads, reads first: a free
thread takes the oldest read (status, listings, analytics, /health, /ready, /metrics) before any ingest, so
dashboards do not wait behind readings. It notes when each request was queued and counts those waiting. The first
thing done with a request (`AdmissionMiddleware`, WSGI middleware around Flask: before Flask, the rate limiter,
the key lookup and the body) is to compare the time it waited with the bound of its class:
- ingest (`/v1/telemetry/...`): FLEET_INGEST_MAX_QUEUE_MS (1 s), enough to absorb a burst; but once no request
  has got a thread within FLEET_INGEST_TARGET_QUEUE_MS (250 ms) for that long (a standing queue: more is offered
  than the worker serves), only 250 ms, until the queue drains (`ThreadQueue`): controlled delay, as in CoDel
  and Facebook's "Fail at Scale" (2015), a long bound while the queue drains, a short one while it stands;
- every other request: FLEET_READ_MAX_QUEUE_MS (5 s);
- /health, /ready and /metrics: never shed.
A request past its bound gets a 503 problem document with Retry-After, a random whole number of seconds in
[base, 3 x base], so that the retries spread out; base starts at FLEET_SHED_RETRY_AFTER_S and grows while the
worker keeps shedding, up to FLEET_SHED_RETRY_AFTER_MAX_S (`RetryAfter`). Nothing was read or written for it: a
device retries the reading, which is stored once. A shed answer costs gunicorn's HTTP parsing and the middleware
only (about a third of a stored reading's CPU), so the queue drains quickly.

The queue is bounded in time by the above and in length by gunicorn's `worker_connections` per worker and the
listen `backlog` (docker/gunicorn.conf.py): a queue held near 250 ms holds about 0.25 s x the worker's rate.

Counted at /metrics: `fleet_requests_shed_total{request_class}`, `fleet_request_queue_seconds{request_class}` and
`fleet_requests_queued` (waiting for a thread, summed over the workers). A shed request never reaches Flask, so
the per-endpoint request metrics do not count it. `/ready` reports the answering worker's
state (`overload()`). Under another server (the Flask test client, another WSGI server) no time is noted and
nothing is shed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import selectors
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask
from gunicorn.workers.gthread import TConn, ThreadWorker

from api import logging_setup, metrics, problems
from api.blueprint import Blueprint
from api.client_io import BoundedConn
from config import VARIABLES, Settings

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

logger = logging.getLogger(__name__)

#: The time the worker thread serving the current request took it from gunicorn's queue (time.monotonic()).
_handed_over = threading.local()
#: Request classes.
INGEST, READ, OPS = "ingest", "read", "ops"
#: /ready reports "shedding" while this worker shed a request this recently (seconds).
SHEDDING_REPORT_S = 10.0


class ThreadQueue:
    """This worker's queue for threads: how many requests wait in it, whether it stands, and the last request
    shed. One per process (gunicorn forks its workers); updated from the worker's threads.

    Standing: no request has waited `target` or less for `interval` (the queue did not drain to the target in
    that time: more is offered than the worker serves). It stops standing when a request waited less than a
    quarter of the target, or the queue is empty. Without that hysteresis the bound would swing: the short bound
    drains the queue to the target, the next request is within it, the long bound returns, and the queue builds
    for another `interval`. A client keeping every thread busy without overloading them (32 connections on 8
    threads: waits of tens of ms) does not keep it standing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.waiting = 0
        self.standing = False
        self.standing_since = 0.0  # the last wait within the target before it stood
        self.last_within_target = time.monotonic()
        self.last_shed: float | None = None
        self.shed = 0
        self.shed_logged, self.shed_logged_at = 0, 0.0  # _log_sheds: the count at its last line, and when

    def queued(self) -> None:
        with self._lock:
            self.waiting += 1

    def taken(self, now: float) -> int:
        """A thread took a request: the number still waiting behind it."""
        with self._lock:
            self.waiting -= 1
            if self.waiting <= 0:  # empty: whatever stood has drained
                self.waiting, self.standing, self.last_within_target = 0, False, now
            return self.waiting

    def note_wait(self, now: float, waited: float, target: float, interval: float) -> bool:
        """Note that a request waited `waited` seconds; whether the queue stands now."""
        if waited <= target:
            self.last_within_target = now
        if self.standing:
            if waited < target / 4:
                self.standing = False
        elif now - self.last_within_target > interval:
            self.standing, self.standing_since = True, self.last_within_target
        return self.standing

    def standing_for(self, now: float) -> float:
        """Seconds the queue has stood (0 when it does not)."""
        return now - self.standing_since if self.standing else 0.0

    def record_shed(self, now: float) -> None:
        self.last_shed, self.shed = now, self.shed + 1


QUEUE = ThreadQueue()


class RetryAfter:
    """The Retry-After this worker gives a shed request: a random whole number of seconds in [base, 3 x base].

    `base` adapts to how much ingest this worker sheds, judged every WINDOW_S seconds: it doubles (up to a third of
    `longest`) while more than SHED_SHARE_HIGH of the ingest requests were shed, and halves (down to `shortest`)
    when fewer than SHED_SHARE_LOW were. Why: a shed device comes back after Retry-After; until then it sends
    nothing. Under a sustained overload the excess devices must stay away for the overload to end, and the longer
    they stay away the fewer requests are shed to keep them away: each shed costs CPU the stored readings need
    (with a fixed 5-15 s, 2 x capacity offered by 4,000 devices was shed about as often as it was served)."""

    WINDOW_S = 2.0
    SHED_SHARE_HIGH = 0.10
    SHED_SHARE_LOW = 0.02

    def __init__(self, shortest: int, longest: int) -> None:
        self._lock = threading.Lock()
        self.configure(shortest, longest)
        self.window_start = time.monotonic()
        self.admitted = self.shed = 0

    def configure(self, shortest: int, longest: int) -> None:
        """Set the range (FLEET_SHED_RETRY_AFTER_S, FLEET_SHED_RETRY_AFTER_MAX_S); base starts over."""
        self.shortest, self.highest_base = shortest, max(shortest, longest // 3)
        self.base = shortest

    def note(self, now: float, *, shed: bool) -> None:
        """Count one ingest request, admitted or shed; adjust `base` at the end of each window."""
        with self._lock:
            if shed:
                self.shed += 1
            else:
                self.admitted += 1
            if now - self.window_start < self.WINDOW_S:
                return
            share = self.shed / (self.shed + self.admitted)
            if share > self.SHED_SHARE_HIGH:
                self.base = min(self.highest_base, 2 * self.base)
            elif share < self.SHED_SHARE_LOW:
                self.base = max(self.shortest, self.base // 2)
            self.window_start, self.admitted, self.shed = now, 0, 0

    def seconds(self) -> int:
        return random.randint(self.base, 3 * self.base)


#: This worker's; init_app configures it from the settings (the defaults until then).
RETRY_AFTER = RetryAfter(
    VARIABLES["FLEET_SHED_RETRY_AFTER_S"].default, VARIABLES["FLEET_SHED_RETRY_AFTER_MAX_S"].default
)


def overload() -> dict[str, Any]:
    """The answering worker's view for /ready: shedding now, requests waiting for a thread, how long its queue has
    stood (ms), requests it shed since it started. Only this worker's: each has its own queue."""
    now = time.monotonic()
    return {
        "shedding": QUEUE.last_shed is not None and now - QUEUE.last_shed <= SHEDDING_REPORT_S,
        "queued": QUEUE.waiting,
        "queue_standing_ms": round(QUEUE.standing_for(now) * 1000),
        "shed_by_this_worker": QUEUE.shed,
        "retry_after_base_s": RETRY_AFTER.base,
    }


class _Finished:
    """A handled connection's outcome for gthread's finish_request, which takes a future (the future of the task
    that took the connection carries the connection as well)."""

    def __init__(self, result: Any = None, error: Exception | None = None) -> None:
        self._result, self._error = result, error

    def cancelled(self) -> bool:
        return False

    def result(self) -> Any:
        if self._error is not None:
            raise self._error  # finish_request closes the connection, as for a failed future
        return self._result


class QueueTimedThreadWorker(ThreadWorker):
    """gunicorn's gthread worker with two queues for its threads, noting when each request was queued
    (docker/gunicorn.conf.py).

    Reads first: a connection is queued as ingest when its request line is `POST <an ingest route>` (peeked on the
    socket: with TCP_DEFER_ACCEPT, and for a kept-alive connection that became readable, it is there; the routes
    are the app's, from AdmissionMiddleware), as a read otherwise, and a free thread takes the oldest read before
    any ingest. Under an overload the
    ingest queue is held at its bound (250 ms to 1 s); status and dashboards no longer wait behind it (with one
    FIFO queue, status p99 was 770-1,000 ms at 2 x the capacity: reads waited up to a second in the queue)."""

    def init_process(self) -> None:
        settings = Settings.from_env()
        self._io_bounds = (settings.request_read_timeout_s, settings.response_write_timeout_s)
        self._lanes_lock = threading.Lock()
        self._lingering: dict[socket.socket, tuple[float, int]] = {}  # half-closed: (deadline, bytes drained)
        self._reads: deque[Any] = deque()
        self._ingest: deque[Any] = deque()
        self._ingest_lines: tuple[bytes, ...] | None = None  # set at the first request: the app is loaded by then
        super().init_process()

    def enqueue_req(self, conn: Any) -> None:
        if type(conn) is TConn:  # a new connection: its requests get the client's time bounds (api/client_io.py)
            conn.__class__ = BoundedConn
            conn.fleet_io_bounds = self._io_bounds
            conn.fleet_linger = self.linger
        head = arrived_head(conn)
        if head is not None and not head.complete and not self.cfg.is_ssl:
            self._await_head(conn)
            return
        conn.fleet_head_since = None
        conn.fleet_queued_at = time.monotonic()
        QUEUE.queued()
        if self._ingest_lines is None:
            self._ingest_lines = _ingest_request_lines(self.wsgi)
        is_ingest = head is None or not self._ingest_lines or head.data.startswith(self._ingest_lines)
        (self._ingest if is_ingest else self._reads).append(conn)
        # One task per queued connection: each takes the connection due next, reads first.
        fs = self.tpool.submit(self._handle_next)
        fs.add_done_callback(lambda fut: self.method_queue.defer(self._finish_next, fut))

    def linger(self, sock: socket.socket) -> None:
        """Close `sock` gracefully without blocking the event loop: half-close now, then read what the peer still
        sends until it closes, LINGER_S at most (RFC 9112 section 9.6: an abrupt close with unread data sends a
        reset that can truncate the last answer)."""
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            self.poller.register(sock, selectors.EVENT_READ, functools.partial(self._linger_readable, sock))
        except (OSError, ValueError, KeyError):
            sock.close()
            return
        self._lingering[sock] = (time.monotonic() + LINGER_S, 0)

    def _linger_readable(self, sock: socket.socket, _fileobj: Any) -> None:
        deadline, drained = self._lingering.get(sock, (0.0, 0))
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data and drained + len(data) < LINGER_MAX_BYTES:
            self._lingering[sock] = (deadline, drained + len(data))
        else:
            self._end_linger(sock)

    def _end_linger(self, sock: socket.socket) -> None:
        self._lingering.pop(sock, None)
        with contextlib.suppress(OSError, ValueError, KeyError):
            self.poller.unregister(sock)
        sock.close()

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        for sock in [s for s, (deadline, _) in self._lingering.items() if deadline <= now]:
            self._end_linger(sock)

    def _await_head(self, conn: Any) -> None:
        """Wait in the poller, without a thread, until the request's head has arrived: a slowloris client (a
        byte now and then) holds no thread. Closed by gthread's pending sweep at FLEET_REQUEST_READ_TIMEOUT_S
        after its first byte was seen."""
        now = time.monotonic()
        since = getattr(conn, "fleet_head_since", None)
        if since is None:
            conn.fleet_head_since = since = now
        conn.sock.setblocking(False)
        conn.timeout = since + self._io_bounds[0]
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, functools.partial(self.on_pending_socket_readable, conn))

    def _handle_next(self) -> tuple[Any, _Finished]:
        with self._lanes_lock:  # there are at least as many connections queued as tasks taking one
            conn = self._reads.popleft() if self._reads else self._ingest.popleft()
        try:
            return conn, _Finished(self.handle(conn))
        except Exception as exc:
            return conn, _Finished(error=exc)

    def _finish_next(self, fut: Any) -> None:
        # _handle_next returns whatever happens, and gthread shuts its pool down without cancelling tasks.
        conn, finished = fut.result()
        self.finish_request(conn, finished)

    def handle_request(self, req: Any, conn: Any) -> bool:
        try:
            return bool(super().handle_request(req, conn))
        except TimeoutError:
            # sendall ran out of FLEET_RESPONSE_WRITE_TIMEOUT_S (api/client_io.py): the client's doing, as common as
            # a reset; gthread would log it as a socket error with a traceback. The connection is closed.
            logger.info("client did not take its response within %g s: connection closed", self._io_bounds[1])
            return False

    def handle(self, conn: Any) -> Any:
        _handed_over.queued_at = getattr(conn, "fleet_queued_at", None)
        _handed_over.behind = QUEUE.taken(time.monotonic())
        try:
            return super().handle(conn)
        finally:
            _handed_over.queued_at = None


def _ingest_request_lines(app: Any) -> tuple[bytes, ...]:
    """How an ingest request line starts (`POST /v1/telemetry/ingest ` and with a query), from the routes the app's
    AdmissionMiddleware knows; none (one queue for all) when the app has no such middleware."""
    middleware = getattr(app, "wsgi_app", None)
    paths = middleware.ingest if isinstance(middleware, AdmissionMiddleware) else frozenset()
    return tuple(b"POST " + path.encode() + end for path in sorted(paths) for end in (b" ", b"?"))


#: A connection closed gracefully is read from for this long at most (gthread's own linger), or this much.
LINGER_S = 2.0
LINGER_MAX_BYTES = 65536

#: Bytes of a request's start peeked at: its request line and headers. A head that fills them is left to gunicorn's
#: own limits (limit_request_line, limit_request_fields).
HEAD_PEEK_BYTES = 16384


@dataclass(frozen=True)
class _Head:
    data: bytes
    complete: bool  # the blank line that ends the headers has arrived (or the peer closed, or the peek is full)


def arrived_head(conn: Any) -> _Head | None:
    """What has arrived of the request waiting on gthread connection `conn`, left on the socket; None when it
    cannot be told (the peer is gone: gunicorn finds out)."""
    unreader = getattr(getattr(conn, "parser", None), "unreader", None)
    buffered = unreader.buf.getvalue() if unreader is not None and hasattr(unreader, "buf") else b""
    if buffered:  # read ahead with the previous request's body: no longer on the socket
        return _Head(buffered, complete=True)
    try:
        data = conn.sock.recv(HEAD_PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return _Head(b"", complete=False)
    except OSError:
        return None
    complete = not data or b"\n\r\n" in data or b"\n\n" in data or len(data) >= HEAD_PEEK_BYTES
    return _Head(data, complete)


#: A worker logs how many requests it shed at most this often.
SHED_LOG_INTERVAL_S = 10.0


def _log_sheds(now: float) -> None:
    """One warning per SHED_LOG_INTERVAL_S while shedding: how many this worker shed since the last one."""
    if now - QUEUE.shed_logged_at < SHED_LOG_INTERVAL_S:
        return
    logger.warning(
        "admission control: shed %d requests since the last report (%d since start); Retry-After %d-%d s",
        QUEUE.shed - QUEUE.shed_logged,
        QUEUE.shed,
        RETRY_AFTER.base,
        3 * RETRY_AFTER.base,
    )
    QUEUE.shed_logged, QUEUE.shed_logged_at = QUEUE.shed, now


class AdmissionMiddleware:
    """WSGI middleware around the Flask app: a request that waited past its class's bound is answered 503 here,
    before Flask builds a request for it. Shedding must cost far less than serving, or an overload spends the
    CPU it has on refusals: answered from Flask (a before_request hook, the problem handler, the after_request
    metrics), a shed request cost 1.7 ms of worker CPU against 2.6 ms for a stored reading (wrk, 32 connections,
    4 x 2 workers), and under twice the capacity the goodput fell to about half of it."""

    def __init__(
        self,
        app: WSGIApplication,
        settings: Settings,
        retry_after: RetryAfter,
        *,
        ingest: frozenset[str],
        never: frozenset[str],
    ) -> None:
        self.app = app
        self.ingest, self.never = ingest, never
        self.bounds_s = {
            INGEST: settings.ingest_max_queue_ms / 1000,
            READ: settings.read_max_queue_ms / 1000,
            OPS: 0.0,
        }
        # While the queue stands (no request within the target for the ingest bound), ingest gets the target.
        self.standing_after_s = settings.ingest_max_queue_ms / 1000
        self.ingest_target_s = min(settings.ingest_target_queue_ms, settings.ingest_max_queue_ms) / 1000
        self.retry_after = retry_after

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        queued_at = getattr(_handed_over, "queued_at", None)
        if queued_at is None:  # not served by QueueTimedThreadWorker
            return self.app(environ, start_response)
        path = environ.get("PATH_INFO", "")
        kind = INGEST if path in self.ingest else OPS if path in self.never else READ
        now = time.monotonic()
        waited = now - queued_at
        metrics.observe_queue_time(kind, waited, queued=getattr(_handed_over, "behind", 0))
        bound = self.bounds_s[kind]
        target = self.ingest_target_s
        if target and QUEUE.note_wait(now, waited, target, self.standing_after_s) and kind == INGEST and bound:
            bound = target
        shed = bool(bound) and waited > bound
        if kind == INGEST:
            self.retry_after.note(now, shed=shed)
        if not shed:
            return self.app(environ, start_response)
        QUEUE.record_shed(now)
        metrics.record_shed(kind)
        _log_sheds(now)
        # No access line per shed request (a quarter of a shed's cost); counted above and summed up in the log.
        environ[logging_setup.SKIP_ACCESS_LINE] = True
        incoming = environ.get("HTTP_X_REQUEST_ID")
        request_id = incoming if logging_setup.valid_request_id(incoming) else uuid.uuid4().hex
        # The problem document every other error is (api/problems.py), serialised here without Flask.
        detail = (
            f"overloaded: this request waited {waited * 1000:.0f} ms for a worker (bound {bound * 1000:.0f} ms);"
            " nothing was done, retry after Retry-After seconds (a retried reading is stored once)"
        )
        body = json.dumps(problems.problem_document(503, "Service Unavailable", detail)).encode()
        start_response(
            "503 SERVICE UNAVAILABLE",
            [
                ("Content-Type", problems.PROBLEM_JSON),
                ("Content-Length", str(len(body))),
                ("Retry-After", str(self.retry_after.seconds())),
                (logging_setup.REQUEST_ID_HEADER, request_id),
            ],
        )
        return [body]


def init_app(app: Flask, settings: Settings, *, ingest: Blueprint, never_shed: Iterable[Blueprint]) -> None:
    """Shed requests that queued past their bound, before Flask does any work for them: the routes of `ingest`
    have the ingest bound, those of `never_shed` none, all others the read bound. Call it once every blueprint is
    registered: the routes are read from the app's URL map (those two classes have no path parameters)."""

    def paths(blueprints: Iterable[Blueprint]) -> frozenset[str]:
        names = {blp.name for blp in blueprints}
        rules = [r for r in app.url_map.iter_rules() if r.endpoint.split(".", 1)[0] in names]
        if any(r.arguments for r in rules):
            raise ValueError(f"admission control matches exact paths; these have parameters: {rules}")
        return frozenset(r.rule for r in rules)

    never = paths(never_shed)
    ingest_paths = paths([ingest])
    if not ingest_paths or not never:
        raise ValueError("admission control: no route for the ingest or the never-shed blueprints")
    RETRY_AFTER.configure(settings.shed_retry_after_s, settings.shed_retry_after_max_s)
    app.wsgi_app = AdmissionMiddleware(  # type: ignore[method-assign]  # Flask's documented way to add middleware
        app.wsgi_app, settings, RETRY_AFTER, ingest=ingest_paths, never=never
    )
