"""Admission control: a request that waited too long for a worker thread is answered 503 at once.

Why: gunicorn queues what its threads cannot start yet: accepted connections (up to `worker_connections` per
worker) and the kernel's backlog. Offered more than it can serve, the queue grew until every request waited longer
than any client would. Clients timed out on readings that were then stored anyway, and dashboards waited behind
ingest (issue 14: status p99 31 s in the locust steady fleet).

How: `QueueTimedThreadWorker` (gunicorn's gthread worker) notes when it hands a request to its thread pool. The
first thing the app does with a request (`_admit`, before the rate limiter, the key lookup and the body) is to
compare the time since then with the bound of the request's class:
- ingest (`/v1/telemetry/...`): FLEET_INGEST_MAX_QUEUE_MS (1 s);
- every other request: FLEET_READ_MAX_QUEUE_MS (5 s), so reads are served while ingest is being shed;
- /health, /ready and /metrics: never shed.
A request past its bound gets a 503 problem document with Retry-After, a random whole number of seconds in
[FLEET_SHED_RETRY_AFTER_S, 3 x FLEET_SHED_RETRY_AFTER_S], so that the retries spread out. Nothing was read or
written for it: a device retries the reading, which is stored once. A shed answer costs the HTTP parsing and
Flask's dispatch only, so the queue drains quickly.

Counted at /metrics: `fleet_requests_shed_total{request_class}` and `fleet_request_queue_seconds{request_class}`.
Under another server (the Flask test client, another WSGI server) no time is noted and nothing is shed.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable
from typing import Any

from flask import Flask, request
from flask_smorest import Blueprint, abort
from gunicorn.workers.gthread import ThreadWorker

from api import metrics
from api.config import Settings

#: The time the worker thread serving the current request took it from gunicorn's queue (time.monotonic()).
_handed_over = threading.local()
#: Request classes.
INGEST, READ, OPS = "ingest", "read", "ops"


class QueueTimedThreadWorker(ThreadWorker):
    """gunicorn's gthread worker, noting when each request was queued for a thread (docker/gunicorn.conf.py)."""

    def enqueue_req(self, conn: Any) -> None:
        conn.fleet_queued_at = time.monotonic()
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        _handed_over.queued_at = getattr(conn, "fleet_queued_at", None)
        try:
            return super().handle(conn)
        finally:
            _handed_over.queued_at = None


def init_app(app: Flask, settings: Settings, *, ingest: Blueprint, never_shed: Iterable[Blueprint]) -> None:
    """Shed requests that queued past their bound, before any other work is done for them. Requests of `ingest`
    have the ingest bound, those of `never_shed` none, all others the read bound."""
    classes = {ingest.name: INGEST, **{blp.name: OPS for blp in never_shed}}
    bounds_s = {
        INGEST: settings.ingest_max_queue_ms / 1000,
        READ: settings.read_max_queue_ms / 1000,
        OPS: 0.0,
    }
    retry_after = (settings.shed_retry_after_s, 3 * settings.shed_retry_after_s)

    def _admit() -> None:
        queued_at = getattr(_handed_over, "queued_at", None)
        if queued_at is None:
            return  # not served by QueueTimedThreadWorker
        kind = classes.get(request.blueprint or "", READ)
        waited = time.monotonic() - queued_at
        metrics.observe_queue_time(kind, waited)
        bound = bounds_s[kind]
        if not bound or waited <= bound:
            return
        metrics.record_shed(kind)
        # A problem document like every other error (api/problems.py).
        abort(
            503,
            message=f"overloaded: this request waited {waited * 1000:.0f} ms for a worker (bound"
            f" {bound * 1000:.0f} ms); nothing was done, retry after Retry-After seconds (a retried reading is"
            " stored once)",
            headers={"Retry-After": str(random.randint(*retry_after))},
        )

    # create_app calls this right after logging_setup (the shed answer carries the request id) and before the
    # limiter and the key lookup register theirs.
    app.before_request(_admit)
