"""Ingest benchmark: `POST /v1/telemetry/ingest` through a real gunicorn, next to the same SQL sent directly.

Run from the repository root (a throw-away native cluster is started and removed; loopback only):

    .venv/bin/python -m tests.load.bench_ingest [--seconds 20] [--clients 8] [--workers 2] [--threads 4]
                                                [--batch-size 1000] [--json out.json]

What is measured
----------------
Two workloads, each on two paths, on one throw-away native cluster (PostgreSQL 15 + TimescaleDB, Apache
edition, tests/load/native_cluster.py):

- single: one reading per transaction (per request), METER and VEHICLE alternating: devices reporting alone;
- batch: --batch-size readings per transaction (per request), half METER, half VEHICLE: a gateway.

- direct: `api.ingest.service.ingest()`, the very function the endpoint calls (one transaction, the dual-write
  statements of db/readings.py, through `db.make_engine` with a pool), from --clients threads spread over
  --client-procs processes, each process with its own pool;
- api: the same readings as JSON, POSTed by --clients keep-alive HTTP clients (http.client; threads spread
  over --client-procs processes) to `fleet serve` (gunicorn with docker/gunicorn.conf.py, --workers and
  --threads, FLEET_RATE_LIMIT=off, FLEET_DB_POOL_SIZE=--threads) with a device-role API key.

Each scenario runs --warmup seconds that are not counted, then --seconds that are: readings/s is the number
of readings acknowledged by requests that completed inside the measured window, divided by its length;
latency percentiles are of those requests. Every response must be 2xx (anything else is counted as an error);
a dropped connection is reconnected and the same body re-sent (safe: ingest is idempotent). API clients keep
a connection alive for --connection-seconds, then open a new one, as devices do (gunicorn closes idle ones
after 2 s anyway): with a few everlasting connections the kernel may pin most of them to one gunicorn worker
(one GIL) while another idles, which measures the benchmark, not the server.

Data: 10,000 meters (`meter-00000`..) and 10,000 vehicles. Reading number n is kind n % 2, device
(n // 2) % 10,000, minute (n // 2) // 10,000 of the scenario's own day of timestamps, so the whole fleet
reports minute after minute, every reading is a distinct (device, timestamp), and values stay inside the
API's validation bounds. Before the scenarios every device gets one reading (untimed), so current state is
updated, not inserted, as in a running fleet. Both paths build readings from the same numbers; a self-check
proves that the JSON the API receives validates into exactly the readings the direct path writes. After each
scenario the rows stored in its day are counted and must equal the readings acknowledged as stored.

CPU: the load generator shares the machine's cores with gunicorn and PostgreSQL. For each scenario the CPU
used during the measured window (from /proc) is split into client processes, gunicorn (master and each
worker), PostgreSQL (every process of the cluster), kernel interrupt time, steal, and everything else, as %
of all cores, with the busiest processes outside the benchmark named: "other" well above 0 means something
else was running and the rates are disturbed. CPU per reading (microseconds of clients, gunicorn and
PostgreSQL) varies much less with outside load and tells where the cost is.

Investigation knobs: --gunicorn-args (GUNICORN_CMD_ARGS, e.g. '--keep-alive 5'), --gunicorn-conf (another
gunicorn configuration file, to measure a proposed change without editing docker/gunicorn.conf.py; the access
log, for one, cannot be switched off from GUNICORN_CMD_ARGS, but a file holding
`exec(open("docker/gunicorn.conf.py").read())` and `accesslog = None` does it),
--pg-setting name=value (server settings; fsync is on unless --pg-setting fsync=off, see
tests/load/native_cluster.py), --skip-direct, --workloads.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import multiprocessing as mp
import os
import platform
import queue
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import port_for
import sqlalchemy as sa
from sqlalchemy.engine import Engine

import db
from db import keys
from db.readings import MeterReading, VehicleReading
from tests.load.benchlib import descendants, machine_jiffies, proc_table, stop_process, tail
from tests.load.native_cluster import native_cluster, require_native_engine

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
ENDPOINT = "/v1/telemetry/ingest"
DEVICES_PER_KIND = 10_000
MINUTES_PER_WINDOW = 24 * 60
#: Design targets (product brief), readings/s through gunicorn on this machine.
TARGETS = {"single": 1_000.0, "batch": 30_000.0}
PATHS = ("direct", "api")
WORKLOADS = ("single", "batch")

logger = logging.getLogger("bench_ingest")


# --- readings: the same numbers give the same readings on both paths ------------------------------------------

# Values inside the validation bounds of api/ingest/schemas.py, pre-formatted once (JSON numbers as text).
_KWH_AC = [f"{0.05 + i / 10_000:.4f}" for i in range(1000)]  # 0.05-0.15 kWh a minute: a 3-9 kW charger
_VOLTAGE = [f"{220 + i / 50:.2f}" for i in range(1000)]  # 220-240 V
_SOC = [f"{5 + i * 0.09:.2f}" for i in range(1000)]  # 5-95 %
_KWH_DC = [f"{0.045 + i * 0.00009:.5f}" for i in range(1000)]  # 0.045-0.135 kWh
_BATTERY_TEMP = [f"{10 + i * 0.03:.2f}" for i in range(1000)]  # 10-40 C
_FLOAT = {s: float(s) for table in (_KWH_AC, _VOLTAGE, _SOC, _KWH_DC, _BATTERY_TEMP) for s in table}
_METER_ITEM = '{"type":"METER","payload":{"meterId":"%s","kwhConsumedAc":%s,"voltage":%s,"timestamp":"%s"}}'
_VEHICLE_ITEM = (
    '{"type":"VEHICLE","payload":{"vehicleId":"%s","soc":%s,"kwhDeliveredDc":%s,'
    '"batteryTemp":%s,"isCharging":%s,"timestamp":"%s"}}'
)
_METER_IDS = [f"meter-{d:05d}" for d in range(DEVICES_PER_KIND)]
_VEHICLE_IDS = [f"vehicle-{d:05d}" for d in range(DEVICES_PER_KIND)]


class ReadingFactory:
    """Reading number n -> one reading of a day of timestamps starting at `window_start` (a whole minute, UTC).

    Cheap on purpose (the load generator shares the cores it measures): ids, values and timestamps are
    pre-formatted strings, a JSON body is a string join."""

    def __init__(self, window_start: datetime) -> None:
        self.window_start = window_start
        self._times: dict[int, tuple[datetime, str]] = {}

    def _time(self, minute: int) -> tuple[datetime, str]:
        found = self._times.get(minute)
        if found is None:
            if minute >= MINUTES_PER_WINDOW:
                raise RuntimeError("the scenario used up its day of timestamps (28.8M readings); shorten the run")
            ts = self.window_start + timedelta(minutes=minute)
            found = self._times[minute] = (ts, ts.isoformat())
        return found

    def _item_json(self, n: int) -> str:
        j = n >> 1
        device, minute = j % DEVICES_PER_KIND, j // DEVICES_PER_KIND
        iso = self._time(minute)[1]
        v = (n * 7919) % 1000
        if n & 1 == 0:
            return _METER_ITEM % (_METER_IDS[device], _KWH_AC[v], _VOLTAGE[(n * 31) % 1000], iso)
        charging = "true" if j % 3 else "false"
        return _VEHICLE_ITEM % (
            _VEHICLE_IDS[device],
            _SOC[(device * 37 + minute) % 1000],
            _KWH_DC[v],
            _BATTERY_TEMP[(n * 13) % 1000],
            charging,
            iso,
        )

    def body(self, first: int, count: int) -> bytes:
        """Readings first..first+count-1 as a request body: one object for a single reading, else an array."""
        if count == 1:
            return self._item_json(first).encode()
        return ("[" + ",".join([self._item_json(n) for n in range(first, first + count)]) + "]").encode()

    def readings(self, first: int, count: int) -> list[MeterReading | VehicleReading]:
        """The same readings as db/readings.py objects, for the direct path."""
        out: list[MeterReading | VehicleReading] = []
        for n in range(first, first + count):
            j = n >> 1
            device, minute = j % DEVICES_PER_KIND, j // DEVICES_PER_KIND
            ts = self._time(minute)[0]
            v = (n * 7919) % 1000
            if n & 1 == 0:
                out.append(MeterReading(_METER_IDS[device], ts, _FLOAT[_KWH_AC[v]], _FLOAT[_VOLTAGE[(n * 31) % 1000]]))
            else:
                out.append(
                    VehicleReading(
                        _VEHICLE_IDS[device],
                        ts,
                        _FLOAT[_SOC[(device * 37 + minute) % 1000]],
                        _FLOAT[_KWH_DC[v]],
                        _FLOAT[_BATTERY_TEMP[(n * 13) % 1000]],
                        bool(j % 3),
                    )
                )
        return out


def self_check(batch_size: int) -> None:
    """The API's own validation turns the JSON bodies into exactly the readings the direct path writes."""
    from api.ingest import schemas

    factory = ReadingFactory(_minute_floor(datetime.now(UTC)) - timedelta(days=2))
    window = schemas.ReadingBounds(max_future=timedelta(minutes=5), max_age=timedelta(days=30))
    for first, count in ((0, 1), (1, 1), (123_457, batch_size)):
        parsed = schemas.load_body(json.loads(factory.body(first, count)), window, max(batch_size, 1))
        if parsed != factory.readings(first, count):
            raise AssertionError(f"API body and direct readings differ for readings {first}..{first + count - 1}")


def _minute_floor(ts: datetime) -> datetime:
    return ts.replace(second=0, microsecond=0)


# --- client processes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientPlan:
    """What one client process does; its threads take request numbers slot, slot + slots, slot + 2*slots..."""

    path: str  # "direct" or "api"
    target: str  # database URL (direct) or host:port (api)
    api_key: str
    batch_size: int
    window_start: datetime
    threads: int
    first_slot: int
    total_slots: int
    request_timeout: float
    connection_seconds: float = 0.0


@dataclass
class ThreadStats:
    requests_ok: int = 0
    requests_failed: int = 0
    stored: int = 0
    duplicates: int = 0
    reconnects: int = 0
    measured_requests: int = 0
    measured_readings: int = 0
    latencies: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    def error(self, text: str) -> None:
        self.requests_failed += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(text[:300])

    def done(self, started: float, finished: float, readings: int, window: tuple[float, float]) -> None:
        if window[0] <= finished < window[1]:
            self.measured_requests += 1
            self.measured_readings += readings
            self.latencies.append(finished - started)


def _client_main(plan: ClientPlan, times: Any, ready: Any, go: Any, results: Any) -> None:
    """Entry point of a client process (spawned): prepare, wait for `go`, run until times[1], report."""
    try:
        runner = _DirectRunner(plan) if plan.path == "direct" else _ApiRunner(plan)
        ready.put(("ready", os.getpid(), ""))
        if not go.wait(timeout=300):
            return
        measure_at, stop_at = times[0], times[1]
        cpu: list[float] = []
        monitor = threading.Thread(target=_cpu_monitor, args=(measure_at, stop_at, cpu), daemon=True)
        monitor.start()
        stats = [ThreadStats() for _ in range(plan.threads)]
        threads = [
            threading.Thread(target=runner.loop, args=(plan.first_slot + i, stats[i], measure_at, stop_at), daemon=True)
            for i in range(plan.threads)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(0.0, stop_at - time.monotonic()) + plan.request_timeout * 4 + 5)
        monitor.join(timeout=5)
        runner.close()
        hung = sum(t.is_alive() for t in threads)
        results.put(("result", os.getpid(), {"threads": [asdict(s) for s in stats], "cpu": cpu, "hung": hung}))
    except BaseException:
        ready.put(("error", os.getpid(), traceback.format_exc()))
        results.put(("error", os.getpid(), traceback.format_exc()))


def _cpu_monitor(measure_at: float, stop_at: float, out: list[float]) -> None:
    def used() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    time.sleep(max(0.0, measure_at - time.monotonic()))
    start = used()
    time.sleep(max(0.0, stop_at - time.monotonic()))
    out.append(used() - start)


class _DirectRunner:
    """Direct path: the endpoint's own service function, with a pool of one connection per thread."""

    def __init__(self, plan: ClientPlan) -> None:
        from api.ingest import service  # the function the endpoint calls; it needs no Flask app

        self.plan = plan
        self.ingest = service.ingest
        self.engine = db.make_engine(plan.target, pool_size=plan.threads, pool_timeout=30, connect_timeout=30)
        self.factory = ReadingFactory(plan.window_start)
        conns = [self.engine.connect() for _ in range(plan.threads)]  # open the pool before the clock runs
        for conn in conns:
            conn.close()

    def loop(self, slot: int, stats: ThreadStats, measure_at: float, stop_at: float) -> None:
        size, step = self.plan.batch_size, self.plan.total_slots
        request = slot
        while time.monotonic() < stop_at:
            batch = self.factory.readings(request * size, size)
            started = time.monotonic()
            try:
                result = self.ingest(self.engine, batch)
            except Exception as exc:
                stats.error(f"{type(exc).__name__}: {exc}")
            else:
                stats.requests_ok += 1
                stats.stored += result.stored
                stats.duplicates += result.duplicates
                stats.done(started, time.monotonic(), size, (measure_at, stop_at))
            request += step

    def close(self) -> None:
        self.engine.dispose()


class _ApiRunner:
    """API path: one persistent http.client connection per thread, bodies built from pre-formatted strings."""

    def __init__(self, plan: ClientPlan) -> None:
        self.plan = plan
        self.host, port = plan.target.rsplit(":", 1)
        self.port = int(port)
        self.factory = ReadingFactory(plan.window_start)
        self.headers = {"Content-Type": "application/json", "X-API-Key": plan.api_key}
        self.conns: dict[int, http.client.HTTPConnection] = {}
        self._connect().close()  # the server answers before the clock runs

    def _connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.plan.request_timeout)
        conn.request("GET", "/health")  # connected and answered: the next request only pays for itself
        conn.getresponse().read()
        return conn

    def loop(self, slot: int, stats: ThreadStats, measure_at: float, stop_at: float) -> None:
        size, step = self.plan.batch_size, self.plan.total_slots
        conn = self.conns[slot] = self._connect()  # during the warm-up
        request, opened = slot, time.monotonic()
        while time.monotonic() < stop_at:
            if self.plan.connection_seconds and time.monotonic() - opened >= self.plan.connection_seconds:
                conn.close()  # as devices do: the next request opens a new connection, to whichever worker accepts
                opened = time.monotonic()
            body = self.factory.body(request * size, size)
            started = time.monotonic()
            for attempt in range(3):
                try:
                    conn.request("POST", ENDPOINT, body, self.headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    # Connection dropped (e.g. a worker recycled by max_requests): re-send the same body on a new
                    # connection (http.client reopens a closed one); a reading stored after all is a duplicate.
                    conn.close()
                    stats.reconnects += 1
                    if attempt == 2 or time.monotonic() >= stop_at + self.plan.request_timeout:
                        stats.error(f"connection: {type(exc).__name__}: {exc}")
                        break
                    time.sleep(0.05 * attempt)
                    continue
                if 200 <= resp.status < 300:
                    doc = json.loads(data)
                    stats.requests_ok += 1
                    stats.stored += doc["stored"]
                    stats.duplicates += doc["duplicates"]
                    stats.done(started, time.monotonic(), size, (measure_at, stop_at))
                else:
                    stats.error(f"HTTP {resp.status}: {data[:300].decode(errors='replace')}")
                if resp.will_close:  # the server ends this connection: the next request opens another
                    conn.close()
                    stats.reconnects += 1
                break
            request += step

    def close(self) -> None:
        for conn in list(self.conns.values()):
            conn.close()


# --- CPU accounting from /proc ------------------------------------------------------------------------------


@dataclass
class CpuSnapshot:
    table: dict[int, tuple[int, float, float, str]]
    trees: dict[str, float]  # CPU seconds of each watched process tree
    machine: list[float]  # /proc/stat: user nice system idle iowait irq softirq steal, seconds
    bench: float  # this process


class CpuWatch:
    """CPU used by process trees (gunicorn, PostgreSQL), by the kernel and by the whole machine, between snapshots.

    The client processes measure themselves (getrusage), so their CPU is exact even when they exit."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = roots

    def snapshot(self) -> CpuSnapshot:
        table = proc_table()
        # A tree's CPU includes what its reaped processes used: a child that ends inside the window (a recycled
        # worker, a short-lived backend) was either a live descendant at the first snapshot or started after it.
        trees = {
            name: sum(table[p][1] + table[p][2] for p in descendants(table, [root]))
            for name, root in self.roots.items()
        }
        machine = machine_jiffies()
        r = resource.getrusage(resource.RUSAGE_SELF)
        return CpuSnapshot(table, trees, machine, r.ru_utime + r.ru_stime)

    def breakdown(self, before: CpuSnapshot, after: CpuSnapshot, clients: float) -> dict[str, Any]:
        """% of all cores: clients, gunicorn, postgres, kernel (irq/softirq), steal, other, idle; and the
        processes outside this benchmark that used the most CPU (name: %)."""
        delta = [a - b for a, b in zip(after.machine, before.machine, strict=True)]
        capacity = sum(delta) or 1.0
        idle, kernel, steal = delta[3] + delta[4], delta[5] + delta[6], delta[7]
        busy = capacity - idle
        tracked = {name: after.trees[name] - before.trees[name] for name in self.roots}
        mine = clients + (after.bench - before.bench) + sum(tracked.values())
        ours: set[int] = {os.getpid()}
        for root in (os.getpid(), *self.roots.values()):
            ours.update(descendants(after.table, [root]))
        outside: dict[str, float] = {}  # own CPU only: a reaped child's whole life would land on its parent
        for pid, (_, used, _, name) in after.table.items():
            if pid not in ours:
                used -= before.table[pid][1] if pid in before.table else 0.0
                outside[name] = outside.get(name, 0.0) + used
        top = sorted(((v, k) for k, v in outside.items() if v > 0.01 * capacity), reverse=True)[:4]
        # Each gunicorn worker is one process (one GIL): an uneven share of keep-alive connections shows here.
        workers = [
            100 * (after.table[pid][1] - before.table[pid][1]) / capacity
            for pid, (ppid, *_) in after.table.items()
            if ppid == self.roots.get("gunicorn") and pid in before.table
        ]
        return {
            "clients": 100 * (clients + after.bench - before.bench) / capacity,
            **{name: 100 * used / capacity for name, used in tracked.items()},
            "kernel_irq": 100 * kernel / capacity,
            "steal": 100 * steal / capacity,
            "other": 100 * max(0.0, busy - mine - kernel - steal) / capacity,
            "idle": 100 * idle / capacity,
            "other_top": {name: round(100 * used / capacity, 1) for used, name in top},
            "gunicorn_workers": sorted((round(w, 1) for w in workers), reverse=True),
            "seconds": {"clients": clients + after.bench - before.bench, **tracked},
        }


# --- gunicorn -----------------------------------------------------------------------------------------------


@dataclass
class Gunicorn:
    pid: int
    address: str
    log_path: Path
    env_summary: dict[str, str]

    def log_counts(self) -> dict[str, int]:
        text = self.log_path.read_text(errors="replace")
        return {
            "worker_boots": text.count("Booting worker"),
            "worker_timeouts": text.count("WORKER TIMEOUT"),
            "tracebacks": text.count("Traceback"),
            "log_bytes": len(text.encode()),
        }


@contextmanager
def gunicorn_server(
    database_url: str, workers: int, threads: int, *, extra_args: str, conf: Path | None, log_dir: Path
) -> Iterator[Gunicorn]:
    """`fleet serve` on a free loopback port, ready (GET /ready is 200) when yielded; stopped by PID after.

    With `conf`, gunicorn is started with that configuration file instead of docker/gunicorn.conf.py (the
    command `fleet serve` execs otherwise), to measure a proposed configuration change."""
    port = port_for.select_random()
    cmd_args = extra_args.strip()
    env_summary = {
        "DATABASE_URL": database_url,
        "FLEET_RATE_LIMIT": "off",
        "FLEET_DB_POOL_SIZE": str(threads),
    }
    if cmd_args:
        env_summary["GUNICORN_CMD_ARGS"] = cmd_args
    env = {**os.environ, **env_summary}
    env.pop("FLEET_WORKERS", None)
    env.pop("FLEET_THREADS", None)
    log_path = log_dir / "gunicorn.log"
    serve = ["-m", "cli", "serve"] if conf is None else ["-m", "gunicorn", "-c", str(conf)]
    command = [sys.executable, *serve, "--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    command += ["--threads", str(threads), *([] if conf is None else ["api:create_app()"])]
    with log_path.open("wb") as log:
        # Own session: a Ctrl-C in the terminal reaches only this script, which then stops gunicorn itself.
        proc = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Gunicorn(proc.pid, f"127.0.0.1:{port}", log_path, env_summary)
    try:
        _wait_ready(proc, server)
        yield server
    finally:
        stop_process(proc, name="gunicorn")


def _wait_ready(proc: subprocess.Popen[bytes], server: Gunicorn, timeout: float = 60.0) -> None:
    host, port = server.address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}:\n{tail(server.log_path)}")
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=2)
            conn.request("GET", "/ready")
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"gunicorn not ready after {timeout:g} s:\n{tail(server.log_path)}")
        time.sleep(0.2)


# --- scenarios ----------------------------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    workload: str
    path: str
    batch_size: int
    seconds: float
    readings_per_s: float
    requests_per_s: float
    requests_ok: int
    errors: int
    reconnects: int
    stored: int
    duplicates: int
    rows_in_db: int
    count_check: bool
    p50_ms: float | None
    p99_ms: float | None
    cpu_pct: dict[str, Any]
    cpu_us_per_reading: dict[str, float]
    hung_threads: int
    error_samples: list[str]
    window_start: str


def _get(q: Any, timeout: float, message: str) -> Any:
    try:
        return q.get(timeout=max(1.0, timeout))
    except queue.Empty:
        raise RuntimeError(message) from None


def _percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def run_scenario(
    *,
    workload: str,
    path: str,
    args: argparse.Namespace,
    target: str,
    api_key: str,
    window_start: datetime,
    engine: Engine,
    cpu: CpuWatch,
) -> ScenarioResult:
    """Drive one workload on one path with --clients threads in --client-procs processes; bounded in time."""
    batch_size = 1 if workload == "single" else args.batch_size
    procs_n = max(1, min(args.client_procs, args.clients))
    per_proc = [args.clients // procs_n + (1 if i < args.clients % procs_n else 0) for i in range(procs_n)]
    ctx = mp.get_context("spawn")  # fresh interpreters: no inherited pools, sockets or locks
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    times = ctx.Array("d", 2)
    procs = []
    first = 0
    try:
        for n in per_proc:
            plan = ClientPlan(
                path, target, api_key, batch_size, window_start, n, first, args.clients, args.request_timeout
            )
            first += n
            plan = replace(plan, connection_seconds=args.connection_seconds)
            p = ctx.Process(target=_client_main, args=(plan, times, ready, go, results), daemon=True)
            p.start()
            procs.append(p)
        for _ in procs:
            kind, pid, detail = _get(ready, 120.0, "client processes did not start within 120 s")
            if kind != "ready":
                raise RuntimeError(f"client process {pid} failed to start:\n{detail}")
        measure_at = time.monotonic() + 0.2 + args.warmup
        stop_at = measure_at + args.seconds
        times[0], times[1] = measure_at, stop_at
        go.set()
        time.sleep(max(0.0, measure_at - time.monotonic()))
        before = cpu.snapshot()
        time.sleep(max(0.0, stop_at - time.monotonic()))
        after = cpu.snapshot()
        reports = []
        deadline = stop_at + args.request_timeout * 4 + 30
        for _ in procs:
            kind, pid, detail = _get(results, deadline - time.monotonic(), "client processes did not report in time")
            if kind != "result":
                raise RuntimeError(f"client process {pid} failed:\n{detail}")
            reports.append(detail)
        for p in procs:
            p.join(timeout=10)
    finally:
        for p in procs:  # by PID, whatever happened above
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)

    threads = [t for r in reports for t in r["threads"]]
    latencies = sorted(x for t in threads for x in t["latencies"])
    measured_readings = sum(t["measured_readings"] for t in threads)
    stored = sum(t["stored"] for t in threads)
    end = window_start + timedelta(minutes=MINUTES_PER_WINDOW)
    rows = count_rows(engine, window_start, end)

    cpu_pct = cpu.breakdown(before, after, clients=sum(c for r in reports for c in r["cpu"]))
    return ScenarioResult(
        workload=workload,
        path=path,
        batch_size=batch_size,
        seconds=args.seconds,
        readings_per_s=measured_readings / args.seconds,
        requests_per_s=sum(t["measured_requests"] for t in threads) / args.seconds,
        requests_ok=sum(t["requests_ok"] for t in threads),
        errors=sum(t["requests_failed"] for t in threads),
        reconnects=sum(t["reconnects"] for t in threads),
        stored=stored,
        duplicates=sum(t["duplicates"] for t in threads),
        rows_in_db=rows,
        count_check=rows == stored,
        p50_ms=None if not latencies else 1000 * (_percentile(latencies, 0.50) or 0.0),
        p99_ms=None if not latencies else 1000 * (_percentile(latencies, 0.99) or 0.0),
        cpu_pct=cpu_pct,
        cpu_us_per_reading={k: 1e6 * v / max(1, measured_readings) for k, v in cpu_pct.pop("seconds").items()},
        hung_threads=sum(r["hung"] for r in reports),
        error_samples=[e for t in threads for e in t["error_samples"]][:5],
        window_start=window_start.isoformat(),
    )


def count_rows(engine: Engine, start: datetime, end: datetime) -> int:
    """History rows (both kinds) with timestamps in [start, end)."""
    query = sa.text(
        "SELECT (SELECT count(*) FROM meter_readings WHERE recorded_at >= :s AND recorded_at < :e)"
        " + (SELECT count(*) FROM vehicle_readings WHERE recorded_at >= :s AND recorded_at < :e)"
    )
    with engine.connect() as conn:
        return int(conn.execute(query, {"s": start, "e": end}).scalar_one())


def prime_current_state(engine: Engine, window_start: datetime) -> int:
    """One reading for every meter and vehicle (untimed), so the scenarios update current state."""
    from api.ingest import service

    factory = ReadingFactory(window_start)
    stored = 0
    for first in range(0, 2 * DEVICES_PER_KIND, 1000):
        stored += service.ingest(engine, factory.readings(first, 1000)).stored
    return stored


def engine_info(engine: Engine) -> dict[str, Any]:
    query = sa.text(
        "SELECT current_setting('timescaledb.license') AS license,"
        " (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb') AS timescaledb_version,"
        " current_setting('server_version') AS server_version,"
        " current_setting('shared_buffers') AS shared_buffers,"
        " current_setting('synchronous_commit') AS synchronous_commit,"
        " current_setting('fsync') AS fsync,"
        " current_setting('max_connections') AS max_connections,"
        " pg_backend_pid() AS backend_pid"
    )
    with engine.connect() as conn:
        info = dict(conn.execute(query).mappings().one())
    backend = info.pop("backend_pid")
    info["postmaster_pid"] = proc_table()[backend][0]
    return info


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    load1, load5, _ = os.getloadavg()
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "loadavg_at_start": [round(load1, 2), round(load5, 2)],
        "python": platform.python_version(),
    }


# --- report -------------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render(report: dict[str, Any]) -> str:
    m, e, p = report["machine"], report["engine"], report["parameters"]
    reconnect = f"{p['connection_seconds']:g} s" if p["connection_seconds"] else "never"
    lines = [
        "",
        "Ingest benchmark: POST /v1/telemetry/ingest through gunicorn vs the same SQL directly",
        f"machine : {m['cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, load avg at start"
        f" {m['loadavg_at_start'][0]} (1 min), Python {m['python']}",
        f"engine  : native PostgreSQL {e['server_version']}, TimescaleDB {e['timescaledb_version']}"
        f" (timescaledb.license = {e['license']}); shared_buffers {e['shared_buffers']},"
        f" synchronous_commit {e['synchronous_commit']}, fsync {e['fsync']}",
        f"params  : {p['seconds']:g} s measured + {p['warmup']:g} s warm-up per scenario; {p['clients']} clients"
        f" in {p['client_procs']} processes (API: new connection every {reconnect});"
        f" gunicorn --workers {p['workers']} --threads {p['threads']},"
        f" pool {p['threads']}/worker, config {p['gunicorn_conf'] or 'docker/gunicorn.conf.py (fleet serve)'}"
        + (f", GUNICORN_CMD_ARGS {p['gunicorn_args']!r}" if p["gunicorn_args"] else "")
        + f"; batch size {p['batch_size']}"
        + (f"; server settings {p['pg_settings']}" if p["pg_settings"] else ""),
        "",
    ]
    header = (
        f"{'scenario':<16}{'API rd/s':>11}{'direct rd/s':>13}{'API/direct':>11}{'target':>9}{'met':>5}"
        f"{'errors':>8}{'API p50 ms':>12}{'API p99 ms':>12}{'direct p50':>12}{'direct p99':>12}"
    )
    lines += [header, "-" * len(header)]
    by_key = {(s["workload"], s["path"]): s for s in report["scenarios"]}
    for workload in report["parameters"]["workloads"]:
        api, direct = by_key.get((workload, "api")), by_key.get((workload, "direct"))
        label = "single reading" if workload == "single" else f"batch of {p['batch_size']}"
        api_rate = api["readings_per_s"] if api else None
        direct_rate = direct["readings_per_s"] if direct else None
        ratio = api_rate / direct_rate if api_rate is not None and direct_rate else None
        target = TARGETS[workload]
        met = "-" if api_rate is None else ("yes" if api_rate >= target else "NO")
        errors = sum(s["errors"] for s in (api, direct) if s)
        lines.append(
            f"{label:<16}{_fmt(api_rate):>11}{_fmt(direct_rate):>13}{_fmt(ratio, 2):>11}{_fmt(target):>9}{met:>5}"
            f"{errors:>8}{_fmt(api and api['p50_ms'], 1):>12}{_fmt(api and api['p99_ms'], 1):>12}"
            f"{_fmt(direct and direct['p50_ms'], 1):>12}{_fmt(direct and direct['p99_ms'], 1):>12}"
        )
    lines += [
        "",
        "CPU per reading (robust on a shared machine), microseconds:",
        f"{'scenario':<18}{'clients':>9}{'gunicorn':>10}{'postgres':>10}",
    ]
    for s in report["scenarios"]:
        u, label = s["cpu_us_per_reading"], f"{s['workload']} / {s['path']}"
        lines.append(f"{label:<18}{u['clients']:>9,.0f}{u['gunicorn']:>10,.0f}{u['postgres']:>10,.0f}")
    lines += ["", "CPU during the measured window, % of all cores (clients = load generator):"]
    lines.append(
        f"{'scenario':<18}{'clients':>9}{'gunicorn':>10}{'postgres':>10}{'kernel':>8}{'steal':>7}{'other':>7}"
        f"{'idle':>6}  gunicorn by worker / top processes outside the benchmark"
    )
    for s in report["scenarios"]:
        c = s["cpu_pct"]
        top = ", ".join(f"{name} {pct:.0f}%" for name, pct in c["other_top"].items()) or "-"
        if s["path"] == "api":
            top = "workers " + "+".join(f"{w:.0f}%" for w in c["gunicorn_workers"]) + "; other: " + top
        lines.append(
            f"{s['workload'] + ' / ' + s['path']:<18}{c['clients']:>8.0f}%{c['gunicorn']:>9.0f}%"
            f"{c['postgres']:>9.0f}%{c['kernel_irq']:>7.0f}%{c['steal']:>6.0f}%{c['other']:>6.0f}%{c['idle']:>5.0f}%"
            f"   {top}"
        )
    lines += ["", "Check: rows stored in each scenario's day == readings acknowledged as stored:"]
    for s in report["scenarios"]:
        status = "ok" if s["count_check"] else "MISMATCH"
        lines.append(
            f"  {s['workload'] + ' / ' + s['path']:<22} rows {s['rows_in_db']:>10,}  acknowledged {s['stored']:>10,}"
            f"  duplicates {s['duplicates']:>3}  requests ok {s['requests_ok']:>8,}  errors {s['errors']}"
            f"  reconnects {s['reconnects']}  -> {status}"
        )
        for sample in s["error_samples"]:
            lines.append(f"      error: {sample}")
    g = report.get("gunicorn_log")
    if g:
        lines.append(
            f"gunicorn log: {g['worker_boots']} worker boots (incl. the first {p['workers']}),"
            f" {g['worker_timeouts']} worker timeouts, {g['tracebacks']} tracebacks, {g['log_bytes']:,} bytes"
        )
    lines += [f"total run time {report['elapsed_s']:.0f} s", ""]
    for warning in report["warnings"]:
        lines.append(f"WARNING: {warning}")
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.load.bench_ingest",
        description="Single-reading and batch ingest rates through gunicorn next to the same SQL sent directly.",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per scenario (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="uncounted seconds before each (default 3)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients, both paths (default 8)")
    parser.add_argument("--client-procs", type=int, default=2, help="processes the clients run in (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker (default 4)")
    parser.add_argument("--batch-size", type=int, default=1000, help="readings per batch (default 1000)")
    parser.add_argument("--workloads", default="single,batch", help="comma list of single,batch")
    parser.add_argument("--skip-direct", action="store_true", help="only the API path (tuning runs)")
    parser.add_argument("--gunicorn-args", default="", help="GUNICORN_CMD_ARGS for the server, e.g. '--keep-alive 5'")
    parser.add_argument(
        "--gunicorn-conf",
        type=Path,
        help="run gunicorn with this configuration file instead of `fleet serve` (to try a change to it)",
    )
    parser.add_argument(
        "--pg-setting", action="append", default=[], metavar="NAME=VALUE", help="server setting (repeatable)"
    )
    parser.add_argument(
        "--connection-seconds",
        type=float,
        default=1.0,
        help="API clients use a connection for this long, then open a new one (0: forever; default 1)",
    )
    parser.add_argument("--request-timeout", type=float, default=30.0, help="per request, seconds (default 30)")
    parser.add_argument("--max-errors", type=int, default=0, help="exit 1 when more requests fail (default 0)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not args.workloads or set(args.workloads) - set(WORKLOADS):
        parser.error(f"--workloads: choose among {', '.join(WORKLOADS)}")
    for name in ("seconds", "clients", "client_procs", "workers", "threads", "batch_size", "request_timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    if args.warmup < 0 or args.connection_seconds < 0:
        parser.error("--warmup and --connection-seconds must be >= 0")
    if args.batch_size > 1000:
        parser.error("--batch-size: the API accepts at most FLEET_MAX_BATCH (1000) readings a request")
    try:
        args.pg_settings = dict(s.split("=", 1) for s in args.pg_setting)
    except ValueError:
        parser.error("--pg-setting takes NAME=VALUE")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start everything, run the scenarios, stop everything (by PID, even on Ctrl-C); returns the report."""
    started = time.monotonic()
    require_native_engine()
    self_check(args.batch_size)
    paths = [p for p in PATHS if not (args.skip_direct and p == "direct")]
    scenarios = [(w, p) for w in args.workloads for p in paths]
    # One day of timestamps each: priming first, then each scenario, the last ending at the current minute.
    now = _minute_floor(datetime.now(UTC))
    windows = [now - timedelta(days=len(scenarios) + 1 - i) for i in range(len(scenarios) + 1)]
    report: dict[str, Any] = {"machine": machine_info(), "warnings": []}
    with ExitStack() as stack:
        log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fleet-bench-")))
        logger.info("starting a native cluster")
        url = stack.enter_context(native_cluster("fleet_bench", settings=args.pg_settings))
        engine = db.make_engine(url, pool_size=2)
        stack.callback(engine.dispose)
        report["engine"] = info = engine_info(engine)
        logger.info("priming current state of %d devices", prime_current_state(engine, windows[0]))
        with db.transaction(engine) as conn:
            api_key = keys.create_key(conn, "bench-gateway", "device")[1]
        logger.info("starting gunicorn --workers %d --threads %d", args.workers, args.threads)
        server = stack.enter_context(
            gunicorn_server(
                url,
                args.workers,
                args.threads,
                extra_args=args.gunicorn_args,
                conf=args.gunicorn_conf.resolve() if args.gunicorn_conf else None,
                log_dir=log_dir,
            )
        )
        cpu = CpuWatch({"gunicorn": server.pid, "postgres": info["postmaster_pid"]})
        results = []
        for (workload, path), window in zip(scenarios, windows[1:], strict=True):
            logger.info("scenario %s / %s: %g s warm-up + %g s", workload, path, args.warmup, args.seconds)
            result = run_scenario(
                workload=workload,
                path=path,
                args=args,
                target=server.address if path == "api" else url,
                api_key=api_key,
                window_start=window,
                engine=engine,
                cpu=cpu,
            )
            logger.info(
                "  %s readings/s, %s errors, rows check %s",
                _fmt(result.readings_per_s),
                result.errors,
                "ok" if result.count_check else "MISMATCH",
            )
            results.append(asdict(result))
        report["gunicorn_log"] = server.log_counts()
        report["gunicorn_env"] = {k: v for k, v in server.env_summary.items() if k != "DATABASE_URL"}
    report["scenarios"] = results
    report["parameters"] = {
        "seconds": args.seconds,
        "warmup": args.warmup,
        "clients": args.clients,
        "client_procs": max(1, min(args.client_procs, args.clients)),
        "workers": args.workers,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "workloads": args.workloads,
        "connection_seconds": args.connection_seconds,
        "gunicorn_args": args.gunicorn_args,
        "gunicorn_conf": str(args.gunicorn_conf) if args.gunicorn_conf else None,
        "pg_settings": args.pg_settings,
    }
    report["elapsed_s"] = time.monotonic() - started
    worst_other = max(s["cpu_pct"]["other"] for s in results)
    if worst_other > 5:
        report["warnings"].append(
            f"other processes used up to {worst_other:.0f}% of the machine during a measured window:"
            " the figures are disturbed; re-run on a quiet machine"
        )
    if any(s["hung_threads"] for s in results):
        report["warnings"].append("some client threads did not finish in time")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; exit status 1 when a row count check fails or too many requests failed."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s", datefmt="%X")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _interrupt)  # a kill runs the same clean-up as Ctrl-C
    try:
        report = run(args)
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"results written to {args.json}")
    failed_checks = [s for s in report["scenarios"] if not s["count_check"]]
    errors = sum(s["errors"] for s in report["scenarios"])
    if failed_checks:
        print(f"FAILED: stored rows differ from acknowledged readings in {len(failed_checks)} scenario(s)")
        return 1
    print("check passed: in every scenario the rows stored equal the readings acknowledged")
    if errors > args.max_errors:
        print(f"FAILED: {errors} requests failed (allowed: {args.max_errors})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
