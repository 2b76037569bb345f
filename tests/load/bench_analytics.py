"""Read benchmark: 24 h performance analytics and current status with a full fleet day loaded, through gunicorn.

Run from the repository root (loopback only; a throw-away native cluster is started and removed):

    .venv/bin/python -m tests.load.bench_analytics [--devices 10000] [--samples 300] [--json out.json]

What is measured
----------------
A throw-away PostgreSQL 15 + TimescaleDB 2.19 (Apache edition) cluster (tests/load/native_cluster.py, server
settings below) gets one full fleet day from tests/load/fleet_day.py: --devices meters + --devices vehicles,
one reading a minute for 24 h (28.8M history rows at 10,000), bulk-loaded with binary COPY from two loader
processes, then VACUUM (ANALYZE) and CHECKPOINT. The load's time and rows/s are reported.

Then, for --samples random devices, one request at a time (sequential, keep-alive), each on three paths:
- http: GET through `fleet serve` (gunicorn, docker/gunicorn.conf.py, 2 workers x 4 threads, the access log
  on as in production, FLEET_RATE_LIMIT=off) with a `read` API key, timed from sending the request to having
  read the whole body, with http.client on an established connection;
- service: the function the view calls (api/devices/service.py, api/analytics/service.py) on a pooled engine
  made like the app's (`db.make_engine`: pool checkout with pre-ping, one transaction, for analytics the report
  dict). http - service = routing, auth (key lookup cached per worker), argument parsing, serialisation, WSGI;
- direct: the bare data-layer function (db/devices.py `get_vehicle` / `get_meter`, db/analytics.py
  `vehicle_performance(..., community=False)`) on one held connection, in a transaction as the service runs it.
The three paths alternate in a rotating order per device, so neither gets a warmer cache than the other.

Requests: GET /v1/vehicles/<id>, GET /v1/meters/<id>, and GET /v1/analytics/performance/<vehicleId>
?startDate=<day start>&endDate=<day end> (the loaded 24 h). p50/p95/p99/max/mean in ms per path and the ratio
http/direct are printed, next to the targets (status p95 < 5 ms, 24 h analytics p95 < 50 ms).

Cache state, stated rather than hidden: the bulk load goes through a small ring buffer, so after it the day
sits in the OS page cache but hardly in shared_buffers. A "first touch" pass over --cold-samples other vehicles
(direct path only) measures that state; then the day's chunks and indexes are loaded into shared_buffers with
pg_prewarm (they fit), which is the steady state of a server that has been ingesting the day, and the main
measurement runs after --warmup unmeasured requests per endpoint.

Correctness: every analytics response is checked against the generator: totalAcConsumed and totalDcDelivered
equal (rounded to 4 decimals) the sums of the values loaded for that vehicle's meter and that vehicle in the
window, hourlyBreakdown has one entry per hour, correlation.vehicleReadings is the vehicle's readings in the
window and typicalClockOffsetSeconds its generated clock offset. Any mismatch makes the exit status 1.

Diagnosis: the analytics data-layer call's statements are timed one by one over a subset of the sample, and
the slowest statement's EXPLAIN (ANALYZE, BUFFERS) is printed when the analytics p95 misses its target (every
statement's with --explain). The machine is shared: each phase reports the CPU used by processes outside this
benchmark (its processes, gunicorn and the cluster); a large "others" figure means disturbed numbers.

Everything is bounded (--timeout, default 3600 s, and per-request timeouts); every process started (loader
processes, gunicorn, the cluster) is stopped by PID on exit, error, Ctrl-C or SIGTERM, and the cluster's data
directory (several GB at full scale) is removed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

import db
from api.analytics import service as analytics_service
from api.analytics.window import Window
from api.devices import service as devices_service
from db import analytics, devices, keys
from tests.load.benchlib import CpuWatch, cpu_line, gunicorn_server, log, proc_table, run_benchmark, summarize
from tests.load.fleet_day import LoadStats, load_fleet_day, meter_id, vehicle_id
from tests.load.native_cluster import native_cluster, require_native_engine

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
#: Design targets (product brief), p95 in ms through the API.
TARGETS_MS = {"status": 5.0, "analytics": 50.0}
PATHS = ("http", "service", "direct")
#: Server settings of the benchmark cluster: what timescaledb-tune gives a 24 GB, 2-core machine (25 % of RAM
#: for shared_buffers, SSD costs), plus WAL room so the bulk load is not cut by forced checkpoints.
BENCH_SETTINGS: dict[str, str] = {
    "shared_buffers": "6GB",
    "effective_cache_size": "18GB",
    "maintenance_work_mem": "1GB",
    "work_mem": "16MB",
    "wal_buffers": "64MB",
    "max_wal_size": "16GB",
    "checkpoint_timeout": "30min",
    "wal_compression": "lz4",
    "random_page_cost": "1.1",
    "effective_io_concurrency": "256",
    "max_connections": "100",
}


class HttpClient:
    """One keep-alive connection; a request is timed from sending it to having read the whole response."""

    def __init__(self, port: int, api_key: str) -> None:
        self.port = port
        self.headers = {"X-API-Key": api_key, "Accept": "application/json"}
        self.conn: http.client.HTTPConnection | None = None

    def get(self, path: str) -> tuple[int, bytes, float]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                self.conn.connect()
            try:
                started = time.perf_counter()
                self.conn.request("GET", path, headers=self.headers)
                resp = self.conn.getresponse()
                body = resp.read()
                elapsed = time.perf_counter() - started
            except (http.client.RemoteDisconnected, ConnectionError):
                # gunicorn closes idle keep-alive connections after a few seconds: reconnect, send again.
                self.close()
                if attempt:
                    raise
                continue
            if resp.will_close:
                self.close()
            return resp.status, body, elapsed
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# --- the database -------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    model = ""
    with suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
    }


def engine_info(conn: Connection) -> dict[str, Any]:
    row = conn.execute(
        sa.text(
            "SELECT version() AS version, current_setting('timescaledb.license') AS license,"
            " (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb') AS timescaledb,"
            " current_setting('server_version') AS server_version, pg_backend_pid() AS backend_pid"
        )
    ).one()
    settings = {
        name: conn.execute(sa.text("SELECT current_setting(:n)"), {"n": name}).scalar_one()
        for name in (*BENCH_SETTINGS, "jit")
    }
    return {
        "version": row.version,
        "server_version": row.server_version,
        "timescaledb": row.timescaledb,
        "license": row.license,
        "settings": settings,
        "backend_pid": row.backend_pid,
    }


def postmaster_pid(backend_pid: int) -> int | None:
    """The cluster's postmaster: the parent of one of its backends (same machine, loopback)."""
    table = proc_table()
    return table[backend_pid][0] if backend_pid in table else None


def database_sizes(conn: Connection) -> dict[str, Any]:
    sizes: dict[str, Any] = {}
    for table in ("meter_readings", "vehicle_readings"):
        row = conn.execute(sa.text(f"SELECT * FROM hypertable_detailed_size('{table}')")).one()
        sizes[table] = {
            "rows": conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one(),
            "chunks": conn.execute(sa.text(f"SELECT count(*) FROM show_chunks('{table}')")).scalar_one(),
            "table_bytes": row.table_bytes,
            "index_bytes": row.index_bytes,
            "total_bytes": conn.execute(sa.text(f"SELECT hypertable_size('{table}')")).scalar_one(),
        }
    for table in ("meters_current", "vehicles_current", "vehicle_meter_mapping"):
        sizes[table] = {
            "rows": conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one(),
            "table_bytes": conn.execute(sa.text(f"SELECT pg_table_size('{table}')")).scalar_one(),
            "index_bytes": conn.execute(sa.text(f"SELECT pg_indexes_size('{table}')")).scalar_one(),
            "total_bytes": conn.execute(sa.text(f"SELECT pg_total_relation_size('{table}')")).scalar_one(),
        }
    sizes["database_bytes"] = conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar_one()
    return sizes


_PREWARM = sa.text(
    """
    WITH tables AS (
        SELECT c::oid AS oid FROM show_chunks('meter_readings') c
        UNION ALL SELECT c::oid FROM show_chunks('vehicle_readings') c
        UNION ALL SELECT unnest(ARRAY['meters_current', 'vehicles_current', 'vehicle_meter_mapping', 'api_keys']
                                ::regclass[])::oid
    ), relations AS (
        SELECT oid FROM tables
        UNION ALL SELECT indexrelid FROM pg_index WHERE indrelid IN (SELECT oid FROM tables)
    )
    SELECT count(*) AS relations, coalesce(sum(pg_prewarm(oid)), 0) AS blocks FROM relations
    """
)


def prewarm(engine: Engine) -> dict[str, Any]:
    """Load every chunk, its indexes and the hot tables into shared_buffers; blocks read and seconds."""
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_prewarm"))
        row = conn.execute(_PREWARM).one()
        shared = conn.execute(sa.text("SELECT setting::bigint FROM pg_settings WHERE name = 'shared_buffers'"))
        shared_blocks = shared.scalar_one()
    return {
        "relations": row.relations,
        "mib": round(row.blocks * 8192 / 2**20),
        "shared_buffers_mib": round(shared_blocks * 8192 / 2**20),
        "seconds": round(time.perf_counter() - started, 1),
    }


# --- measurement --------------------------------------------------------------------------------------------


@dataclass
class Endpoint:
    """One request kind measured on the three paths."""

    name: str
    target: str  # "status" or "analytics": which target applies
    http_path: Callable[[int], str]
    service: Callable[[int], object]
    direct: Callable[[Connection, int], object]
    check: Callable[[int, bytes], list[str]] | None = None


def measure(
    endpoint: Endpoint, numbers: Sequence[int], client: HttpClient, conn: Connection, *, record: bool = True
) -> tuple[dict[str, list[float]], list[str]]:
    """Each device on each path, in a rotating path order; returns seconds per path and check failures."""
    seconds: dict[str, list[float]] = {p: [] for p in PATHS}
    problems: list[str] = []
    for k, i in enumerate(numbers):
        for path in PATHS[k % 3 :] + PATHS[: k % 3]:
            if path == "http":
                status, body, elapsed = client.get(endpoint.http_path(i))
                if status != 200:
                    raise RuntimeError(f"{endpoint.name} {endpoint.http_path(i)}: HTTP {status}: {body[:300]!r}")
                if record and endpoint.check is not None:
                    problems += endpoint.check(i, body)
            elif path == "service":
                started = time.perf_counter()
                endpoint.service(i)
                elapsed = time.perf_counter() - started
            else:
                started = time.perf_counter()
                with conn.begin():
                    endpoint.direct(conn, i)
                elapsed = time.perf_counter() - started
            seconds[path].append(elapsed)
    return seconds, problems


def check_analytics(stats: LoadStats, hours: int) -> Callable[[int, bytes], list[str]]:
    """Compares an analytics response with what the generator loaded for vehicle number i."""

    def check(i: int, body: bytes) -> list[str]:
        vid = vehicle_id(i)
        doc = json.loads(body)
        problems = []
        got_ac = doc["energyMetrics"]["totalAcConsumed"]
        got_dc = doc["energyMetrics"]["totalDcDelivered"]
        want_ac, want_dc = stats.expected_ac_kwh(vid), stats.expected_dc_kwh(vid)
        if got_ac is None or round(got_ac, 4) != want_ac:
            problems.append(f"{vid}: totalAcConsumed {got_ac} != loaded {want_ac}")
        if got_dc is None or round(got_dc, 4) != want_dc:
            problems.append(f"{vid}: totalDcDelivered {got_dc} != loaded {want_dc}")
        if len(doc["hourlyBreakdown"]) != hours:
            problems.append(f"{vid}: {len(doc['hourlyBreakdown'])} hourly entries, expected {hours}")
        offset = stats.vehicle_offsets.get(vid, 0)
        want_readings = stats.minutes - (1 if offset < 0 else 0)  # a reading before the window is not in it
        corr = doc["correlation"]
        if corr["vehicleReadings"] != want_readings:
            problems.append(f"{vid}: correlation.vehicleReadings {corr['vehicleReadings']} != {want_readings}")
        if corr["typicalClockOffsetSeconds"] != offset:
            problems.append(f"{vid}: typicalClockOffsetSeconds {corr['typicalClockOffsetSeconds']} != {offset}")
        return problems

    return check


def statement_breakdown(
    conn: Connection, call: Callable[[Connection, int], object], numbers: Sequence[int]
) -> tuple[dict[str, dict[str, float]], dict[str, tuple[str, Any]]]:
    """Seconds per statement of the analytics data-layer call (median etc. over `numbers`), and for each
    statement label the last (SQL, parameters) seen, for EXPLAIN."""
    per: dict[str, list[float]] = {}
    seen: dict[str, tuple[str, Any]] = {}
    current: list[tuple[str, float]] = []

    def before(c: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        current.append((statement, time.perf_counter()))

    def after(c: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        stmt, started = current.pop()
        label = _label(stmt)
        per.setdefault(label, []).append(time.perf_counter() - started)
        seen[label] = (stmt, parameters)

    sa.event.listen(conn, "before_cursor_execute", before)
    sa.event.listen(conn, "after_cursor_execute", after)
    try:
        for i in numbers:
            with conn.begin():
                call(conn, i)
    finally:
        sa.event.remove(conn, "before_cursor_execute", before)
        sa.event.remove(conn, "after_cursor_execute", after)
    return {label: summarize(values) for label, values in per.items()}, seen


def _label(statement: str) -> str:
    s = " ".join(statement.split())
    if "timescaledb.license" in s:
        return "probe (edition, vehicle known)"
    if "percentile_cont" in s:
        return "correlation (nearest meter reading per vehicle reading)"
    if "FROM vehicle_meter_mapping" in s and "DISTINCT" in s:
        return "mapped meters"
    if "time_bucket" in s and "meter_readings" in s:
        return "AC per hour (meter_readings via mapping)"
    if "time_bucket" in s and "vehicle_readings" in s:
        return "DC per hour (vehicle_readings)"
    return s[:60]


def explain(conn: Connection, statement: str, parameters: Any) -> str:
    with conn.begin():
        rows = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS, SETTINGS) {statement}", parameters).scalars()
        return "\n".join(rows)


# --- report -------------------------------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def render_latency(results: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    lines = [
        f"{'endpoint':<36}{'path':<9}{'n':>5}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}{'mean':>9}   (ms)",
    ]
    for name, paths in results.items():
        for path in PATHS:
            s = paths[path]
            lines.append(
                f"{name:<36}{path:<9}{s['n']:>5}{s['p50']:>9.2f}{s['p95']:>9.2f}{s['p99']:>9.2f}"
                f"{s['max']:>9.2f}{s['mean']:>9.2f}"
            )
        h, d = paths["http"], paths["direct"]
        ratio = "".join(f"{h[k] / d[k]:>8.2f}x" for k in ("p50", "p95", "p99", "max", "mean"))
        lines.append(f"{'':<36}{'http/dir':<9}{'':>5}{ratio}")
    return lines


def render_report(report: dict[str, Any]) -> str:
    m, e, load, sizes = report["machine"], report["engine"], report["load"], report["sizes"]
    out = [
        "",
        "=" * 100,
        "fleet day read benchmark (tests/load/bench_analytics.py)",
        f"machine: {m['cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB RAM, load average at start"
        f" {m['loadavg_at_start']}, Python {m['python']}",
        f"engine: PostgreSQL {e['server_version']}, TimescaleDB {e['timescaledb']} ({e['license']} license)",
        "settings: " + ", ".join(f"{k}={v}" for k, v in e["settings"].items()),
        f"data: {load['meters']:,} meters + {load['vehicles']:,} vehicles x {load['minutes']:,} min from"
        f" {load['day_start']} ({load['copy_format']} COPY, {load['loaders']} loaders)",
        f"load: {load['history_rows']:,} history rows in {load['copy_seconds']:.1f} s ="
        f" {load['copy_rows_per_second']:,.0f} rows/s; generator {load['generate_seconds']:.1f} CPU s"
        f" ({load['generate_rows_per_second']:,.0f} rows/s per core); mapping + current state"
        f" {load['current_seconds']:.1f} s; VACUUM (ANALYZE) {load['vacuum_analyze_seconds']:.1f} s;"
        f" CHECKPOINT {load['checkpoint_seconds']:.1f} s; total {load['total_seconds']:.1f} s",
        f"load CPU: {cpu_line(load['cpu'])}",
    ]
    for table in ("meter_readings", "vehicle_readings"):
        s = sizes[table]
        out.append(
            f"  {table:<22}{s['rows']:>12,} rows {s['chunks']} chunks  table {_mib(s['table_bytes'])},"
            f" indexes {_mib(s['index_bytes'])}, hypertable_size {_mib(s['total_bytes'])}"
        )
    for table in ("meters_current", "vehicles_current", "vehicle_meter_mapping"):
        s = sizes[table]
        out.append(
            f"  {table:<22}{s['rows']:>12,} rows           table {_mib(s['table_bytes'])},"
            f" indexes {_mib(s['index_bytes'])}, total {_mib(s['total_bytes'])}"
        )
    out.append(f"  database {_mib(sizes['database_bytes'])}")
    cold = report.get("cold")
    if cold:
        s = cold["analytics_direct"]
        out.append(
            f"first touch after the load (shared_buffers cold, OS page cache warm), 24 h analytics direct, n={s['n']}:"
            f" p50 {s['p50']:.1f} ms, p95 {s['p95']:.1f} ms, max {s['max']:.1f} ms"
        )
    pw = report.get("prewarm")
    if pw:
        out.append(
            f"prewarm: {pw['relations']} relations, {pw['mib']:,} MiB into shared_buffers"
            f" ({pw['shared_buffers_mib']:,} MiB) in {pw['seconds']} s"
        )
    out += ["", f"sequential requests, {report['parameters']['samples']} random devices, after warm-up:"]
    out += render_latency(report["latency"])
    for phase, cpu in report["cpu"].items():
        out.append(f"CPU during {phase}: {cpu_line(cpu)}")
    out.append("")
    for name, verdict in report["targets"].items():
        out.append(f"target {name}: {verdict}")
    c = report["correctness"]
    out.append(
        f"correctness: {c['checked']} analytics responses ({c['with_clock_offset']} of them of vehicles with a"
        " clock offset) checked against the loaded data:"
        f" {'all match' if not c['problems'] else str(len(c['problems'])) + ' problems'}"
    )
    out += [f"  {line}" for line in c["examples"]]
    out += [f"  PROBLEM {p}" for p in c["problems"][:20]]
    out.append("analytics data-layer statements (direct path), ms:")
    for label, s in report["statements"].items():
        out.append(f"  {label:<58} p50 {s['p50']:7.2f}  p95 {s['p95']:7.2f}  max {s['max']:7.2f}")
    for plan in report["explain"]:
        out += ["", f"EXPLAIN (ANALYZE, BUFFERS) of statement: {plan['label']}", plan["sql"], "", plan["plan"]]
    out.append("=" * 100)
    return "\n".join(out)


# --- main ---------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tests.load.bench_analytics", description=__doc__.splitlines()[0] if __doc__ else None
    )
    p.add_argument("--devices", type=int, default=10_000, help="meters, and as many vehicles (default 10000)")
    p.add_argument("--samples", type=int, default=300, help="random devices measured (default 300)")
    p.add_argument("--warmup", type=int, default=30, help="unmeasured requests per endpoint first (default 30)")
    p.add_argument("--cold-samples", type=int, default=50, help="first-touch analytics calls (default 50; 0: skip)")
    p.add_argument("--minutes", type=int, default=1440, help="minutes of the day loaded (default 1440)")
    p.add_argument("--loaders", type=int, default=2, help="COPY loader processes (default 2)")
    p.add_argument("--format", choices=("binary", "text"), default="binary", help="COPY format (default binary)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    p.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker (default 4)")
    p.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE", help="server setting")
    p.add_argument("--no-prewarm", action="store_true", help="measure without pg_prewarm")
    p.add_argument(
        "--explain",
        action="store_true",
        help="print EXPLAIN ANALYZE of every analytics statement (default: of the"
        " slowest one, when the analytics p95 misses its target)",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--timeout", type=int, default=3600, help="give up after this many seconds (default 3600)")
    p.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    args = p.parse_args(argv)
    if args.devices < 1 or args.samples < 1 or args.minutes < 60 or args.minutes % 60:
        p.error("need --devices >= 1, --samples >= 1 and --minutes a positive multiple of 60")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = dict(BENCH_SETTINGS)
    for item in args.pg_setting:
        name, _, value = item.partition("=")
        settings[name] = value
    day_start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    day_end = day_start + timedelta(minutes=args.minutes)
    rng = random.Random(args.seed)
    numbers = rng.sample(range(1, args.devices + 1), min(args.devices, args.samples + args.cold_samples))
    sample, cold_sample = numbers[: args.samples], numbers[args.samples :]
    warm = [rng.randrange(1, args.devices + 1) for _ in range(args.warmup)]
    report: dict[str, Any] = {"parameters": {**vars(args), "json": str(args.json)}, "machine": machine_info()}
    cpu = CpuWatch()
    report["cpu"] = {}

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fleet-bench-analytics-")))
        log(f"starting a throw-away native cluster ({', '.join(f'{k}={v}' for k, v in settings.items())})")
        url = stack.enter_context(native_cluster("fleet_bench", settings=settings))
        engine = db.make_engine(url, pool_size=3, connect_timeout=30)
        stack.callback(engine.dispose)
        with engine.connect() as conn:
            report["engine"] = engine_info(conn)
        pm = postmaster_pid(report["engine"].pop("backend_pid"))
        if pm is not None:
            cpu.roots.append(pm)
        e = report["engine"]
        log(f"cluster up: PostgreSQL {e['server_version']}, TimescaleDB {e['timescaledb']} ({e['license']})")

        cpu.start()
        stats = load_fleet_day(
            url,
            meters=args.devices,
            vehicles=args.devices,
            day_start=day_start,
            minutes=args.minutes,
            seed=args.seed,
            loaders=args.loaders,
            copy_format=args.format,
            timeout=args.timeout,
            log=log,
        )
        load = {
            k: v
            for k, v in vars(stats).items()
            if k not in ("meter_ac_units", "vehicle_dc_units", "vehicle_offsets", "mapping")
        }
        load.update(
            day_start=stats.day_start.isoformat(),
            history_rows=stats.history_rows,
            copy_rows_per_second=stats.copy_rows_per_second,
            generate_rows_per_second=stats.generate_rows_per_second,
            cpu=cpu.stop(),
        )
        report["load"] = load
        with engine.connect() as conn:
            report["sizes"] = database_sizes(conn)
        log("sizes and exact row counts read")

        direct_conn = stack.enter_context(engine.connect())
        direct_conn.exec_driver_sql("SET statement_timeout = '60s'")
        direct_conn.commit()

        def direct_analytics(conn: Connection, i: int) -> object:
            return analytics.vehicle_performance(conn, vehicle_id(i), day_start, day_end, community=False)

        if cold_sample:
            cold = []
            for i in cold_sample:
                started = time.perf_counter()
                with direct_conn.begin():
                    direct_analytics(direct_conn, i)
                cold.append(time.perf_counter() - started)
            report["cold"] = {"analytics_direct": summarize(cold)}
            log(
                f"first-touch analytics (direct) over {len(cold)} vehicles:"
                f" p50 {report['cold']['analytics_direct']['p50']:.1f} ms"
            )
        if not args.no_prewarm:
            report["prewarm"] = prewarm(engine)
            log(f"prewarmed {report['prewarm']['mib']:,} MiB in {report['prewarm']['seconds']} s")

        with engine.begin() as conn:
            api_key = keys.create_key(conn, "bench-analytics", "read", None)[1]
        service_engine = db.make_engine(url, pool_size=1, connect_timeout=30)
        stack.callback(service_engine.dispose)
        log_path = tmp / "gunicorn.log"
        no_limit = {"FLEET_RATE_LIMIT": "off"}
        server = gunicorn_server(url, workers=args.workers, threads=args.threads, log_path=log_path, env=no_limit)
        port = stack.enter_context(server).port
        client = HttpClient(port, api_key)
        stack.callback(client.close)

        window = Window(day_start, day_end)
        window_query = urlencode({"startDate": day_start.isoformat(), "endDate": day_end.isoformat()})
        endpoints = [
            Endpoint(
                "GET /v1/vehicles/<id>",
                "status",
                lambda i: f"/v1/vehicles/{quote(vehicle_id(i))}",
                lambda i: devices_service.get_vehicle(service_engine, vehicle_id(i)),
                lambda conn, i: devices.get_vehicle(conn, vehicle_id(i)),
            ),
            Endpoint(
                "GET /v1/meters/<id>",
                "status",
                lambda i: f"/v1/meters/{quote(meter_id(i))}",
                lambda i: devices_service.get_meter(service_engine, meter_id(i)),
                lambda conn, i: devices.get_meter(conn, meter_id(i)),
            ),
            Endpoint(
                f"GET /v1/analytics/performance {args.minutes // 60} h",
                "analytics",
                lambda i: f"/v1/analytics/performance/{quote(vehicle_id(i))}?{window_query}",
                lambda i: analytics_service.vehicle_performance(service_engine, vehicle_id(i), window),
                direct_analytics,
                check_analytics(stats, args.minutes // 60),
            ),
        ]
        report["latency"] = {}
        problems: list[str] = []
        for endpoint in endpoints:
            measure(endpoint, warm, client, direct_conn, record=False)
            cpu.start()
            seconds, found = measure(endpoint, sample, client, direct_conn)
            report["cpu"][endpoint.name] = cpu.stop()
            problems += found
            report["latency"][endpoint.name] = {path: summarize(values) for path, values in seconds.items()}
            s = report["latency"][endpoint.name]
            log(
                f"{endpoint.name}: p95 http {s['http']['p95']:.2f} ms, service {s['service']['p95']:.2f} ms,"
                f" direct {s['direct']['p95']:.2f} ms"
            )

        examples = []
        offset_vehicles = [n for n in sample if vehicle_id(n) in stats.vehicle_offsets]
        for i in [n for n in sample if n not in offset_vehicles][:3] + offset_vehicles[:3]:
            vid = vehicle_id(i)
            _, body, _ = client.get(endpoints[2].http_path(i))
            doc = json.loads(body)
            em, corr = doc["energyMetrics"], doc["correlation"]
            examples.append(
                f"{vid} (meter {stats.mapping[vid]}): loaded AC {stats.expected_ac_kwh(vid):.4f} kWh,"
                f" DC {stats.expected_dc_kwh(vid):.4f} kWh, clock offset {stats.vehicle_offsets.get(vid, 0)} s |"
                f" API totalAcConsumed {em['totalAcConsumed']}, totalDcDelivered {em['totalDcDelivered']},"
                f" efficiencyRatio {em['efficiencyRatio']}, matchRate {corr['matchRate']},"
                f" typicalClockOffsetSeconds {corr['typicalClockOffsetSeconds']}"
            )
        report["correctness"] = {
            "checked": len(sample),
            "with_clock_offset": len(offset_vehicles),
            "problems": problems,
            "examples": examples,
        }

        breakdown, seen = statement_breakdown(direct_conn, direct_analytics, sample[: min(50, len(sample))])
        report["statements"] = breakdown
        analytics_p95 = report["latency"][endpoints[2].name]["http"]["p95"]
        slowest_first = sorted(breakdown, key=lambda k: -breakdown[k]["p50"])
        if not args.explain:
            slowest_first = slowest_first[:1] if analytics_p95 > TARGETS_MS["analytics"] else []
        report["explain"] = [
            {"label": label, "sql": seen[label][0], "plan": explain(direct_conn, *seen[label])}
            for label in slowest_first
        ]

        report["targets"] = {}
        for endpoint in endpoints:
            p95 = report["latency"][endpoint.name]["http"]["p95"]
            target = TARGETS_MS[endpoint.target]
            verdict = "met" if p95 < target else "MISSED"
            report["targets"][endpoint.name] = f"http p95 {p95:.2f} ms vs < {target:g} ms: {verdict}"
        log("measurements done; stopping gunicorn and the cluster")
    report["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    require_native_engine()
    cleaned_up = "every process started was stopped and the cluster removed"
    return run_benchmark(
        "bench_analytics", args, run, render_report, cleaned_up, passed=lambda r: not r["correctness"]["problems"]
    )


if __name__ == "__main__":
    sys.exit(main())
