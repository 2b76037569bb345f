"""Side by side with the original implementation: this project measured under the exact conditions of the DESIGN.md
table "Performance targets" (../shared/DESIGN.md), so its figures can be set beside that implementation's.

Run from the repository root (loopback only; throw-away native clusters are started and removed):

    .venv/bin/python -m tests.load.bench_design [--quick] [--editions community,apache] [--duration 20]
                                                [--rounds 2] [--json out.json] [--timeout 3600]

Conditions (those of the DESIGN.md measurement)
------------------------------------------------
- One throw-away PostgreSQL 15 + TimescaleDB cluster per edition (tests/load/native_cluster.py), Community first,
  then Apache (`-c timescaledb.license=apache`), each removed before the next starts; fsync on (passed explicitly:
  pytest-postgresql starts the server with -F) and otherwise PostgreSQL's default server settings (the report lists
  every setting not at its default and where it comes from).
- The dataset of the table: --devices meters + --devices vehicles (default 1,000 + 1,000; --quick 200 + 200) x 24 h,
  one reading a minute, vehicle i mapped to meter i, for the day before today (UTC), bulk-loaded by
  tests/load/fleet_day.py. The DESIGN dataset has energy values with 2 decimals: kwh_consumed_ac and
  kwh_delivered_dc are then rounded to 2 decimals by one UPDATE per table, then VACUUM (ANALYZE). On Community the
  day is materialised before measuring, as production's jobs would have done by then: every continuous aggregate
  refreshed over the day and the correlation rollup (jobs/correlation.py) run up to the day's end, so closed hours
  come from the rollups.
- The API: `fleet serve` (gunicorn, docker/gunicorn.conf.py) with --workers x --threads (default 4 x 2, the
  production defaults), its pool as benchlib sets it, the access log on and rate limiting on at the default
  FLEET_RATE_LIMIT (both pinned explicitly, whatever the caller's environment says). The limit is per API key:
  64 device keys and 16 read keys, used round-robin by the load generator (one X-API-Key per request).
- Load generator: wrk (Debian's package, LuaJIT) `-t2`, keep-alive connections, Lua scripts in tests/load/wrk/;
  latency percentiles from the scripts' done() (`latency:percentile(95)` etc.), response codes counted by them.

What is measured, per edition, each run --duration seconds (default 20; --quick 5), --rounds times (default 2;
--quick 1) in alternation (ingest API, ingest direct, analytics API, analytics direct, both together API, both
together direct), after an unmeasured --warmup run of each kind:
1. single-reading ingest, 32 connections: POST /v1/telemetry/ingest, one reading per request, METER and VEHICLE
   alternating over the loaded devices, every (device, timestamp) new (timestamps just before the run: after the
   loaded day, never in the future), so every 2xx is a stored reading;
2. 24 h analytics, 8 connections: GET /v1/analytics/performance/<vehicleId>?startDate=<day start>&endDate=<day
   end> for a random loaded vehicle per request, read keys. A few responses' totals are first checked against the
   database (sums of the rounded values);
3. both at once: the analytics at 8 connections while ingest runs at 16 (two wrk processes started together);
4. extra column: the ingest of 1. with fsync off. fsync cannot be switched by `ALTER SYSTEM` + reload here: a
   setting given on the server's command line (`-c fsync=on`) outranks postgresql.auto.conf, and the reload leaves
   it on. So after every fsync-on run the server is restarted (`pg_ctl restart`, same command line but fsync=off:
   verified with SHOW fsync), warmed up again, and only the ingest runs follow.

Baselines from the same run, the same work sent directly with pgbench (/usr/lib/postgresql/15/bin/pgbench, not
Python), the same connection counts and duration, `-M prepared`, -j 2, and the app's own session option
(db.PLAN_CACHE_OPTION, plan_cache_mode=force_custom_plan):
- ingest: the dual-write statements of db/readings.py (`_METER_DUAL_WRITE`, `_VEHICLE_DUAL_WRITE`), their text
  taken at run time with the bind parameters rewritten into pgbench expressions (one reading per transaction,
  METER and VEHICLE alternating, unique rows); readings/s, PostgreSQL CPU per reading, API/direct;
- analytics: the statements one real call of `db.analytics.vehicle_performance` runs, captured at run time
  (SQLAlchemy `before_cursor_execute` + psycopg `ClientCursor.mogrify`), the literal vehicle and meter ids
  replaced by expressions of `\\set n random(1, N)`, in one transaction as the service runs them; rate, latency
  (from pgbench's per-transaction log), API/direct.

For every run: requests/s, p50/p95/p99 latency, non-2xx responses (429s apart), socket errors (connect, read,
write, timeout), and CPU per completed request from /proc: utime + stime deltas of whole process trees (the
gunicorn master and workers; the postmaster with every backend and other child, reaped ones included; the wrk or
pgbench processes, from their rusage), "others" = the machine's busy time minus those, and the machine's total
utilisation. Ingest runs are checked: rows added == readings the responses said were stored, give or take the
requests still in flight when wrk stopped (wrk closes its connections at the end of -d; the server still completes
those requests: at most one per connection), and for pgbench exactly the transactions processed.

The original implementation's figures and our targets are the DESIGN.md table's, as cited constants (ORIGINAL,
THEN, TARGETS below); every figure of ours is computed in the run. Missed targets are findings (exit 0); failed
checks (rows, analytics totals, a client that failed) make the exit status 1.

Everything is bounded (--timeout, and each wrk/pgbench run by its duration plus a margin), every process started
(loaders, gunicorn, wrk, pgbench, the cluster) is stopped by PID on exit, error, Ctrl-C or SIGTERM, and the
clusters and the temporary directory (/tmp/design-bench-*) are removed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

import config
import db
from db import analytics, keys, readings
from jobs.correlation import refresh_correlation
from tests.load import rollups, run_locust
from tests.load.bench_analytics import postmaster_pid
from tests.load.benchlib import (
    CpuWatch,
    TreeCpu,
    gunicorn_server,
    log,
    machine_info,
    machine_jiffies,
    proc_table,
    run_benchmark,
    stop_process,
    summarize,
)
from tests.load.fleet_day import load_fleet_day, meter_id, vehicle_id
from tests.load.native_cluster import PG_BIN, PG_CTL_AS_POSTGRES, native_cluster, require_native_engine

WRK = Path("/usr/bin/wrk")
PGBENCH = PG_BIN / "pgbench"
WRK_DIR = Path(__file__).resolve().parent / "wrk"
WRK_THREADS = 2
PGBENCH_THREADS = 2
INGEST_CONNECTIONS = 32
ANALYTICS_CONNECTIONS = 8
MIXED_INGEST_CONNECTIONS = 16
#: Read keys for the dashboards. Device keys: one per loaded device, as a production fleet has them. A device
#: reports once a minute, so its key misses every API process's key cache (FLEET_KEY_CACHE_SECONDS, 5 s) and each
#: ingest request looks its key up in the database; a few keys shared by all devices would hit the cache instead.
READ_KEYS = 16
#: wrk's own per-request timeout (its default, 2 s, would drop slower responses from the latency figures).
WRK_TIMEOUT_S = 30
RESULT_MARK = "DESIGN_BENCH_RESULT "

# --- the DESIGN.md table (cited, never measured here) ---------------------------------------------------------
# From ../shared/DESIGN.md, "Performance targets", measured 2026-12-03 on this machine kind: the original design's
# own implementation (NestJS + TypeORM, one Node process), same PostgreSQL 15 + TimescaleDB cluster, fsync on,
# default server settings, wrk -t2, 20 s runs alternating, CPU from /proc of each whole process tree.
ORIGINAL: dict[str, dict[str, float]] = {
    "ingest": {"rate": 545.0, "p99_ms": 114.0, "app_cpu_ms": 1.56, "db_cpu_ms": 1.26},
    "analytics": {"rate": 80.0, "p95_ms": 149.0, "db_cpu_ms": 20.0},
    "mixed": {"rate": 48.5, "p95_ms": 261.0},
}
# From ../shared/DESIGN.md, the same table, measured 2026-12-03: this project as it was then.
THEN: dict[str, str] = {
    "ingest": "419 req/s, p99 238 ms, 3.54 ms app CPU + 0.85 ms DB CPU",
    "analytics": "5.8 req/s, p95 2,298 ms (generic plan); 44.5 req/s with custom plans",
    "mixed": "3.6 req/s, p95 3,041 ms",
}
# From ../shared/DESIGN.md, the same table (measured 2026-12-03): our targets.
TARGETS: dict[str, Any] = {
    "ingest_rate": 1_100.0,  # req/s, 2x the original
    "ingest_app_cpu_ms": 1.0,  # app CPU per request
    "analytics_rate": {"community": 320.0, "apache": 120.0},  # req/s: Community 4x the original
    "analytics_p95_ms": {"community": 25.0},
    "mixed_p95_ms": {"community": 50.0},
    "mixed_rate_factor": {"community": 4.0},  # at >= 4x the original's rate
}

#: Server settings shown in the report besides those not at their default.
SHOWN_SETTINGS = ("fsync", "synchronous_commit", "shared_buffers", "work_mem", "max_wal_size", "jit")


# --- helpers ----------------------------------------------------------------------------------------------------


def id_format(make_id: Callable[[int], str]) -> tuple[str, int]:
    """(prefix, zero-padded width) of fleet_day's device ids, derived from the function itself."""
    sample = make_id(7)
    digits = len(sample) - len(sample.rstrip("0123456789"))
    prefix, width = sample[:-digits], digits
    for i in (1, 42, 999):
        if make_id(i) != f"{prefix}{i:0{width}d}":
            raise RuntimeError(f"device ids are not prefix + zero-padded number: {make_id(i)!r}")
    return prefix, width


def _id_expr(make_id: Callable[[int], str], variable: str) -> str:
    """SQL expression of the id of device number :variable (a pgbench variable)."""
    prefix, width = id_format(make_id)
    return f"('{prefix}' || lpad(CAST(:{variable} AS text), {width}, '0'))"


def _strip_sql_comments(sql: str) -> str:
    """The statement without `--` comments (pgbench would turn a `:name` inside one into an unused parameter)."""
    out = []
    for line in sql.splitlines():
        cut = line.find("--")
        if cut >= 0 and line[:cut].count("'") % 2 == 0:
            line = line[:cut]
        if line.strip():
            out.append(line.rstrip())
    return "\n".join(out)


_BIND = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def bind_to_pgbench(sql: str, expressions: Mapping[str, str]) -> str:
    """A SQLAlchemy text statement with each bind parameter `:name` replaced by `expressions[name]` (pgbench
    expressions); an unknown parameter is an error, so a change of the statement cannot slip through."""
    sql = _strip_sql_comments(sql)
    unknown = set(_BIND.findall(sql)) - set(expressions)
    if unknown:
        raise RuntimeError(f"no pgbench expression for the bind parameters {sorted(unknown)}")
    if ";" in sql:
        raise RuntimeError("a statement with ';' cannot be one pgbench command")
    return _BIND.sub(lambda m: expressions[m.group(1)], sql)


def ingest_pgbench_script() -> str:
    """One reading per transaction, METER and VEHICLE alternating: db/readings.py's dual-write statements with the
    bind parameters as pgbench expressions. Reading g = i * clients + client_id (i counts this client's
    transactions) is unique, as in design_ingest.lua: kind g % 2; j = g / 2: device j % devices + 1, timestamp
    base_ms + j / devices ms; the same value formulas as the Lua script."""
    arrays = {
        "meter_id": f"ARRAY[{_id_expr(meter_id, 'dev')}]",
        "vehicle_id": f"ARRAY[{_id_expr(vehicle_id, 'dev')}]",
        "recorded_at": "ARRAY[to_timestamp(CAST(:ts_ms AS float8) / 1000)]",
        "kwh_consumed_ac": "ARRAY[CAST(:ac AS float8)]",
        "voltage": "ARRAY[CAST(:volt AS float8)]",
        "soc": "ARRAY[CAST(:soc AS float8)]",
        "kwh_delivered_dc": "ARRAY[CAST(:dc AS float8)]",
        "battery_temp": "ARRAY[CAST(:temp AS float8)]",
        "is_charging": "ARRAY[CAST(NULL AS boolean)]",  # the API's body leaves isCharging out, as the Lua script
        # db/readings.py's _LATE_PARAMS, given with -D (pgbench_defines)
        "margin": ":margin",
        "search_s": ":search_s",
    }
    meter = bind_to_pgbench(readings._METER_DUAL_WRITE.text, arrays)
    vehicle = bind_to_pgbench(readings._VEHICLE_DUAL_WRITE.text, arrays)
    return "\n".join(
        [
            r"\set i :i + 1",
            r"\set g :i * :clients + :client_id",
            r"\set j :g / 2",
            r"\set dev :j % :devices + 1",
            r"\set ts_ms :base_ms + :j / :devices",
            r"\set ac (:g % 19 + 1) / 100.0",
            r"\set volt 225 + (:g % 200) / 10.0",
            r"\set soc 5 + (:j % 9000) / 100.0",
            r"\set dc (:g % 17 + 1) / 100.0",
            r"\set temp 15 + (:g % 250) / 10.0",
            r"\if :g % 2 = 0",
            meter + ";",
            r"\else",
            vehicle + ";",
            r"\endif",
            "",
        ]
    )


def pgbench_late_defines() -> dict[str, str]:
    """-D values of the dual write's constant parameters, from db/readings.py at run time."""
    late = readings._LATE_PARAMS
    return {"margin": str(late["margin"]), "search_s": str(float(late["search_s"]))}  # type: ignore[arg-type]  # JSON values


def capture_statements(engine: Engine, call: Callable[[sa.Connection], object]) -> list[str]:
    """The statements `call` runs (in one transaction), as literal SQL (psycopg's ClientCursor.mogrify)."""
    captured: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        captured.append(psycopg.ClientCursor(cursor.connection).mogrify(statement, parameters))

    with engine.connect() as conn:
        sa.event.listen(conn, "before_cursor_execute", before)
        try:
            with conn.begin():
                call(conn)
        finally:
            sa.event.remove(conn, "before_cursor_execute", before)
    return captured


def analytics_pgbench_script(statements: Sequence[str], number: int, devices: int) -> str:
    """The captured analytics statements of vehicle `number` (and its meter, same number), in one transaction, with
    the literal ids replaced by expressions of `\\set n random(1, devices)`."""
    literals = {vehicle_id(number): _id_expr(vehicle_id, "n"), meter_id(number): _id_expr(meter_id, "n")}
    body = []
    for sql in statements:
        sql = _strip_sql_comments(sql)
        for literal, expr in literals.items():
            sql = sql.replace(f"'{{{literal}}}'", f"ARRAY[{expr}]").replace(f"'{literal}'", expr)
            if literal in sql:
                raise RuntimeError(f"the literal id {literal!r} is still in a captured statement: {sql[:300]}")
        if ";" in sql:
            raise RuntimeError("a statement with ';' cannot be one pgbench command")
        body.append(sql.strip() + ";")
    return "\n".join([rf"\set n random(1, {devices})", "BEGIN;", *body, "COMMIT;", ""])


# --- clients: wrk and pgbench -------------------------------------------------------------------------------------


@dataclass
class Client:
    """One load-generator process of a run."""

    role: str  # "ingest" or "analytics"
    tool: str  # "wrk" or "pgbench"
    connections: int
    command: list[str]
    env: dict[str, str] | None = None
    pgbench_log: Path | None = None  # --log-prefix of pgbench's per-transaction log


def run_clients(clients: Sequence[Client], seconds: float, out_dir: Path, label: str) -> list[dict[str, Any]]:
    """Start the clients together, wait for all (bounded: `seconds` + 60), and return each one's parsed result with
    its exit code and CPU seconds (its rusage). Every process still running on the way out is stopped by PID."""
    started: list[tuple[Client, subprocess.Popen[bytes], Path]] = []
    cpu: dict[int, float] = {}
    try:
        for c in clients:
            out = out_dir / f"{label}-{c.role}-{c.tool}.out"
            with out.open("wb") as f:
                proc = subprocess.Popen(
                    c.command,
                    cwd=out_dir,
                    env={**os.environ, **(c.env or {})},
                    stdin=subprocess.DEVNULL,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches only the benchmark, which stops them itself
                )
            started.append((c, proc, out))
        deadline = time.monotonic() + seconds + 60
        pending = {proc.pid: proc for _, proc, _ in started}
        while pending:
            for pid, proc in list(pending.items()):
                got, status, usage = os.wait4(pid, os.WNOHANG)
                if got:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    cpu[pid] = usage.ru_utime + usage.ru_stime
                    del pending[pid]
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"{label}: load generator(s) still running {seconds + 60:.0f} s after the start")
            time.sleep(0.05)
    finally:
        for c, proc, _ in started:
            if proc.returncode is None:
                stop_process(proc, grace=5, name=f"{c.tool} ({label})")
    results = []
    for c, proc, out in started:
        text = out.read_text(errors="replace")
        parsed = parse_wrk(text) if c.tool == "wrk" else parse_pgbench(text, c.pgbench_log)
        parsed.update(
            role=c.role, tool=c.tool, connections=c.connections, exit_code=proc.returncode, cpu_s=cpu.get(proc.pid)
        )
        if proc.returncode != 0 or "error" in parsed:
            parsed.setdefault("error", f"exit code {proc.returncode}")
            parsed["output_tail"] = text[-1500:]
        results.append(parsed)
    return results


def parse_wrk(text: str) -> dict[str, Any]:
    """The DESIGN_BENCH_RESULT line of the Lua done(): rates, latency (ms), errors and the scripts' counters."""
    line = next((ln for ln in text.splitlines() if ln.startswith(RESULT_MARK)), None)
    if line is None:
        return {"error": "no result line from the wrk script"}
    r = json.loads(line[len(RESULT_MARK) :])
    seconds = r["duration_us"] / 1e6
    c, lat, e = r["counters"], r["latency_us"], r["errors"]
    return {
        "duration_s": seconds,
        "requests": r["requests"],
        "rate": r["requests"] / seconds,
        "ok": c["ok"],
        "ok_rate": c["ok"] / seconds,
        "stored": c.get("stored"),
        "stored_rate": c["stored"] / seconds if "stored" in c else None,
        "p50": lat["p50"] / 1000,
        "p95": lat["p95"] / 1000,
        "p99": lat["p99"] / 1000,
        "max": lat["max"] / 1000,
        "mean": lat["mean"] / 1000,
        "non_2xx": c["responses"] - c["ok"],
        "status_429": c["limited"],
        "socket_errors": e["connect"] + e["read"] + e["write"] + e["timeout"],
        "errors": e,
        "sent": c["sent"],
        "responses": c["responses"],
    }


def parse_pgbench(text: str, log_prefix: Path | None) -> dict[str, Any]:
    """pgbench's summary (transactions processed and failed, tps) and the latency percentiles of its log."""

    def number(pattern: str) -> float | None:
        m = re.search(pattern, text)
        return float(m.group(1)) if m else None

    processed, tps = number(r"number of transactions actually processed: (\d+)"), number(r"tps = ([\d.]+)")
    if processed is None or tps is None:
        return {"error": "no pgbench summary"}
    latencies: list[float] = []
    if log_prefix is not None:
        for path in log_prefix.parent.glob(log_prefix.name + ".*"):
            for row in path.read_text().splitlines():
                fields = row.split()
                if len(fields) >= 3:
                    latencies.append(int(fields[2]) / 1e6)
    lat = summarize(latencies)
    duration = processed / tps if tps else 0.0
    return {
        "duration_s": duration,
        "requests": int(processed),
        "rate": tps,
        "ok": int(processed),
        "ok_rate": tps,
        "stored": None,
        "stored_rate": None,
        "failed": int(number(r"number of failed transactions: (\d+)") or 0),
        "aborted_clients": text.count("aborted"),
        **{q: lat[q] for q in ("p50", "p95", "p99", "max", "mean")},
        "logged_transactions": lat["n"],
    }


# --- one edition's cluster, server and runs --------------------------------------------------------------------


@dataclass
class Edition:
    """What the runs of one edition share."""

    name: str
    args: argparse.Namespace
    engine: Engine
    url: str
    tmp: Path
    day_start: datetime
    server_url: str = ""
    gunicorn_pid: int = 0
    postmaster: int = 0
    device_keys: Path = Path()
    read_keys: Path = Path()
    ingest_sql: Path = Path()
    analytics_sql: Path = Path()
    last_ts_ms: int = 0
    analytics_runs: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def day_end(self) -> datetime:
        return self.day_start + timedelta(days=1)

    @property
    def devices(self) -> int:
        return int(self.args.devices)

    def base_ms(self) -> int:
        """First timestamp (epoch ms) of an ingest run: just before now, after every earlier run's timestamps."""
        return max(int(time.time() * 1000) - 1000, self.last_ts_ms + 1)

    def used_until(self, base: int, requests: int, connections: int) -> None:
        """Timestamps of a run from `base` on end below this bound (reading j takes base + j // devices; j is at
        most about (requests + one per connection) * connections / 2 for pgbench, less for wrk)."""
        self.last_ts_ms = max(self.last_ts_ms, base + (requests + 2) * max(connections, 2) // self.devices + 1)

    def pgbench(self, role: str, connections: int, seconds: int, label: str, defines: Mapping[str, object]) -> Client:
        u = make_url(self.url)
        log_prefix = self.tmp / f"pgbench-{label}-{role}"
        script = self.ingest_sql if role == "ingest" else self.analytics_sql
        command = [str(PGBENCH), "-n", "-M", "prepared", "-c", str(connections), "-j", str(PGBENCH_THREADS)]
        command += ["-T", str(seconds), "-f", str(script), "-l", f"--log-prefix={log_prefix}"]
        for name, value in defines.items():
            command += ["-D", f"{name}={value}"]
        command += ["-h", str(u.host), "-p", str(u.port), "-U", str(u.username), str(u.database)]
        env = {"PGOPTIONS": db.PLAN_CACHE_OPTION, "PGAPPNAME": "design-bench-pgbench", "PGCONNECT_TIMEOUT": "30"}
        return Client(role, "pgbench", connections, command, env, log_prefix)

    def wrk(self, role: str, connections: int, seconds: int, script_args: Sequence[object]) -> Client:
        script, path = (
            ("design_ingest.lua", "/v1/telemetry/ingest")
            if role == "ingest"
            else ("design_analytics.lua", "/v1/analytics/performance/")
        )
        command = [str(WRK), f"-t{WRK_THREADS}", f"-c{connections}", f"-d{seconds}s", "--timeout", f"{WRK_TIMEOUT_S}s"]
        command += ["-s", str(WRK_DIR / script), self.server_url + path, "--", *map(str, script_args)]
        return Client(role, "wrk", connections, command)

    def ingest_client(self, path: str, connections: int, seconds: int, label: str) -> tuple[Client, int]:
        """An ingest client and the first timestamp (epoch ms) it uses."""
        base = self.base_ms()
        if path == "api":
            meter_prefix, width = id_format(meter_id)
            vehicle_prefix, _ = id_format(vehicle_id)
            args = [self.device_keys, self.devices, meter_prefix, vehicle_prefix, width, base, WRK_THREADS]
            client = self.wrk("ingest", connections, seconds, args)
        else:
            defines = {"i": 0, "clients": connections, "devices": self.devices, "base_ms": base}
            client = self.pgbench("ingest", connections, seconds, label, {**defines, **pgbench_late_defines()})
        self.used_until(base, 0, connections)  # provisional: the next run starts after this one anyway
        return client, base

    def analytics_client(self, path: str, connections: int, seconds: int, label: str) -> Client:
        if path == "api":
            prefix, width = id_format(vehicle_id)
            query = urlencode({"startDate": self.day_start.isoformat(), "endDate": self.day_end.isoformat()})
            self.analytics_runs += 1  # another random sequence of vehicles each run
            args = [self.read_keys, self.devices, prefix, width, query, self.args.seed * 1000 + self.analytics_runs]
            return self.wrk("analytics", connections, seconds, args)
        return self.pgbench("analytics", connections, seconds, label, {})


#: The measured kinds: name -> (role, connections) of the clients started together.
KINDS: dict[str, tuple[tuple[str, int], ...]] = {
    "ingest": (("ingest", INGEST_CONNECTIONS),),
    "analytics": (("analytics", ANALYTICS_CONNECTIONS),),
    "mixed": (("analytics", ANALYTICS_CONNECTIONS), ("ingest", MIXED_INGEST_CONNECTIONS)),
}
PATHS = ("api", "direct")


def measure(ed: Edition, kind: str, path: str, seconds: int, label: str, fsync: str) -> dict[str, Any]:
    """One run: its clients started together; rates, latency, errors, CPU per request by process tree; for ingest
    the rows check."""
    clients, bases = [], []
    for role, connections in KINDS[kind]:
        if role == "ingest":
            client, base = ed.ingest_client(path, connections, seconds, label)
            bases.append(base)
        else:
            client = ed.analytics_client(path, connections, seconds, label)
        clients.append(client)
    ingesting = any(c.role == "ingest" for c in clients)
    rows_before = run_locust.count_rows(ed.engine, ed.day_end) if ingesting else 0
    table0 = proc_table()
    tree = TreeCpu({"gunicorn": ed.gunicorn_pid, "postgres": ed.postmaster}, interval=2.0)
    outside = CpuWatch(roots=[ed.gunicorn_pid, ed.postmaster])  # only for naming the busiest other processes
    outside.start()
    tree.start()
    m0, t0 = machine_jiffies(), time.monotonic()
    results = run_clients(clients, seconds, ed.tmp, label)
    wall, m1 = time.monotonic() - t0, machine_jiffies()
    trees, table1, watch = tree.stop(), proc_table(), outside.stop()

    run: dict[str, Any] = {"kind": kind, "path": path, "fsync": fsync, "label": label, "wall_s": wall}
    run["clients"] = {r["role"]: r for r in results}
    for r in results:
        if "error" in r:
            ed.problems.append(f"{label}: {r['tool']} ({r['role']}) failed: {r['error']}")
        if r.get("failed") or r.get("aborted_clients"):
            ed.problems.append(f"{label}: pgbench {r['role']}: {r['failed']} failed transactions, aborted clients")
    delta = [b - a for a, b in zip(m0, m1, strict=True)]
    capacity, busy = sum(delta), sum(delta) - delta[3] - delta[4]
    used = {
        "gunicorn": trees.get("gunicorn", 0.0),
        "postgres": trees.get("postgres", 0.0),
        "clients": sum(r["cpu_s"] or 0.0 for r in results),
    }
    used["others"] = max(0.0, busy - sum(used.values()))
    requests = sum(r.get("requests", 0) for r in results)
    run["cpu_s"] = {**used, "busy": busy, "capacity": capacity}
    run["machine_busy_pct"] = 100 * busy / capacity if capacity else None
    run["others_pct"] = 100 * used["others"] / capacity if capacity else None
    run["others_top_pct"] = watch["others_top"]
    run["requests"] = requests
    run["cpu_ms_per_request"] = {k: 1000 * v / requests if requests else None for k, v in used.items()}
    run["gunicorn_workers_cpu_s"] = _worker_cpu(table0, table1, ed.gunicorn_pid)
    if ingesting:
        ingest = run["clients"]["ingest"]
        run["rows"] = rows_check(ed, ingest, rows_before)
        ed.used_until(bases[0], int(ingest.get("sent") or ingest.get("requests") or 0), ingest["connections"])
        if not run["rows"]["ok"]:
            ed.problems.append(f"{label}: rows check failed: {run['rows']['text']}")
    lines = [
        f"{r['role']} {r['rate']:,.1f} req/s p95 {r['p95']:.1f} ms" if "rate" in r else f"{r['role']} FAILED"
        for r in results
    ]
    per = run["cpu_ms_per_request"]
    log(
        f"{label}: {'; '.join(lines)}; CPU ms/request app {_n(per['gunicorn'], 2)}, PostgreSQL"
        f" {_n(per['postgres'], 2)}, client {_n(per['clients'], 2)}, others {_n(per['others'], 2)}"
        + (f"; rows {run['rows']['text']}" if ingesting else "")
    )
    return run


def _worker_cpu(before: Any, after: Any, master: int) -> list[float]:
    """CPU seconds of each gunicorn worker (a child of the master present at both ends) between the tables."""
    workers = [pid for pid, row in after.items() if row[0] == master and pid in before]
    return sorted((round(after[p][1] - before[p][1], 2) for p in workers), reverse=True)


def rows_check(ed: Edition, client: dict[str, Any], before: int) -> dict[str, Any]:
    """Rows added by an ingest run against what its client was told. pgbench: exactly the transactions processed.
    wrk: the readings the 2xx bodies said were stored, plus k of the requests in flight when wrk stopped (at most
    one per connection; the server still completes them after wrk closed the connection). Waits (bounded) until
    those have landed."""
    added, deadline = run_locust.count_rows(ed.engine, ed.day_end) - before, time.monotonic() + 15
    while True:
        time.sleep(0.5)
        now = run_locust.count_rows(ed.engine, ed.day_end) - before
        if now == added or time.monotonic() > deadline:
            added = now
            break
        added = now
    if client["tool"] == "pgbench":
        want = client.get("requests", 0)
        ok = added == want and not client.get("failed")
        return {"added": added, "acknowledged": want, "in_flight": 0, "ok": ok, "text": f"{added:,} == {want:,}"}
    stored = client.get("stored") or 0
    in_flight = min(client["connections"], max(0, client.get("sent", 0) - client.get("responses", 0)))
    ok = stored <= added <= stored + in_flight and client.get("ok") == stored
    text = f"{added:,} = {stored:,} stored (2xx) + {added - stored} of <= {in_flight} in flight at wrk's end"
    if client.get("ok") != stored:
        text += f"; {client.get('ok', 0) - stored} 2xx without 'stored: 1'"
    return {"added": added, "acknowledged": stored, "in_flight": in_flight, "ok": ok, "text": text}


# --- preparing the cluster ---------------------------------------------------------------------------------------


def engine_info(engine: Engine) -> dict[str, Any]:
    """Versions, edition, the postmaster's PID, the shown settings, and every setting not at its default."""
    with engine.connect() as conn:
        base = run_locust.engine_info(conn)
        settings = conn.execute(
            sa.text(
                "SELECT name, current_setting(name) AS value, source FROM pg_settings"
                " WHERE name = ANY(:shown) OR source IN ('command line', 'configuration file') ORDER BY name"
            ),
            {"shown": list(SHOWN_SETTINGS)},
        ).all()
    return {
        **{k: base[k] for k in ("server_version", "timescaledb", "license")},
        "postmaster_pid": postmaster_pid(base["backend_pid"]),
        "settings": {s.name: {"value": s.value, "source": s.source} for s in settings},
    }


def prepare_dataset(ed: Edition, community: bool) -> dict[str, Any]:
    """Load the day, round the energy values to 2 decimals, VACUUM (ANALYZE); Community: materialise the day."""
    args = ed.args
    stats = load_fleet_day(
        ed.url, meters=args.devices, vehicles=args.devices, day_start=ed.day_start, timeout=args.timeout, log=log
    )
    out: dict[str, Any] = {
        "meters": stats.meters,
        "vehicles": stats.vehicles,
        "minutes": stats.minutes,
        "day_start": stats.day_start.isoformat(),
        "history_rows": stats.history_rows,
        "load_seconds": round(stats.total_seconds, 1),
    }
    rounded = {}
    with ed.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as admin:
        for table, column in (("meter_readings", "kwh_consumed_ac"), ("vehicle_readings", "kwh_delivered_dc")):
            t0 = time.perf_counter()
            n = admin.execute(sa.text(f"UPDATE {table} SET {column} = round(CAST({column} AS numeric), 2)")).rowcount
            rounded[f"{table}.{column}"] = {"rows": n, "seconds": round(time.perf_counter() - t0, 1)}
        t0 = time.perf_counter()
        admin.exec_driver_sql("VACUUM (ANALYZE) meter_readings, vehicle_readings")
        out["rounding"] = rounded
        out["vacuum_seconds"] = round(time.perf_counter() - t0, 1)
        log(f"rounded the energy values to 2 decimals: {rounded}; VACUUM (ANALYZE) {out['vacuum_seconds']} s")
        if community:
            caggs = rollups.continuous_aggregates(admin)
            refreshed = {
                cagg: round(rollups.refresh(admin, cagg, ed.day_start - timedelta(hours=1), ed.day_end)["seconds"], 1)
                for cagg in caggs
            }
            corr = refresh_correlation(ed.engine, until=ed.day_end)
            if corr.materialized_until != ed.day_end:
                ed.problems.append(f"correlation rollup reached {corr.materialized_until}, not the day's end")
            out["materialised"] = {
                "aggregates_seconds": refreshed,
                "correlation": {
                    "hours": corr.hours,
                    "vehicle_hours": corr.vehicle_hours,
                    "materialized_until": str(corr.materialized_until),
                    "seconds": corr.seconds,
                },
            }
            admin.exec_driver_sql("VACUUM (ANALYZE)")
            log(f"materialised: aggregates {refreshed}, correlation {corr.vehicle_hours:,} vehicle-hours")
        admin.exec_driver_sql("CHECKPOINT")
    return out


def restart_with_fsync(ed: Edition, value: str) -> dict[str, Any]:
    """Restart the cluster with its own command line (postmaster.opts) but fsync=`value` (fsync given on the
    command line cannot be changed by ALTER SYSTEM + reload: checked and reported first). The postmaster's PID
    changes; the pools reconnect (pre-ping)."""
    with ed.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"ALTER SYSTEM SET fsync = {value}")
        conn.exec_driver_sql("SELECT pg_reload_conf()")
        time.sleep(1.0)
        reloaded = conn.exec_driver_sql("SELECT setting, source FROM pg_settings WHERE name = 'fsync'").one()
        conn.exec_driver_sql("ALTER SYSTEM RESET fsync")
        conn.exec_driver_sql("SELECT pg_reload_conf()")
        datadir = Path(conn.exec_driver_sql("SHOW data_directory").scalar_one())
    out: dict[str, Any] = {"after_alter_system_reload": f"{reloaded.setting} (source: {reloaded.source})"}
    argv = shlex.split((datadir / "postmaster.opts").read_text())[1:]
    options, k = [], 0
    while k < len(argv):
        if argv[k] == "-D":  # pg_ctl gives it
            k += 2
            continue
        options.append(re.sub(r"^fsync=\w+$", f"fsync={value}", argv[k]))
        k += 1
    if f"fsync={value}" not in options:
        raise RuntimeError(f"no fsync setting on the server's command line: {argv}")
    pg_ctl = str(PG_CTL_AS_POSTGRES) if os.geteuid() == 0 else str(PG_BIN / "pg_ctl")
    log_file, opts = datadir.parent / "postgresql.log", shlex.join(options)  # native_cluster's server log
    ed.engine.dispose()
    t0 = time.perf_counter()
    subprocess.run(
        [pg_ctl, "restart", "-D", str(datadir), "-m", "fast", "-w", "-t", "120", "-l", str(log_file), "-o", opts],
        check=True,
        capture_output=True,
        timeout=180,
    )
    out["restart_seconds"] = round(time.perf_counter() - t0, 1)
    info = engine_info(ed.engine)
    ed.postmaster = info["postmaster_pid"]
    out["fsync_now"] = info["settings"]["fsync"]["value"]
    if out["fsync_now"] != value:
        raise RuntimeError(f"fsync is {out['fsync_now']} after the restart, not {value}")
    log(f"restarted with fsync={value} in {out['restart_seconds']} s (ALTER SYSTEM + reload left {tuple(reloaded)})")
    return out


def write_keys(ed: Edition) -> None:
    """A device key per loaded device and READ_KEYS read keys, one per line in files of the temporary directory
    (0600)."""
    with db.transaction(ed.engine) as conn:
        device = [keys.create_key(conn, f"design-device-{k}", "device")[1] for k in range(2 * ed.devices)]
        read = [keys.create_key(conn, f"design-read-{k}", "read")[1] for k in range(READ_KEYS)]
    for path, values in ((ed.device_keys, device), (ed.read_keys, read)):
        path.touch(mode=0o600)
        path.write_text("\n".join(values) + "\n")


def check_analytics(ed: Edition, numbers: Sequence[int]) -> list[dict[str, Any]]:
    """GET the 24 h analytics of a few vehicles through the server and compare totalAcConsumed / totalDcDelivered
    with the database's sums of the (rounded) readings of the vehicle and its meter over the day."""
    key = ed.read_keys.read_text().split()[0]
    query = urlencode({"startDate": ed.day_start.isoformat(), "endDate": ed.day_end.isoformat()})
    sums = sa.text(
        "SELECT (SELECT sum(kwh_consumed_ac) FROM meter_readings"
        "         WHERE meter_id = :m AND recorded_at >= :s AND recorded_at < :e) AS ac,"
        "       (SELECT sum(kwh_delivered_dc) FROM vehicle_readings"
        "         WHERE vehicle_id = :v AND recorded_at >= :s AND recorded_at < :e) AS dc"
    )
    port = int(ed.server_url.rsplit(":", 1)[1])
    checks = []
    for i in numbers:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("GET", f"/v1/analytics/performance/{quote(vehicle_id(i))}?{query}", headers={"X-API-Key": key})
            resp = conn.getresponse()
            status, body = resp.status, resp.read()
        finally:
            conn.close()
        with ed.engine.connect() as c:
            want = c.execute(sums, {"m": meter_id(i), "v": vehicle_id(i), "s": ed.day_start, "e": ed.day_end}).one()
        entry: dict[str, Any] = {"vehicle": vehicle_id(i), "status": status, "db_ac": want.ac, "db_dc": want.dc}
        if status == 200:
            doc = json.loads(body)
            em = doc["energyMetrics"]
            entry.update(api_ac=em["totalAcConsumed"], api_dc=em["totalDcDelivered"], hours=len(doc["hourlyBreakdown"]))
            entry["ok"] = (
                entry["hours"] == 24
                and abs(em["totalAcConsumed"] - want.ac) < 2e-6
                and abs(em["totalDcDelivered"] - want.dc) < 2e-6
            )
        else:
            entry["ok"] = False
        if not entry["ok"]:
            ed.problems.append(f"analytics check {vehicle_id(i)}: {entry}")
        checks.append(entry)
    return checks


def run_edition(args: argparse.Namespace, edition: str, day_start: datetime, tmp: Path) -> dict[str, Any]:
    """One edition on its own throw-away cluster: prepare, serve, check, then the alternating runs."""
    community = edition == "community"
    settings = {"fsync": "on", **({} if community else {"timescaledb.license": "apache"})}
    rep: dict[str, Any] = {"settings_passed": settings, "runs": []}
    with ExitStack() as stack:
        log(f"{edition}: starting a throw-away native cluster ({settings})")
        url = stack.enter_context(native_cluster("fleet_design", settings=settings))
        engine = db.make_engine(url, pool_size=2, connect_timeout=30)
        stack.callback(engine.dispose)
        ed = Edition(edition, args, engine, url, tmp / edition, day_start)
        ed.tmp.mkdir()
        rep["problems"] = ed.problems
        rep["engine"] = engine_info(engine)
        ed.postmaster = rep["engine"]["postmaster_pid"]
        if (rep["engine"]["license"] == "timescale") != community:
            raise RuntimeError(f"{edition}: the server reports timescaledb.license = {rep['engine']['license']}")
        rep["dataset"] = prepare_dataset(ed, community)

        ed.device_keys, ed.read_keys = ed.tmp / "device-keys.txt", ed.tmp / "read-keys.txt"
        write_keys(ed)
        statements = capture_statements(engine, lambda c: analytics.vehicle_performance(c, vehicle_id(1), *_day(ed)))
        ed.analytics_sql, ed.ingest_sql = ed.tmp / "analytics.sql", ed.tmp / "ingest.sql"
        ed.analytics_sql.write_text(analytics_pgbench_script(statements, 1, ed.devices))
        ed.ingest_sql.write_text(ingest_pgbench_script())
        rep["pgbench_scripts"] = {"ingest": ed.ingest_sql.read_text(), "analytics": ed.analytics_sql.read_text()}

        env = {"FLEET_RATE_LIMIT": str(config.VARIABLES["FLEET_RATE_LIMIT"].default), "FLEET_ACCESS_LOG": "on"}
        server = stack.enter_context(
            gunicorn_server(url, workers=args.workers, threads=args.threads, log_path=ed.tmp / "gunicorn.log", env=env)
        )
        ed.server_url, ed.gunicorn_pid = server.url, server.pid
        rep["server"] = {"workers": server.workers, "threads": server.threads, **server.env}
        rep["keys"] = {"device": 2 * ed.devices, "read": READ_KEYS}
        step = max(1, ed.devices // args.checks)
        rep["analytics_check"] = check_analytics(ed, list(range(1, ed.devices + 1, step))[: args.checks])

        def warm_up(kinds: Sequence[str], fsync: str) -> None:
            for kind in kinds:
                for path in PATHS:
                    measure(ed, kind, path, args.warmup, f"{edition}-warmup-{kind}-{path}-fsync-{fsync}", fsync)

        warm_up(("ingest", "analytics"), "on")
        for r in range(1, args.rounds + 1):
            for kind in KINDS:
                for path in PATHS:
                    label = f"{edition}-{kind}-{path}-fsync-on-{r}"
                    rep["runs"].append(measure(ed, kind, path, args.duration, label, "on"))
        rep["fsync_off"] = restart_with_fsync(ed, "off")
        warm_up(("ingest",), "off")
        for r in range(1, args.rounds + 1):
            for path in PATHS:
                label = f"{edition}-ingest-{path}-fsync-off-{r}"
                rep["runs"].append(measure(ed, "ingest", path, args.duration, label, "off"))
        rep["gunicorn_log"] = server.log_counts()
        log(f"{edition}: runs done; stopping gunicorn and removing the cluster")
    rep["summary"] = summarise_runs(rep["runs"])
    return rep


def _day(ed: Edition) -> tuple[datetime, datetime]:
    return ed.day_start, ed.day_end


# --- summaries, verdicts, report --------------------------------------------------------------------------------


def summarise_runs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per kind/path/fsync over the rounds: per role rate (requests over the summed duration), the worst round's
    percentiles, summed errors; CPU per request pooled (all rounds' CPU over all their requests)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(f"{run['kind']}/{run['path']}/fsync-{run['fsync']}", []).append(run)
    out: dict[str, Any] = {}
    for key, group in groups.items():
        roles: dict[str, Any] = {}
        for role in group[0]["clients"]:
            rs = [g["clients"][role] for g in group if "rate" in g["clients"][role]]
            if not rs:
                continue
            seconds = sum(r["duration_s"] for r in rs)
            roles[role] = {
                "tool": rs[0]["tool"],
                "connections": rs[0]["connections"],
                "rounds": len(rs),
                "requests": sum(r["requests"] for r in rs),
                "rate": sum(r["rate"] * r["duration_s"] for r in rs) / seconds if seconds else None,
                "ok_rate": sum(r["ok_rate"] * r["duration_s"] for r in rs) / seconds if seconds else None,
                **{q: max(r[q] for r in rs) for q in ("p50", "p95", "p99")},
                **{k: sum(r.get(k) or 0 for r in rs) for k in ("non_2xx", "status_429", "socket_errors", "failed")},
                "client_cpu_ms": 1000 * sum(r["cpu_s"] or 0.0 for r in rs) / max(1, sum(r["requests"] for r in rs)),
            }
        requests = sum(g["requests"] for g in group)
        cpu = {k: sum(g["cpu_s"][k] for g in group) for k in ("gunicorn", "postgres", "clients", "others")}
        out[key] = {
            "roles": roles,
            "requests": requests,
            "cpu_ms_per_request": {k: 1000 * v / requests if requests else None for k, v in cpu.items()},
            "machine_busy_pct": sum(g["cpu_s"]["busy"] for g in group)
            / max(1e-9, sum(g["cpu_s"]["capacity"] for g in group))
            * 100,
            "rows_ok": all(g["rows"]["ok"] for g in group if "rows" in g),
        }
    return out


def _n(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _get(summary: Mapping[str, Any], key: str, role: str) -> dict[str, Any] | None:
    return summary.get(key, {}).get("roles", {}).get(role)


def comparison(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The DESIGN table's rows: the original's figure, this project's then, ours now per edition, our target and
    the verdict per edition (None: no target for that edition)."""
    rows = []
    eds = report.get("editions", {})
    for kind, label in (
        ("ingest", "single-reading ingest, 32 keep-alive connections"),
        ("analytics", "24 h analytics, 1,000 vehicles x 24 h loaded, 8 connections"),
        ("mixed", "the same while ingest runs at 16 connections"),
    ):
        o = ORIGINAL[kind]
        row: dict[str, Any] = {"figure": label, "kind": kind, "then": THEN[kind], "now": {}, "verdict": {}}
        row["fsync_off"], row["baseline"], row["target_for"] = {}, {}, {}
        if kind == "ingest":
            row["original"] = (
                f"{_n(o['rate'])} req/s, p99 {_n(o['p99_ms'])} ms, {o['app_cpu_ms']} ms app CPU +"
                f" {o['db_cpu_ms']} ms DB CPU per request"
            )
            row["target"] = (
                f">= {_n(TARGETS['ingest_rate'])} req/s (2x it), app CPU <= {TARGETS['ingest_app_cpu_ms']} ms"
                " per request"
            )
        elif kind == "analytics":
            row["original"] = f"{_n(o['rate'])} req/s, p95 {_n(o['p95_ms'])} ms, {_n(o['db_cpu_ms'])} ms DB CPU/request"
            row["target"] = (
                f"Community (aggregates): >= {_n(TARGETS['analytics_rate']['community'])} req/s (4x it), p95 <"
                f" {_n(TARGETS['analytics_p95_ms']['community'])} ms;"
                f" Apache: >= {_n(TARGETS['analytics_rate']['apache'])} req/s"
            )
        else:
            row["original"] = f"{o['rate']} req/s, p95 {_n(o['p95_ms'])} ms"
            row["target"] = (
                f"Community: p95 < {_n(TARGETS['mixed_p95_ms']['community'])} ms at >="
                f" {TARGETS['mixed_rate_factor']['community']:g}x its rate"
                f" ({_n(TARGETS['mixed_rate_factor']['community'] * o['rate'])} req/s)"
            )
        for edition, rep in eds.items():
            s = rep.get("summary", {})
            key = f"{kind}/api/fsync-on"
            role = "ingest" if kind == "ingest" else "analytics"
            r = _get(s, key, role)
            if r is None:
                row["now"][edition], row["verdict"][edition] = "not measured", False
                continue
            cpu = s[key]["cpu_ms_per_request"]
            rate = r["ok_rate"]
            direct = _get(s, key.replace("/api/", "/direct/"), role)
            vs_direct = f"; API/direct {_n(rate / direct['ok_rate'], 2)}" if direct and direct["ok_rate"] else ""
            if direct:
                row["baseline"][edition] = (
                    f"the same SQL from pgbench: {_n(direct['ok_rate'], 1)}/s, p95 {_n(direct['p95'], 1)} ms,"
                    f" PostgreSQL {_n(s[key.replace('/api/', '/direct/')]['cpu_ms_per_request']['postgres'], 2)} ms"
                    " CPU per transaction"
                )
            row["target_for"][edition] = _target_text(kind, edition)
            if kind == "ingest":
                row["now"][edition] = _ingest_text(s, "ingest/api/fsync-on") + vs_direct
                row["fsync_off"][edition] = _ingest_text(s, "ingest/api/fsync-off")
                row["verdict"][edition] = (
                    rate >= TARGETS["ingest_rate"] and (cpu["gunicorn"] or 0) <= TARGETS["ingest_app_cpu_ms"]
                )
            elif kind == "analytics":
                row["now"][edition] = (
                    f"{_n(rate, 1)} req/s, p95 {_n(r['p95'], 1)} ms, {_n(cpu['postgres'], 2)} ms DB CPU per request"
                    + vs_direct
                )
                verdict = rate >= TARGETS["analytics_rate"][edition]
                if edition in TARGETS["analytics_p95_ms"]:
                    verdict = verdict and r["p95"] < TARGETS["analytics_p95_ms"][edition]
                row["verdict"][edition] = verdict
            else:
                ingest = _get(s, key, "ingest")
                row["now"][edition] = f"{_n(rate, 1)} req/s, p95 {_n(r['p95'], 1)} ms" + (
                    f" (ingest meanwhile {_n(ingest['ok_rate'])} req/s)" if ingest else ""
                )
                row["now"][edition] += vs_direct
                if edition in TARGETS["mixed_p95_ms"]:
                    row["verdict"][edition] = (
                        r["p95"] < TARGETS["mixed_p95_ms"][edition]
                        and rate >= TARGETS["mixed_rate_factor"][edition] * o["rate"]
                    )
                else:
                    row["verdict"][edition] = None
        rows.append(row)
    return rows


def _target_text(kind: str, edition: str) -> str | None:
    """The DESIGN table's target of `kind` for one edition (None: none for it)."""
    if kind == "ingest":
        return f">= {_n(TARGETS['ingest_rate'])} req/s, app CPU <= {TARGETS['ingest_app_cpu_ms']} ms per request"
    if kind == "analytics":
        p95 = TARGETS["analytics_p95_ms"].get(edition)
        return f">= {_n(TARGETS['analytics_rate'][edition])} req/s" + (f", p95 < {_n(p95)} ms" if p95 else "")
    if edition in TARGETS["mixed_p95_ms"]:
        rate = TARGETS["mixed_rate_factor"][edition] * ORIGINAL["mixed"]["rate"]
        return f"p95 < {_n(TARGETS['mixed_p95_ms'][edition])} ms at >= {_n(rate)} req/s"
    return None


def _ingest_text(summary: Mapping[str, Any], key: str) -> str:
    """Rate, p99 and CPU per request of an ingest run, as the DESIGN table states them."""
    r = _get(summary, key, "ingest")
    if r is None:
        return "-"
    cpu = summary[key]["cpu_ms_per_request"]
    return (
        f"{_n(r['ok_rate'])} req/s, p99 {_n(r['p99'])} ms, {_n(cpu['gunicorn'], 2)} ms app CPU +"
        f" {_n(cpu['postgres'], 2)} ms DB CPU per request"
    )


def verdict_rows(report: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, figure, baseline, verdict) rows for docs/BENCHMARKS.md's targets summary."""
    out = []
    for row in comparison(report):
        for edition, verdict in row["verdict"].items():
            if verdict is None:
                continue
            out.append(
                (
                    f"DESIGN.md conditions, {row['figure']}, {edition}: {row['target_for'].get(edition)}",
                    row["now"][edition],
                    f"{row['baseline'].get(edition, '-')}; the original implementation (DESIGN.md): {row['original']}",
                    "met" if verdict else "**MISSED**",
                )
            )
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


def render_markdown(report: Mapping[str, Any], level: int = 2) -> str:
    """The report as Markdown, its title a heading of `level` (2 in docs/BENCHMARKS.md)."""
    h = "#" * level
    p, eds = report["parameters"], report["editions"]
    first = next(iter(eds.values()), {})
    ds = first.get("dataset", {})
    srv = first.get("server", {})
    lines = [
        f"{h} Side by side with the original implementation (DESIGN.md conditions)",
        "",
        f"`tests/load/bench_design.py`{' --quick' if p['quick'] else ''}: the conditions of the DESIGN.md table"
        ' "Performance targets" (../shared/DESIGN.md). One throw-away native cluster per edition (Community, then'
        " Apache), fsync on, otherwise PostgreSQL's default server settings;"
        f" {_n(ds.get('meters'))} meters + {_n(ds.get('vehicles'))} vehicles x 24 h, one reading a minute"
        f" ({_n(ds.get('history_rows'))} rows), energy values rounded to 2 decimals after the load by one UPDATE per"
        " table (then VACUUM (ANALYZE)), as the DESIGN dataset has them"
        + ("" if ds.get("vehicles", 0) >= 1000 else " (**reduced scale**: the table's is 1,000 + 1,000)")
        + "; on Community every continuous aggregate and the correlation rollup materialised over the day first."
        f" `fleet serve` {srv.get('workers')} workers x {srv.get('threads')} threads (pool"
        f" {srv.get('FLEET_DB_POOL_SIZE')}), access log on, rate limit on ({srv.get('FLEET_RATE_LIMIT')} per key:"
        f" {_n(first.get('keys', {}).get('device'))} device keys, one per device, so that key lookups miss the"
        f" per-process cache as in production, and {READ_KEYS} read keys, used round-robin). wrk -t{WRK_THREADS} with"
        " Lua scripts"
        f" ({report.get('wrk_version', '?')}); baselines: pgbench -M prepared -j {PGBENCH_THREADS}, the same"
        f" connections and duration. {p['duration']} s per run, {p['rounds']} round(s) alternating"
        " API / direct and the kinds; latency percentiles: the worst round's; CPU per request: whole process trees"
        " from /proc over all rounds.",
        "",
    ]
    m = report["machine"]
    lines += [
        f"Machine: {m['cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, {m['os']}; load average (1, 5, 15 min)"
        f" at the start {m['loadavg']}, at the end {m.get('loadavg_at_end')}.",
        "",
    ]
    editions = list(eds)
    header = ["figure", "original implementation (DESIGN.md)", "this project then (DESIGN.md)"]
    header += [f"this project now, {e}" for e in editions]
    header += [f"extra: fsync off, {e}" for e in editions] + ["our target (DESIGN.md)"]
    header += [f"verdict {e}" for e in editions]
    rows = []
    for row in comparison(report):
        verdicts = [
            "-" if row["verdict"].get(e) is None else ("met" if row["verdict"][e] else "**MISSED**") for e in editions
        ]
        rows.append(
            [
                row["figure"],
                row["original"],
                row["then"],
                *(row["now"].get(e, "-") for e in editions),
                *(row["fsync_off"].get(e, "-") for e in editions),
                row["target"],
                *verdicts,
            ]
        )
    lines += _table(header, rows)
    for edition, rep in eds.items():
        lines += _render_edition(edition, rep, h + "#")
    lines += [f"{h}# Notes", ""]
    for note in report.get("notes", []):
        lines.append(f"- {note}")
    problems = [pr for rep in eds.values() for pr in rep.get("problems", [])]
    lines += ["", f"Checks: {'all passed' if not problems else f'{len(problems)} FAILED'}."]
    lines += [f"- FAILED: {pr}" for pr in problems[:20]]
    return "\n".join(lines).rstrip() + "\n"


_RUN_LABELS = {
    "ingest/api/fsync-on": "ingest, API (wrk), 32 conn.",
    "ingest/direct/fsync-on": "ingest, direct (pgbench), 32 conn.",
    "analytics/api/fsync-on": "24 h analytics, API (wrk), 8 conn.",
    "analytics/direct/fsync-on": "24 h analytics, direct (pgbench), 8 conn.",
    "mixed/api/fsync-on": "analytics 8 + ingest 16 conn., API",
    "mixed/direct/fsync-on": "analytics 8 + ingest 16 conn., direct",
    "ingest/api/fsync-off": "ingest, API, **fsync off**, 32 conn.",
    "ingest/direct/fsync-off": "ingest, direct, **fsync off**, 32 conn.",
}


def _render_edition(edition: str, rep: Mapping[str, Any], h: str) -> list[str]:
    e, ds, s = rep["engine"], rep["dataset"], rep["summary"]
    non_default = ", ".join(
        f"{k}={v['value']} ({v['source']})" for k, v in e["settings"].items() if v["source"] != "default"
    )
    top: dict[str, float] = {}
    for run in rep["runs"]:
        for name, pct in run.get("others_top_pct", {}).items():
            top[name] = max(top.get(name, 0.0), pct)
    busiest = ", ".join(f"{k} {v:.0f} %" for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:5]) or "none"
    others = [run["others_pct"] for run in rep["runs"] if run.get("others_pct") is not None]
    lines = [
        f"{h} {edition.capitalize()} edition",
        "",
        f"PostgreSQL {e['server_version']}, TimescaleDB {e['timescaledb']} (`timescaledb.license = {e['license']}`)."
        f" Server settings from its command line or the configuration file initdb writes (every other one at"
        f" PostgreSQL's default): {non_default}. Load {ds['load_seconds']} s; rounding"
        + "".join(f" {k}: {_n(v['rows'])} rows in {v['seconds']} s;" for k, v in ds["rounding"].items())
        + f" VACUUM (ANALYZE) {ds['vacuum_seconds']} s.",
        "",
        f"Other processes' CPU during the runs: {_n(min(others, default=None))}-{_n(max(others, default=None))} %"
        f" of all cores; the busiest outside this benchmark (max % per run): {busiest}.",
        "",
    ]
    mat = ds.get("materialised")
    if mat:
        c = mat["correlation"]
        lines += [
            "Materialised before measuring: "
            + ", ".join(f"{k} ({v} s)" for k, v in mat["aggregates_seconds"].items())
            + f"; correlation rollup {_n(c['vehicle_hours'])} vehicle-hours up to {c['materialized_until']}"
            f" ({c['seconds']:.1f} s).",
            "",
        ]
    rows = []
    for key, label in _RUN_LABELS.items():
        g = s.get(key)
        if not g:
            continue
        cpu = g["cpu_ms_per_request"]
        for role, r in g["roles"].items():
            if r["tool"] == "pgbench":
                errors = f"{r['failed']} failed transactions"
            else:
                errors = f"{r['non_2xx']} ({r['status_429']} x 429) / {r['socket_errors']}"
            rows.append(
                [
                    label if len(g["roles"]) == 1 else f"{label}: {role}",
                    _n(r["ok_rate"], 1),
                    f"{_n(r['p50'], 1)} / {_n(r['p95'], 1)} / {_n(r['p99'], 1)}",
                    errors,
                    " / ".join(_n(cpu[k], 2) for k in ("gunicorn", "postgres", "clients", "others")),
                    _n(g["machine_busy_pct"]) + " %",
                    ("ok" if g["rows_ok"] else "**FAILED**") if role == "ingest" else "",
                ]
            )
    lines += _table(
        [
            "run",
            "requests/s (2xx; direct: transactions/s)",
            "p50 / p95 / p99 ms",
            "non-2xx (429s) / socket errors",
            "CPU ms per request: app (gunicorn) / PostgreSQL / client / others",
            "machine busy",
            "rows stored = acknowledged",
        ],
        rows,
    )
    ratios = []
    for fsync in ("on", "off"):
        api, direct = _get(s, f"ingest/api/fsync-{fsync}", "ingest"), _get(s, f"ingest/direct/fsync-{fsync}", "ingest")
        if api and direct:
            cpu_api = s[f"ingest/api/fsync-{fsync}"]["cpu_ms_per_request"]["postgres"]
            cpu_direct = s[f"ingest/direct/fsync-{fsync}"]["cpu_ms_per_request"]["postgres"]
            ratios.append(
                f"ingest, fsync {fsync}: API {_n(api['ok_rate'])} readings/s vs direct {_n(direct['ok_rate'])}"
                f" = {_n(api['ok_rate'] / direct['ok_rate'], 2)}; PostgreSQL CPU per reading {_n(cpu_api, 2)} ms"
                f" (API) vs {_n(cpu_direct, 2)} ms (direct)"
            )
    for key, what in (("analytics", "24 h analytics"), ("mixed", "24 h analytics under ingest")):
        api, direct = _get(s, f"{key}/api/fsync-on", "analytics"), _get(s, f"{key}/direct/fsync-on", "analytics")
        if api and direct:
            ratios.append(
                f"{what}: API {_n(api['ok_rate'], 1)} req/s vs direct {_n(direct['ok_rate'], 1)} ="
                f" {_n(api['ok_rate'] / direct['ok_rate'], 2)}; p95 {_n(api['p95'], 1)} ms vs {_n(direct['p95'], 1)} ms"
            )
    lines += ["API / direct (the same work as SQL from pgbench, same run):", ""]
    lines += [f"- {r}" for r in ratios] + [""]
    checks = rep.get("analytics_check", [])
    ok = sum(1 for c in checks if c["ok"])
    lines.append(
        f"Analytics totals checked against the database before the runs: {ok}/{len(checks)} match ("
        + "; ".join(
            f"{c['vehicle']} AC {_n(c.get('api_ac'), 2)} = {_n(c['db_ac'], 2)}, DC {_n(c.get('api_dc'), 2)} ="
            f" {_n(c['db_dc'], 2)} kWh"
            for c in checks[:3]
        )
        + "). Rows per ingest run: "
        + "; ".join(f"{r['label'].removeprefix(edition + '-')} {r['rows']['text']}" for r in rep["runs"] if "rows" in r)
        + "."
    )
    off = rep.get("fsync_off", {})
    g = rep.get("gunicorn_log", {})
    lines += [
        "",
        f"fsync off: after `ALTER SYSTEM SET fsync = off` + `pg_reload_conf()` fsync was"
        f" {off.get('after_alter_system_reload', '?')}, so the server was restarted with fsync=off on its command line"
        f" ({off.get('restart_seconds')} s; then fsync = {off.get('fsync_now')}). gunicorn log: {g.get('worker_boots')}"
        f" worker boots, {g.get('worker_timeouts')} timeouts, {g.get('tracebacks')} tracebacks,"
        f" {g.get('status_5xx')} 5xx. Workers' CPU split in the first ingest run (s):"
        f" {next((r['gunicorn_workers_cpu_s'] for r in rep['runs'] if r['kind'] == 'ingest'), [])}.",
        "",
    ]
    return lines


NOTES = [
    "wrk closes its connections when -d ends; the requests then in flight (at most one per connection) are still"
    " completed and stored by the server, unanswered: so rows added = readings acknowledged as stored + up to that"
    " many, and the check allows exactly that (pgbench finishes its transactions: there it is equality).",
    "fsync is on the server's command line (`-c fsync=on`, after pytest-postgresql's -F), and command-line settings"
    " outrank postgresql.auto.conf: `ALTER SYSTEM SET fsync = off` + reload does not change it. The fsync-off runs"
    " come last, after a restart with fsync=off.",
    "CPU per request: the trees' CPU over the run divided by the requests completed in it (in the combined run, of"
    " both kinds); 'client' is wrk or pgbench; 'others' is the rest of the machine's busy time (this script, the"
    " other engineers' processes, the kernel's own threads): a large figure means a disturbed run.",
]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.load.bench_design", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="200 + 200 devices, 5 s runs, 1 round (development)")
    p.add_argument("--editions", default="community,apache", help="comma list, in this order (default both)")
    p.add_argument("--duration", type=int, default=None, help="seconds per run (default 20; --quick 5)")
    p.add_argument("--warmup", type=int, default=None, help="seconds of the unmeasured runs (default 3; --quick 2)")
    p.add_argument("--rounds", type=int, default=None, help="rounds of the alternating runs (default 2; --quick 1)")
    p.add_argument("--devices", type=int, default=None, help="meters, and as many vehicles (default 1000; --quick 200)")
    p.add_argument("--checks", type=int, default=5, help="analytics responses checked against the database")
    p.add_argument("--workers", type=int, default=4, help="gunicorn workers (default 4: production's)")
    p.add_argument("--threads", type=int, default=2, help="gunicorn threads per worker (default 2: production's)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--timeout", type=int, default=3600, help="give up after this many seconds (default 3600)")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    args = p.parse_args(argv)
    for name, full, quick in (("duration", 20, 5), ("warmup", 3, 2), ("rounds", 2, 1), ("devices", 1000, 200)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.editions = [e.strip() for e in args.editions.split(",") if e.strip()]
    if not args.editions or set(args.editions) - {"community", "apache"}:
        p.error("--editions: a comma list of community and apache")
    if min(args.duration, args.warmup, args.rounds, args.devices, args.checks) < 1:
        p.error("--duration, --warmup, --rounds, --devices and --checks must be >= 1")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every edition in turn; the report."""
    for tool in (WRK, PGBENCH):
        if not tool.exists():
            raise SystemExit(f"{tool} is needed (Debian packages wrk, postgresql-15)")
    day_start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    version = subprocess.run([str(WRK), "-v"], capture_output=True, text=True, timeout=10).stdout.splitlines()
    report: dict[str, Any] = {
        "parameters": {**vars(args), "json": str(args.json)},
        "machine": machine_info(),
        "wrk_version": (version or ["?"])[0].split(" Copyright")[0].strip(),
        "original": ORIGINAL,
        "then": THEN,
        "targets": TARGETS,
        "notes": NOTES,
        "editions": {},
    }
    with tempfile.TemporaryDirectory(prefix="design-bench-") as tmp:
        for edition in args.editions:
            report["editions"][edition] = run_edition(args, edition, day_start, Path(tmp))
    report["comparison"] = comparison(report)
    report["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    require_native_engine()
    return run_benchmark(
        "bench_design",
        args,
        run,
        render_markdown,
        "every process started was stopped and the clusters removed",
        passed=lambda r: not any(rep.get("problems") for rep in r["editions"].values()),
    )


if __name__ == "__main__":
    sys.exit(main())
