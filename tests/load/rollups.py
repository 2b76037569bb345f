"""Community-edition measurements shared by the benchmarks: continuous-aggregate refresh next to its plain
GROUP BY, compression with its ratio, and the CPU a PostgreSQL backend spends on them (from /proc).

Engine-neutral: the same functions run on the native Community server (bench_analytics, bench_growth) and on the
embedded engine (bench_embedded), on any SQLAlchemy connection in autocommit mode (refresh and compression cannot
run inside a transaction block). Nothing here applies on the Apache edition, which has neither.

CPU of a refresh or a compression: the statement runs in one backend (PostgreSQL plans no parallel workers for
data-modifying statements, which is what a refresh's materialisation and compress_chunk are); `BackendCpu` reads
that backend's utime + stime from /proc/<pid>/stat before and after, so a figure is the database's CPU for that
statement alone even while other backends ingest (the postmaster's reaped children are not added: autovacuum
workers come and go meanwhile). The embedded engine runs inside Node: there the figure is that process's CPU
(`BackendCpu.for_pid`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from contextlib import suppress
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

#: The project's continuous aggregates (migration 0002) and the hypertable each one rolls up.
CAGGS = {"meter_readings_1h": "meter_readings", "vehicle_readings_1h": "vehicle_readings"}
HYPERTABLES = ("meter_readings", "vehicle_readings")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _own_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one process so far; 0.0 if it is gone or not readable."""
    with suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
        fields = raw[raw.rfind(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return 0.0


class BackendCpu:
    """CPU seconds of one PostgreSQL backend (or any one process) so far."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    @classmethod
    def of(cls, conn: Connection) -> BackendCpu:
        """The backend serving `conn` (same machine: loopback benchmarks only)."""
        return cls(int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()))

    @classmethod
    def for_pid(cls, pid: int) -> BackendCpu:
        return cls(pid)

    def read(self) -> float:
        return _own_cpu(self.pid)


def continuous_aggregates(conn: Connection) -> dict[str, str]:
    """Every continuous aggregate of the database -> its hypertable (empty on the Apache edition)."""
    if conn.exec_driver_sql("SELECT current_setting('timescaledb.license')").scalar_one() != "timescale":
        return {}
    rows = conn.exec_driver_sql(
        "SELECT view_name, hypertable_name FROM timescaledb_information.continuous_aggregates ORDER BY view_name"
    ).all()
    return {r.view_name: r.hypertable_name for r in rows}


def aggregate_query(conn: Connection, cagg: str, table: str | None = None) -> str:
    """The continuous aggregate's own query, with a time range (:start, :end) added before its GROUP BY."""
    definition = conn.execute(
        sa.text("SELECT view_definition FROM timescaledb_information.continuous_aggregates WHERE view_name = :v"),
        {"v": cagg},
    ).scalar_one()
    body = definition.strip().rstrip(";")
    cut = body.upper().rfind("GROUP BY")
    if cut < 0:
        raise RuntimeError(f"{cagg}: no GROUP BY in its definition: {body[:200]}")
    table = table or CAGGS[cagg]
    where = f" WHERE {table}.recorded_at >= :start AND {table}.recorded_at < :end "
    return f"SELECT count(*) FROM ({body[:cut]}{where}{body[cut:]}) q"


def refresh(
    conn: Connection, cagg: str, start: datetime, end: datetime, cpu: BackendCpu | None = None
) -> dict[str, Any]:
    """`CALL refresh_continuous_aggregate(cagg, start, end)`: wall seconds and the backend's CPU seconds."""
    c0, t0 = (cpu.read() if cpu else 0.0), time.perf_counter()
    conn.execute(sa.text(f"CALL refresh_continuous_aggregate('{cagg}', :start, :end)"), {"start": start, "end": end})
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "cpu_s": (cpu.read() - c0) if cpu else None}


def plain_group_by(
    conn: Connection, cagg: str, start: datetime, end: datetime, cpu: BackendCpu | None = None, runs: int = 2
) -> dict[str, Any]:
    """The aggregate's query as a plain SELECT ... GROUP BY over the raw hypertable for [start, end), `runs`
    times: the fastest run's wall and CPU seconds, and the number of groups."""
    query = sa.text(aggregate_query(conn, cagg))
    best: tuple[float, float | None] | None = None
    groups = 0
    all_runs = []
    for _ in range(runs):
        c0, t0 = (cpu.read() if cpu else 0.0), time.perf_counter()
        groups = conn.execute(query, {"start": start, "end": end}).scalar_one()
        wall = time.perf_counter() - t0
        used = (cpu.read() - c0) if cpu else None
        all_runs.append(wall)
        if best is None or wall < best[0]:
            best = (wall, used)
    assert best is not None
    return {"seconds": best[0], "cpu_s": best[1], "runs_s": all_runs, "groups": groups}


def refresh_with_baseline(
    conn: Connection, cagg: str, start: datetime, end: datetime, cpu: BackendCpu | None = None
) -> dict[str, Any]:
    """Plain SELECT ... GROUP BY over [start, end) twice (the baseline: the faster), then the refresh."""
    plain = plain_group_by(conn, cagg, start, end, cpu)
    done = refresh(conn, cagg, start, end, cpu)
    materialized = conn.execute(
        sa.text(f"SELECT count(*) FROM {cagg} WHERE bucket >= :start AND bucket < :end"), {"start": start, "end": end}
    ).scalar_one()
    return {
        "window": [start.isoformat(), end.isoformat()],
        "refresh_s": done["seconds"],
        "refresh_cpu_s": done["cpu_s"],
        "plain_select_s": plain["seconds"],
        "plain_select_cpu_s": plain["cpu_s"],
        "plain_select_runs_s": plain["runs_s"],
        "ratio": done["seconds"] / plain["seconds"] if plain["seconds"] else None,
        "groups": plain["groups"],
        "materialized_rows": materialized,
    }


def hypertable_sizes(conn: Connection, tables: Iterable[str] = HYPERTABLES) -> dict[str, dict[str, int]]:
    """Bytes of each hypertable (its chunks, compressed ones included): table, indexes, TOAST, total."""
    out = {}
    for table in tables:
        row = conn.execute(sa.text(f"SELECT * FROM hypertable_detailed_size('{table}')")).one()
        out[table] = {
            "table_bytes": int(row.table_bytes or 0),
            "index_bytes": int(row.index_bytes or 0),
            "toast_bytes": int(row.toast_bytes or 0),
            "total_bytes": int(row.total_bytes or 0),
        }
    return out


def compression_stats(conn: Connection, tables: Iterable[str] = HYPERTABLES) -> dict[str, Any]:
    """hypertable_compression_stats per table (bytes of the compressed chunks before and after), the ratios
    (tables + indexes + TOAST, and the table data alone), and both tables together."""
    out: dict[str, Any] = {}
    for table in tables:
        row = conn.execute(sa.text(f"SELECT * FROM hypertable_compression_stats('{table}')")).one()
        stats = {k: (int(v) if isinstance(v, int | float) else v) for k, v in row._mapping.items()}
        stats = {k: (0 if v is None else v) for k, v in stats.items()}
        before, after = stats["before_compression_total_bytes"], stats["after_compression_total_bytes"]
        before_t = stats["before_compression_table_bytes"]
        after_t = stats["after_compression_table_bytes"] + stats["after_compression_toast_bytes"]
        out[table] = {
            "stats": stats,
            "ratio_total": before / after if after else None,
            "ratio_data": before_t / after_t if after_t else None,
        }
    tables = [t for t in out]
    before = sum(out[t]["stats"]["before_compression_total_bytes"] for t in tables)
    after = sum(out[t]["stats"]["after_compression_total_bytes"] for t in tables)
    before_t = sum(out[t]["stats"]["before_compression_table_bytes"] for t in tables)
    after_t = sum(
        out[t]["stats"]["after_compression_table_bytes"] + out[t]["stats"]["after_compression_toast_bytes"]
        for t in tables
    )
    out["all"] = {
        "before_bytes": before,
        "after_bytes": after,
        "ratio_total": before / after if after else None,
        "ratio_data": before_t / after_t if after_t else None,
    }
    return out


def compress_chunks(
    conn: Connection,
    older_than: datetime | None = None,
    cpu: BackendCpu | None = None,
    tables: Iterable[str] = HYPERTABLES,
) -> dict[str, Any]:
    """compress_chunk on every chunk of each hypertable (only those ending before `older_than` when given: the
    chunk still being written stays as it is); per table chunks, seconds and CPU seconds, then
    `compression_stats` (cumulative: every compressed chunk of the table)."""
    out: dict[str, Any] = {}
    tables = tuple(tables)
    for table in tables:
        chunks = (
            f"show_chunks('{table}', older_than => CAST(:older AS timestamptz))"
            if older_than
            else f"show_chunks('{table}')"
        )
        c0, t0 = (cpu.read() if cpu else 0.0), time.perf_counter()
        count = conn.execute(
            sa.text(f"SELECT count(compress_chunk(c, if_not_compressed => true)) FROM {chunks} c"),
            {"older": older_than} if older_than else {},
        ).scalar_one()
        out[table] = {
            "chunks": int(count),
            "seconds": time.perf_counter() - t0,
            "cpu_s": (cpu.read() - c0) if cpu else None,
        }
    stats = compression_stats(conn, tables)
    for table in tables:
        out[table].update(stats[table])
    out["all"] = stats["all"]
    out["all"]["seconds"] = sum(out[t]["seconds"] for t in tables)
    out["all"]["cpu_s"] = sum(out[t]["cpu_s"] or 0.0 for t in tables) if cpu else None
    return out
