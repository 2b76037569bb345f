"""Growth benchmark: how the cost of status and 24 h analytics grows from 1 to 7 days of history (native engine).

Run from the repository root (loopback only; a throw-away native cluster is started and removed):

    .venv/bin/python -m tests.load.bench_growth [--devices 1000] [--days 7] [--samples 200] [--json out.json]

What is measured
----------------
A throw-away PostgreSQL 15 + TimescaleDB (Apache edition) cluster with the server settings of
bench_analytics gets history one day at a time, oldest first, as a fleet accumulates it:
tests/load/fleet_day.py loads day 1 (--devices meters + --devices vehicles, one reading a minute, vehicle i
charged from meter i), then appends day 2 (another seed, `append=True`: mappings kept, current state moved
forward), and so on up to --days, the last day ending at 00:00 UTC today. The scale is smaller than the full
fleet (1,000 + 1,000 devices: 2.88M rows a day, 20M after 7 days) so seven days fit in a few minutes; the
per-day chunks are what grows, and that is what this measures.

After each day is loaded (then VACUUM (ANALYZE), CHECKPOINT, pg_prewarm of every chunk as bench_analytics
does: a server that has been ingesting has its recent data in memory), --samples random devices, one call at a
time on one held connection, in a transaction as the services run them (bench_analytics' "direct" path):
- status: db/devices.py get_vehicle and get_meter (the current-state tables: should not grow at all);
- 24 h analytics: db/analytics.py vehicle_performance(..., community=False) over the newest loaded day
  (hourly AC/DC from the hypertables, the mapping join, the correlation query): chunk exclusion should keep it
  flat as older days pile up;
- the hypertables' size (table + indexes) and chunk count.
Baseline: the day-1 figures of the same run; each later day is reported as a ratio to them. The machine is
shared: the CPU used by other processes during each measurement is reported beside it.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

import db
from db import analytics, devices
from tests.load.bench_analytics import BENCH_SETTINGS, prewarm
from tests.load.benchlib import CpuWatch, log, machine_info, proc_table, run_benchmark, summarize
from tests.load.fleet_day import load_fleet_day, meter_id, vehicle_id
from tests.load.native_cluster import native_cluster, require_native_engine


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.load.bench_growth", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--devices", type=int, default=1000, help="meters, and as many vehicles (default 1000)")
    p.add_argument("--days", type=int, default=7, help="days of history, loaded one by one (default 7)")
    p.add_argument("--samples", type=int, default=200, help="random devices measured per day (default 200)")
    p.add_argument("--warmup", type=int, default=20, help="unmeasured calls per kind first (default 20)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--timeout", type=int, default=2400, help="give up after this many seconds (default 2400)")
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.devices < 1 or args.days < 1 or args.samples < 1:
        p.error("--devices, --days and --samples must be >= 1")
    return args


def _sizes(conn: Connection) -> dict[str, int]:
    """Bytes (tables, indexes, TOAST) and chunks of both history hypertables."""
    row = conn.execute(
        sa.text(
            "SELECT hypertable_size('meter_readings') + hypertable_size('vehicle_readings') AS bytes,"
            " (SELECT count(*) FROM show_chunks('meter_readings'))"
            " + (SELECT count(*) FROM show_chunks('vehicle_readings')) AS chunks"
        )
    ).one()
    return {"bytes": int(row.bytes), "chunks": int(row.chunks)}


def _measure(
    conn: Connection, call: Callable[[Connection, int], object], numbers: Sequence[int], warm: Sequence[int]
) -> dict[str, float]:
    for i in warm:
        with conn.begin():
            call(conn, i)
    seconds = []
    for i in numbers:
        started = time.perf_counter()
        with conn.begin():
            call(conn, i)
        seconds.append(time.perf_counter() - started)
    return summarize(seconds)


def run(args: argparse.Namespace) -> dict[str, Any]:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first_day = today - timedelta(days=args.days)
    report: dict[str, Any] = {
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine_info(),
        "scale": {
            "meters": args.devices,
            "vehicles": args.devices,
            "rows_per_day": 2 * args.devices * 1440,
            "first_day": first_day.isoformat(),
        },
        "days": [],
    }
    started = time.monotonic()
    with ExitStack() as stack:
        log("starting a throw-away native cluster")
        url = stack.enter_context(native_cluster("fleet_growth", settings=BENCH_SETTINGS))
        engine = db.make_engine(url, pool_size=2, connect_timeout=30)
        stack.callback(engine.dispose)
        with engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT current_setting('server_version') AS server_version,"
                    " current_setting('timescaledb.license') AS license,"
                    " (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb') AS timescaledb,"
                    " pg_backend_pid() AS pid"
                )
            ).one()
        report["engine"] = {
            "server_version": row.server_version,
            "timescaledb": row.timescaledb,
            "license": row.license,
        }
        table = proc_table()
        cpu = CpuWatch([table[row.pid][0]] if row.pid in table else [])
        rng = random.Random(args.seed)
        conn = stack.enter_context(engine.connect())
        conn.exec_driver_sql("SET statement_timeout = '60s'")
        conn.commit()
        rows_total = 0
        for k in range(1, args.days + 1):
            day_start = first_day + timedelta(days=k - 1)
            day_end = day_start + timedelta(days=1)
            stats = load_fleet_day(
                url,
                meters=args.devices,
                vehicles=args.devices,
                day_start=day_start,
                seed=args.seed + k,
                append=k > 1,
                log=log,
            )
            warm_info = prewarm(engine)
            numbers = [rng.randint(1, args.devices) for _ in range(args.samples)]
            warm = [rng.randint(1, args.devices) for _ in range(args.warmup)]
            cpu.start()
            day: dict[str, Any] = {
                "day": k,
                "day_start": day_start.isoformat(),
                "load_seconds": round(stats.total_seconds, 1),
                "copy_rows_per_second": round(stats.copy_rows_per_second),
                "prewarm_mib": warm_info["mib"],
                "status_vehicle": _measure(conn, lambda c, i: devices.get_vehicle(c, vehicle_id(i)), numbers, warm),
                "status_meter": _measure(conn, lambda c, i: devices.get_meter(c, meter_id(i)), numbers, warm),
                "analytics_24h": _measure(
                    conn,
                    lambda c, i, s=day_start, e=day_end: analytics.vehicle_performance(
                        c, vehicle_id(i), s, e, community=False
                    ),
                    numbers,
                    warm,
                ),
            }
            day["cpu"] = cpu.stop()
            with engine.connect() as c:
                day["size"] = _sizes(c)
            rows_total += stats.history_rows
            day["size"]["rows"] = rows_total
            report["days"].append(day)
            base = report["days"][0]
            a, a1 = day["analytics_24h"], base["analytics_24h"]
            log(
                f"day {k}: {rows_total:,} rows, {day['size']['chunks']} chunks,"
                f" {day['size']['bytes'] / 2**20:,.0f} MiB;"
                f" analytics 24h p50 {a['p50']:.2f} ms p95 {a['p95']:.2f} ms (x{a['p95'] / a1['p95']:.2f} of day 1);"
                f" status vehicle p95 {day['status_vehicle']['p95']:.2f} ms;"
                f" other processes {day['cpu']['others_pct']:.0f} % of the machine"
            )
        log("stopping the cluster")
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    report["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return report


def render(report: dict[str, Any]) -> str:
    sc, days = report["scale"], report["days"]
    base = days[0]
    lines = [
        "",
        "=" * 100,
        "history growth (tests/load/bench_growth.py)",
        f"scale: {sc['meters']:,} meters + {sc['vehicles']:,} vehicles, {sc['rows_per_day']:,} rows a day, days from"
        f" {sc['first_day']}; engine PostgreSQL {report['engine']['server_version']}, TimescaleDB"
        f" {report['engine']['timescaledb']} ({report['engine']['license']})",
        "direct data-layer calls, ms (ratio: p95 / day 1's p95, the baseline):",
        f"{'day':>4}{'rows':>13}{'chunks':>8}{'MiB':>8}{'analytics p50':>15}{'p95':>8}{'ratio':>7}"
        f"{'status v p50':>14}{'p95':>7}{'ratio':>7}{'status m p95':>14}{'others %':>10}",
    ]
    for d in days:
        a, sv, sm = d["analytics_24h"], d["status_vehicle"], d["status_meter"]
        lines.append(
            f"{d['day']:>4}{d['size']['rows']:>13,}{d['size']['chunks']:>8}{d['size']['bytes'] / 2**20:>8,.0f}"
            f"{a['p50']:>15.2f}{a['p95']:>8.2f}{a['p95'] / base['analytics_24h']['p95']:>7.2f}"
            f"{sv['p50']:>14.2f}{sv['p95']:>7.2f}{sv['p95'] / base['status_vehicle']['p95']:>7.2f}"
            f"{sm['p95']:>14.2f}{d['cpu']['others_pct']:>10.0f}"
        )
    lines += [f"elapsed {report['elapsed_s']:.0f} s", "=" * 100]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    require_native_engine()
    return run_benchmark("bench_growth", args, run, render, "the cluster was stopped and removed")


if __name__ == "__main__":
    sys.exit(main())
