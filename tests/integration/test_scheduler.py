"""`fleet jobs run`: due jobs run once per due time, however many schedulers run, on both engines.

Alert evaluation is replaced by tests/integration/alerts_stand_in.py (which records its calls) except in
`test_jobs_run_once_evaluates_alerts_for_real`. Subprocess schedulers load the stand-in through
`alerts_stand_in.SUBPROCESS_MAIN`.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.engine import Engine

from cli import main
from db import job_runs
from tests.conftest import is_community
from tests.integration import alerts_stand_in, timescaledb_state

REPO = Path(__file__).resolve().parents[2]
POLICY_JOBS = 8  # refresh + retention on each rollup, compression + retention on each raw table (0002)


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _expected_jobs(engine_kind: str, engine: Engine) -> set[str]:
    """Apache: its retention job and alerts. Community: alerts, the TimescaleDB jobs TimescaleDB's own scheduler
    cannot run here (all 8 policies on the embedded engine and where its runs fail, e.g. PostgreSQL 15.20; none
    where they succeed), the correlation rollup, and CHECKPOINT on the embedded engine."""
    if not is_community(engine_kind):
        return {"retention", "alerts"}
    assert len(timescaledb_state.user_job_ids(engine)) == POLICY_JOBS
    policies = {job_runs.timescaledb_job_name(i) for i in timescaledb_state.jobs_fleet_runs(engine_kind, engine)}
    return policies | {"correlation", "alerts"} | ({"checkpoint"} if engine_kind == "embedded" else set())


def _runs(engine: Engine) -> dict[str, sa.Row]:
    with engine.connect() as conn:
        return {r.job_name: r for r in conn.execute(sa.text("SELECT * FROM job_runs"))}


@pytest.fixture
def jobs_db(clean_db: Engine) -> Iterator[Engine]:
    """The migrated engine with no job run recorded yet (so every job is due); emptied afterwards."""
    with clean_db.begin() as conn:
        conn.execute(sa.text("TRUNCATE job_runs"))
    yield clean_db


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """In-process runs use the recording stand-in for alert evaluation; returns its call log."""
    log = tmp_path / "alerts.log"
    monkeypatch.setitem(sys.modules, "jobs.alerts", alerts_stand_in)
    monkeypatch.setenv("FLEET_TEST_ALERTS_LOG", str(log))
    return log


def fleet(engine: Engine, *args: str, env: dict[str, str] | None = None) -> Result:
    """Run the `fleet` CLI in-process against the test database."""
    return CliRunner().invoke(main, list(args), env={"DATABASE_URL": _url(engine), **(env or {})})


def _outcomes(result: Result) -> dict[str, dict]:
    return {o["job"]: o for o in json.loads(result.stdout)["jobs"]}


def spawn(engine: Engine, log: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    """A `fleet` process of its own, with the stand-in for alert evaluation."""
    environ = {
        **os.environ,
        "DATABASE_URL": _url(engine),
        "FLEET_TEST_ALERTS_LOG": str(log),
        "FLEET_LOG_LEVEL": "INFO",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-c", alerts_stand_in.SUBPROCESS_MAIN, *args],
        cwd=REPO,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


# --- one scheduler -------------------------------------------------------------------------------------------


def test_jobs_run_once_runs_every_due_job_then_nothing(jobs_db, engine_kind, stand_in):
    expected = _expected_jobs(engine_kind, jobs_db)
    first = fleet(jobs_db, "jobs", "run", "--once", "--json")
    assert first.exit_code == 0, first.output
    outcomes = _outcomes(first)
    assert set(outcomes) == expected
    assert {o["status"] for o in outcomes.values()} == {"succeeded"}, outcomes
    assert len(alerts_stand_in.calls(stand_in)) == 1
    runs = _runs(jobs_db)
    assert {name: (r.result, r.run_count, r.lease_until) for name, r in runs.items()} == {
        name: ("succeeded", 1, None) for name in expected
    }

    second = fleet(jobs_db, "jobs", "run", "--once")
    assert second.exit_code == 0, second.output
    assert second.stdout.count("not_due") == len(expected)
    assert len(alerts_stand_in.calls(stand_in)) == 1
    assert {r.run_count for r in _runs(jobs_db).values()} == {1}


def test_jobs_run_logs_json_lines_on_stderr(jobs_db, tmp_path):
    """The job log is JSON like the API's (one object per line), on stderr: stdout stays the command's output."""
    proc = spawn(jobs_db, tmp_path / "alerts.log", "jobs", "run", "--once", "--json")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert json.loads(out)["jobs"]  # stdout: the document alone
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert records, "no log line at FLEET_LOG_LEVEL=INFO"
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records), records[:3]
    assert any(r["logger"] == "jobs.scheduler" and r["level"] == "INFO" for r in records), records[:5]


def test_jobs_run_help_names_the_settings(engine):
    result = fleet(engine, "jobs", "run", "--help")
    assert result.exit_code == 0
    assert "--once" in result.stdout and "FLEET_JOBS_TICK_SECONDS" in result.stdout


def test_jobs_run_once_unreachable_database_is_a_clear_error():
    result = CliRunner().invoke(
        main,
        ["jobs", "run", "--once"],
        env={"DATABASE_URL": "postgresql://x@127.0.0.1:1/db", "FLEET_DB_CONNECT_TIMEOUT": "2"},
    )
    assert result.exit_code == 1
    assert "cannot run the jobs" in result.stderr


def test_jobs_run_bad_interval_setting_names_the_variable(engine):
    result = fleet(engine, "jobs", "run", "--once", env={"FLEET_JOBS_ALERTS_EVERY_SECONDS": "0.1"})
    assert result.exit_code == 1
    assert "FLEET_JOBS_ALERTS_EVERY_SECONDS" in result.stderr


def test_jobs_run_once_failed_job_exits_1_and_is_recorded(jobs_db, engine_kind, stand_in):
    result = fleet(jobs_db, "jobs", "run", "--once", "--json", env={"FLEET_TEST_ALERTS_FAIL": "1"})
    assert result.exit_code == 1
    outcomes = _outcomes(result)
    assert outcomes["alerts"]["status"] == "failed"
    assert "stand-in alert scan failed on purpose" in outcomes["alerts"]["error"]
    # The other jobs ran all the same.
    assert {o["status"] for name, o in outcomes.items() if name != "alerts"} == {"succeeded"}
    run = _runs(jobs_db)["alerts"]
    assert (run.result, run.failure_count, run.lease_until) == ("failed", 1, None)
    assert "failed on purpose" in run.error
    shown = json.loads(fleet(jobs_db, "policies", "show", "--json").stdout)
    assert {j["job"]: j["last_error"] for j in shown["scheduler_jobs"]}["alerts"] == run.error


def test_jobs_run_once_without_the_alerts_module_says_so(jobs_db, monkeypatch):
    monkeypatch.setitem(sys.modules, "jobs.alerts", None)  # as if jobs/alerts.py were not installed
    result = fleet(jobs_db, "jobs", "run", "--once", "--json")
    assert result.exit_code == 1
    alerts = _outcomes(result)["alerts"]
    assert alerts["status"] == "failed"
    assert "jobs.alerts is not installed" in alerts["error"]


def test_jobs_run_once_evaluates_alerts_for_real(jobs_db):
    pytest.importorskip("jobs.alerts")
    result = fleet(jobs_db, "jobs", "run", "--once", "--json")
    assert result.exit_code == 0, result.output
    assert _outcomes(result)["alerts"]["status"] == "succeeded"


@pytest.mark.community
def test_jobs_run_once_runs_due_policies_where_timescaledb_cannot(jobs_db, engine_kind, stand_in):
    if not timescaledb_state.jobs_fleet_runs(engine_kind, jobs_db):
        pytest.skip("TimescaleDB's own runs succeed here (test_policy_runs.py covers fleet jobs run taking over)")
    # Readings two days old: inside the refresh window (30 days back to 1 hour ago), not yet materialised.
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)
    with jobs_db.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO meter_readings (meter_id, recorded_at, kwh_consumed_ac, voltage)"
                " VALUES ('sch-m1', :t, 0.5, 230)"
            ),
            [{"t": start + timedelta(minutes=m)} for m in range(0, 180, 5)],
        )
    assert _materialised(jobs_db, "meter_readings_1h") == 0

    result = fleet(jobs_db, "jobs", "run", "--once", "--json")
    assert result.exit_code == 0, result.output
    refresh = [
        o for o in _outcomes(result).values() if o["stats"].get("proc_name") == "policy_refresh_continuous_aggregate"
    ]
    assert {o["stats"]["relation"] for o in refresh} == {"meter_readings_1h", "vehicle_readings_1h"}
    assert {o["status"] for o in refresh} == {"succeeded"}
    # The refresh policy materialised the three hours (real-time aggregation no longer needed for them).
    assert _materialised(jobs_db, "meter_readings_1h") == 3

    shown = json.loads(fleet(jobs_db, "policies", "show", "--json").stdout)
    job = next(a for a in shown["aggregates"] if a["name"] == "meter_readings_1h")["refresh"]["job"]
    assert (job["run_by"], job["last_result"], job["due"]) == ("fleet jobs run", "succeeded", False)
    last = datetime.fromisoformat(job["last_run_started_at"])
    assert datetime.fromisoformat(job["next_run"]) - last == timedelta(minutes=30)


def _materialised(engine: Engine, rollup: str) -> int:
    with engine.connect() as conn:
        mat = conn.execute(
            sa.text(
                "SELECT materialization_hypertable_schema AS s, materialization_hypertable_name AS n"
                " FROM timescaledb_information.continuous_aggregates WHERE view_name = :v"
            ),
            {"v": rollup},
        ).one()
        return conn.execute(sa.select(sa.func.count()).select_from(sa.table(mat.n, schema=mat.s))).scalar_one()


# --- a run in progress elsewhere ---------------------------------------------------------------------------

_RUNNING_ELSEWHERE = sa.text(
    "INSERT INTO job_runs (job_name, holder, started_at, lease_until, result, run_count)"
    " VALUES ('alerts', 'other-host:1:dead', now() - interval '1 hour', now() + :lease, 'running', 1)"
)


@pytest.mark.community
def test_jobs_run_lease_of_a_run_in_progress_excludes_until_it_expires(jobs_db, engine_kind, stand_in):
    if engine_kind != "embedded":
        pytest.skip("a real server excludes by advisory lock, not by lease (test_jobs_run_advisory_lock_...)")
    # Another scheduler claimed alerts and is running it (its lease has ten minutes left).
    with jobs_db.begin() as conn:
        conn.execute(_RUNNING_ELSEWHERE, {"lease": timedelta(minutes=10)})
    busy = fleet(jobs_db, "jobs", "run", "--once", "--json")
    assert busy.exit_code == 0, busy.output
    assert _outcomes(busy)["alerts"]["status"] == "busy"
    assert alerts_stand_in.calls(stand_in) == []

    # That scheduler died: once its lease has expired the job is taken over.
    with jobs_db.begin() as conn:
        conn.execute(sa.text("UPDATE job_runs SET lease_until = now() - interval '1 second' WHERE job_name = 'alerts'"))
    taken = fleet(jobs_db, "jobs", "run", "--once", "--json")
    assert _outcomes(taken)["alerts"]["status"] == "succeeded"
    assert len(alerts_stand_in.calls(stand_in)) == 1
    assert _runs(jobs_db)["alerts"].holder != "other-host:1:dead"


@pytest.mark.native
def test_jobs_run_advisory_lock_excludes_and_a_dead_schedulers_lease_is_ignored(jobs_db, stand_in):
    # Another scheduler is running alerts: it holds the job's advisory lock on its own connection.
    with jobs_db.connect().execution_options(isolation_level="AUTOCOMMIT") as other:
        assert other.execute(
            sa.text("SELECT pg_try_advisory_lock(hashtext('fleet-jobs'), hashtext('alerts'))")
        ).scalar_one()
        busy = fleet(jobs_db, "jobs", "run", "--once", "--json")
        assert busy.exit_code == 0, busy.output
        assert _outcomes(busy)["alerts"]["status"] == "busy"
        # Every other job ran all the same (Apache: retention; Community: the policies fleet jobs run runs here).
        assert {o["status"] for name, o in _outcomes(busy).items() if name != "alerts"} <= {"succeeded"}
        assert alerts_stand_in.calls(stand_in) == []
        other.invalidate()  # that scheduler dies: its connection, and with it the lock, is gone
    # It left a 'running' row with a lease of ten more minutes: nobody holds the lock, so nobody is running
    # it, and the job is taken over at once.
    with jobs_db.begin() as conn:
        conn.execute(sa.text("DELETE FROM job_runs WHERE job_name = 'alerts'"))
        conn.execute(_RUNNING_ELSEWHERE, {"lease": timedelta(minutes=10)})
    taken = fleet(jobs_db, "jobs", "run", "--once", "--json")
    assert _outcomes(taken)["alerts"]["status"] == "succeeded"
    assert len(alerts_stand_in.calls(stand_in)) == 1


# --- two schedulers at once ----------------------------------------------------------------------------------


def test_jobs_run_second_copy_never_joins_a_run_in_progress(jobs_db, engine_kind, tmp_path):
    """A second copy started while the first is inside the alerts job, after that job's interval has passed
    (so it is due again): it must not run it (busy: advisory lock on native, lease on embedded); every other
    job ran once, by one of the two."""
    log, gate = tmp_path / "alerts.log", tmp_path / "gate"
    env = {"FLEET_JOBS_ALERTS_EVERY_SECONDS": "1"}
    expected = _expected_jobs(engine_kind, jobs_db)
    first = spawn(jobs_db, log, "jobs", "run", "--once", "--json", FLEET_TEST_ALERTS_GATE=str(gate), **env)
    try:
        _wait_for(Path(f"{gate}.entered"))
        time.sleep(1.2)  # the run in progress is now older than the interval: alerts is due again
        second = spawn(jobs_db, log, "jobs", "run", "--once", "--json", **env)
        out2, err2 = second.communicate(timeout=180)
        assert second.returncode == 0, err2
    finally:
        Path(f"{gate}.open").touch()
        out1, err1 = first.communicate(timeout=180)
    assert first.returncode == 0, err1
    one = {o["job"]: o["status"] for o in json.loads(out1)["jobs"]}
    two = {o["job"]: o["status"] for o in json.loads(out2)["jobs"]}
    assert set(one) == set(two) == expected
    assert (one["alerts"], two["alerts"]) == ("succeeded", "busy")
    ran = [name for name in expected if one[name] == "succeeded"] + [n for n in expected if two[n] == "succeeded"]
    assert sorted(ran) == sorted(expected)  # each job exactly once, by one of the two
    assert len(alerts_stand_in.calls(log)) == 1
    assert {r.run_count for r in _runs(jobs_db).values()} == {1}


def test_jobs_run_two_long_running_copies_run_each_due_time_once(jobs_db, engine_kind, tmp_path):
    """Two schedulers started together, ticking every second, alerts due every 2 s and taking 0.5 s: alert
    runs never overlap and never come closer than the interval (one run per due time, whoever runs it).
    SIGTERM stops both cleanly."""
    log = tmp_path / "alerts.log"
    env = {
        "FLEET_JOBS_TICK_SECONDS": "1",
        "FLEET_JOBS_ALERTS_EVERY_SECONDS": "2",
        "FLEET_TEST_ALERTS_SLEEP": "0.5",
    }
    procs = [spawn(jobs_db, log, "jobs", "run", "--json", **env) for _ in range(2)]
    try:
        deadline = time.monotonic() + 120
        while len(alerts_stand_in.calls(log)) < 5:
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline, "the schedulers did not run alerts 5 times"
            time.sleep(0.2)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        results = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
        assert "SIGTERM: stopping after the current job" in err
        assert "stopped" in err

    calls = alerts_stand_in.calls(log)
    for before, after in itertools.pairwise(calls):
        assert after["started"] >= before["finished"], "two alert runs overlapped"
        assert after["started"] - before["started"] >= 2 - 0.3, "an alert due time ran twice"
    # Every run each copy reported (JSON lines) is one of the recorded calls, and vice versa.
    reported = [json.loads(line) for out, _ in results for line in out.splitlines() if '"job": "alerts"' in line]
    assert len([r for r in reported if r["status"] == "succeeded"]) == len(calls)
    # Every other job ran once per due time too (their intervals are far longer than this test).
    runs = _runs(jobs_db)
    assert {name: r.run_count for name, r in runs.items() if name != "alerts"} == {
        name: 1 for name in _expected_jobs(engine_kind, jobs_db) if name != "alerts"
    }
    assert runs["alerts"].run_count == len(calls)
