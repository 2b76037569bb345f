"""Read benchmark: a full fleet day on native Community next to native Apache: status, 24 h / 7 d analytics and the
fleet view through gunicorn, the cost of refreshing the aggregates while the fleet ingests, and compression.

Run from the repository root (loopback only; throw-away native clusters are started and removed):

    .venv/bin/python -m tests.load.bench_analytics [--devices 10000] [--samples 300] [--editions community,apache]
                                                   [--json out.json]

What is measured
----------------
For each edition in --editions, in turn, a throw-away PostgreSQL 15 + TimescaleDB 2.28 cluster of the same build
(tests/load/native_cluster.py, server settings below, fsync on; Apache: `-c timescaledb.license=apache`) gets one
full fleet day from tests/load/fleet_day.py: --devices meters + --devices vehicles, one reading a minute for 24 h
(28.8M history rows at 10,000), ending at 00:00 UTC today, bulk-loaded with binary COPY from two loader processes,
then VACUUM (ANALYZE) and CHECKPOINT. The load's time and rows/s are reported.

Community only, what production's policies would have done by the time dashboards read the day:
- refresh under ingest: the day is materialised hour by hour (`refresh_continuous_aggregate` of every continuous
  aggregate over one hour = one refresh; the refresh policy's work per hour of fleet time), with the refreshing
  backend's CPU seconds read from /proc. The first --quiet-hours alone, each after the same aggregation as a plain
  SELECT ... GROUP BY (baseline). Then the fleet ingests through gunicorn (tests/load/fleet_ingest.py: 20,000
  devices' single-reading POSTs into today's chunk) at its rate (333 readings/s) for --ingest-seconds without
  refreshes, then while half of the remaining hours are refreshed back to back; then the same unpaced (the
  ingest's capacity) with the other half. Ingest readings/s and latency, and the cluster's CPU, with and without;
- `fleet jobs run --once` (the project's scheduler, once: whatever else it keeps fresh), VACUUM (ANALYZE);
- compression: 24 h and 7 d analytics (direct path) over the materialised, uncompressed day, then every chunk of
  the day compressed (`compress_chunk`; today's chunk, which the live fleet writes, stays uncompressed): ratio from
  hypertable_compression_stats (tables + indexes + TOAST; data alone beside it), seconds and backend CPU; then the
  same analytics calls over the compressed day.

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

Requests: GET /v1/vehicles/<id>, GET /v1/meters/<id>, GET /v1/analytics/performance/<vehicleId>
?startDate=<day start>&endDate=<day end> (the loaded 24 h) and over the 7 days ending with it, and GET
/v1/analytics/fleet?sort=efficiency (first page of 100 of all 10,000 vehicles) over the day's last hour and over the
day (--fleet-samples requests; on Apache a quarter of that for the 24 h window, which aggregates 28.8M raw rows).
The direct path reads where the server's edition says (aggregates on Community, hypertables on Apache).
p50/p95/p99/max/mean in ms per path and the ratio http/direct are printed, next to the Community targets of
DESIGN.md (status p95 < 2 ms, 24 h analytics p95 < 10 ms, fleet view p95 < 200 ms).

While the fleet ingests: the fleet's ingest as above at its rate, and meanwhile --ingest-samples 24 h analytics
and then status requests, one at a time, alternating http and direct (targets: analytics p95 < 20 ms, status
p95 < 10 ms).

Cache state, stated rather than hidden: the bulk load goes through a small ring buffer, so after it the day
sits in the OS page cache but hardly in shared_buffers. On Apache a "first touch" pass over --cold-samples other
vehicles (direct path only) measures that state; then every table, TOAST table and index (chunks, compressed
chunks, the aggregates' materialisation) is loaded into shared_buffers with pg_prewarm (they fit), which is the
steady state of a server that has been ingesting the day, and the main measurement runs after --warmup unmeasured
requests per endpoint.

Correctness: every 24 h analytics response is checked against the generator: totalAcConsumed and totalDcDelivered
equal (rounded to 4 decimals) the sums of the values loaded for that vehicle's meter and that vehicle in the
window, hourlyBreakdown has one entry per hour, correlation.vehicleReadings is the vehicle's readings in the
window and typicalClockOffsetSeconds its generated clock offset. Any mismatch makes the exit status 1.

Diagnosis: the analytics data-layer call's statements are timed one by one over a subset of the sample, and
the slowest statement's EXPLAIN (ANALYZE, BUFFERS) is printed when the analytics p95 misses its target (every
statement's with --explain). The machine is shared: each phase reports the CPU used by processes outside this
benchmark (its processes, gunicorn and the cluster); a large "others" figure means disturbed numbers.

Everything is bounded (--timeout, default 3600 s, and per-request timeouts); every process started (loader
processes, the ingest process, gunicorn, the cluster) is stopped by PID on exit, error, Ctrl-C or SIGTERM, and the
cluster's data directory (several GB at full scale) is removed before the next edition's cluster starts.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import subprocess
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
from tests.load import rollups
from tests.load.benchlib import (
    CpuWatch,
    cpu_line,
    descendants,
    gunicorn_server,
    log,
    proc_table,
    run_benchmark,
    summarize,
)
from tests.load.fleet_day import LoadStats, load_fleet_day, meter_id, vehicle_id
from tests.load.fleet_ingest import FLEET_RATE, FleetIngest
from tests.load.native_cluster import native_cluster, require_native_engine
from tests.load.rollups import BackendCpu

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
#: Design targets (product brief), p95 in ms through the API.
TARGETS_MS = {"status": 2.0, "analytics": 10.0, "fleet": 200.0, "analytics_ingesting": 20.0, "status_ingesting": 10.0}
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
        SELECT c.oid, c.reltoastrelid
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname IN ('public', '_timescaledb_internal') AND c.relkind IN ('r', 'm')
    ), heaps AS (
        SELECT oid FROM tables UNION ALL SELECT reltoastrelid FROM tables WHERE reltoastrelid <> 0
    ), relations AS (
        SELECT oid FROM heaps
        UNION ALL SELECT indexrelid FROM pg_index WHERE indrelid IN (SELECT oid FROM heaps)
    )
    SELECT count(*) AS relations, coalesce(sum(pg_prewarm(oid)), 0) AS blocks FROM relations
    """
)


def prewarm(engine: Engine) -> dict[str, Any]:
    """Load every table of the schema and of TimescaleDB's internal schema (chunks, compressed chunks and their
    TOAST, the aggregates' materialisation), with their indexes, into shared_buffers; blocks read and seconds."""
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
) -> tuple[dict[str, list[float]], list[str], list[str]]:
    """Each device on each path, in a rotating path order; returns seconds per path, check failures, and HTTP
    errors (a response other than 200 is not timed: e.g. a request past gunicorn's 30 s worker timeout)."""
    seconds: dict[str, list[float]] = {p: [] for p in PATHS}
    problems: list[str] = []
    errors: list[str] = []
    for k, i in enumerate(numbers):
        for path in PATHS[k % 3 :] + PATHS[: k % 3]:
            if path == "http":
                status, body, elapsed = client.get(endpoint.http_path(i))
                if status != 200:
                    errors.append(f"{endpoint.name} {endpoint.http_path(i)}: HTTP {status}: {body[:300]!r}")
                    continue
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
    return seconds, problems, errors


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


def _pct(values: dict[str, float]) -> str:
    return f"p50 {values['p50']:.2f} p95 {values['p95']:.2f} p99 {values['p99']:.2f} ms"


def render_edition(name: str, rep: dict[str, Any], samples: int) -> list[str]:
    e, load, sizes = rep["engine"], rep["load"], rep["sizes"]
    out = [
        "",
        f"--- {name} edition ---",
        f"engine: PostgreSQL {e['server_version']}, TimescaleDB {e['timescaledb']} ({e['license']} license)",
        "settings: " + ", ".join(f"{k}={v}" for k, v in e["settings"].items()),
        f"data: {load['meters']:,} meters + {load['vehicles']:,} vehicles x {load['minutes']:,} min from"
        f" {load['day_start']} ({load['copy_format']} COPY, {load['loaders']} loaders)",
        f"load: {load['history_rows']:,} history rows in {load['copy_seconds']:.1f} s ="
        f" {load['copy_rows_per_second']:,.0f} rows/s; VACUUM (ANALYZE) {load['vacuum_analyze_seconds']:.1f} s;"
        f" CHECKPOINT {load['checkpoint_seconds']:.1f} s; total {load['total_seconds']:.1f} s",
        f"load CPU: {cpu_line(load['cpu'])}",
    ]
    for table in ("meter_readings", "vehicle_readings"):
        s = sizes[table]
        out.append(
            f"  {table:<22}{s['rows']:>12,} rows {s['chunks']} chunks  table {_mib(s['table_bytes'])},"
            f" indexes {_mib(s['index_bytes'])}, hypertable_size {_mib(s['total_bytes'])}"
        )
    ref = rep.get("refresh")
    if ref:
        q = ref["quiet"]
        out.append(
            f"refresh of one fleet hour (every aggregate), quiet, n={q['n']}: {q['seconds']:.2f} s wall,"
            f" {q['cpu_s']:.2f} CPU s of the backend; the same GROUP BY as a plain SELECT (baseline)"
            f" {q['plain_seconds']:.2f} s, {q['plain_cpu_s']:.2f} CPU s"
        )
        for label, ph in ref["phases"].items():
            a, b = ph["without"], ph["with"]
            out.append(
                f"ingest {label}: without refreshes {a['readings_per_s']:,.0f} readings/s ({_pct(a['latency'])},"
                f" PostgreSQL {a['postgres_cpu_pct']:.0f} % of a core) | with {b['refreshes']} refreshes running"
                f" {b['readings_per_s']:,.0f} readings/s ({_pct(b['latency'])}, PostgreSQL"
                f" {b['postgres_cpu_pct']:.0f} % of a core); per refresh {b['refresh_seconds_mean']:.2f} s wall,"
                f" {b['refresh_cpu_s_mean']:.2f} CPU s"
            )
        jobs = rep.get("jobs_once")
        if jobs:
            out.append(f"`fleet jobs run --once`: exit {jobs['exit_code']} in {jobs['seconds']:.1f} s")
    comp = rep.get("compression")
    if comp:
        a = comp["all"]
        out.append(
            f"compression of the loaded day's chunks: {a['before_bytes'] / 2**20:,.0f} ->"
            f" {a['after_bytes'] / 2**20:,.0f} MiB = {a['ratio_total']:.2f}x (table data alone"
            f" {a['ratio_data']:.2f}x) in {a['seconds']:.1f} s, {a['cpu_s']:.1f} CPU s"
        )
        for window, pair in rep["compressed_vs_uncompressed"].items():
            out.append(
                f"  {window} analytics direct: uncompressed {_pct(pair['uncompressed'])} | compressed"
                f" {_pct(pair['compressed'])}"
            )
    pw = rep.get("prewarm")
    if pw:
        out.append(
            f"prewarm: {pw['relations']} relations, {pw['mib']:,} MiB into shared_buffers"
            f" ({pw['shared_buffers_mib']:,} MiB) in {pw['seconds']} s"
        )
    out += ["", f"sequential requests, {samples} random devices (fleet view: fewer), after warm-up:"]
    out += render_latency(rep["latency"])
    for phase, cpu in rep["cpu"].items():
        out.append(f"CPU during {phase}: {cpu_line(cpu)}")
    wi = rep.get("while_ingesting")
    if wi:
        ing = wi["ingest"]
        out.append(
            f"while the fleet ingests ({ing['readings_per_s']:,.0f} readings/s acknowledged, {ing['errors']} errors,"
            f" ingest {_pct(ing['latency'])}):"
        )
        for req, paths in wi["latency"].items():
            out.append(f"  {req:<40} " + " | ".join(f"{p} {_pct(v)}" for p, v in paths.items()))
    c = rep["correctness"]
    out.append(
        f"correctness: {c['checked']} analytics responses ({c['with_clock_offset']} of them of vehicles with a"
        " clock offset) checked against the loaded data:"
        f" {'all match' if not c['problems'] else str(len(c['problems'])) + ' problems'}"
    )
    out += [f"  {line}" for line in c["examples"]]
    out += [f"  PROBLEM {p}" for p in c["problems"][:20]]
    out.append("analytics data-layer statements (direct path), ms:")
    for label, st in rep["statements"].items():
        out.append(f"  {label:<58} p50 {st['p50']:7.2f}  p95 {st['p95']:7.2f}  max {st['max']:7.2f}")
    for plan in rep["explain"]:
        out += ["", f"EXPLAIN (ANALYZE, BUFFERS) of statement: {plan['label']}", plan["sql"], "", plan["plan"]]
    return out


def render_report(report: dict[str, Any]) -> str:
    m = report["machine"]
    out = [
        "",
        "=" * 100,
        "fleet day read benchmark (tests/load/bench_analytics.py)",
        f"machine: {m['cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB RAM, load average at start"
        f" {m['loadavg_at_start']}, Python {m['python']}",
    ]
    for name, rep in report["editions"].items():
        out += render_edition(name, rep, report["parameters"]["samples"])
    out.append("")
    for name, verdict in report["targets"].items():
        out.append(f"target {name}: {verdict}")
    out.append("=" * 100)
    return "\n".join(out)


# --- main ---------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tests.load.bench_analytics", description=__doc__.splitlines()[0] if __doc__ else None
    )
    p.add_argument("--devices", type=int, default=10_000, help="meters, and as many vehicles (default 10000)")
    p.add_argument(
        "--editions",
        default="community,apache",
        help="comma list, each on its own cluster, in this order (default community,apache)",
    )
    p.add_argument("--samples", type=int, default=300, help="random devices measured (default 300)")
    p.add_argument("--fleet-samples", type=int, default=20, help="fleet-view requests per path (default 20)")
    p.add_argument("--ingest-samples", type=int, default=200, help="requests while the fleet ingests (default 200)")
    p.add_argument("--ingest-seconds", type=float, default=30.0, help="ingest window without refreshes (default 30)")
    p.add_argument("--quiet-hours", type=int, default=2, help="hours refreshed alone first (default 2)")
    p.add_argument("--warmup", type=int, default=30, help="unmeasured requests per endpoint first (default 30)")
    p.add_argument("--cold-samples", type=int, default=50, help="first-touch analytics calls (default 50; 0: skip)")
    p.add_argument("--minutes", type=int, default=1440, help="minutes of the day loaded (default 1440)")
    p.add_argument("--loaders", type=int, default=2, help="COPY loader processes (default 2)")
    p.add_argument("--format", choices=("binary", "text"), default="binary", help="COPY format (default binary)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    p.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker (default 4)")
    p.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE", help="server setting")
    p.add_argument("--no-prewarm", action="store_true", help="measure without pg_prewarm")
    p.add_argument("--no-jobs", action="store_true", help="do not run `fleet jobs run --once` after the refreshes")
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
    args.editions = [e.strip() for e in args.editions.split(",") if e.strip()]
    if not args.editions or set(args.editions) - {"community", "apache"}:
        p.error("--editions: a comma list of community and apache")
    if args.devices < 1 or args.samples < 1 or args.minutes < 120 or args.minutes % 60:
        p.error("need --devices >= 1, --samples >= 1 and --minutes a multiple of 60, at least 120")
    return args


def _postgres_cpu(postmaster: int | None) -> float:
    """CPU seconds of the whole cluster so far: the postmaster, every backend and the children they reaped."""
    if postmaster is None:
        return 0.0
    table = proc_table()
    return sum(table[p][1] + table[p][2] for p in descendants(table, [postmaster]))


def _refresh_hour(conn: Connection, caggs: Sequence[str], hour: datetime, cpu: BackendCpu) -> dict[str, float]:
    """Every aggregate over one hour: wall and backend CPU seconds, summed."""
    wall = used = 0.0
    for cagg in caggs:
        r = rollups.refresh(conn, cagg, hour, hour + timedelta(hours=1), cpu)
        wall += r["seconds"]
        used += r["cpu_s"] or 0.0
    return {"seconds": wall, "cpu_s": used}


def refresh_phases(
    admin: Connection,
    hours: Sequence[datetime],
    port: int,
    device_key: str,
    ingest_start: datetime,
    postmaster: int | None,
    args: argparse.Namespace,
) -> tuple[dict[str, Any], int]:
    """Materialise the loaded day hour by hour, as the refresh policy does: the first --quiet-hours alone (with the
    plain GROUP BY as baseline), then half of the rest while the fleet ingests at its rate and the other half while
    it ingests unpaced, each next to a window of the same ingest without refreshes. Returns the figures and the
    reading numbers the ingest used."""
    caggs = list(rollups.continuous_aggregates(admin))
    cpu = BackendCpu.of(admin)
    quiet = hours[: args.quiet_hours]
    rest = hours[args.quiet_hours :]
    out: dict[str, Any] = {"aggregates": caggs, "hours": len(hours)}
    runs = []
    for hour in quiet:
        plain = [rollups.plain_group_by(admin, c, hour, hour + timedelta(hours=1), cpu) for c in caggs]
        done = _refresh_hour(admin, caggs, hour, cpu)
        runs.append((done, plain))
    n = max(1, len(runs))
    out["quiet"] = {
        "n": len(runs),
        "seconds": sum(r[0]["seconds"] for r in runs) / n,
        "cpu_s": sum(r[0]["cpu_s"] for r in runs) / n,
        "plain_seconds": sum(p["seconds"] for r in runs for p in r[1]) / n,
        "plain_cpu_s": sum(p["cpu_s"] or 0.0 for r in runs for p in r[1]) / n,
        "groups": sum(p["groups"] for r in runs for p in r[1]) / n,
    }
    log(
        f"refresh of one hour, quiet: {out['quiet']['seconds']:.2f} s, {out['quiet']['cpu_s']:.2f} CPU s"
        f" (plain GROUP BY {out['quiet']['plain_seconds']:.2f} s)"
    )
    half = len(rest) // 2
    plan = {"at the fleet's rate": (FLEET_RATE, rest[:half]), "unpaced (capacity)": (0.0, rest[half:])}
    phases: dict[str, Any] = {}
    with FleetIngest(port, device_key, window_start=ingest_start, rate=FLEET_RATE) as ingest:
        marks: dict[str, tuple[float, float, float, float, float, float, list[dict[str, float]]]] = {}
        for label, (rate, todo) in plan.items():
            ingest.set_rate(rate)
            time.sleep(2.0)  # settle at the new rate
            a0, pa0 = time.time(), _postgres_cpu(postmaster)
            time.sleep(args.ingest_seconds)
            a1, pa1 = time.time(), _postgres_cpu(postmaster)
            done = [_refresh_hour(admin, caggs, hour, cpu) for hour in todo]
            b1, pb1 = time.time(), _postgres_cpu(postmaster)
            marks[label] = (a0, a1, b1, pa1 - pa0, pb1 - pa1, rate, done)
            log(f"ingest {label}: {args.ingest_seconds:g} s without refreshes, then {len(done)} hour refreshes")
    for label, (a0, a1, b1, pa, pb, rate, done) in marks.items():
        without, with_ = ingest.window(a0, a1), ingest.window(a1, b1)
        without["postgres_cpu_pct"] = 100 * pa / max(a1 - a0, 1e-9)
        with_["postgres_cpu_pct"] = 100 * pb / max(b1 - a1, 1e-9)
        k = max(1, len(done))
        with_.update(
            refreshes=len(done),
            refresh_seconds_mean=sum(d["seconds"] for d in done) / k,
            refresh_cpu_s_mean=sum(d["cpu_s"] for d in done) / k,
            refresh_cpu_s=[round(d["cpu_s"], 3) for d in done],
        )
        phases[label] = {"offered_rate": rate or None, "without": without, "with": with_}
        log(
            f"ingest {label}: {without['readings_per_s']:,.0f} readings/s without refreshes,"
            f" {with_['readings_per_s']:,.0f} with ({len(done)} refreshes,"
            f" {with_['refresh_cpu_s_mean']:.2f} CPU s each)"
        )
    out["phases"] = phases
    return out, ingest.sent


def run_jobs_once(url: str, timeout: float) -> dict[str, Any]:
    """`fleet jobs run --once`: whatever else the project's scheduler keeps fresh is brought up to date."""
    env = {**os.environ, "DATABASE_URL": url}
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "cli", "jobs", "run", "--once"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        code, tail_text = proc.returncode, (proc.stdout + proc.stderr)[-2000:]
    except subprocess.TimeoutExpired:
        code, tail_text = None, f"did not finish within {timeout:.0f} s (stopped)"
    return {"exit_code": code, "seconds": time.perf_counter() - started, "output_tail": tail_text}


def measure_direct(conn: Connection, call: Callable[[Connection, int], object], numbers: Sequence[int]) -> dict:
    """`call` per device on a held connection, one transaction each, after one unmeasured call: ms."""
    with conn.begin():
        call(conn, numbers[0])
    seconds = []
    for i in numbers:
        started = time.perf_counter()
        with conn.begin():
            call(conn, i)
        seconds.append(time.perf_counter() - started)
    return summarize(seconds)


def run_edition(args: argparse.Namespace, edition: str, day_start: datetime, rng: random.Random) -> dict[str, Any]:
    """One edition on its own throw-away cluster: load, (Community: refresh under ingest, compress), measure."""
    community = edition == "community"
    settings = dict(BENCH_SETTINGS)
    if not community:
        settings["timescaledb.license"] = "apache"
    for item in args.pg_setting:
        name, _, value = item.partition("=")
        settings[name] = value
    day_end = day_start + timedelta(minutes=args.minutes)
    week_start = day_end - timedelta(days=7)
    numbers = rng.sample(range(1, args.devices + 1), min(args.devices, args.samples + args.cold_samples))
    sample, cold_sample = numbers[: args.samples], numbers[args.samples :]
    warm = [rng.randrange(1, args.devices + 1) for _ in range(args.warmup)]
    rep: dict[str, Any] = {"cpu": {}}
    cpu = CpuWatch()

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fleet-bench-analytics-")))
        log(f"{edition}: starting a throw-away native cluster ({', '.join(f'{k}={v}' for k, v in settings.items())})")
        url = stack.enter_context(native_cluster("fleet_bench", settings=settings))
        engine = db.make_engine(url, pool_size=3, connect_timeout=30)
        stack.callback(engine.dispose)
        with engine.connect() as conn:
            rep["engine"] = engine_info(conn)
        pm = postmaster_pid(rep["engine"].pop("backend_pid"))
        if pm is not None:
            cpu.roots.append(pm)
        e = rep["engine"]
        if (e["license"] == "timescale") != community:
            raise RuntimeError(f"{edition} run, but the server reports timescaledb.license = {e['license']}")
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
        rep["load"] = load
        with engine.connect() as conn:
            rep["sizes"] = database_sizes(conn)
        log("sizes and exact row counts read")

        direct_conn = stack.enter_context(engine.connect())
        direct_conn.exec_driver_sql("SET statement_timeout = '120s'")
        direct_conn.commit()
        admin = stack.enter_context(engine.connect().execution_options(isolation_level="AUTOCOMMIT"))

        def analytics_call(start: datetime, end: datetime) -> Callable[[Connection, int], object]:
            return lambda conn, i: analytics.vehicle_performance(conn, vehicle_id(i), start, end)

        direct_day, direct_week = analytics_call(day_start, day_end), analytics_call(week_start, day_end)

        if cold_sample and not community:
            # Community: the aggregates are not materialised yet; its first touch is after the refreshes.
            cold = []
            for i in cold_sample:
                started = time.perf_counter()
                with direct_conn.begin():
                    direct_day(direct_conn, i)
                cold.append(time.perf_counter() - started)
            rep["cold"] = {"analytics_direct": summarize(cold)}

        with engine.begin() as conn:
            api_key = keys.create_key(conn, "bench-analytics", "read", None)[1]
            device_key = keys.create_key(conn, "bench-fleet", "device")[1]
        service_engine = db.make_engine(url, pool_size=1, connect_timeout=30)
        stack.callback(service_engine.dispose)
        no_limit = {"FLEET_RATE_LIMIT": "off"}
        server = gunicorn_server(
            url, workers=args.workers, threads=args.threads, log_path=tmp / "gunicorn.log", env=no_limit
        )
        port = stack.enter_context(server).port
        client = HttpClient(port, api_key)
        stack.callback(client.close)
        # The fleet's live readings go into the chunk after the loaded day, as a running fleet's do.
        ingest_start = day_end
        ingest_first = 0

        if community:
            hours = [day_start + timedelta(hours=h) for h in range(args.minutes // 60)]
            rep["refresh"], ingest_first = refresh_phases(admin, hours, port, device_key, ingest_start, pm, args)
            # Anything the hour-by-hour refreshes left (the readings a clock offset put before the day).
            for cagg in rep["refresh"]["aggregates"]:
                rollups.refresh(admin, cagg, day_start - timedelta(hours=1), day_end)
            if not args.no_jobs:
                rep["jobs_once"] = run_jobs_once(url, timeout=900)
                log(
                    f"fleet jobs run --once: exit {rep['jobs_once']['exit_code']}"
                    f" in {rep['jobs_once']['seconds']:.1f} s"
                )
            admin.exec_driver_sql("VACUUM (ANALYZE)")
            if not args.no_prewarm:
                prewarm(engine)
            compare = sample[: max(10, len(sample) // 3)]
            before = {
                "24 h": measure_direct(direct_conn, direct_day, compare),
                "7 d": measure_direct(direct_conn, direct_week, compare),
            }
            log(f"uncompressed, aggregates materialised: 24 h analytics direct p95 {before['24 h']['p95']:.2f} ms")
            rep["compression"] = rollups.compress_chunks(admin, older_than=day_end, cpu=BackendCpu.of(admin))
            a = rep["compression"]["all"]
            log(f"compressed the loaded day: {a['ratio_total']:.2f}x (data alone {a['ratio_data']:.2f}x)")
            admin.exec_driver_sql("VACUUM (ANALYZE)")
            admin.exec_driver_sql("CHECKPOINT")
            with engine.connect() as conn:
                rep["sizes_compressed"] = rollups.hypertable_sizes(conn)

        if not args.no_prewarm:
            rep["prewarm"] = prewarm(engine)
            log(f"prewarmed {rep['prewarm']['mib']:,} MiB in {rep['prewarm']['seconds']} s")
        if community:
            rep["compressed_vs_uncompressed"] = {
                w: {"uncompressed": before[w], "compressed": measure_direct(direct_conn, call, compare)}
                for w, call in (("24 h", direct_day), ("7 d", direct_week))
            }

        day_window, week_window = Window(day_start, day_end), Window(week_start, day_end)
        hour_window = Window(day_end - timedelta(hours=1), day_end)

        def q(window: Window, **extra: str) -> str:
            return urlencode({"startDate": window.start.isoformat(), "endDate": window.end.isoformat(), **extra})

        def fleet_endpoint(label: str, window: Window) -> Endpoint:
            return Endpoint(
                f"GET /v1/analytics/fleet {label}",
                "fleet",
                lambda i: f"/v1/analytics/fleet?{q(window, sort='efficiency')}",
                lambda i: analytics_service.fleet_performance(
                    service_engine,
                    window,
                    sort="efficiency",
                    below_threshold=False,
                    threshold=0.85,
                    limit=100,
                    offset=0,
                ),
                lambda conn, i: analytics.fleet_performance(
                    conn, window.start, window.end, sort="efficiency", limit=100
                ),
            )

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
                lambda i: f"/v1/analytics/performance/{quote(vehicle_id(i))}?{q(day_window)}",
                lambda i: analytics_service.vehicle_performance(service_engine, vehicle_id(i), day_window),
                direct_day,
                check_analytics(stats, args.minutes // 60),
            ),
            Endpoint(
                "GET /v1/analytics/performance 7 d",
                "analytics_7d",
                lambda i: f"/v1/analytics/performance/{quote(vehicle_id(i))}?{q(week_window)}",
                lambda i: analytics_service.vehicle_performance(service_engine, vehicle_id(i), week_window),
                direct_week,
            ),
            fleet_endpoint("1 h", hour_window),
            fleet_endpoint(f"{args.minutes // 60} h", day_window),
        ]
        rep["latency"] = {}
        problems: list[str] = []
        for endpoint in endpoints:
            is_fleet = endpoint.target == "fleet"
            n_fleet = args.fleet_samples if community or "1 h" in endpoint.name else max(3, args.fleet_samples // 4)
            numbers_here = sample[:n_fleet] if is_fleet else sample
            measure(endpoint, warm[: 1 if is_fleet else len(warm)], client, direct_conn, record=False)
            cpu.start()
            seconds, found, errors = measure(endpoint, numbers_here, client, direct_conn)
            rep["cpu"][endpoint.name] = cpu.stop()
            problems += found
            if errors:
                rep.setdefault("http_errors", {})[endpoint.name] = errors
                log(f"{edition} {endpoint.name}: {len(errors)} HTTP errors, e.g. {errors[0]}")
            rep["latency"][endpoint.name] = {path: summarize(values) for path, values in seconds.items()}
            s = rep["latency"][endpoint.name]
            log(
                f"{edition} {endpoint.name}: p95 http {s['http']['p95']:.2f} ms, service {s['service']['p95']:.2f} ms,"
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
        rep["correctness"] = {
            "checked": len(sample),
            "with_clock_offset": len(offset_vehicles),
            "problems": problems,
            "examples": examples,
        }

        # Dashboards while the whole fleet reports at its rate through the same gunicorn.
        analytics_ep, status_ep = endpoints[2], endpoints[0]
        wi_numbers = [rng.randrange(1, args.devices + 1) for _ in range(args.ingest_samples)]
        wi: dict[str, Any] = {"latency": {}}
        with FleetIngest(port, device_key, window_start=ingest_start, first=ingest_first) as ingest:
            time.sleep(3.0)
            t0 = time.time()
            cpu.start()
            for ep in (analytics_ep, status_ep):
                secs: dict[str, list[float]] = {"http": [], "direct": []}
                for k, i in enumerate(wi_numbers):
                    for path in ("http", "direct") if k % 2 else ("direct", "http"):
                        if path == "http":
                            status, body, elapsed = client.get(ep.http_path(i))
                            if status != 200:
                                raise RuntimeError(f"{ep.name} while ingesting: HTTP {status}: {body[:300]!r}")
                        else:
                            started = time.perf_counter()
                            with direct_conn.begin():
                                ep.direct(direct_conn, i)
                            elapsed = time.perf_counter() - started
                        secs[path].append(elapsed)
                wi["latency"][ep.name] = {p: summarize(v) for p, v in secs.items()}
            wi["cpu"] = cpu.stop()
            t1 = time.time()
        wi["ingest"] = ingest.window(t0, t1)
        rep["while_ingesting"] = wi
        log(
            f"{edition} while ingesting ({wi['ingest']['readings_per_s']:,.0f} readings/s):"
            f" 24 h analytics http p95 {wi['latency'][analytics_ep.name]['http']['p95']:.2f} ms"
        )

        breakdown, seen = statement_breakdown(direct_conn, direct_day, sample[: min(50, len(sample))])
        rep["statements"] = breakdown
        analytics_p95 = rep["latency"][analytics_ep.name]["http"]["p95"]
        slowest_first = sorted(breakdown, key=lambda k: -breakdown[k]["p50"])
        if not args.explain:
            slowest_first = slowest_first[:1] if analytics_p95 > TARGETS_MS["analytics"] else []
        rep["explain"] = [
            {"label": label, "sql": seen[label][0], "plan": explain(direct_conn, *seen[label])}
            for label in slowest_first
        ]
        log(f"{edition}: measurements done; stopping gunicorn and the cluster")
    return rep


def run(args: argparse.Namespace) -> dict[str, Any]:
    day_start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    if datetime.now(UTC) - (day_start + timedelta(days=1)) < timedelta(minutes=30):
        log("note: less than 30 min past 00:00 UTC: the live ingest's timestamps may run ahead of the clock")
    parameters = {**vars(args), "json": str(args.json)}
    report: dict[str, Any] = {"parameters": parameters, "machine": machine_info(), "editions": {}}
    for edition in args.editions:
        report["editions"][edition] = run_edition(args, edition, day_start, random.Random(args.seed))
    report["targets"] = {}
    for edition, rep in report["editions"].items():
        for name, paths in rep["latency"].items():
            target = TARGETS_MS.get(_target_kind(name))
            if target is None:
                continue
            p95 = paths["http"]["p95"]
            report["targets"][f"{edition} {name}"] = (
                f"http p95 {p95:.2f} ms vs < {target:g} ms: {'met' if p95 < target else 'MISSED'}"
            )
        for name, paths in rep["while_ingesting"]["latency"].items():
            target = TARGETS_MS["analytics_ingesting" if "analytics" in name else "status_ingesting"]
            p95 = paths["http"]["p95"]
            report["targets"][f"{edition} {name} while the fleet ingests"] = (
                f"http p95 {p95:.2f} ms vs < {target:g} ms: {'met' if p95 < target else 'MISSED'}"
            )
    report["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return report


def _target_kind(name: str) -> str:
    if "/fleet" in name:
        return "fleet"
    if "performance 7 d" in name:
        return "analytics_7d"
    return "analytics" if "analytics" in name else "status"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    require_native_engine()
    cleaned_up = "every process started was stopped and the cluster removed"
    return run_benchmark(
        "bench_analytics",
        args,
        run,
        render_report,
        cleaned_up,
        passed=lambda r: not any(rep["correctness"]["problems"] for rep in r["editions"].values()),
    )


if __name__ == "__main__":
    sys.exit(main())
