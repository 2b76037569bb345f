"""gunicorn settings for `fleet serve` and the container image. Each value can be overridden from the
environment (GUNICORN_CMD_ARGS) or by `fleet serve` flags.

Logs: `GunicornLogger` sends gunicorn's own lines and the access lines, like the app's, as JSON to stdout
(api/logging_setup.py); it configures logging in the master, before any worker builds the app.

Metrics: several worker processes share one /metrics through prometheus_client's multiprocess mode
(api/metrics.py). PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is first imported, in the
master and so in every worker it forks: it is set here, at the top, to a fresh private directory unless the
environment names one. It is emptied when the server starts (on_starting), an exited worker's files are folded
into the totals and its live gauges dropped (child_exit), and a directory made here is removed when the server
stops (on_exit).
"""

import os
import resource
import shutil
import socket
import tempfile

from config import Settings

# Every FLEET_* variable is declared once, in config/ (name, default, parser, meaning); a bad value stops the
# server here, with the variable's name, instead of in every worker.
_settings = Settings.from_env()

_METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Remembers, across configuration reloads (SIGHUP re-reads this file), that the directory was made here.
_CREATED_ENV = "FLEET_METRICS_DIR_CREATED"

if not os.environ.get(_METRICS_DIR_ENV):
    os.environ[_METRICS_DIR_ENV] = tempfile.mkdtemp(prefix="fleet-metrics-")
    os.environ[_CREATED_ENV] = os.environ[_METRICS_DIR_ENV]
# prometheus_client opens its files there as soon as the app's modules are imported (logger_class below).
os.makedirs(os.environ[_METRICS_DIR_ENV], exist_ok=True)

bind = _settings.bind
# On 2 cores 4 workers x 2 threads ingest 10-28 % more single readings and 16-25 % more batch readings than
# 2 x 4 (tests/load/bench_ingest.py): ingest is CPU-bound Python, and each worker is one GIL.
workers = _settings.workers
threads = _settings.threads
# gthread, noting when each request waits for a thread: one that waited past its bound is answered 503 with
# Retry-After at once (admission control, api/admission.py; FLEET_INGEST_MAX_QUEUE_MS, FLEET_READ_MAX_QUEUE_MS).
worker_class = "api.admission.QueueTimedThreadWorker"
# Recycle workers now and then so a slow leak cannot grow without bound; jitter avoids all restarting at once.
# A full fleet sends ~333 requests/s: 100,000 per worker is a restart of each about every 20 minutes (4 workers);
# at 20,000 one of them restarted every minute, and each restart costs a worker's warm pool and caches.
max_requests = 100000
max_requests_jitter = 10000
# A burst (every device within the same 10 s) must wait in a queue, not be dropped. The kernel's accept queue
# (`backlog`, capped by net.core.somaxconn: 4096 here) overflowed with the default 2048: SYNs were retried, some
# fell back to SYN cookies, one cookie failed and one device's connection closed unanswered. Each gthread worker
# also takes up to `worker_connections` accepted connections into its own queue (default 1000): 4 x 5,000 + 4,096
# holds the whole 20,000-device fleet at once. Each queued connection holds a file descriptor (below).
backlog = _settings.backlog


def _open_files_allowing(wanted):
    """Raise this process's soft open-file limit towards `wanted` (workers inherit it); the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
    return soft


# Without the file descriptors for them, accept() fails (EMFILE) and the worker dies: fit the queue to the limit,
# keeping some descriptors for the database pool, logs and metrics files.
_wanted_connections = _settings.worker_connections
_open_files = _open_files_allowing(_wanted_connections + 256)
worker_connections = max(
    threads + 1,
    _wanted_connections if _open_files == resource.RLIM_INFINITY else min(_wanted_connections, _open_files - 256),
)
timeout = 30
graceful_timeout = 20
# JSON lines on stdout (level FLEET_LOG_LEVEL); access lines carry X-Request-ID and never a request header.
# Loading it imports the `api` package in the master (the app itself is still built in each worker): workers
# fork with the modules loaded, and new code needs a restart, not a SIGHUP.
logger_class = "api.logging_setup.GunicornLogger"
# FLEET_ACCESS_LOG=off: no access lines (GUNICORN_CMD_ARGS cannot turn them off: GunicornLogger writes one
# whenever accesslog is not None). They cost ~7-9 % of a worker's CPU per ingest request.
accesslog = "-" if _settings.access_log else None
errorlog = "-"


def on_starting(server):
    """Start with an empty metrics directory: counters begin at zero with the server, as Prometheus expects."""
    from api import metrics

    path = os.environ[_METRICS_DIR_ENV]
    metrics.reset_multiprocess_dir(path)
    server.log.info("metrics: multiprocess directory %s, emptied", path)


# A new connection is accepted once its request has arrived (TCP_DEFER_ACCEPT, Linux), not at the handshake. A
# gthread thread given a connection without data blocks until the data comes (up to 5 s): under the overload of
# issue 14 (4,000 devices, a new connection each) threads sat waiting for slow senders while a third of the CPU
# was idle, and requests queued behind them past their admission bound.
DEFER_ACCEPT_SECONDS = 5


def when_ready(server):
    """Set TCP_DEFER_ACCEPT on the TCP listeners (before the workers are forked: they share the sockets)."""
    tcp = (socket.AF_INET, socket.AF_INET6)
    for listener in server.LISTENERS:
        sock = getattr(listener, "sock", None)
        if sock is not None and sock.family in tcp and hasattr(socket, "TCP_DEFER_ACCEPT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT_SECONDS)
            server.log.info("listener %s: TCP_DEFER_ACCEPT %d s", listener, DEFER_ACCEPT_SECONDS)


def child_exit(server, worker):
    """A worker exited (recycled, timed out, killed): keep its counts in the totals, drop its gauges."""
    from api import metrics

    metrics.mark_worker_dead(worker.pid)


def on_exit(server):
    """Remove the metrics directory if this file made it."""
    created = os.environ.get(_CREATED_ENV)
    if created and created == os.environ.get(_METRICS_DIR_ENV):
        shutil.rmtree(created, ignore_errors=True)
