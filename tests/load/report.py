"""The benchmark command: runs every benchmark as a subprocess and writes docs/BENCHMARKS.md from their JSON.

Run through `bash scripts/bench.sh [--quick]` (which installs what is needed first), or directly:

    .venv/bin/python -m tests.load.report [--quick] [--out var/bench/<timestamp>] [--only name,...] [--doc PATH]
    .venv/bin/python -m tests.load.report --render-only var/bench/<timestamp>     # re-write the document

Steps, in this order, each `python -m tests.load.<name> ... --json <out>/<name>.json` with its output in
<out>/<name>.log, bounded by a timeout and stopped by PID if it overruns (each step stops what it started):

1. bench_ingest     API ingest (single readings, batches of 1,000) through gunicorn vs the same SQL directly;
2. bench_analytics  a full fleet day (28.8M rows) on native Community, then the same on native Apache (the
                    baseline), each on its own cluster: Community's aggregates materialised hour by hour while the
                    fleet ingests (CPU per refresh, ingest rate with and without refreshes), the day compressed
                    (ratio; 24 h / 7 d analytics compressed vs uncompressed); status, 24 h and 7 d analytics and the
                    fleet view (1 h, 24 h) through gunicorn vs bare SQL; 24 h analytics and status while the whole
                    fleet ingests (~15 minutes);
3. run_locust       steady fleet (20,000 devices at 60 s pacing + 20 dashboards, 7 min: >= 5 min at full rate)
                    on a full fleet day, then a burst of every device within 10 s, on the same cluster; the
                    gunicorn workers profiled with py-spy during the burst only (py-spy's own CPU lengthened
                    the steady run's response times: on 2 cores its p95 went from 130 to 630 ms while it ran);
4. bench_embedded   the embedded engine (PGlite) at a small scale (50 + 50 devices, 1 day): refresh vs a plain
                    GROUP BY, compression, analytics before/after (orientation; native figures are in step 2);
5. bench_growth     3 full fleet days (10,000 + 10,000 devices) on native Community with compression on: status,
                    24 h and 7 d analytics day by day (~15-20 minutes);
6. run_overload     overload (issue 14): this machine's single-reading capacity measured first (locust, 32 senders;
                    wrk beside it), then 4,000 devices paced to offer twice that for >= 3 min with 20 dashboards;
                    checks every answer within 5 s, goodput >= 90 % of the capacity, status p99 < 500 ms, and every
                    reading stored once after the devices' retries (~10 minutes);
7. bench_design     the conditions of DESIGN.md's "Performance targets" table (1,000 + 1,000 devices x 24 h, default
                    server settings, fsync on, wrk -t2 keep-alive: single-reading ingest at 32 connections, 24 h
                    analytics at 8, both together) on Community and Apache, next to pgbench running the same SQL,
                    set beside the original implementation's figures from that table (~20 minutes).

Every benchmark uses the API server configuration `fleet serve` ships with (workers and threads: the defaults
of docker/gunicorn.conf.py, read from it). The full run takes about 70 minutes on a quiet 2-core machine.
`--quick` runs the same steps at a small scale (a few minutes in all)
for development; its document goes to <out>/BENCHMARKS.md, not docs/, unless --doc says otherwise.

The document states the machine, the engines and their editions, the date and the command, and for each figure
the baseline measured in the same run and the target of the design brief (met / MISSED), plus how loaded the
machine was (load average sampled all along, and the CPU other processes used during each measurement).
Exit status: 0 when every step ran and wrote its JSON (missed targets are findings, not failures), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.load.benchlib import REPO_ROOT, LoadSampler, install_signal_handlers, log, machine_info, stop_process

DOC = REPO_ROOT / "docs" / "BENCHMARKS.md"
GUNICORN_CONF = REPO_ROOT / "docker" / "gunicorn.conf.py"
#: Design targets (docs: DESIGN.md, "Performance targets"); latency targets are p95 through gunicorn, and the
#: status / analytics / fleet-view / compression ones are for the native Community edition.
TARGETS = {
    "ingest_single": 1_100.0,  # readings/s through gunicorn (2x the original design's implementation)
    "ingest_batch": 60_000.0,
    "status_p95_ms": 2.0,  # full fleet day loaded
    "status_ingest_p95_ms": 10.0,  # while the full fleet ingests
    "analytics_p95_ms": 10.0,  # 24 h analytics, one client, full fleet day
    "analytics_ingest_p95_ms": 20.0,  # the same while the full fleet ingests
    "fleet_p95_ms": 200.0,  # fleet view over 10,000 vehicles, 1 h and 24 h windows
    "compression": 10.0,  # full fleet day, tables and indexes
    "burst_devices": 20_000,
    "steady_seconds": 300.0,
}


@dataclass
class Step:
    name: str
    module: str
    args: list[str]
    timeout: float  # seconds
    json_flag: str = "--json"


def server_defaults() -> tuple[int, int]:
    """(workers, threads) `fleet serve` uses when neither flag nor variable says otherwise."""
    text = GUNICORN_CONF.read_text()

    def default(name: str, fallback: int) -> int:
        m = re.search(rf'os\.environ\.get\("{name}",\s*"(\d+)"\)', text)
        return int(m.group(1)) if m else fallback

    return default("FLEET_WORKERS", 2), default("FLEET_THREADS", 4)


_QS = ("p50", "p95", "p99")


def steps(quick: bool, out: Path, workers: int, threads: int) -> list[Step]:
    server = ["--workers", str(workers), "--threads", str(threads)]
    if quick:
        return [
            Step("bench_ingest", "tests.load.bench_ingest", ["--seconds", "5", "--warmup", "2", *server], 600),
            Step(
                "bench_analytics",
                "tests.load.bench_analytics",
                [
                    *("--devices", "300", "--samples", "40", "--fleet-samples", "5", "--ingest-samples", "40"),
                    *("--ingest-seconds", "5", "--cold-samples", "10", "--warmup", "10", *server),
                ],
                1200,
            ),
            Step(
                "run_locust",
                "tests.load.run_locust",
                [
                    *("--scenario", "steady,burst", "--users", "2000", "--dashboards", "5", "--run-time", "150s"),
                    *("--min-steady", "60s", "--history-minutes", "240", "--samples", "50", "--profile", "burst"),
                    *("--out", str(out / "locust"), *server),
                ],
                1200,
            ),
            Step(
                "bench_embedded",
                "tests.load.bench_embedded",
                ["--devices", "50", "--days", "1", "--samples", "10"],
                900,
            ),
            Step(
                "bench_growth", "tests.load.bench_growth", ["--devices", "100", "--days", "3", "--samples", "50"], 900
            ),
            Step(
                "run_overload",
                "tests.load.run_locust",
                [
                    *("--scenario", "overload", "--users", "2000", "--dashboards", "5", "--overload-time", "60s"),
                    *("--samples", "20", "--out", str(out / "overload"), *server),
                ],
                900,
            ),
            Step("bench_design", "tests.load.bench_design", ["--quick", "--timeout", "840", *server], 900),
        ]
    return [
        Step("bench_ingest", "tests.load.bench_ingest", ["--seconds", "20", "--warmup", "3", *server], 900),
        Step(
            "bench_analytics",
            "tests.load.bench_analytics",
            [
                *("--samples", "300", "--fleet-samples", "20", "--ingest-samples", "200", "--ingest-seconds", "30"),
                *server,
            ],
            3600,
        ),
        Step(
            "run_locust",
            "tests.load.run_locust",
            [
                *("--scenario", "steady,burst", "--users", "20000", "--dashboards", "20", "--run-time", "7m"),
                *("--min-steady", "5m", "--profile", "burst", "--out", str(out / "locust"), *server),
            ],
            3000,
        ),
        Step("bench_embedded", "tests.load.bench_embedded", ["--devices", "50", "--days", "1", "--samples", "20"], 900),
        Step(
            "bench_growth",
            "tests.load.bench_growth",
            ["--devices", "10000", "--days", "3", "--samples", "200", "--timeout", "2700"],
            3000,
        ),
        Step(
            "run_overload",
            "tests.load.run_locust",
            [
                *("--scenario", "overload", "--users", "4000", "--dashboards", "20", "--overload-time", "200s"),
                *("--out", str(out / "overload"), *server),
            ],
            1800,
        ),
        Step("bench_design", "tests.load.bench_design", ["--duration", "20", "--timeout", "3500", *server], 3600),
    ]


def run_step(step: Step, out: Path) -> dict[str, Any]:
    """One benchmark as a subprocess (own session, output to <name>.log), bounded; stopped by PID on overrun."""
    json_path = out / f"{step.name}.json"
    log_path = out / f"{step.name}.log"
    command = [sys.executable, "-m", step.module, *step.args, step.json_flag, str(json_path)]
    log(f"step {step.name}: {' '.join(command[1:])} (log {log_path}, timeout {step.timeout:.0f} s)")
    started, load0 = time.monotonic(), os.getloadavg()[0]
    with log_path.open("wb") as f:
        proc = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    timed_out = False
    try:
        proc.wait(timeout=step.timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        log(f"step {step.name} exceeded {step.timeout:.0f} s: stopping it (SIGTERM: it cleans up what it started)")
    finally:
        stop_process(proc, grace=120, name=step.name)
    seconds = time.monotonic() - started
    ok = json_path.exists() and not timed_out
    log(f"step {step.name}: exit code {proc.returncode}, {seconds:.0f} s{'' if ok else ' - NO RESULT'}")
    return {
        "name": step.name,
        "command": "python -m " + " ".join([step.module, *step.args]),
        "exit_code": proc.returncode,
        "timed_out": timed_out,
        "seconds": round(seconds, 1),
        "loadavg_start": round(load0, 2),
        "loadavg_end": round(os.getloadavg()[0], 2),
        "json": str(json_path) if json_path.exists() else None,
        "log": str(log_path),
        "ok": ok,
    }


# --- rendering -----------------------------------------------------------------------------------------------


def _load(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _n(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**MISSED**")


def _get(d: Any, *keys: Any, default: Any = None) -> Any:
    for k in keys:
        if (isinstance(d, dict) and k in d) or (isinstance(d, list) and isinstance(k, int) and -len(d) <= k < len(d)):
            d = d[k]
        else:
            return default
    return d


class Doc:
    """Markdown lines, and the rows of the targets summary collected on the way."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.targets: list[tuple[str, str, str, str]] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.add("| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|")
        for row in rows:
            self.add("| " + " | ".join(row) + " |")
        self.add("")

    def target(self, name: str, figure: str, baseline: str, verdict: str) -> None:
        self.targets.append((name, figure, baseline, verdict))


def _ingest(doc: Doc, r: dict[str, Any] | None) -> None:
    doc.add("## Ingest: API vs the same SQL directly", "")
    if not r:
        doc.add("Not measured (the step failed: see its log).", "")
        return
    p = r.get("parameters", {})
    doc.add(
        f"`tests/load/bench_ingest.py`: {p.get('seconds')} s measured per scenario after {p.get('warmup')} s warm-up,"
        f" {p.get('clients')} clients in {p.get('client_procs')} processes; API = `POST /v1/telemetry/ingest` through"
        f" gunicorn ({p.get('workers')} workers x {p.get('threads')} threads, rate limit off, access log on) with a"
        " device key; direct = `api.ingest.service.ingest()` (the function the endpoint calls: the same dual-write"
        " SQL in one transaction) from the same number of clients: the baseline. Rows stored are counted after"
        " each scenario and must equal the readings acknowledged.",
        "",
    )
    by = {(s["workload"], s["path"]): s for s in r.get("scenarios", [])}
    rows = []
    for workload, label, target in (
        ("single", "single reading per request", TARGETS["ingest_single"]),
        ("batch", f"batch of {p.get('batch_size', 1000)}", TARGETS["ingest_batch"]),
    ):
        api, direct = by.get((workload, "api")), by.get((workload, "direct"))
        if not api:
            continue
        rate = api["readings_per_s"]
        base = direct["readings_per_s"] if direct else None
        ok = rate >= target
        other = max(_get(s, "cpu_pct", "other", default=0.0) for s in (api, direct) if s)
        rows.append(
            [
                label,
                _n(rate),
                _n(base),
                _n(rate / base if base else None, 2),
                f">= {_n(target)}",
                _met(ok),
                _n(api.get("p50_ms"), 1) + " / " + _n(api.get("p99_ms"), 1),
                _n(direct and direct.get("p50_ms"), 1) + " / " + _n(direct and direct.get("p99_ms"), 1),
                str(sum(s["errors"] for s in (api, direct) if s)),
                "ok" if all(s["count_check"] for s in (api, direct) if s) else "**MISMATCH**",
                _n(other, 0, " %"),
            ]
        )
        doc.target(
            f"ingest, {label} (readings/s through gunicorn)",
            _n(rate),
            f"direct SQL {_n(base)} (API/direct {_n(rate / base if base else None, 2)})",
            f"{_met(ok)} (>= {_n(target)})",
        )
    doc.table(
        [
            "workload",
            "API readings/s",
            "direct readings/s (baseline)",
            "API / direct",
            "target",
            "",
            "API p50 / p99 ms",
            "direct p50 / p99 ms",
            "errors",
            "rows = acknowledged",
            "other processes' CPU",
        ],
        rows,
    )
    cpu_rows = [
        [
            f"{s['workload']} / {s['path']}",
            _n(_get(s, "cpu_us_per_reading", "clients")),
            _n(_get(s, "cpu_us_per_reading", "gunicorn")),
            _n(_get(s, "cpu_us_per_reading", "postgres")),
        ]
        for s in r.get("scenarios", [])
    ]
    doc.add("CPU per reading, microseconds (steadier than rates on a shared machine):", "")
    doc.table(["scenario", "clients", "gunicorn", "PostgreSQL"], cpu_rows)
    for w in r.get("warnings", []):
        doc.add(f"> {w}", "")


def _q3(s: dict[str, Any] | None, digits: int = 2) -> str:
    s = s or {}
    return " / ".join(_n(s.get(q), digits) for q in _QS)


def _target_ms(name: str) -> float | None:
    if "/fleet" in name:
        return TARGETS["fleet_p95_ms"]
    if "performance 7 d" in name:
        return None
    return TARGETS["analytics_p95_ms"] if "analytics" in name else TARGETS["status_p95_ms"]


def _analytics(doc: Doc, r: dict[str, Any] | None) -> None:
    doc.add("## A full fleet day: native Community next to native Apache", "")
    if not r or "editions" not in r:
        doc.add("Not measured (the step failed: see its log).", "")
        return
    eds = r["editions"]
    com, apa = eds.get("community"), eds.get("apache")
    first = com or apa or {}
    load, p = first.get("load", {}), r.get("parameters", {})
    doc.add(
        f"`tests/load/bench_analytics.py`, **scale: {_n(load.get('meters'))} meters + {_n(load.get('vehicles'))}"
        f" vehicles x {_n(load.get('minutes'))} min = {_n(load.get('history_rows'))} history rows** (bulk-loaded"
        f" with binary COPY in {_n(load.get('copy_seconds'))} s on Community"
        + (f", {_n(apa['load'].get('copy_seconds'))} s on Apache" if apa else "")
        + "), each edition on its own throw-away cluster of the same build (Apache: `-c timescaledb.license=apache`),"
        " fsync on, server settings of bench_analytics. On Community the day is then materialised hour by hour with"
        " `refresh_continuous_aggregate` (every aggregate; first alone, then while the fleet ingests, below),"
        " `fleet jobs run --once` brings up to date whatever else the scheduler keeps, and the day's chunks are"
        " compressed (`compress_chunk`; the chunk the live fleet writes stays uncompressed); Apache reads the raw"
        " hypertables (the baseline). Then everything is pre-warmed into shared_buffers and"
        f" {p.get('samples')} random devices (fleet view: {p.get('fleet_samples')} requests on Community, fewer"
        " on Apache) are requested one at a time on three paths: http = through `fleet serve` (gunicorn as shipped)"
        " with a read key; service = the view's service function; direct = the bare data-layer function on a held"
        " connection (bare SQL). Windows: the loaded day (24 h), the week ending with it (7 d, one day of data),"
        " the day's last hour (fleet view 1 h).",
        "",
    )
    rows = []
    for name in (com or apa)["latency"]:
        c = _get(com, "latency", name, default={})
        a = _get(apa, "latency", name, default={})
        target = _target_ms(name)
        p95 = _get(c, "http", "p95")
        ok = None if target is None or p95 is None else p95 < target
        rows.append(
            [
                name,
                _q3(c.get("http")),
                _q3(c.get("direct")),
                _q3(a.get("http")),
                _q3(a.get("direct")),
                f"p95 < {target:g} ms" if target else "-",
                _met(ok),
            ]
        )
        if target is not None and com:
            doc.target(
                f"Community: `{name}`, full fleet day, aggregates materialised, day compressed (p95 ms, http)",
                _n(p95, 2),
                f"Apache http p95 {_n(_get(a, 'http', 'p95'), 2)}; bare SQL p95 {_n(_get(c, 'direct', 'p95'), 2)}",
                f"{_met(ok)} (< {target:g})",
            )
    doc.add("p50 / p95 / p99 ms:", "")
    doc.table(
        ["request", "Community http", "Community direct", "Apache http (baseline)", "Apache direct", "target", ""],
        rows,
    )
    for label, rep in eds.items():
        errs = rep.get("http_errors") or {}
        for name, items in errs.items():
            doc.add(f"> {label}: {name}: {len(items)} requests failed over HTTP, e.g. {items[0][:200]}", "")
        c = rep.get("correctness", {})
        doc.add(
            f"Correctness ({label}): {c.get('checked')} 24 h analytics responses checked against the loaded data:"
            f" {'all match' if not c.get('problems') else str(len(c['problems'])) + ' problems'}.",
            "",
        )

    doc.add("### While the full fleet ingests", "")
    doc.add(
        "The whole fleet reports through the same gunicorn at its rate (20,000 devices, one reading a minute each:"
        " 333 readings/s, single-reading POSTs on a new connection each, from a separate process), while one"
        " client requests the loaded day's 24 h analytics and then status one at a time"
        f" ({p.get('ingest_samples')} each), alternating with the bare data-layer call. Baselines: the same requests"
        " on a quiet server (above) and the Apache edition.",
        "",
    )
    rows = []
    for name in _get(com or apa, "while_ingesting", "latency", default={}):
        c = _get(com, "while_ingesting", "latency", name, default={})
        a = _get(apa, "while_ingesting", "latency", name, default={})
        target = TARGETS["analytics_ingest_p95_ms"] if "analytics" in name else TARGETS["status_ingest_p95_ms"]
        p95 = _get(c, "http", "p95")
        ok = None if p95 is None else p95 < target
        quiet = _get(com, "latency", name, "http", default={})
        rows.append(
            [
                name,
                _q3(c.get("http")),
                _q3(c.get("direct")),
                _q3(quiet),
                _q3(a.get("http")),
                f"p95 < {target:g} ms",
                _met(ok),
            ]
        )
        if com:
            doc.target(
                f"Community: `{name}` while the full fleet ingests (p95 ms, http)",
                _n(p95, 2),
                f"quiet {_n(quiet.get('p95'), 2)}; Apache {_n(_get(a, 'http', 'p95'), 2)};"
                f" bare SQL {_n(_get(c, 'direct', 'p95'), 2)}",
                f"{_met(ok)} (< {target:g})",
            )
    doc.table(
        [
            "request",
            "Community http p50/p95/p99",
            "Community direct",
            "Community quiet http (baseline)",
            "Apache http (baseline)",
            "target",
            "",
        ],
        rows,
    )
    ing_rows = []
    for label, rep in eds.items():
        ing = _get(rep, "while_ingesting", "ingest", default={})
        ing_rows.append(
            [
                label,
                _n(ing.get("readings_per_s"), 1),
                str(ing.get("errors", "-")),
                _q3(ing.get("latency"), 1),
                _n(_get(rep, "while_ingesting", "cpu", "others_pct"), 0, " %"),
            ]
        )
    doc.table(
        ["edition", "fleet ingest readings/s (offered 333.3)", "errors", "ingest p50/p95/p99 ms", "other processes"],
        ing_rows,
    )

    ref = _get(com, "refresh")
    if ref:
        doc.add("### Keeping the aggregates fresh while the fleet ingests (Community)", "")
        q = ref["quiet"]
        groups = q.get("groups")
        doc.add(
            f"One refresh = every continuous aggregate ({', '.join(f'`{a}`' for a in ref['aggregates'])}) over one"
            f" hour of the whole fleet's readings ({_n(load.get('meters', 0) * 60 + load.get('vehicles', 0) * 60)}"
            f" raw rows -> {_n(groups)} hourly rows): what the refresh policy materialises per hour of fleet time."
            " CPU = the refreshing backend's user + system time from /proc, so it is the"
            " database's CPU for the refresh alone even while other backends ingest. Alone (before the fleet starts),"
            f" {q['n']} hours: {_n(q['seconds'], 2)} s and {_n(q['cpu_s'], 2)} CPU s per refresh; the same"
            f" aggregation as a plain SELECT ... GROUP BY (baseline): {_n(q['plain_seconds'], 2)} s,"
            f" {_n(q['plain_cpu_s'], 2)} CPU s. At {_n(q['cpu_s'], 2)} CPU s per fleet hour, keeping the aggregates"
            f" fresh costs {_n(100 * q['cpu_s'] / 3600, 3)} % of one core.",
            "",
        )
        rows = []
        for label, ph in ref["phases"].items():
            a, b = ph["without"], ph["with"]
            rows.append(
                [
                    label,
                    f"{_n(a['readings_per_s'], 1)} ({_n(a['seconds'], 0)} s)",
                    f"{_n(b['readings_per_s'], 1)} ({_n(b['seconds'], 0)} s)",
                    f"{_n(a['latency']['p50'], 1)} / {_n(a['latency']['p95'], 1)}",
                    f"{_n(b['latency']['p50'], 1)} / {_n(b['latency']['p95'], 1)}",
                    str(b["refreshes"]),
                    f"{_n(b['refresh_cpu_s_mean'], 2)} / {_n(b['refresh_seconds_mean'], 2)}",
                    f"{_n(a['postgres_cpu_pct'])} / {_n(b['postgres_cpu_pct'])} %",
                    str(a["errors"] + b["errors"]),
                ]
            )
        doc.add(
            "The fleet's ingest through gunicorn without refreshes (baseline), then with refreshes running back to"
            " back, hour after hour of the loaded day; at the fleet's rate (offered 333.3 readings/s) and unpaced"
            " (16 clients, as fast as the server answers: the capacity):",
            "",
        )
        doc.table(
            [
                "ingest",
                "readings/s without refreshes (baseline)",
                "readings/s with refreshes",
                "ingest p50 / p95 ms without",
                "with",
                "refreshes",
                "per refresh: CPU s / wall s",
                "PostgreSQL CPU (% of a core) without / with",
                "ingest errors",
            ],
            rows,
        )
        jobs = _get(com, "jobs_once")
        if jobs:
            doc.add(
                f"`fleet jobs run --once` after the refreshes: exit code {jobs.get('exit_code')},"
                f" {_n(jobs.get('seconds'), 1)} s.",
                "",
            )

    comp = _get(com, "compression")
    if comp:
        doc.add("### Compression at full fleet day (Community)", "")
        crows = []
        for table in ("meter_readings", "vehicle_readings"):
            c = comp[table]
            s = c["stats"]
            crows.append(
                [
                    table,
                    str(c["chunks"]),
                    f"{_n(c['seconds'], 1)} / {_n(c.get('cpu_s'), 1)}",
                    _n(s["before_compression_total_bytes"] / 2**20, 1),
                    _n(s["after_compression_total_bytes"] / 2**20, 1),
                    _n(c["ratio_total"], 2) + "x",
                    _n(c["ratio_data"], 2) + "x",
                ]
            )
        a = comp["all"]
        crows.append(
            [
                "both",
                "",
                f"{_n(a['seconds'], 1)} / {_n(a.get('cpu_s'), 1)}",
                _n(a["before_bytes"] / 2**20, 1),
                _n(a["after_bytes"] / 2**20, 1),
                _n(a["ratio_total"], 2) + "x",
                _n(a["ratio_data"], 2) + "x",
            ]
        )
        doc.add(
            "`compress_chunk` on every chunk of the loaded day (segment by device id, order by time desc, as"
            " migration 0002 configures); bytes from `hypertable_compression_stats`: the uncompressed size (baseline)"
            " and the compressed one, measured in the same run:",
            "",
        )
        doc.table(
            [
                "hypertable",
                "chunks",
                "seconds / CPU s",
                "before MiB (baseline)",
                "after MiB",
                "ratio (tables + indexes + TOAST)",
                "table data alone",
            ],
            crows,
        )
        ratio = a["ratio_total"] or 0.0
        doc.target(
            "compression at full fleet day, native Community (tables + indexes)",
            f"{_n(ratio, 2)}x; table data alone {_n(a['ratio_data'], 2)}x",
            f"uncompressed {_n(a['before_bytes'] / 2**20, 0)} MiB",
            f"{_met(ratio >= TARGETS['compression'])} (>= {TARGETS['compression']:g}x)",
        )
        arows = []
        for window, pair in (_get(com, "compressed_vs_uncompressed") or {}).items():
            u, c = pair["uncompressed"], pair["compressed"]
            arows.append(
                [
                    f"{window} analytics (direct)",
                    _q3(u),
                    _q3(c),
                    _n(c["p95"] / u["p95"] if u.get("p95") else None, 2),
                ]
            )
        doc.add(
            "Analytics over the compressed day next to the same calls over it uncompressed (aggregates materialised"
            " in both; the same vehicles, bare data-layer call):",
            "",
        )
        doc.table(
            ["call", "uncompressed p50/p95/p99 ms (baseline)", "compressed", "p95 compressed / uncompressed"], arows
        )
    cpu_rows = []
    for label, rep in eds.items():
        for phase, v in rep.get("cpu", {}).items():
            cpu_rows.append([label, phase, _n(v.get("others_pct"), 0, " %")])
    if cpu_rows:
        doc.add("Other processes' CPU during each measurement (the machine is shared):", "")
        doc.table(["edition", "measurement", "other processes"], cpu_rows)


def _locust(doc: Doc, r: dict[str, Any] | None) -> None:
    doc.add("## Locust: the steady fleet with dashboards, and the burst", "")
    if not r:
        doc.add("Not measured (the step failed: see its log).", "")
        return
    h, srv = r.get("history"), r.get("server", {})
    doc.add(
        "`tests/load/run_locust.py` (scenarios in `tests/load/locustfile.py`): one throw-away native cluster"
        + (
            f" with a full fleet day loaded first ({_n(h['rows'])} rows, the day up to a minute before the run)"
            if h
            else ""
        )
        + f"; `fleet serve` with {srv.get('workers')} workers x {srv.get('threads')} threads, rate limit"
        f" {_get(srv, 'env', 'FLEET_RATE_LIMIT')} per key (on, so its cost is in the figures), access log on."
        " Devices open a connection per reading; every request must succeed.",
        "",
    )
    nice = next((sc["locust"].get("client_nice") for sc in r.get("scenarios", {}).values() if "locust" in sc), None)
    if nice:
        doc.add(
            f"locust (one process) runs at scheduling priority {nice}: real devices have CPUs of their own, and a load"
            " generator that waits for the server's cores adds that wait to every response time it measures.",
            "",
        )
    for name, s in r.get("scenarios", {}).items():
        lc = s.get("locust", {})
        sm = lc.get("summary", {})
        stats = sm.get("per_name") or lc.get("stats", {})
        verdict = sm.get("verdict", "none")
        doc.add(f"### {name}", "")
        if name == "steady":
            st = sm.get("steady", {})
            doc.add(
                f"{s['devices']:,} device users (60 s pacing, each at its own phase) +"
                f" {s.get('dashboards', 0)} dashboard users (status : 24 h performance : 1 h fleet view ="
                " 9 : 3 : 1, 2-6 s between calls) for"
                f" {_n(lc.get('run_time_s'))} s; at full rate for {_n(st.get('phase_seconds'))} s:"
                f" {_n(st.get('rate'), 1)} readings/s vs {_n(st.get('offered_rate'), 1)} offered.",
                "",
            )
            rate_ok = any(c["ok"] for c in sm.get("checks", []) if c["check"].startswith("steady ingest rate"))
            errors = _get(stats, "Aggregated", "failures")
            ok = (
                errors == 0
                and rate_ok  # the rate held >= 95 % of what the devices offered
                and st.get("phase_seconds", 0) >= TARGETS["steady_seconds"]
            )
            doc.target(
                f"steady fleet: {s['devices']:,} devices at 60 s pacing (+ dashboards) held >= 5 min with zero errors",
                f"{_n(st.get('phase_seconds'))} s at full rate, {_n(st.get('rate'), 1)} readings/s, {errors} errors",
                f"offered {_n(st.get('offered_rate'), 1)} readings/s",
                _met(ok),
            )
        else:
            b, base = sm.get("burst", {}), s.get("baseline_direct_burst", {})
            acked = sm.get("ingest_ok")
            errors = _get(stats, "Aggregated", "failures")
            doc.add(
                f"{s['devices']:,} devices, each reporting once at a random instant of the same"
                f" {_n(b.get('window_seconds'))} s window (all users spawned before it opens). Baseline: the same"
                " number of single-reading dual-write transactions sent straight to the database right before"
                f" ({base.get('clients', '')}): {_n(base.get('seconds'), 1)} s,"
                f" {_n(base.get('readings_per_s'))} readings/s.",
                "",
            )
            doc.add(
                f"Outcome: {_n(acked)} of {s['devices']:,} readings acknowledged, {errors} errors; offered within"
                f" {_n(b.get('last_send_s'), 1)} s; last answer {_n(b.get('drain_s'), 1)} s after the window opened"
                f" (the database alone: {_n(base.get('seconds'), 1)} s for all of them).",
                "",
            )
            doc.target(
                f"burst: {s['devices']:,} devices (target: 20,000) within 10 s absorbed with zero errors",
                f"{_n(acked)}/{s['devices']:,} acknowledged, {errors} errors, drained in {_n(b.get('drain_s'), 1)} s",
                f"direct SQL: {_n(base.get('seconds'), 1)} s ({_n(base.get('readings_per_s'))}/s)",
                _met(errors == 0 and acked == s["devices"]),
            )
        rows = [
            [
                req,
                _n(st.get("requests")),
                _n(st.get("failures")),
                _n(st.get("p50")),
                _n(st.get("p95")),
                _n(st.get("p99")),
                _n(st.get("max")),
                _n(st.get("rps"), 1),
            ]
            for req, st in stats.items()
        ]
        doc.table(["request (locust)", "n", "failures", "p50 ms", "p95 ms", "p99 ms", "max ms", "req/s"], rows)
        handler = s.get("handler_latency", {})
        if handler:
            doc.add(
                "The app's own time per request (gunicorn access log, from the request read to the response written;"
                " not the time queued for a thread or in the kernel), over the same phase, next to locust's:",
                "",
            )
            hrows = []
            for req, h in handler.items():
                http = (
                    stats.get(req, {})
                    if req != "ingest"
                    else {q: max((v.get(q) or 0) for k, v in stats.items() if k.startswith("ingest")) for q in _QS}
                )
                hrows.append(
                    [
                        req,
                        _n(h.get("n")),
                        " / ".join(_n(h.get(q), 1) for q in _QS),
                        " / ".join(_n(http.get(q)) for q in _QS),
                    ]
                )
            doc.table(["request", "n (server)", "server p50/p95/p99 ms", "locust p50/p95/p99 ms"], hrows)
        before, during = s.get("baseline_direct", {}), _get(s, "direct_during", "latency", default={})
        if before or during:
            drows = []
            for req in ("status vehicle", "status meter", "performance 24h", "fleet 1h"):
                http = stats.get(req, {})
                drows.append(
                    [
                        req,
                        " / ".join(_n(http.get(q)) for q in _QS),
                        " / ".join(_n(_get(handler, req, q), 1) for q in _QS),
                        " / ".join(_n(_get(during, req, q), 2) for q in _QS),
                        " / ".join(_n(_get(before, req, q), 2) for q in _QS),
                    ]
                )
            doc.add(
                "Dashboards through HTTP while the fleet ingests, next to the bare data-layer call (baselines):", ""
            )
            doc.table(
                [
                    "dashboard call",
                    "HTTP (locust) p50/p95/p99 ms",
                    "server handler",
                    "bare SQL during the run",
                    "bare SQL just before",
                ],
                drows,
            )
            perf, perf_d = stats.get("performance 24h", {}), _get(during, "performance 24h", default={})
            if perf:
                ok = perf.get("p95") is not None and perf["p95"] < TARGETS["analytics_ingest_p95_ms"]
                doc.target(
                    "24 h analytics while the full fleet is ingesting (p95, ms, HTTP via locust)",
                    _n(perf.get("p95")),
                    f"bare SQL during the run p95 {_n(perf_d.get('p95'), 2)},"
                    f" just before {_n(_get(before, 'performance 24h', 'p95'), 2)}",
                    f"{_met(ok)} (< {TARGETS['analytics_ingest_p95_ms']:g})",
                )
        checks = [*s.get("checks", []), *[{**c, "check": "locust: " + c["check"]} for c in sm.get("checks", [])]]
        doc.add(f"Verdict: **{verdict}**.", "")
        for c in checks:
            doc.add(f"- {'ok' if c['ok'] else '**FAIL**'} {c['check']}: {c['detail']}")
        cpu, load = s.get("cpu", {}), s.get("loadavg", {})
        doc.add(
            "",
            f"Machine during the run: busy {_n(cpu.get('busy_pct'))} % of all cores, this benchmark (locust, gunicorn,"
            f" PostgreSQL) {_n(cpu.get('ours_pct'))} %, other processes {_n(cpu.get('others_pct'))} %; load average"
            f" {load.get('min')}-{load.get('max')} (mean {load.get('mean')}).",
            "",
        )
        _cpu_by_tree(doc, s)
        prof = lc.get("profile")
        if prof and prof.get("samples"):
            doc.add(
                f"Profile of the gunicorn workers (py-spy --gil, {prof['seconds']:.0f} s, {prof['samples']:,} samples:"
                " shares of the workers' Python CPU, database waits excluded):",
                "",
            )
            doc.table(["component", "share"], [[name, f"{pct:.1f} %"] for name, pct in prof["components"]])
            doc.table(
                ["application function (inclusive)", "share"],
                [[f"`{name}`", f"{pct:.1f} %"] for name, pct in prof["application"][:8]],
            )
            doc.table(
                ["busiest leaf function", "share"], [[f"`{name}`", f"{pct:.1f} %"] for name, pct in prof["leaves"][:8]]
            )
        files = lc.get("files", {})
        doc.add(
            f"Files: `{_rel(files.get('html'))}`, `{_rel(files.get('stats_csv'))}`,"
            f" `{_rel(files.get('history_csv'))}`.",
            "",
        )


def _cpu_by_tree(doc: Doc, s: dict[str, Any]) -> None:
    """A locust scenario's CPU per request (every class, refused ones included) by process tree."""
    by = s.get("cpu_by_process", {})
    if not by:
        return
    doc.add(
        f"CPU per request by process tree ({_n(s.get('cpu_by_process_requests'))} requests, every class; the load"
        " generator shares the machine's cores with the server and the database):",
        "",
    )
    doc.table(
        ["process tree", "CPU s", "% of all cores", "CPU per request, us"],
        [[name, _n(v["seconds"], 1), _n(v["pct_of_all_cores"], 1), _n(v["us_per_request"])] for name, v in by.items()],
    )


def _overload(doc: Doc, r: dict[str, Any] | None) -> None:
    doc.add("## Overload: twice this machine's capacity, with dashboards (issue 14)", "")
    if not r:
        doc.add("Not measured (the step failed: see its log).", "")
        return
    s = _get(r, "scenarios", "overload") or {}
    lc, cap = s.get("locust", {}), s.get("capacity", {})
    sm = lc.get("summary", {})
    o, stats = sm.get("overload", {}), sm.get("per_name") or lc.get("stats", {})
    srv, wrk = r.get("server", {}), cap.get("wrk", {})
    before, after = _get(cap, "locust", "rate"), _get(s, "capacity_after", "locust", "rate")
    capacity = (before + after) / 2 if before and after else before
    doc.add(
        "`tests/load/run_locust.py --scenario overload`: one throw-away native cluster with"
        f" {_n(_get(r, 'history', 'minutes'))} minutes of history for the fleet; `fleet serve` with"
        f" {srv.get('workers')} workers x {srv.get('threads')} threads and the default admission bounds"
        " (`FLEET_INGEST_MAX_QUEUE_MS` 1000, `FLEET_INGEST_TARGET_QUEUE_MS` 250, `FLEET_READ_MAX_QUEUE_MS` 5000;"
        " Retry-After 5-15 s, growing to 40-120 s while a worker keeps shedding; reads taken before ingest).",
        "",
        f"1. **Capacity, same run, same server:** {_get(cap, 'locust', 'senders')} locust users sending single"
        f" readings back to back (a new connection each, as devices do) for {_get(cap, 'locust', 'seconds')} s, before"
        f" the overload and again after it: {_n(before, 1)} and {_n(after, 1)} readings/s acknowledged (the first 10 s"
        f" of each unmeasured), **{_n(capacity, 1)} readings/s** on average, the figure the goodput is held against."
        f" wrk before it, 32 keep-alive connections, 30 s: {_n(wrk.get('stored_rate'), 1)} readings/s (p99"
        f" {_n(wrk.get('p99'))} ms).",
        f"2. **Overload:** {s.get('devices', 0):,} devices paced at {_n(lc.get('pacing_s'), 1)} s offer"
        f" {_n(o.get('offered_rate'), 1)} readings/s (2 x the capacity measured before), with"
        f" {s.get('dashboards')} dashboards, for"
        f" {_n(o.get('phase_seconds'))} s at full rate; a shed device waits Retry-After x [1, 1.5) and re-sends the"
        " same reading; then the devices stop making readings and deliver what they hold.",
        "",
    )
    rows = []
    for name, st in stats.items():
        rows.append(
            [name, _n(st.get("requests")), _n(st.get("failures")), _n(st.get("p50")), _n(st.get("p95")),
             _n(st.get("p99")), _n(st.get("max"))]
        )  # fmt: skip
    doc.table(["request", "n", "failed", "p50 ms", "p95 ms", "p99 ms", "max ms"], rows)
    status_p99 = max((_get(stats, n, "p99") or 0.0) for n in ("status vehicle", "status meter"))
    goodput = o.get("goodput")
    share = goodput / capacity if goodput and capacity else None
    rows_check = next((c for c in s.get("checks", []) if c["check"].startswith("stored rows == readings")), {})
    doc.add(
        f"Outcome: goodput {_n(goodput, 1)} readings/s = {_n(100 * share if share else None)} % of capacity;"
        f" {_n(sm.get('retries'))} answers 503 (shed) retried; slowest answer {_n(o.get('slowest_answer_ms'))} ms;"
        f" status p99 {_n(status_p99)} ms; {_n(sm.get('readings_made'))} readings made,"
        f" {_n(sm.get('stored'))} acknowledged stored, {_n(sm.get('duplicates'))} duplicates,"
        f" {_n(sm.get('abandoned'))} abandoned; {rows_check.get('detail', '')}.",
        "",
        "The table and the checks cover the overload phase and the drain after it. The start-up before it (every"
        " device spawned by the one locust process and sending its first reading, Retry-After not yet adapted) is"
        f" apart: slowest answer {_n(o.get('startup_slowest_ms'))} ms, status p99"
        f" {_n(o.get('startup_status_p99_ms'))} ms.",
        "",
    )
    _cpu_by_tree(doc, s)
    for c in [*s.get("checks", []), *sm.get("checks", [])]:
        doc.add(f"- {'ok' if c['ok'] else '**FAIL**'}: {c['check']}: {c['detail']}")
    doc.add(
        "",
        "How many devices offer the overload matters. Every device holds one reading until it is stored, so under"
        " twice the capacity about half of the fleet must be kept away at any time; a device kept away for"
        " Retry-After T means about N / (2T) refusals a second for N devices, each costing about a third of a stored"
        " reading. With Retry-After at most 120 s, 4,000 devices (pacing ~7 s) need few refusals; 20,000 devices"
        " (pacing ~35 s) need ~80 a second and lose goodput to them (docs/SCALING.md).",
        "",
    )
    doc.target(
        "overload: 2 x capacity >= 3 min with dashboards: answers <= 5 s, goodput >= 90 %, status p99 < 500 ms,"
        " stored = sent once",
        f"goodput {_n(goodput, 1)}/s ({_n(100 * share if share else None)} %), slowest"
        f" {_n(o.get('slowest_answer_ms'))} ms, status p99 {_n(status_p99)} ms, {_n(sm.get('readings_made'))} made /"
        f" {_n(sm.get('stored'))} stored / {_n(sm.get('duplicates'))} dup.",
        f"capacity {_n(capacity, 1)} readings/s (locust, before {_n(before, 1)} / after {_n(after, 1)}),"
        f" {_n(wrk.get('stored_rate'), 1)}/s (wrk)",
        _met(bool(s.get("ok"))),
    )


def _embedded(doc: Doc, r: dict[str, Any] | None) -> None:
    doc.add("## Embedded engine (Community): continuous-aggregate refresh and compression", "")
    if not r:
        doc.add("Not measured (the step failed: see its log).", "")
        return
    sc, load = r["scale"], r["load"]
    doc.add(
        f"`tests/load/bench_embedded.py`: {sc['meters']} meters + {sc['vehicles']} vehicles, minute data for"
        f" {sc['days']} days + 1 h from fleet_day's model ({_n(load['rows'])} rows, inserted as multi-row"
        f" INSERT ... unnest at {_n(load['rows_per_s'])} rows/s). PGlite (PostgreSQL compiled to WASM, one"
        " connection): orientation figures; production runs the native Community server.",
        "",
    )
    rows = []
    for label, key in (("full backfill", "refresh_full"), ("1 new hour", "refresh_incremental")):
        for cagg, x in r[key].items():
            rows.append(
                [
                    f"`{cagg}` ({label})",
                    _n(x["refresh_s"], 3),
                    _n(x["plain_select_s"], 3),
                    _n(x["ratio"], 2),
                    _n(x["materialized_rows"]),
                ]
            )
    doc.add(
        "`CALL refresh_continuous_aggregate` vs the aggregate's own query as a plain SELECT ... GROUP BY over the"
        " raw hypertable, same range (baseline):",
        "",
    )
    doc.table(["aggregate (window)", "refresh s", "plain GROUP BY s (baseline)", "refresh / plain", "rows"], rows)
    comp = r["compression"]
    crows = []
    for table in ("meter_readings", "vehicle_readings"):
        c = comp[table]
        s = c["stats"]
        crows.append(
            [
                table,
                str(c["chunks"]),
                _n(c["seconds"], 1),
                _n(s["before_compression_total_bytes"] / 2**20, 1),
                _n(s["after_compression_total_bytes"] / 2**20, 1),
                _n(c["ratio_total"], 2) + "x",
                _n(c["ratio_data"], 2) + "x",
            ]
        )
    ratio = comp["all"]["ratio_total"]
    crows.append(
        [
            "both",
            "",
            "",
            _n(comp["all"]["before_bytes"] / 2**20, 1),
            _n(comp["all"]["after_bytes"] / 2**20, 1),
            _n(ratio, 2) + "x",
            "",
        ]
    )
    doc.add(
        "Compression of every raw chunk (`compress_chunk`; segment by device id, order by time desc); bytes from"
        " `hypertable_compression_stats`, the uncompressed size (baseline) measured in the same run:",
        "",
    )
    doc.table(
        [
            "hypertable",
            "chunks",
            "seconds",
            "before MiB",
            "after MiB",
            "ratio (tables + indexes + TOAST)",
            "table data alone",
        ],
        crows,
    )
    doc.add(
        f"Embedded engine: {_n(ratio, 2)}x (tables + indexes) at this scale; the target"
        f" (>= {TARGETS['compression']:g}x) applies to the native Community engine at full fleet day (above).",
        "",
    )
    arows = []
    for name, before in r["analytics_before"].items():
        after = r["analytics_after"][name]
        arows.append(
            [
                name,
                f"{_n(before['p50'], 1)} / {_n(before['p95'], 1)}",
                f"{_n(after['p50'], 1)} / {_n(after['p95'], 1)}",
                _n(after["p50"] / before["p50"] if before["p50"] else None, 2),
            ]
        )
    doc.add("24 h analytics (db/analytics.py, the last full day, random vehicles) before and after compression:", "")
    doc.table(["path", "before p50 / p95 ms (baseline)", "after p50 / p95 ms", "after / before (p50)"], arows)


def _growth(doc: Doc, r: dict[str, Any] | None) -> None:
    if not r:
        doc.add("## History growth", "", "Not measured (the step failed: see its log).", "")
        return
    sc, days = r["scale"], r["days"]
    edition = sc.get("edition", _get(r, "engine", "license", default="?"))
    full = sc["meters"] >= 10_000
    doc.add(
        f"## History growth: {len(days)} days at {sc['meters']:,} meters + {sc['vehicles']:,} vehicles"
        f" ({'the full fleet' if full else 'a reduced scale'}), {edition} edition"
        + (", compression on" if any("compression" in d for d in days) else ""),
        "",
    )
    doc.add(
        f"`tests/load/bench_growth.py`, native engine, **scale: {sc['meters']:,} meters + {sc['vehicles']:,} vehicles,"
        f" {_n(sc['rows_per_day'])} rows a day, {len(days)} days**"
        + ("" if full else " (the full fleet is 28.8M rows a day: this scale is what fits the run time)")
        + "; loaded one day at a time with fleet_day's loader (append mode, fsync on). On Community, after each day:"
        " every continuous aggregate refreshed over it, `fleet jobs run --once`, and the day's chunks compressed"
        " (so all history but the chunk being written is compressed, as the compression policy leaves it); then"
        f" VACUUM (ANALYZE) and pg_prewarm; then {r['parameters']['samples']} random devices per call kind, bare"
        " data-layer calls on a held connection: 24 h analytics over the newest day, 7 d analytics over the week"
        " ending with it, status. Baseline: the day-1 figures of the same run.",
        "",
    )
    base = days[0]
    rows = []
    for d in days:
        a, a7, sv, sm = d["analytics_24h"], d.get("analytics_7d", {}), d["status_vehicle"], d["status_meter"]
        comp = _get(d, "compression", "all", default={})
        rows.append(
            [
                str(d["day"]),
                _n(d["size"]["rows"]),
                str(d["size"]["chunks"]),
                _n(d["size"]["bytes"] / 2**20),
                f"{_n(comp.get('ratio_total'), 1)}x" if comp else "-",
                f"{_n(_get(d, 'refresh', 'seconds'), 0)} / {_n(comp.get('seconds'), 0)}" if comp else "-",
                f"{_n(a['p50'], 2)} / {_n(a['p95'], 2)}",
                _n(a["p95"] / base["analytics_24h"]["p95"], 2),
                f"{_n(a7.get('p50'), 2)} / {_n(a7.get('p95'), 2)}",
                f"{_n(sv['p50'], 2)} / {_n(sv['p95'], 2)}",
                f"{_n(sm['p50'], 2)} / {_n(sm['p95'], 2)}",
                _n(sv["p95"] / base["status_vehicle"]["p95"], 2),
                _n(d["cpu"]["others_pct"], 0, " %"),
            ]
        )
    doc.table(
        [
            "days",
            "rows",
            "chunks",
            "MiB",
            "compressed history ratio",
            "refresh / compress s",
            "24 h analytics p50 / p95 ms",
            "p95 / day 1",
            "7 d analytics p50 / p95",
            "status vehicle p50 / p95",
            "status meter p50 / p95",
            "p95 / day 1",
            "other processes' CPU",
        ],
        rows,
    )
    last = days[-1]
    ratio = last["analytics_24h"]["p95"] / base["analytics_24h"]["p95"]
    sratio = last["status_vehicle"]["p95"] / base["status_vehicle"]["p95"]
    flat = ratio < 1.5 and sratio < 1.5
    doc.target(
        f"growth to {len(days)} days ({sc['meters']:,} + {sc['vehicles']:,} devices, {edition}): 24 h analytics and"
        " status stay flat (day-N p95 within 1.5x of day 1)",
        f"analytics x{_n(ratio, 2)}, status x{_n(sratio, 2)}",
        f"day 1: analytics p95 {_n(base['analytics_24h']['p95'], 2)} ms, status {_n(base['status_vehicle']['p95'], 2)}",
        _met(flat),
    )


def _design(doc: Doc, r: dict[str, Any] | None) -> None:
    """bench_design's own Markdown report as a section, and its verdicts in the targets summary."""
    from tests.load import bench_design  # only when rendering: it imports the app and the other benchmarks

    if not r or "editions" not in r:
        doc.add("## Side by side with the original implementation (DESIGN.md conditions)", "")
        doc.add("Not measured (the step failed: see its log).", "")
        return
    doc.add(*bench_design.render_markdown(r, level=2).splitlines(), "")
    for row in bench_design.verdict_rows(r):
        doc.target(*row)


def _rel(path: str | None) -> str:
    if not path:
        return "-"
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return path


def render(out: Path, meta: dict[str, Any]) -> str:
    results = {s["name"]: _load(s.get("json")) for s in meta["steps"]}
    doc = Doc()
    m = meta["machine"]
    eng_native = (
        _get(results, "bench_analytics", "editions", "community", "engine")
        or _get(results, "bench_design", "editions", "community", "engine")
        or {}
    )
    eng_ingest = _get(results, "bench_ingest", "engine") or {}
    eng_emb = _get(results, "bench_embedded", "engine") or {}
    load = meta.get("loadavg", {})
    doc.add(
        "# Benchmarks",
        "",
        f"Written by `{meta['command']}` on {meta['started']} (UTC), in {meta['elapsed_s'] / 60:.0f} minutes;"
        f" raw results: `{_rel(str(out))}/` (one JSON and one log per step). Do not edit by hand: re-run the command.",
        "",
        "## Machine and engines",
        "",
        f"- machine: {m['cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB RAM, {m['os']}, kernel {m['kernel']},"
        f" Python {m['python']}",
        f"- native engine: PostgreSQL {eng_native.get('server_version') or eng_ingest.get('server_version', '?')},"
        f" TimescaleDB {eng_native.get('timescaledb') or eng_ingest.get('timescaledb_version', '?')},"
        " built from source: the Community edition (`timescaledb.license = timescale`: continuous aggregates,"
        " compression; policies driven by `CALL run_job` / `fleet jobs run`, TimescaleDB's own background jobs fail on"
        " PostgreSQL 15.20) and, as the baseline, the same server started with `-c timescaledb.license=apache` (no"
        " aggregates or compression: analytics read the hypertables); throw-away clusters, server settings of"
        " bench_analytics (shared_buffers 6GB ..., fsync on) for bench_analytics and bench_growth; the other steps"
        " state their own",
        f"- embedded engine: PostgreSQL {eng_emb.get('server_version', '?')} (PGlite, WASM), TimescaleDB"
        f" {eng_emb.get('timescaledb', '?')}, edition `timescaledb.license = {eng_emb.get('license', '?')}`"
        " (Community)",
        f"- API server: `fleet serve` (gunicorn gthread) with {meta['workers']} workers x {meta['threads']} threads"
        " (the defaults of docker/gunicorn.conf.py), on loopback; load generators on the same machine",
        "",
        "## Noise",
        "",
        "This machine is shared with other engineers' test runs. Load average (1 min) sampled every 5 s during the"
        f" whole run: min {load.get('min')}, mean {load.get('mean')}, max {load.get('max')} on {m['cores']} cores."
        " Per step (1-min load average at start and end), and the share of all cores other processes used during"
        " the measurements (from each benchmark's own CPU accounting):",
        "",
    )
    noise_rows = []
    for s in meta["steps"]:
        r = results.get(s["name"])
        others = _others(s["name"], r)
        noise_rows.append(
            [
                s["name"],
                _n(s["seconds"] / 60, 1),
                f"{s['loadavg_start']} / {s['loadavg_end']}",
                others,
                "ok" if s["ok"] else f"**failed** (exit {s['exit_code']}{', timed out' if s['timed_out'] else ''})",
            ]
        )
    doc.table(["step", "minutes", "load avg start / end", "other processes' CPU", "result"], noise_rows)
    body = Doc()
    _ingest(body, results.get("bench_ingest"))
    _analytics(body, results.get("bench_analytics"))
    _locust(body, results.get("run_locust"))
    _overload(body, results.get("run_overload"))
    _embedded(body, results.get("bench_embedded"))
    _growth(body, results.get("bench_growth"))
    _design(body, results.get("bench_design"))
    doc.add("## Targets (docs: DESIGN.md), each figure next to its baseline from the same run", "")
    doc.table(["target", "figure", "baseline (same run)", "verdict"], [list(t) for t in body.targets])
    missed = [t[0] for t in body.targets if "MISSED" in t[3]]
    if missed:
        doc.add(f"Missed: {len(missed)} of {len(body.targets)}.", "")
        for scenario in ("burst", "steady"):
            prof = _get(results, "run_locust", "scenarios", scenario, "locust", "profile")
            if prof and prof.get("samples"):
                top = "; ".join(f"{name} {pct:.0f} %" for name, pct in prof["components"][:5])
                doc.add(
                    f"- Where the API's CPU goes (py-spy on the gunicorn workers during the {scenario}, share of their"
                    f" Python CPU): {top}. Details in the locust section."
                )
        doc.add("")
    doc.lines += body.lines
    doc.add("## Commands", "")
    for s in meta["steps"]:
        doc.add(f"- `{s['command']}`")
    doc.add("")
    return "\n".join(doc.lines).rstrip() + "\n"


def _others(name: str, r: dict[str, Any] | None) -> str:
    """Other processes' CPU during a step's measurements, as the step itself accounted it (min-max %)."""
    if not r:
        return "-"
    values: list[float] = []
    if name == "bench_ingest":
        values = [_get(s, "cpu_pct", "other", default=0.0) for s in r.get("scenarios", [])]
    elif name == "bench_analytics":
        values = [v.get("others_pct", 0.0) for e in r.get("editions", {}).values() for v in e.get("cpu", {}).values()]
    elif name in ("run_locust", "run_overload"):
        values = [_get(s, "cpu", "others_pct", default=0.0) for s in r.get("scenarios", {}).values()]
    elif name == "bench_embedded":
        values = [
            _get(r, key, "others_pct", default=0.0)
            for key in ("refresh_cpu", "analytics_before_cpu", "compression_cpu", "analytics_after_cpu")
        ]
        values.append(_get(r, "load", "cpu", "others_pct", default=0.0))
    elif name == "bench_growth":
        values = [_get(d, "cpu", "others_pct", default=0.0) for d in r.get("days", [])]
    elif name == "bench_design":
        values = [run.get("others_pct", 0.0) for e in r.get("editions", {}).values() for run in e.get("runs", [])]
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{min(values):.0f}-{max(values):.0f} %"


# --- main ----------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.load.report", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small scale, a few minutes (development)")
    p.add_argument("--out", type=Path, default=None, help="results directory (default var/bench/<UTC timestamp>)")
    p.add_argument("--only", default="", help="comma list of steps to run (default: all)")
    p.add_argument(
        "--doc", type=Path, default=None, help="document to write (default docs/BENCHMARKS.md; --quick: OUT)"
    )
    p.add_argument("--render-only", type=Path, default=None, metavar="DIR", help="re-write the document from DIR")
    p.add_argument("--command", default="bash scripts/bench.sh", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        out = args.render_only
        meta = json.loads((out / "run.json").read_text())
        doc_path = args.doc or Path(meta["doc"])
        doc_path.write_text(render(out, meta))
        log(f"written {doc_path}")
        return 0
    install_signal_handlers()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = (args.out or REPO_ROOT / "var" / "bench" / stamp).resolve()
    out.mkdir(parents=True, exist_ok=True)
    doc_path = (args.doc or (out / "BENCHMARKS.md" if args.quick else DOC)).resolve()
    workers, threads = server_defaults()
    plan = steps(args.quick, out, workers, threads)
    if args.only:
        wanted = {s.strip() for s in args.only.split(",") if s.strip()}
        unknown = wanted - {s.name for s in plan}
        if unknown:
            log(f"unknown steps: {', '.join(sorted(unknown))}")
            return 2
        plan = [s for s in plan if s.name in wanted]
    meta: dict[str, Any] = {
        "command": args.command + (" --quick" if args.quick else ""),
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "machine": machine_info(),
        "quick": args.quick,
        "workers": workers,
        "threads": threads,
        "doc": str(doc_path),
        "steps": [],
    }
    log(f"benchmarks ({'quick' if args.quick else 'full'}): {', '.join(s.name for s in plan)}; results in {out}")
    sampler = LoadSampler(5.0).start()
    started = time.monotonic()
    interrupted = False
    try:
        for step in plan:
            meta["steps"].append(run_step(step, out))
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: the running step was stopped (by PID); writing what there is")
    finally:
        meta["loadavg"] = sampler.stop()
        meta["elapsed_s"] = time.monotonic() - started
        (out / "run.json").write_text(json.dumps(meta, indent=2) + "\n")
    text = render(out, meta)
    (out / "BENCHMARKS.md").write_text(text)
    if doc_path != out / "BENCHMARKS.md":
        doc_path.parent.mkdir(parents=True, exist_ok=True)
        doc_path.write_text(text)
    print(text, flush=True)
    log(f"written {doc_path}")
    failed = [s["name"] for s in meta["steps"] if not s["ok"]]
    if failed or interrupted:
        log(f"steps without a result: {', '.join(failed) or '(interrupted)'}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
