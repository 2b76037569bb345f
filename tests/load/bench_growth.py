"""Growth benchmark: status and analytics cost as history grows day by day, with compression on (native engine).

Run from the repository root (loopback only; a throw-away native cluster is started and removed):

    .venv/bin/python -m tests.load.bench_growth [--devices 10000] [--days 3] [--samples 200] [--json out.json]

What is measured
----------------
A throw-away PostgreSQL 15 + TimescaleDB cluster (Community edition by default, `--edition apache` for the
Apache one; the server settings of bench_analytics, fsync on) gets history one day at a time, oldest first, as a
fleet accumulates it: tests/load/fleet_day.py loads day 1 (--devices meters + --devices vehicles, one reading a
minute, vehicle i charged from meter i), then appends day 2 (another seed, `append=True`: mappings kept, current
state moved forward), and so on up to --days, the last day ending at 00:00 UTC today.

On Community, after each day is loaded, what production's policies would have done by then is done: every
continuous aggregate is refreshed over that day (`refresh_continuous_aggregate`, timed, with the backend's CPU),
`fleet jobs run --once` brings whatever else the project's scheduler keeps up to date, and every chunk of that
finished day is compressed (`compress_chunk`, segment by device id: the chunk being written today stays as it is);
the cumulative compression ratio is reported. Then (both editions) VACUUM (ANALYZE), and pg_prewarm of every table,
TOAST table and index (a server that has been running has its recent data in memory).

Then --samples random devices per call kind, one call at a time on one held connection, in a transaction as the
services run them (bench_analytics' "direct" path):
- status: db/devices.py get_vehicle and get_meter (the current-state tables: should not grow at all);
- 24 h analytics: db/analytics.py vehicle_performance over the newest loaded day (the server's edition decides
  where hourly sums come from), and 7 d analytics over the week ending with it (up to 7 days of history):
  chunk exclusion should keep the 24 h call flat as older days pile up, and the 7 d call grow with the days
  it covers, not with the total;
- the hypertables' size (tables, indexes, TOAST, compressed chunks included) and chunk count.
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
from tests.load import rollups
from tests.load.bench_analytics import BENCH_SETTINGS, prewarm, run_jobs_once
from tests.load.benchlib import CpuWatch, log, machine_info, proc_table, run_benchmark, summarize
from tests.load.fleet_day import load_fleet_day, meter_id, vehicle_id
from tests.load.native_cluster import native_cluster, require_native_engine


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.load.bench_growth", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--devices", type=int, default=10_000, help="meters, and as many vehicles (default 10000)")
    p.add_argument("--days", type=int, default=3, help="days of history, loaded one by one (default 3)")
    p.add_argument("--edition", choices=("community", "apache"), default="community", help="(default community)")
    p.add_argument("--no-jobs", action="store_true", help="do not run `fleet jobs run --once` after each day")
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
    settings = dict(BENCH_SETTINGS)
    if args.edition == "apache":
        settings["timescaledb.license"] = "apache"
    report["scale"]["edition"] = args.edition
    with ExitStack() as stack:
        log(f"starting a throw-away native cluster ({args.edition} edition)")
        url = stack.enter_context(native_cluster("fleet_growth", settings=settings))
        engine = db.make_engine(url, pool_size=4, connect_timeout=30)
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
        community = row.license == "timescale"
        if community != (args.edition == "community"):
            raise RuntimeError(f"{args.edition} run, but the server reports timescaledb.license = {row.license}")
        table = proc_table()
        cpu = CpuWatch([table[row.pid][0]] if row.pid in table else [])
        rng = random.Random(args.seed)
        conn = stack.enter_context(engine.connect())
        conn.exec_driver_sql("SET statement_timeout = '120s'")
        conn.commit()
        admin = stack.enter_context(engine.connect().execution_options(isolation_level="AUTOCOMMIT"))
        caggs = list(rollups.continuous_aggregates(admin))
        rows_total = 0
        for k in range(1, args.days + 1):
            day_start = first_day + timedelta(days=k - 1)
            day_end = day_start + timedelta(days=1)
            week_start = day_end - timedelta(days=7)
            stats = load_fleet_day(
                url,
                meters=args.devices,
                vehicles=args.devices,
                day_start=day_start,
                seed=args.seed + k,
                append=k > 1,
                log=log,
            )
            day: dict[str, Any] = {
                "day": k,
                "day_start": day_start.isoformat(),
                "load_seconds": round(stats.total_seconds, 1),
                "copy_rows_per_second": round(stats.copy_rows_per_second),
            }
            if community:
                backend = rollups.BackendCpu.of(admin)
                t0, c0 = time.perf_counter(), backend.read()
                for cagg in caggs:
                    rollups.refresh(admin, cagg, day_start - timedelta(hours=1), day_end)
                day["refresh"] = {"seconds": time.perf_counter() - t0, "cpu_s": backend.read() - c0}
                if not args.no_jobs:
                    day["jobs_once"] = run_jobs_once(url, timeout=900)
                day["compression"] = rollups.compress_chunks(admin, older_than=day_end, cpu=backend)
                admin.exec_driver_sql("VACUUM (ANALYZE)")
                c = day["compression"]["all"]
                log(
                    f"day {k}: refreshed in {day['refresh']['seconds']:.1f} s, compressed in {c['seconds']:.1f} s;"
                    f" compressed history {c['ratio_total']:.2f}x (data alone {c['ratio_data']:.2f}x)"
                )
            day["prewarm_mib"] = prewarm(engine)["mib"]
            numbers = [rng.randint(1, args.devices) for _ in range(args.samples)]
            warm = [rng.randint(1, args.devices) for _ in range(args.warmup)]
            cpu.start()
            day["status_vehicle"] = _measure(conn, lambda c, i: devices.get_vehicle(c, vehicle_id(i)), numbers, warm)
            day["status_meter"] = _measure(conn, lambda c, i: devices.get_meter(c, meter_id(i)), numbers, warm)
            for key, start in (("analytics_24h", day_start), ("analytics_7d", week_start)):
                day[key] = _measure(
                    conn,
                    lambda c, i, s=start, e=day_end: analytics.vehicle_performance(c, vehicle_id(i), s, e),
                    numbers,
                    warm,
                )
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
                f" 7d p95 {day['analytics_7d']['p95']:.2f} ms;"
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
        f"{'day':>4}{'rows':>13}{'chunks':>8}{'MiB':>8}{'analytics p50':>15}{'p95':>8}{'ratio':>7}{'7d p95':>8}"
        f"{'status v p50':>14}{'p95':>7}{'ratio':>7}{'status m p95':>14}{'others %':>10}",
    ]
    for d in days:
        a, sv, sm = d["analytics_24h"], d["status_vehicle"], d["status_meter"]
        lines.append(
            f"{d['day']:>4}{d['size']['rows']:>13,}{d['size']['chunks']:>8}{d['size']['bytes'] / 2**20:>8,.0f}"
            f"{a['p50']:>15.2f}{a['p95']:>8.2f}{a['p95'] / base['analytics_24h']['p95']:>7.2f}"
            f"{d['analytics_7d']['p95']:>8.2f}"
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
