"""Locust fleet scenarios against a real server: steady fleet with dashboards, and a burst; verdict, CSV, HTML.

Run from the repository root (loopback only; everything it starts is stopped by PID and removed afterwards):

    .venv/bin/python -m tests.load.run_locust --scenario steady,burst --out var/load/run1
        [--users 20000] [--dashboards 20] [--run-time 7m] [--history-minutes 1440] [--workers 2 --threads 4]

What it does
------------
1. Starts a throw-away native cluster (tests/load/native_cluster.py; the server settings of bench_analytics) or
   uses --database-url. With --history-minutes (default: a full day when the steady scenario runs) it loads the
   fleet's history with tests/load/fleet_day.py (--users / 2 meters and as many vehicles, one reading a minute,
   ending a minute before now, so "the last 24 h" is full and the devices' next readings are newer), and
   pre-warms it into shared_buffers as bench_analytics does (a server that has been ingesting the day has it
   in memory).
2. Creates a device key and a read key, and starts `fleet serve` (gunicorn, docker/gunicorn.conf.py, --workers x
   --threads, pool = threads, FLEET_RATE_LIMIT --rate-limit: high enough for one key shared by the fleet, but
   on, so the limiter's cost is in the figures) on a free loopback port, or uses --url.
3. Per scenario, a baseline measured right before, on the same database:
   - steady: the dashboards' calls on the bare data layer (db/devices.py, db/analytics.py on one connection,
     as bench_analytics' "direct" path): status of a vehicle and a meter, 24 h performance (the API's default
     window), the 1 h fleet view; and the same calls sampled during the run (`direct during`), so the
     HTTP figures under load can be read against the database's own latency at that moment;
   - burst: the same number of single-reading dual-write transactions (api.ingest.service.ingest, the function
     the endpoint calls, 2 processes x 4 threads with their own pools) as fast as the database takes them:
     how long the database alone needs for the burst.
4. Runs locust headless (tests/load/locustfile.py) as a subprocess: --csv and --html into --out, its log
   there too, bounded by --run-time (+ --stop-timeout so no request is cut off mid-flight), and reads back its
   CSV stats and the verdict summary (checks, acknowledged stored/duplicate readings, ingest rate per 10 s).
5. Checks that nothing was lost or doubled: the history rows with timestamps since the scenario started equal
   the successful ingest requests (locust's CSV) and the readings the API acknowledged as stored, with zero
   duplicates; and that every device has exactly one current-state row (ids match the loaded fleet).
6. Writes --json (default OUT/run_locust.json) and prints a summary; exit code 0 only when every scenario's
   verdict and every check passed.

Scenarios: `steady` holds --users devices at 60 s pacing (20,000: 333 readings/s) plus --dashboards dashboard
users for --run-time (default 7 min: ~20 s spawning + one pacing period + at least 5 min at full rate,
which --min-steady checks); `burst` makes every device report once within one 10 s window that opens once all
users are spawned, and must be drained within 50 s (before the next minute's burst). Both run against the same
cluster when given together (`--scenario steady,burst`).
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import queue
import random
import resource
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import ExitStack, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

import db
from api.analytics.window import resolve_window
from db import analytics, devices, keys
from tests.load.bench_analytics import BENCH_SETTINGS, prewarm, run_jobs_once
from tests.load.benchlib import (
    REPO_ROOT,
    CpuWatch,
    LoadSampler,
    Server,
    TreeCpu,
    cpu_line,
    descendants,
    gunicorn_server,
    log,
    machine_info,
    proc_table,
    run_benchmark,
    stop_process,
    summarize,
    tail,
)
from tests.load.fleet_day import load_fleet_day, meter_id, vehicle_id
from tests.load.hotpath import Recording
from tests.load.native_cluster import native_cluster, require_native_engine

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
SCENARIOS = ("steady", "burst", "overload")
PACING_SECONDS = 60.0
BURST_WINDOW_SECONDS = 10.0
BURST_DRAIN_SECONDS = 50.0
STOP_TIMEOUT_SECONDS = 30
#: overload: the capacity is measured with this many back-to-back senders for this long (the first 10 s unmeasured);
#: then the devices are paced to offer OVERLOAD_FACTOR x that rate, a device re-sends a shed reading up to
#: OVERLOAD_RETRY_ATTEMPTS times, and after the overload phase the devices have OVERLOAD_DRAIN_SECONDS to deliver
#: what they hold (Retry-After is at most FLEET_SHED_RETRY_AFTER_MAX_S, 120 s, x 1.5 by the device's jitter).
CAPACITY_SENDERS = 32
CAPACITY_SECONDS = 60
OVERLOAD_FACTOR = 2.0
OVERLOAD_RETRY_ATTEMPTS = 50
OVERLOAD_DRAIN_SECONDS = 200
MIN_GOODPUT_SHARE = 0.90
#: Dashboard calls, with the weights of the locustfile's Dashboard user.
DASHBOARD_MIX = (("status vehicle", 6), ("status meter", 3), ("performance 24h", 3), ("fleet 1h", 1))


# --- arguments -----------------------------------------------------------------------------------------------


def _duration(text: str) -> float:
    """'7m', '90s', '1h30m', '420' -> seconds."""
    text, total, number = text.strip().lower(), 0.0, ""
    for ch in text:
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in "hms" and number:
            total += float(number) * {"h": 3600, "m": 60, "s": 1}[ch]
            number = ""
        else:
            raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 7m, 90s, 1h30m)")
    return total + (float(number) if number else 0.0)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tests.load.run_locust", description=(__doc__ or "").splitlines()[0] or None
    )
    p.add_argument("--scenario", default="steady", help="steady, burst or steady,burst (default steady)")
    p.add_argument("--users", type=int, default=20_000, help="devices: half meters, half vehicles (default 20000)")
    p.add_argument("--dashboards", type=int, default=20, help="dashboard users in the steady scenario (default 20)")
    p.add_argument("--run-time", type=_duration, default=_duration("7m"), help="steady run time (default 7m)")
    p.add_argument(
        "--min-steady", type=_duration, default=_duration("5m"), help="steady phase at full rate (default 5m)"
    )
    p.add_argument(
        "--overload-time",
        type=_duration,
        default=_duration("200s"),
        help="overload: seconds offered 2 x the measured capacity, at full rate (default 200s; >= 3 min is checked)",
    )
    p.add_argument("--spawn-rate", type=float, default=0.0, help="users spawned per second (default users/20)")
    p.add_argument(
        "--history-minutes",
        type=int,
        default=None,
        help="minutes of fleet history loaded first (default 1440 with steady, 0 otherwise)",
    )
    p.add_argument("--url", default=None, help="use this running API instead of starting gunicorn")
    p.add_argument("--database-url", default=None, help="use this migrated database instead of a throw-away cluster")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    p.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker (default 4)")
    p.add_argument(
        "--rate-limit", default=None, help="FLEET_RATE_LIMIT for the server (default: 20 x devices per minute)"
    )
    p.add_argument("--samples", type=int, default=200, help="direct-SQL baseline calls per kind (default 200)")
    p.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE", help="server setting")
    p.add_argument(
        "--server-env", action="append", default=[], metavar="NAME=VALUE", help="API setting (FLEET_...) for gunicorn"
    )
    p.add_argument(
        "--profile",
        nargs="?",
        const="steady,burst",
        default="",
        metavar="SCENARIOS",
        help="py-spy the gunicorn workers during these scenarios (default with the flag alone: both; steady: 60 s"
        " at full rate; burst: its window + 25 s). py-spy takes CPU from the server: response times measured"
        " meanwhile are longer (the steady run's p95 rose from 130 to 630 ms in its profile window on 2 cores)",
    )
    p.add_argument(
        "--client-nice",
        type=int,
        default=-10,
        help="scheduling priority of the load generator (default -10, when allowed): devices have CPUs of their own;"
        " one that shares the server's cores and waits for them adds that wait to every response time it measures",
    )
    p.add_argument("--out", type=Path, required=True, help="directory for CSV, HTML, logs and the JSON report")
    p.add_argument("--json", type=Path, default=None, help="JSON report (default OUT/run_locust.json)")
    p.add_argument("--timeout", type=_duration, default=_duration("60m"), help="give up after this (default 60m)")
    args = p.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenario.split(",") if s.strip()]
    if not args.scenarios or set(args.scenarios) - set(SCENARIOS):
        p.error(f"--scenario: one or more of {', '.join(SCENARIOS)}, comma separated")
    if args.users < 2 or args.users % 2:
        p.error("--users must be an even number >= 2 (half meters, half vehicles)")
    if args.url and not args.database_url:
        p.error("--url needs --database-url (keys, baselines and row counts are made on the database)")
    if args.history_minutes is None:
        # A full day for the steady fleet; for the overload alone, two hours give dashboards real numbers to read.
        if args.database_url:
            args.history_minutes = 0
        elif "steady" in args.scenarios:
            args.history_minutes = 1440
        else:
            args.history_minutes = 120 if "overload" in args.scenarios else 0
    if not 0 <= args.history_minutes <= 1440:
        p.error("--history-minutes: 0 to 1440")
    args.spawn_rate = args.spawn_rate or max(10.0, args.users / 20)
    args.rate_limit = args.rate_limit or f"{20 * args.users}/minute"
    args.json = args.json or args.out / "run_locust.json"
    return args


# --- the database --------------------------------------------------------------------------------------------


def engine_info(conn: Connection) -> dict[str, Any]:
    row = conn.execute(
        sa.text(
            "SELECT current_setting('server_version') AS server_version,"
            " current_setting('timescaledb.license') AS license,"
            " (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb') AS timescaledb,"
            " current_setting('shared_buffers') AS shared_buffers, pg_backend_pid() AS backend_pid"
        )
    ).one()
    return dict(row._mapping)


def count_rows(engine: Engine, since: datetime) -> int:
    """History rows (both kinds) with recorded_at >= since."""
    q = sa.text(
        "SELECT (SELECT count(*) FROM meter_readings WHERE recorded_at >= :s)"
        " + (SELECT count(*) FROM vehicle_readings WHERE recorded_at >= :s)"
    )
    with engine.connect() as conn:
        return int(conn.execute(q, {"s": since}).scalar_one())


def count_current(engine: Engine) -> dict[str, int]:
    q = sa.text("SELECT (SELECT count(*) FROM meters_current) AS meters, (SELECT count(*) FROM vehicles_current) AS v")
    with engine.connect() as conn:
        row = conn.execute(q).one()
    return {"meters": int(row[0]), "vehicles": int(row[1])}


# --- direct-SQL baselines ------------------------------------------------------------------------------------


def _dashboard_calls(fleet: int) -> dict[str, Callable[[Connection, random.Random], object]]:
    """The dashboards' requests as bare data-layer calls (what each view's service runs, minus HTTP)."""

    def window() -> tuple[datetime, datetime]:
        w = resolve_window(None, None, now=datetime.now(UTC), max_days=31)
        return w.start, w.end

    def performance(conn: Connection, rng: random.Random) -> object:
        start, end = window()
        return analytics.vehicle_performance(conn, vehicle_id(rng.randint(1, fleet)), start, end)

    def fleet_view(conn: Connection, rng: random.Random) -> object:
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        return analytics.fleet_performance(conn, end - timedelta(hours=1), end, sort="efficiency", limit=50)

    return {
        "status vehicle": lambda conn, rng: devices.get_vehicle(conn, vehicle_id(rng.randint(1, fleet))),
        "status meter": lambda conn, rng: devices.get_meter(conn, meter_id(rng.randint(1, fleet))),
        "performance 24h": performance,
        "fleet 1h": fleet_view,
    }


def direct_dashboards(engine: Engine, fleet: int, samples: int, seed: int = 7) -> dict[str, dict[str, float]]:
    """Each dashboard call `samples` times (the fleet view a tenth as often) on one held connection, after a
    few unmeasured calls: latency in ms."""
    rng = random.Random(seed)
    out: dict[str, dict[str, float]] = {}
    with engine.connect() as conn:
        for name, call in _dashboard_calls(fleet).items():
            n = max(5, samples // 10) if name.startswith("fleet") else samples
            for _ in range(3):
                with conn.begin():
                    call(conn, rng)
            seconds = []
            for _ in range(n):
                started = time.perf_counter()
                with conn.begin():
                    call(conn, rng)
                seconds.append(time.perf_counter() - started)
            out[name] = summarize(seconds)
    return out


class DirectSampler(threading.Thread):
    """During a run: one dashboard call (the dashboards' mix) on the bare data layer every `interval` seconds."""

    def __init__(self, engine: Engine, fleet: int, interval: float = 0.5) -> None:
        super().__init__(name="direct-sampler", daemon=True)
        self.engine, self.interval = engine, interval
        self.calls = _dashboard_calls(fleet)
        self.seconds: dict[str, list[float]] = {name: [] for name in self.calls}
        self.errors: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        rng = random.Random(11)
        names = [name for name, weight in DASHBOARD_MIX for _ in range(weight)]
        try:
            with self.engine.connect() as conn:
                while not self._stop_event.wait(self.interval):
                    name = rng.choice(names)
                    started = time.perf_counter()
                    try:
                        with conn.begin():
                            self.calls[name](conn, rng)
                    except Exception as exc:  # reported, never fatal to the run
                        if len(self.errors) < 5:
                            self.errors.append(f"{name}: {exc!r}"[:300])
                        continue
                    self.seconds[name].append(time.perf_counter() - started)
        except Exception as exc:
            self.errors.append(f"sampler: {exc!r}"[:300])

    def stop(self) -> dict[str, Any]:
        self._stop_event.set()
        self.join(timeout=60)
        return {
            "latency": {name: summarize(values) for name, values in self.seconds.items() if values},
            "errors": self.errors,
        }


def _direct_ingest_worker(
    url: str, numbers: list[int], fleet: int, at_iso: str, threads: int, go: Any, results: Any
) -> None:
    """A baseline process: `numbers` (device numbers 0..2*fleet-1) as single-reading transactions."""
    try:
        from api.ingest import service
        from db.readings import MeterReading, VehicleReading

        at = datetime.fromisoformat(at_iso)
        engine = db.make_engine(url, pool_size=threads, connect_timeout=30)
        conns = [engine.connect() for _ in range(threads)]  # open the pool before the clock runs
        for c in conns:
            c.close()
        rng = random.Random(numbers[0] if numbers else 0)
        readings: list[MeterReading | VehicleReading] = []
        for n in numbers:
            i = 1 + (n // 2) % fleet
            if n % 2 == 0:
                readings.append(MeterReading(meter_id(i), at, round(rng.uniform(0, 0.19), 4), 230.0))
            else:
                readings.append(VehicleReading(vehicle_id(i), at, 50.0, round(rng.uniform(0, 0.17), 4), 25.0, False))
        todo: queue.SimpleQueue[MeterReading | VehicleReading] = queue.SimpleQueue()
        for r in readings:
            todo.put(r)
        stored = [0] * threads
        errors: list[str] = []

        def loop(k: int) -> None:
            while True:
                try:
                    r = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    stored[k] += service.ingest(engine, [r]).stored
                except Exception as exc:
                    errors.append(repr(exc)[:200])

        results.put(("ready", os.getpid(), None))
        if not go.wait(timeout=120):
            return
        started = time.perf_counter()
        workers = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        results.put(
            ("done", os.getpid(), {"seconds": time.perf_counter() - started, "stored": sum(stored), "errors": errors})
        )
        engine.dispose()
    except BaseException:
        results.put(("error", os.getpid(), traceback.format_exc()))


def direct_burst(
    url: str, devices_n: int, fleet: int, at: datetime, procs: int = 2, threads: int = 4
) -> dict[str, Any]:
    """Every device's reading as its own dual-write transaction (api.ingest.service.ingest), `procs` processes x
    `threads` threads, as fast as the database takes them: seconds, readings/s, stored."""
    ctx = mp.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    shares = [list(range(k, devices_n, procs)) for k in range(procs)]
    workers = [
        ctx.Process(
            target=_direct_ingest_worker,
            args=(url, share, fleet, at.isoformat(), threads, go, results),
            name=f"direct-burst-{k}",
            daemon=True,
        )
        for k, share in enumerate(shares)
    ]
    try:
        for w in workers:
            w.start()
        for _ in workers:
            kind, pid, detail = results.get(timeout=180)
            if kind != "ready":
                raise RuntimeError(f"direct baseline process {pid} failed:\n{detail}")
        started = time.perf_counter()
        go.set()
        done = []
        for _ in workers:
            kind, pid, detail = results.get(timeout=900)
            if kind != "done":
                raise RuntimeError(f"direct baseline process {pid} failed:\n{detail}")
            done.append(detail)
        seconds = time.perf_counter() - started
        for w in workers:
            w.join(timeout=30)
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
                w.join(timeout=10)
            if w.is_alive():
                w.kill()
                w.join(timeout=5)
    stored = sum(d["stored"] for d in done)
    return {
        "readings": devices_n,
        "stored": stored,
        "errors": [e for d in done for e in d["errors"]][:5],
        "error_count": sum(len(d["errors"]) for d in done),
        "seconds": seconds,
        "readings_per_s": devices_n / seconds if seconds else 0.0,
        "clients": f"{procs} processes x {threads} threads",
    }


# --- locust --------------------------------------------------------------------------------------------------


def _locust_child(nice: int) -> Callable[[], None]:
    """Set-up in the locust child: as many open files as allowed (one socket per in-flight device request), and
    scheduling priority `nice` when allowed (negative needs root)."""

    def setup() -> None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        with suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, nice)

    return setup


def read_stats_csv(path: Path) -> dict[str, dict[str, Any]]:
    """locust's *_stats.csv: per request name (and 'Aggregated'): requests, failures, percentiles (ms), rps."""
    out: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return out
    with path.open(newline="") as f:
        for row in csv.DictReader(f):

            def num(key: str, row: dict[str, str] = row) -> float | None:
                try:
                    return float(row.get(key, ""))
                except (TypeError, ValueError):
                    return None

            out[row["Name"]] = {
                "requests": int(num("Request Count") or 0),
                "failures": int(num("Failure Count") or 0),
                "p50": num("50%"),
                "p95": num("95%"),
                "p99": num("99%"),
                "max": num("Max Response Time"),
                "mean": num("Average Response Time"),
                "rps": num("Requests/s"),
            }
    return out


def run_locust(
    *,
    scenario: str,
    args: argparse.Namespace,
    server_url: str,
    device_key: str,
    read_key: str,
    out_dir: Path,
    server: Server | None = None,
    trees: TreeCpu | None = None,
    capacity: float = 0.0,
) -> dict[str, Any]:
    """One locust run (subprocess, bounded); returns its files, exit code, CSV stats and verdict summary.
    `capacity` (readings/s) is what the overload scenario offers OVERLOAD_FACTOR times."""
    fleet = args.users // 2
    dashboards = args.dashboards if scenario in ("steady", "overload") else 0
    devices_n = CAPACITY_SENDERS if scenario == "capacity" else args.users
    pacing = PACING_SECONDS
    if scenario == "overload":
        pacing = args.users / (OVERLOAD_FACTOR * capacity)
    launch = time.time()
    spawn_seconds = devices_n / args.spawn_rate
    env = {
        **os.environ,
        "FLEET_LOAD_SCENARIO": scenario,
        "FLEET_LOAD_DEVICE_KEY": device_key,
        "FLEET_LOAD_READ_KEY": read_key,
        "FLEET_LOAD_FLEET_SIZE": str(fleet),
        "FLEET_LOAD_DEVICES": str(args.users),
        "FLEET_LOAD_DASHBOARDS": str(dashboards),
        "FLEET_LOAD_PACING_SECONDS": str(pacing),
        "FLEET_LOAD_SUMMARY": str(out_dir / f"{scenario}_summary.json"),
    }
    profile_at, profile_seconds = launch + 15.0 + spawn_seconds + PACING_SECONDS, 60.0
    if scenario == "burst":
        # The window opens once every user is spawned (plus margin for locust's start-up).
        burst_at = launch + 15.0 + 1.5 * spawn_seconds
        profile_at, profile_seconds = burst_at - 1.0, BURST_WINDOW_SECONDS + 25.0
        run_time = burst_at - launch + BURST_WINDOW_SECONDS + BURST_DRAIN_SECONDS + 10.0
        env.update(
            FLEET_LOAD_BURST_AT=f"{burst_at:.3f}",
            FLEET_LOAD_BURST_WINDOW_SECONDS=str(BURST_WINDOW_SECONDS),
            FLEET_LOAD_BURST_DRAIN_SECONDS=str(BURST_DRAIN_SECONDS),
            # Absorbed = every reading acknowledged within the devices' own timeout (30 s), not the steady limit.
            FLEET_LOAD_P99_INGEST_MS=str(30_000),
        )
    elif scenario == "capacity":
        run_time = 15.0 + spawn_seconds + CAPACITY_SECONDS
        env.update(FLEET_LOAD_SATURATORS=str(CAPACITY_SENDERS), FLEET_LOAD_P99_INGEST_MS=str(30_000))
    elif scenario == "overload":
        # Full rate from one pacing period after spawning; new readings until overload_end, then the drain.
        overload_end = launch + 15.0 + 1.5 * spawn_seconds + pacing + args.overload_time
        run_time = overload_end - launch + OVERLOAD_DRAIN_SECONDS
        profile_at = overload_end - args.overload_time / 2 - 30
        env.update(
            FLEET_LOAD_OVERLOAD_END=f"{overload_end:.3f}",
            FLEET_LOAD_CAPACITY=f"{capacity:.3f}",
            FLEET_LOAD_MIN_STEADY_SECONDS=str(min(args.overload_time, 180.0)),
            FLEET_LOAD_RETRY_ATTEMPTS=str(OVERLOAD_RETRY_ATTEMPTS),
            FLEET_LOAD_MAX_ANSWER_MS="5000",
            # The bounds: status p99 under 500 ms while ingest is shed; everything else answered in 5 s.
            FLEET_LOAD_P99_STATUS_MS="500",
            FLEET_LOAD_P99_INGEST_MS="5000",
            FLEET_LOAD_P99_PERFORMANCE_MS="5000",
            FLEET_LOAD_P99_FLEET_MS="5000",
        )
    else:
        run_time = args.run_time
        env["FLEET_LOAD_MIN_STEADY_SECONDS"] = str(args.min_steady)
    user_classes = ["Saturator"] if scenario == "capacity" else ["Device", *(["Dashboard"] if dashboards else [])]
    prefix = out_dir / scenario
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", server_url, "-u", str(devices_n + dashboards), "-r", f"{args.spawn_rate:g}",
        "--run-time", f"{int(run_time)}s", "--stop-timeout", str(STOP_TIMEOUT_SECONDS),
        "--csv", str(prefix), "--html", str(prefix) + ".html", "--only-summary", "--loglevel", "INFO",
        *user_classes,
    ]  # fmt: skip
    log_path = out_dir / f"{scenario}_locust.log"
    log(
        f"locust {scenario}: {devices_n:,} {'senders' if scenario == 'capacity' else 'devices'} + {dashboards}"
        f" dashboards, pacing {pacing:.1f} s, spawn {args.spawn_rate:g}/s, run time {run_time:.0f} s (log {log_path})"
    )
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_locust_child(args.client_nice),
        )
    client_nice = os.getpriority(os.PRIO_PROCESS, proc.pid) if proc.poll() is None else None
    if trees is not None:
        trees.roots["locust"] = proc.pid
    recording: Recording | None = None
    profile: dict[str, Any] | None = None
    try:
        profiled = args.profile and scenario in args.profile.split(",")
        if profiled and server is not None and profile_at + profile_seconds < launch + run_time:
            time.sleep(max(0.0, profile_at - time.time()))
            if proc.poll() is None:
                workers = sorted(descendants(proc_table(), [server.pid]) - {server.pid})
                recording = Recording(workers, profile_seconds, out_dir, scenario).start()
        proc.wait(timeout=max(1.0, launch + run_time + STOP_TIMEOUT_SECONDS + 180 - time.time()))
    except subprocess.TimeoutExpired:
        log(f"locust {scenario} did not finish in time: stopping it")
    finally:
        stop_process(proc, grace=STOP_TIMEOUT_SECONDS + 15, name=f"locust {scenario}")
        if recording is not None:
            profile = recording.finish()
    summary_path = out_dir / f"{scenario}_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    text = log_path.read_text(errors="replace")
    verdict_line = next((line for line in text.splitlines() if line.startswith("VERDICT:")), "VERDICT: (none)")
    return {
        "exit_code": proc.returncode,
        "pacing_s": pacing,
        "client_nice": client_nice,
        "profile": profile,
        "command": " ".join(command[1:]),
        "run_time_s": run_time,
        "stats": read_stats_csv(Path(str(prefix) + "_stats.csv")),
        "summary": summary,
        "verdict_line": verdict_line,
        "warnings": [line for line in text.splitlines() if "WARNING" in line][:10],
        "files": {
            "stats_csv": str(prefix) + "_stats.csv",
            "history_csv": str(prefix) + "_stats_history.csv",
            "failures_csv": str(prefix) + "_failures.csv",
            "html": str(prefix) + ".html",
            "log": str(log_path),
            "summary": str(summary_path),
        },
        "log_tail": "" if proc.returncode == 0 else tail(log_path, 40),
    }


# --- capacity (the overload scenario's baseline) -------------------------------------------------------------


def wrk_capacity(server_url: str, device_key: str, fleet: int, out_dir: Path, seconds: int = 30) -> dict[str, Any]:
    """Single-reading ingest by wrk (not Python: its own cost per request is small), CAPACITY_SENDERS keep-alive
    connections for `seconds`, the fleet's devices in turn (tests/load/wrk/design_ingest.lua): acknowledged/s."""
    from tests.load.bench_design import WRK, WRK_DIR, parse_wrk

    if not WRK.exists():
        return {"error": f"{WRK} not installed (Debian package wrk)"}
    keys_file = out_dir / "capacity_device_key.txt"
    keys_file.write_text(device_key + "\n")
    base_ms = int(time.time() * 1000)
    command = [
        str(WRK), "-t2", f"-c{CAPACITY_SENDERS}", f"-d{seconds}s", "--timeout", "30s",
        "-s", str(WRK_DIR / "design_ingest.lua"), server_url + "/v1/telemetry/ingest", "--",
        str(keys_file), str(fleet), "meter-", "ev-", "5", str(base_ms), "2",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    result = parse_wrk(done.stdout)
    result["command"] = " ".join(command[:7]) + " ..."
    return result


def measure_capacity(
    args: argparse.Namespace, engine: Engine, server_url: str, device_key: str, *, wrk: bool = True
) -> dict[str, Any]:
    """This machine's single-reading capacity, measured on the same server as the overload: locust (the overload's
    own load generator, whose cost per request is part of what the machine can do) is the figure the overload is
    held against; wrk's is printed beside it."""
    fleet = args.users // 2
    wrk_result: dict[str, Any] = {}
    if wrk:
        log(f"capacity: wrk, {CAPACITY_SENDERS} keep-alive connections, 30 s")
        wrk_result = wrk_capacity(server_url, device_key, fleet, args.out)
        rate, p99 = wrk_result.get("stored_rate") or 0, wrk_result.get("p99", 0)
        log(f"  wrk: {rate:,.1f} readings/s stored, p99 {p99:,.0f} ms")
    cutoff = _next_second()
    rows_before = count_rows(engine, cutoff)
    run = run_locust(
        scenario="capacity",
        args=args,
        server_url=server_url,
        device_key=device_key,
        read_key="",
        out_dir=args.out,
    )
    summary = run["summary"]
    rows = count_rows(engine, cutoff) - rows_before
    rate = (summary.get("capacity") or {}).get("rate", 0.0)
    log(f"  locust: {rate:,.1f} readings/s acknowledged ({run['verdict_line']}); rows {rows:,}")
    return {
        "wrk": wrk_result,
        "locust": {
            "rate": rate,
            "senders": CAPACITY_SENDERS,
            "seconds": CAPACITY_SECONDS,
            "exit_code": run["exit_code"],
            "verdict_line": run["verdict_line"],
            "per_name": summary.get("per_name"),
            "refused": summary.get("refused"),
            "stored": summary.get("stored"),
            "rows": rows,
        },
    }


# --- one scenario --------------------------------------------------------------------------------------------


def _request_class(method: str, path: str) -> str | None:
    """The locustfile's request names, as far as the server can tell them apart (ingest: meter or vehicle)."""
    if method == "POST" and path == "/v1/telemetry/ingest":
        return "ingest"
    for prefix, name in (
        ("/v1/vehicles/", "status vehicle"),
        ("/v1/meters/", "status meter"),
        ("/v1/analytics/performance/", "performance 24h"),
        ("/v1/analytics/fleet", "fleet 1h"),
    ):
        if method == "GET" and path.startswith(prefix):
            return name
    return None


def _get_requests(locust_result: dict[str, Any]) -> int:
    """Requests locust made (every class), from its final stats."""
    per_name = locust_result.get("summary", {}).get("per_name") or locust_result.get("stats", {})
    return int(per_name.get("Aggregated", {}).get("requests", 0))


def _next_second() -> datetime:
    """Sleep to the start of the next whole second and return it (UTC): readings from now on are at or after it."""
    now = datetime.now(UTC)
    nxt = now.replace(microsecond=0) + timedelta(seconds=1)
    time.sleep((nxt - now).total_seconds())
    return nxt


def run_scenario(
    scenario: str,
    *,
    args: argparse.Namespace,
    url: str,
    engine: Engine,
    server_url: str,
    server: Server | None,
    keys_: tuple[str, str],
    has_history: bool,
    cpu_roots: list[int],
) -> dict[str, Any]:
    fleet = args.users // 2
    result: dict[str, Any] = {"scenario": scenario, "devices": args.users, "fleet_size": fleet}
    sampler: DirectSampler | None = None
    if scenario == "steady":
        result["dashboards"] = args.dashboards
        if has_history and args.dashboards:
            log(f"baseline: dashboard calls on the bare data layer, {args.samples} each (fleet view: a tenth)")
            result["baseline_direct"] = direct_dashboards(engine, fleet, args.samples)
            for name, s in result["baseline_direct"].items():
                log(f"  {name:<16} direct p50 {s['p50']:7.2f} ms  p95 {s['p95']:7.2f} ms  p99 {s['p99']:7.2f} ms")
            sampler = DirectSampler(engine, fleet)
    elif scenario == "overload":
        result["dashboards"] = args.dashboards
        result["capacity"] = measure_capacity(args, engine, server_url, keys_[0])
        capacity = result["capacity"]["locust"]["rate"]
        if not capacity:
            raise RuntimeError(f"no capacity measured: {result['capacity']['locust']}")
    else:
        at = _next_second()
        log(f"baseline: {args.users:,} single-reading transactions straight into the database (same SQL)")
        base = direct_burst(url, args.users, fleet, at)
        result["baseline_direct_burst"] = base
        log(
            f"  direct: {base['readings']:,} readings in {base['seconds']:.1f} s = {base['readings_per_s']:,.0f}/s,"
            f" stored {base['stored']:,}, errors {base['error_count']}"
        )
    cutoff = _next_second()
    rows_before = count_rows(engine, cutoff)
    log_counts_before = server.log_counts() if server else None
    cpu = CpuWatch(cpu_roots)
    load = LoadSampler().start()
    trees = TreeCpu({"gunicorn": server.pid} if server else {})
    if len(cpu_roots) > 0 and (server is None or cpu_roots[0] != server.pid):
        trees.roots["postgres"] = cpu_roots[0]
    trees.start()
    started = time.monotonic()
    cpu.start()
    if sampler:
        sampler.start()
    try:
        result["locust"] = run_locust(
            scenario=scenario,
            args=args,
            server_url=server_url,
            device_key=keys_[0],
            read_key=keys_[1],
            out_dir=args.out,
            server=server,
            trees=trees,
            capacity=result["capacity"]["locust"]["rate"] if scenario == "overload" else 0.0,
        )
    finally:
        if sampler:
            result["direct_during"] = sampler.stop()
        result["cpu"] = cpu.stop()
        result["loadavg"] = load.stop()
        tree_seconds = trees.stop()
    locust_ = result["locust"]
    requests_done = _get_requests(locust_)
    wall = time.monotonic() - started
    cores = len(os.sched_getaffinity(0))
    result["cpu_by_process"] = {
        name: {
            "seconds": secs,
            "pct_of_all_cores": round(100 * secs / (wall * cores), 1),
            "us_per_request": round(1e6 * secs / requests_done) if requests_done else None,
        }
        for name, secs in tree_seconds.items()
    }
    result["cpu_by_process_requests"] = requests_done
    if server is not None:
        # The app's own time per request over the steady phase (the whole run for the burst): set beside what
        # locust measured, the difference is time spent queued (kernel, gunicorn's thread pool) and in the client.
        phase = locust_["summary"].get("steady") or locust_["summary"].get("overload") or {}
        since = phase.get("phase_start") or locust_["summary"].get("started_at") or 0.0
        until = phase.get("phase_end") or time.time()
        result["handler_latency"] = server.handler_latency(since, until, _request_class)
    log(f"locust {scenario} exit code {locust_['exit_code']}: {locust_['verdict_line']}")

    rows = count_rows(engine, cutoff) - rows_before
    summary = locust_["summary"]
    # The verdict's final stats: locust's CSV is rewritten once a second and may miss the last second.
    stats = summary.get("per_name") or locust_["stats"]
    # Readings acknowledged (HTTP 200). The CSV's successes also count the 429/503 answers devices retried.
    ingest_ok = summary.get("ingest_ok")
    if ingest_ok is None:
        ingest_ok = sum(s["requests"] - s["failures"] for name, s in stats.items() if name.startswith("ingest"))
    current = count_current(engine)
    result["rows"] = {
        "since": cutoff.isoformat(),
        "stored_rows": rows,
        "ingest_ok_requests": ingest_ok,
        "acknowledged_stored": summary.get("stored"),
        "acknowledged_duplicates": summary.get("duplicates"),
        "current": current,
    }
    checks = [
        {
            "check": "locust verdict PASS",
            "ok": locust_["exit_code"] == 0 and summary.get("verdict") == "PASS",
            "detail": locust_["verdict_line"],
        },
        {
            "check": "stored rows == successful ingest requests == acknowledged stored, 0 duplicates",
            "ok": rows == ingest_ok == summary.get("stored") and summary.get("duplicates") == 0 and ingest_ok > 0,
            "detail": f"rows {rows:,}, successful ingest requests {ingest_ok:,}, acknowledged stored"
            f" {summary.get('stored')}, duplicates {summary.get('duplicates')}",
        },
        *(
            [
                {
                    "check": "stored rows == readings the devices made (nothing lost after the overload)",
                    "ok": rows == summary.get("readings_made"),
                    "detail": f"rows {rows:,}, readings made {summary.get('readings_made')}, abandoned"
                    f" {summary.get('abandoned')}, retries {summary.get('retries')}",
                }
            ]
            if scenario == "overload"
            else []
        ),
        {
            "check": "one current-state row per device (ids match the fleet)",
            "ok": current == {"meters": fleet, "vehicles": fleet},
            "detail": f"meters_current {current['meters']:,}, vehicles_current {current['vehicles']:,}"
            f" for {fleet:,} + {fleet:,} devices",
        },
    ]
    if server and log_counts_before is not None:
        after = server.log_counts()
        delta = {k: after[k] - log_counts_before[k] for k in after}
        result["gunicorn_log"] = delta
        checks.append(
            {
                # 503s are requests shed by admission control (counted apart); any other 5xx is a fault.
                "check": "server: no worker timeout, traceback or 5xx but shed 503s",
                "ok": delta["worker_timeouts"] == 0
                and delta["tracebacks"] == 0
                and delta["status_5xx"] == delta["status_503"],
                "detail": ", ".join(f"{k} {v}" for k, v in delta.items()),
            }
        )
    if scenario == "overload":
        # The capacity again, after the overload and its drain, on the same server: one 50 s sample on a noisy
        # 2-core machine moved by up to a third between runs (262-362 readings/s), so the goodput is held against
        # the mean of the two samples around it.
        result["capacity_after"] = measure_capacity(args, engine, server_url, keys_[0], wrk=False)
        before, after = result["capacity"]["locust"]["rate"], result["capacity_after"]["locust"]["rate"]
        capacity = (before + after) / 2
        goodput = (summary.get("overload") or {}).get("goodput") or 0.0
        result["goodput"] = {"goodput": goodput, "capacity_before": before, "capacity_after": after}
        checks.append(
            {
                "check": f"goodput >= {MIN_GOODPUT_SHARE:.0%} of the capacity measured before and after",
                "ok": capacity > 0 and goodput >= MIN_GOODPUT_SHARE * capacity,
                "detail": f"{goodput:.1f} readings/s acknowledged over the overload phase vs capacity {capacity:.1f}/s"
                f" (before {before:.1f}, after {after:.1f}): {goodput / capacity if capacity else 0:.0%}",
            }
        )
    result["checks"] = checks
    result["ok"] = all(c["ok"] for c in checks)
    for c in checks:
        log(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['check']}: {c['detail']}")
    log(f"CPU during the run: {cpu_line(result['cpu'])}; load average {result['loadavg']}")
    return result


# --- main ----------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    args.out.mkdir(parents=True, exist_ok=True)
    fleet = args.users // 2
    settings = dict(BENCH_SETTINGS)
    settings.update(dict(s.split("=", 1) for s in args.pg_setting))
    report: dict[str, Any] = {
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("json",)},
        "machine": machine_info(),
        "scenarios": {},
    }
    started = time.monotonic()
    with ExitStack() as stack:
        if args.database_url:
            url = args.database_url
        else:
            require_native_engine()
            log("starting a throw-away native cluster")
            url = stack.enter_context(native_cluster("fleet_load", settings=settings))
        engine = db.make_engine(url, pool_size=3, connect_timeout=30)
        stack.callback(engine.dispose)
        with engine.connect() as conn:
            info = engine_info(conn)
        backend = info.pop("backend_pid")
        report["engine"] = info
        cpu_roots = []
        table = proc_table()
        if backend in table:
            cpu_roots.append(table[backend][0])  # the postmaster: the cluster's CPU is ours
        log(f"database: PostgreSQL {info['server_version']}, TimescaleDB {info['timescaledb']} ({info['license']})")

        has_history = False
        if args.history_minutes:
            day_start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=args.history_minutes + 1)
            stats = load_fleet_day(
                url, meters=fleet, vehicles=fleet, day_start=day_start, minutes=args.history_minutes, log=log
            )
            report["history"] = {
                "meters": fleet,
                "vehicles": fleet,
                "minutes": args.history_minutes,
                "rows": stats.history_rows,
                "day_start": stats.day_start.isoformat(),
                "load_seconds": round(stats.total_seconds, 1),
                "copy_rows_per_second": round(stats.copy_rows_per_second),
            }
            if info["license"] == "timescale":
                # As production runs: `fleet jobs run` beside the API keeps the aggregates and the correlation
                # rollup materialised, so dashboards read them rather than raw history.
                report["jobs_once"] = run_jobs_once(url, timeout=900)
                log(
                    f"fleet jobs run --once: exit {report['jobs_once']['exit_code']}"
                    f" in {report['jobs_once']['seconds']:.1f} s"
                )
            report["prewarm"] = prewarm(engine)
            log(f"prewarmed {report['prewarm']['mib']:,} MiB in {report['prewarm']['seconds']} s")
            has_history = True

        with engine.begin() as conn:
            device_key = keys.create_key(conn, "load-devices", "device")[1]
            read_key = keys.create_key(conn, "load-dashboards", "read")[1]
        server: Server | None = None
        if args.url:
            server_url = args.url.rstrip("/")
        else:
            server = stack.enter_context(
                gunicorn_server(
                    url,
                    workers=args.workers,
                    threads=args.threads,
                    log_path=args.out / "gunicorn.log",
                    env={"FLEET_RATE_LIMIT": args.rate_limit, **dict(e.split("=", 1) for e in args.server_env)},
                )
            )
            server_url = server.url
            cpu_roots.append(server.pid)
            report["server"] = {"workers": args.workers, "threads": args.threads, "env": server.env}
        for scenario in args.scenarios:
            report["scenarios"][scenario] = run_scenario(
                scenario,
                args=args,
                url=url,
                engine=engine,
                server_url=server_url,
                server=server,
                keys_=(device_key, read_key),
                has_history=has_history,
                cpu_roots=cpu_roots,
            )
        log("stopping gunicorn and the cluster")
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    report["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    report["ok"] = all(s["ok"] for s in report["scenarios"].values())
    return report


def render(report: dict[str, Any]) -> str:
    """The printed summary of a run."""
    m = report["machine"]
    lines = [
        "",
        "=" * 100,
        "locust fleet scenarios (tests/load/run_locust.py)",
        f"machine: {m['cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB; load average at start"
        f" {m['loadavg']}, at end {m.get('loadavg_at_end')}",
    ]
    e = report.get("engine")
    if e:
        lines.append(
            f"engine: native PostgreSQL {e['server_version']}, TimescaleDB {e['timescaledb']} ({e['license']}),"
            f" shared_buffers {e['shared_buffers']}"
        )
    h = report.get("history")
    if h:
        lines.append(
            f"history: {h['meters']:,} meters + {h['vehicles']:,} vehicles x {h['minutes']} min = {h['rows']:,}"
            f" rows from {h['day_start']} (loaded in {h['load_seconds']} s)"
        )
    srv = report.get("server")
    if srv:
        lines.append(f"server: fleet serve, {srv['workers']} workers x {srv['threads']} threads, {srv['env']}")
    for name, s in report["scenarios"].items():
        lc = s["locust"]
        lines += [
            "",
            f"--- {name}: {s['devices']:,} devices"
            + (f" + {s['dashboards']} dashboards" if s.get("dashboards") else ""),
        ]
        lines.append(f"{'request':<18}{'n':>9}{'fail':>6}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}{'req/s':>9}   (ms)")
        for req, st in (lc["summary"].get("per_name") or lc["stats"]).items():
            lines.append(
                f"{req:<18}{st['requests']:>9,}{st['failures']:>6}{_f(st['p50']):>8}{_f(st['p95']):>8}"
                f"{_f(st['p99']):>8}{_f(st['max']):>8}{_f(st['rps'], 1):>9}"
            )
        for label, key in (
            ("server handler", "handler_latency"),
            ("direct before", "baseline_direct"),
            ("direct during", "direct_during"),
        ):
            lat = s.get(key, {})
            lat = lat.get("latency", lat) if key == "direct_during" else lat
            for req, st in lat.items():
                lines.append(
                    f"{req + ' (' + label + ')':<34} n {st['n']:>5}  p50 {st['p50']:7.2f}  p95 {st['p95']:7.2f}"
                    f"  p99 {st['p99']:7.2f}  max {st['max']:7.2f}"
                )
        sm = lc["summary"]
        if "steady" in sm:
            st = sm["steady"]
            lines.append(
                f"steady phase: {st['phase_seconds']:.0f} s at {st['rate']:.1f} readings/s"
                f" (offered {st['offered_rate']:.1f}/s)"
            )
        if "overload" in sm:
            o, cap = sm["overload"], s.get("capacity", {})
            wrk = cap.get("wrk", {})
            after = s.get("capacity_after", {}).get("locust", {}).get("rate")
            lines.append(
                f"capacity (same run, same server): locust {cap['locust']['rate']:.1f} readings/s before the overload,"
                f" {_f(after, 1)} after ({CAPACITY_SENDERS} senders); wrk {wrk.get('stored_rate') or 0:.1f}/s before"
                " (keep-alive)"
            )
            lines.append(
                f"overload: {o['phase_seconds']:.0f} s offered {o['offered_rate']:.1f} readings/s (pacing"
                f" {lc['pacing_s']:.1f} s): goodput {o['goodput']:.1f}/s = {o['goodput'] / o['capacity']:.0%} of"
                f" capacity; slowest answer {o['slowest_answer_ms']:,.0f} ms; {sm.get('retries', 0):,} answers 503/429"
                f" retried; {sm.get('readings_made', 0):,} readings made, {sm.get('stored', 0):,} stored,"
                f" {sm.get('duplicates', 0)} duplicates, {sm.get('abandoned', 0)} abandoned"
            )
            lines.append(
                f"start-up (spawning + first pacing period, not in the figures above): slowest answer"
                f" {_f(o.get('startup_slowest_ms'))} ms, status p99 {_f(o.get('startup_status_p99_ms'))} ms"
            )
        if "burst" in sm:
            b = sm["burst"]
            base = s.get("baseline_direct_burst", {})
            lines.append(
                f"burst: {s['devices']:,} readings offered in {_f(b['last_send_s'], 1)} s (window"
                f" {b['window_seconds']:g} s); last answer after {_f(b['drain_s'], 1)} s; direct-SQL baseline"
                f" {base.get('seconds', float('nan')):.1f} s ({base.get('readings_per_s', 0):,.0f}/s)"
            )
        lines.append(f"CPU: {cpu_line(s['cpu'])}; load average during {s['loadavg']}")
        by = s.get("cpu_by_process", {})
        if by:
            lines.append(
                "CPU per request (all classes), by process tree: "
                + ", ".join(
                    f"{n} {v['us_per_request']} us ({v['pct_of_all_cores']} % of all cores)" for n, v in by.items()
                )
            )
        for c in s["checks"]:
            lines.append(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['check']}: {c['detail']}")
        for c in sm.get("checks", []):
            lines.append(f"    {'ok  ' if c['ok'] else 'FAIL'} (locust) {c['check']}: {c['detail']}")
        prof = lc.get("profile")
        if prof and prof.get("samples"):
            lines.append(
                f"profile (py-spy --gil, {prof['seconds']:.0f} s, workers {prof['pids']}, {prof['samples']:,} samples):"
            )
            lines += [f"    {pct:5.1f} %  {name}" for name, pct in prof["components"]]
            lines.append("  application functions (inclusive):")
            lines += [f"    {pct:5.1f} %  {name}" for name, pct in prof["application"][:8]]
        lines.append(f"files: {lc['files']['html']}, {lc['files']['stats_csv']}")
    lines += ["", f"RESULT: {'PASS' if report['ok'] else 'FAIL'} (elapsed {report['elapsed_s']:.0f} s)", "=" * 100]
    return "\n".join(lines)


def _f(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_benchmark("run_locust", args, run, render, "everything started was stopped", passed=lambda r: r["ok"])


if __name__ == "__main__":
    sys.exit(main())
