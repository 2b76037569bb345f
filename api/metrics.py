"""Prometheus metrics at `GET /metrics` (prometheus_client), correct under gunicorn with several workers.

What is measured (labels have bounded values only: never a device id, key or path):
- `fleet_readings_stored_total` / `fleet_readings_duplicates_total` {device_type}: ingested readings, counted
  after their transaction committed;
- `fleet_requests_rejected_total` {endpoint, status, reason}: 4xx answers and 503 problems, i.e. the database
  was unavailable (reason: validation, too_large, unsupported_media_type, auth, forbidden, rate_limited,
  unavailable...), each also logged at INFO with the problem's detail;
- `fleet_http_request_duration_seconds` {endpoint, method, status_class}: latency histogram per Flask endpoint
  (`unmatched` when no route matched);
- `fleet_db_pool_connections_in_use` / `fleet_db_pool_size`: the app engine's QueuePool, checkedout() and size()
  (0 and 0 for a NullPool);
- `process_*` (CPU, memory, file descriptors, start time) and `python_info`;
- `fleet_policy_failing` {job, proc_name, relation, run_by} (1: the newest finished run of that policy job, by
  TimescaleDB or by `fleet jobs run`, failed; 0: it succeeded) and `fleet_policies_failing` (how many), read from
  the database at scrape time (db/timescaledb_jobs.py), so every worker reports the same values; left out, with a
  warning in the log, when the database cannot be read. One series per policy job: a handful.

Processes. gunicorn's workers are separate processes, and a scrape reaches one of them. Under gunicorn
(docker/gunicorn.conf.py) PROMETHEUS_MULTIPROC_DIR is set before prometheus_client is imported: every worker
writes its samples to memory-mapped files there and /metrics adds up the files of all workers, including the
counters of workers that have exited (so totals never go back when gunicorn recycles a worker: gunicorn's
child_exit hook calls `mark_worker_dead`, which folds the exited worker's files into one archive file per
kind, so the directory does not grow with every recycled worker). The pool gauges are per worker and summed
over live workers (`livesum`; an exited worker's are dropped); `process_*` is reported for every live worker
with a `pid` label. The directory is emptied when the server starts (`reset_multiprocess_dir`, gunicorn's
on_starting hook), so counters start from zero with the server, as Prometheus expects of a restarted target.

Without PROMETHEUS_MULTIPROC_DIR (the Flask test client, `flask run`: one process) the metrics live in this
process's memory and /metrics serves prometheus_client's default registry, process collector included.

Access: FLEET_METRICS (config/__init__.py): `public` (default), `read` or `admin` (an API key with that role, or
admin), `off` (no route). /metrics is never rate limited (create_app lists its blueprint as public).
"""

from __future__ import annotations

import fcntl
import glob
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask.views import MethodView
from flask_smorest import Api
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import QueuePool

import db
from api.auth import require_role
from api.blueprint import Blueprint
from api.problems import PROBLEM_JSON
from config import Settings
from db import timescaledb_jobs

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEVICE_TYPES = ("meter", "vehicle")
#: Short reason per rejection status; other 4xx are `client_error`.
REJECT_REASONS = {
    400: "bad_request",
    401: "auth",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "validation",
    429: "rate_limited",
    503: "unavailable",
}
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Up to gunicorn's 30 s worker timeout; ingest of a 1000-reading batch takes tens of milliseconds.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# No `*_created` series: they double the series count for a timestamp Prometheus does not use.
disable_created_metrics()

READINGS_STORED = Counter("fleet_readings_stored_total", "Readings stored (new), by device type.", ["device_type"])
READINGS_DUPLICATES = Counter(
    "fleet_readings_duplicates_total",
    "Readings received again (same device and timestamp) and not stored twice, by device type.",
    ["device_type"],
)
REQUESTS_REJECTED = Counter(
    "fleet_requests_rejected_total",
    "Requests refused (4xx, and 503 while the database is unavailable), by endpoint, status and reason.",
    ["endpoint", "status", "reason"],
)
REQUEST_DURATION = Histogram(
    "fleet_http_request_duration_seconds",
    "Time to handle a request in the app, by Flask endpoint, method and status class.",
    ["endpoint", "method", "status_class"],
    buckets=_LATENCY_BUCKETS,
)
REQUESTS_SHED = Counter(
    "fleet_requests_shed_total",
    "Requests answered 503 at once because they waited for a worker past their class's bound (api/admission.py).",
    ["request_class"],
)
REQUEST_QUEUE_TIME = Histogram(
    "fleet_request_queue_seconds",
    "Time a request waited for a worker thread (gunicorn), by request class (ingest, read, ops).",
    ["request_class"],
    buckets=_LATENCY_BUCKETS,
)
# livesum: the sum over live worker processes (a dead worker's value is dropped by mark_worker_dead).
REQUESTS_QUEUED = Gauge(
    "fleet_requests_queued",
    "Requests waiting for a worker thread (gunicorn), as each worker last saw its queue when a thread took a request.",
    multiprocess_mode="livesum",
)
DB_POOL_IN_USE = Gauge(
    "fleet_db_pool_connections_in_use",
    "Database connections checked out of the pool (QueuePool.checkedout()), summed over worker processes.",
    multiprocess_mode="livesum",
)
DB_POOL_SIZE = Gauge(
    "fleet_db_pool_size",
    "Database connections the pool may hold (QueuePool.size(); 0: NullPool), summed over worker processes.",
    multiprocess_mode="livesum",
)

_PID_RE = re.compile(r"_(\d+)\.db$")
# Not a *.db file: reset_multiprocess_dir and prometheus_client leave it alone.
_LOCK_FILE = ".lock"
_pool_lock = threading.Lock()
# Connection records checked out of instrumented pools, by id(): a checkin the pool reports without a matching
# checkout (a failed connect) then changes nothing, so the gauge cannot drift.
_checked_out: set[int] = set()
_instrumented: weakref.WeakSet[Engine] = weakref.WeakSet()


def multiprocess_dir() -> str | None:
    """PROMETHEUS_MULTIPROC_DIR, or None in single-process mode."""
    return os.environ.get(MULTIPROC_ENV) or None


def record_ingest(device_type: str, *, stored: int, duplicates: int) -> None:
    """Count one committed ingest of `device_type` readings."""
    READINGS_STORED.labels(device_type).inc(stored)
    READINGS_DUPLICATES.labels(device_type).inc(duplicates)


def observe_queue_time(request_class: str, seconds: float, *, queued: int) -> None:
    """How long one request of `request_class` waited for a worker thread, and how many still wait behind it."""
    REQUEST_QUEUE_TIME.labels(request_class).observe(seconds)
    REQUESTS_QUEUED.set(queued)


def record_shed(request_class: str) -> None:
    """Count one request shed by admission control."""
    REQUESTS_SHED.labels(request_class).inc()


# --- gunicorn master side (docker/gunicorn.conf.py) ---------------------------------------------------------


def reset_multiprocess_dir(path: str) -> int:
    """Create `path` if needed and delete the sample files (`*.db`) a previous server left; returns how many.

    Only prometheus_client's files are removed, so pointing PROMETHEUS_MULTIPROC_DIR at a shared directory
    loses nothing else."""
    os.makedirs(path, exist_ok=True)
    stale = glob.glob(os.path.join(path, "*.db"))
    for name in stale:
        os.remove(name)
    return len(stale)


@contextmanager
def _directory_lock(path: str, *, exclusive: bool) -> Iterator[None]:
    """Scrapes read the directory under a shared lock; archiving an exited worker takes it exclusively, so a
    scrape never counts that worker twice or not at all, nor finds one of its files gone half-way."""
    with open(os.path.join(path, _LOCK_FILE), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _archive_worker_file(path: str, kind: str, pid: int) -> None:
    # Add the worker's samples into <kind>_archive.db, then delete its file: gunicorn recycles workers every
    # max_requests, and one file per worker that ever lived would make every scrape slower, day after day.
    # Counter and histogram samples (buckets are stored per bucket) simply add up.
    dead = os.path.join(path, f"{kind}_{pid}.db")
    if not os.path.exists(dead):
        return
    archive = MmapedDict(os.path.join(path, f"{kind}_archive.db"))
    try:
        totals = {key: value for key, value, _ts in archive.read_all_values()}
        for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(dead):
            archive.write_value(key, totals.get(key, 0.0) + value, 0.0)
    finally:
        archive.close()
    os.remove(dead)


def mark_worker_dead(pid: int) -> None:
    """An exited worker: drop its live gauges, fold its counters and histograms into the archive files (they
    stay in the totals). Runs in gunicorn's master, one exit at a time."""
    path = multiprocess_dir()
    if path is None:
        return
    with _directory_lock(path, exclusive=True):
        multiprocess.mark_process_dead(pid, path)
        for kind in ("counter", "histogram"):
            _archive_worker_file(path, kind, pid)


# --- the app side ------------------------------------------------------------------------------------------


def _start_timer() -> None:
    g.fleet_request_started = time.perf_counter()


def _observe(response: Response) -> Response:
    started = g.pop("fleet_request_started", None)
    endpoint = request.endpoint or "unmatched"
    status = response.status_code
    if started is not None:
        method = request.method if request.method in _METHODS else "other"
        REQUEST_DURATION.labels(endpoint, method, f"{status // 100}xx").observe(time.perf_counter() - started)
    # /ready's own 503 is an answer (the readiness document), not a refusal: only problem documents count.
    if 400 <= status < 500 or (status == 503 and response.mimetype == PROBLEM_JSON):
        reason = REJECT_REASONS.get(status, "client_error")
        REQUESTS_REJECTED.labels(endpoint, str(status), reason).inc()
        problem = response.get_json(silent=True) if response.is_json else None
        detail = problem.get("detail") if isinstance(problem, dict) else None
        logger.info(
            "request rejected: %s %s -> %d %s: %s",
            request.method,
            request.path,
            status,
            reason,
            detail,
            extra={"endpoint": endpoint, "status": status, "reason": reason},
        )
    return response


def _pool_checkout(_dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    with _pool_lock:
        _checked_out.add(id(record))
        DB_POOL_IN_USE.set(len(_checked_out))


def _pool_checkin(_dbapi_conn: Any, record: Any) -> None:
    with _pool_lock:
        _checked_out.discard(id(record))
        DB_POOL_IN_USE.set(len(_checked_out))


def _instrument_pool(engine: Engine) -> None:
    """Keep the pool gauges of this process up to date (the app has one engine per process)."""
    pool = engine.pool
    if not isinstance(pool, QueuePool):  # NullPool: no pool to report
        DB_POOL_SIZE.set(0)
        DB_POOL_IN_USE.set(0)
        return
    DB_POOL_SIZE.set(pool.size())
    # Pool events of an engine follow its pool across engine.dispose(); listening twice would count twice
    # (tests build many apps on one engine).
    with _pool_lock:
        new = engine not in _instrumented
        _instrumented.add(engine)
    if new:
        event.listen(engine, "checkout", _pool_checkout)
        event.listen(engine, "checkin", _pool_checkin)
    with _pool_lock:
        DB_POOL_IN_USE.set(len(_checked_out))


class WorkerProcessCollector(Collector):
    """`process_*` metrics of every live process that writes to the multiprocess directory (gunicorn's workers),
    labelled `pid`, read from /proc at scrape time; prometheus_client's own collector covers one process only."""

    def __init__(self, path: str) -> None:
        self._path = path

    def _live_pids(self) -> list[int]:
        pids = set()
        # Every worker writes its (livesum) pool gauges on start-up; mark_worker_dead removes them at exit.
        for name in glob.glob(os.path.join(self._path, "gauge_live*_*.db")):
            match = _PID_RE.search(name)
            if match and os.path.exists(f"/proc/{match.group(1)}"):
                pids.add(int(match.group(1)))
        return sorted(pids)

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for pid in self._live_pids():
            for family in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():
                out = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    out.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        return list(merged.values())


class PolicyCollector(Collector):
    """Policy job failures, read from the database at each scrape (not per process: one value for all)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterable[Metric]:
        try:
            with db.transaction(self._engine) as conn:  # committed: a ROLLBACK drops the prepared statements
                statuses = timescaledb_jobs.current_policy_statuses(conn)
        except SQLAlchemyError as exc:
            logger.warning("metrics: cannot read the policy jobs' status: %s", exc.__cause__ or exc)
            return []
        failing = GaugeMetricFamily(
            "fleet_policy_failing",
            "1 when the newest finished run of a policy job (by TimescaleDB or by fleet jobs run) failed, else 0.",
            labels=["job", "proc_name", "relation", "run_by"],
        )
        for s in statuses:
            if s.last_result is not None:
                failing.add_metric([s.job, s.proc_name, s.relation or "", s.run_by], 1.0 if s.failing else 0.0)
        total = GaugeMetricFamily(
            "fleet_policies_failing",
            "Policy jobs whose newest finished run failed.",
            value=sum(s.failing for s in statuses),
        )
        return [failing, total]


def _exposition(engine: Engine | None = None) -> Response:
    path = multiprocess_dir()
    if path is None:
        # One process: its own metrics plus prometheus_client's process, platform and gc collectors.
        body = generate_latest(REGISTRY)
    else:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
        registry.register(WorkerProcessCollector(path))
        PlatformCollector(registry=registry)
        with _directory_lock(path, exclusive=False):
            body = generate_latest(registry)
    if engine is not None:
        # A registry of its own per scrape: the app engine is per process, and the default registry is global.
        policies = CollectorRegistry(auto_describe=False)
        policies.register(PolicyCollector(engine))
        body += generate_latest(policies)
    return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# Not strict about the query string: prometheus_client's exposition takes `name[]` filters.
blp = Blueprint("metrics", __name__, description="Prometheus metrics", strict_query=False)


@blp.route("/metrics")
class Metrics(MethodView):
    @blp.doc(
        responses={
            "200": {
                "description": "Prometheus text exposition format, all worker processes together. Needs an API key"
                " when FLEET_METRICS is read or admin; absent when it is off. Never rate limited.",
                "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
            }
        }
    )
    def get(self):
        """Metrics for Prometheus: ingest counts, rejections, latency, database pool, processes, failing policies."""
        access = current_app.extensions["fleet.settings"].metrics_access
        engine = current_app.extensions["fleet.db"]
        if access in ("read", "admin"):
            return require_role(access)(_exposition)(engine)
        return _exposition(engine)


def init_app(app: Flask, api: Api, settings: Settings) -> None:
    """Time every request, count rejections, watch the engine's pool, and serve /metrics unless FLEET_METRICS=off."""
    app.before_request_funcs.setdefault(None, []).insert(0, _start_timer)  # first: 429s and 401s are timed too
    app.after_request(_observe)
    _instrument_pool(app.extensions["fleet.db"])
    for device_type in DEVICE_TYPES:  # every series exists from the start, at 0
        READINGS_STORED.labels(device_type)
        READINGS_DUPLICATES.labels(device_type)
    if settings.metrics_access != "off":
        api.register_blueprint(blp)
