"""The embedded engine has no statement_timeout: a runaway statement must not block it forever (issue 16).

Its supervisor kills a stalled engine (no health answer for FLEET_ENGINE_STALL_SECONDS) and restarts it; committed
data survives, the runaway statement's client gets an error, and the next clients are served again. An engine of
this test's own, with a short stall bound, so the session's engine is not disturbed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import port_for
import psycopg
import pytest

from db.embedded import supervisor as embedded

pytestmark = pytest.mark.embedded

STALL_S = 4.0
#: A statement that runs for minutes on PGlite (billions of rows counted on Node's only thread).
RUNAWAY = "SELECT count(*) FROM generate_series(1, 5000000000)"
#: From the runaway's start: the stall bound, a probe period, the kill, Node's restart (2-4 s) and the reopening
#: of the data directory, with room for a loaded 2-core machine.
RECOVERY_BOUND_S = STALL_S + 25.0


def _dsn(cfg: embedded.EngineConfig) -> str:
    return cfg.database_url.replace("postgresql+psycopg://", "postgresql://")


def test_runaway_statement_gets_the_engine_restarted_with_committed_data_kept(tmp_path: Path) -> None:
    port, health_port = port_for.select_random(), port_for.select_random()
    cfg = embedded.EngineConfig(tmp_path / "engine", port=port, health_port=health_port, stall_seconds=STALL_S)
    embedded.start(cfg, timeout=120)
    try:
        with psycopg.connect(_dsn(cfg), autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (id int PRIMARY KEY)")
            conn.execute("INSERT INTO kept VALUES (1)")
        runaway: dict[str, object] = {}

        def run_away() -> None:
            try:
                with psycopg.connect(_dsn(cfg), autocommit=True) as conn:
                    runaway["result"] = conn.execute(RUNAWAY).fetchone()
            except psycopg.Error as exc:
                runaway["error"] = exc

        thread = threading.Thread(target=run_away, daemon=True)
        started = time.monotonic()
        thread.start()
        time.sleep(1.0)  # the runaway has the engine
        assert embedded.health(cfg, timeout=1.0) is None, "the engine still answers: the statement is not running"

        recovered_after = None
        while time.monotonic() - started < RECOVERY_BOUND_S + 30:
            try:
                with psycopg.connect(_dsn(cfg), autocommit=True, connect_timeout=3) as conn:
                    kept = conn.execute("SELECT id FROM kept").fetchall()
                recovered_after = time.monotonic() - started
                break
            except psycopg.Error:
                time.sleep(0.5)
        thread.join(30)
        status = embedded.status(cfg)
        print(f"\n[embedded stall] recovered after {recovered_after} s; status {status.as_dict()}; runaway {runaway}")
        assert recovered_after is not None and recovered_after <= RECOVERY_BOUND_S, recovered_after
        assert recovered_after >= STALL_S, "served before the stall bound: was the engine blocked at all?"
        assert kept == [(1,)]
        assert "error" in runaway and "result" not in runaway
        assert status.running and status.stalls == 1 and status.restarts == 1
    finally:
        embedded.stop(cfg)
