"""Policies that really run: `fleet jobs run` takes over the TimescaleDB jobs TimescaleDB's own scheduler cannot run
(absent, or failing as on PostgreSQL 15.20), and a failed run is visible to ops (`fleet policies show`, a
`policy_failed` alert, the `fleet_policy_failing` metric).

Native Community only (the engine with TimescaleDB's background scheduler). Every test passes whether TimescaleDB's
own runs fail (this machine) or succeed (newer PostgreSQL), and checks the branch it is on. Expected values come from
TimescaleDB's catalog and the inserted rows, read with plain SQL (tests/integration/timescaledb_state.py).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from api import create_app
from cli import main
from config import Settings
from jobs.scheduler import evaluate_policy_alerts
from tests.integration import alerts_stand_in, timescaledb_state

pytestmark = pytest.mark.native

INSERT_METER = sa.text(
    "INSERT INTO meter_readings (meter_id, recorded_at, kwh_consumed_ac, voltage) VALUES ('pr-m1', :t, 0.5, 230)"
)
REFRESH = "policy_refresh_continuous_aggregate"


def fleet(engine: Engine, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"DATABASE_URL": engine.url.render_as_string(hide_password=False)})


def _outcomes(result: Result) -> dict[str, dict]:
    return {o["job"]: o for o in json.loads(result.stdout)["jobs"]}


def _policy_jobs(engine: Engine) -> dict[str, int]:
    """'<proc> <relation>' -> job id of the eight policies of migration 0002."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT proc_name || ' ' || hypertable_name, job_id FROM timescaledb_information.jobs"
                " WHERE proc_name IN :procs"
            ).bindparams(sa.bindparam("procs", expanding=True)),
            {"procs": list(timescaledb_state.POLICY_PROCS)},
        ).all()
    return dict(rows)


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


def _last_error(engine: Engine, job_id: int) -> str:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT err_message FROM timescaledb_information.job_errors WHERE job_id = :id"
                " ORDER BY start_time DESC LIMIT 1"
            ),
            {"id": job_id},
        ).scalar_one()


def _open_policy_alert(engine: Engine, job: str) -> sa.Row | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT * FROM alerts WHERE kind = 'policy_failed' AND device_type = 'job' AND device_id = :j"
                " AND resolved_at IS NULL"
            ),
            {"j": job},
        ).one_or_none()


def _failing_metric(engine: Engine, job: str) -> float | None:
    client = create_app(Settings.from_env({}), engine=engine).test_client()
    resp = client.get("/metrics")
    assert resp.status_code == 200
    for family in text_string_to_metric_families(resp.get_data(as_text=True)):
        for s in family.samples:
            if s.name == "fleet_policy_failing" and s.labels["job"] == job:
                return s.value
    return None


def _shown_job(engine: Engine, job_id: int) -> tuple[dict, dict]:
    result = fleet(engine, "policies", "show", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    return next(j for j in report["timescaledb_jobs"] if j["job_id"] == job_id), report


@pytest.fixture
def jobs_db(clean_db: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Engine]:
    """No job run recorded (everything due), the recording stand-in for the device alert scan; afterwards every
    job is TimescaleDB's again and its scheduler is running, as in a fresh database."""
    monkeypatch.setitem(sys.modules, "jobs.alerts", alerts_stand_in)
    monkeypatch.setenv("FLEET_TEST_ALERTS_LOG", str(tmp_path / "alerts.log"))
    with clean_db.begin() as conn:
        conn.execute(sa.text("TRUNCATE job_runs"))
    yield clean_db
    with clean_db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("SELECT _timescaledb_functions.start_background_workers()"))
    timescaledb_state.wait_for_scheduler(clean_db, present=True)
    timescaledb_state.hand_back_all(clean_db)


def _scan_alerts(engine: Engine) -> None:
    # What the scheduler's alerts job does after the device scan (that part is the stand-in here).
    evaluate_policy_alerts(engine)


def test_policies_really_run_under_fleet_jobs_run_without_timescaledbs_scheduler(jobs_db):
    with jobs_db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("SELECT _timescaledb_functions.stop_background_workers()"))
    timescaledb_state.wait_for_scheduler(jobs_db, present=False)
    timescaledb_state.hand_back_all(jobs_db)  # earlier tests may have had fleet jobs run take them over

    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    recent, old, expired = hour - timedelta(days=2), hour - timedelta(days=10), hour - timedelta(days=100)
    rows = [recent + timedelta(minutes=m) for m in range(0, 180, 15)]  # 3 hours
    rows += [old + timedelta(minutes=m) for m in range(0, 60, 15)]  # 1 hour: compressed (7d), inside refresh (30d)
    rows += [expired + timedelta(minutes=m) for m in range(0, 60, 15)]  # dropped (90d)
    with jobs_db.begin() as conn:
        conn.execute(INSERT_METER, [{"t": t} for t in rows])
    # Hours materialised by a refresh from 30 days to 1 hour ago: the recent three and the old one.
    expected_buckets = len(
        {t.replace(minute=0) for t in rows if hour - timedelta(days=30) <= t < hour - timedelta(hours=1)}
    )
    assert _materialised(jobs_db, "meter_readings_1h") == 0

    result = fleet(jobs_db, "jobs", "run", "--once", "--json")
    assert result.exit_code == 0, result.output
    outcomes = _outcomes(result)
    policies = _policy_jobs(jobs_db)
    assert len(policies) == 8
    for job_id in policies.values():
        assert outcomes[f"timescaledb_job_{job_id}"]["status"] == "succeeded"
    with jobs_db.connect() as conn:
        taken = dict(conn.execute(sa.text("SELECT job_id, reason FROM timescaledb_job_takeovers")).all())
        scheduled = dict(
            conn.execute(
                sa.text("SELECT job_id, scheduled FROM timescaledb_information.jobs WHERE job_id >= 1000")
            ).all()
        )
        chunks = conn.execute(
            sa.text(
                "SELECT range_start, range_end, is_compressed FROM timescaledb_information.chunks"
                " WHERE hypertable_name = 'meter_readings'"
            )
        ).all()
        oldest = conn.execute(sa.text("SELECT min(recorded_at) FROM meter_readings")).scalar_one()
    assert {i: taken.get(i) for i in policies.values()} == {i: "scheduler_absent" for i in policies.values()}
    assert {i: scheduled[i] for i in policies.values()} == {i: False for i in policies.values()}

    # Refresh: the hours in the window are materialised. Retention: the expired chunk is gone. Compression: the
    # 10-day-old chunk is compressed, the 2-day-old one is not.
    assert _materialised(jobs_db, "meter_readings_1h") == expected_buckets == 4
    assert oldest == old
    compressed = {c.range_start <= t < c.range_end: c.is_compressed for c in chunks for t in (old,)}
    assert compressed[True] is True
    assert [c.is_compressed for c in chunks if c.range_start <= recent < c.range_end] == [False]
    assert len(chunks) == 2

    shown, report = _shown_job(jobs_db, policies[f"{REFRESH} meter_readings_1h"])
    assert report["timescaledb_scheduler"]["state"] == "absent"
    assert (shown["run_by"], shown["last_run_by"], shown["status"]) == ("fleet jobs run", "fleet jobs run", "Success")
    assert shown["taken_over"]["reason"] == "scheduler_absent"
    assert report["failing_policies"] == []

    # TimescaleDB's scheduler is back. The jobs go back to it only once its own runs are seen to succeed.
    with jobs_db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("SELECT _timescaledb_functions.start_background_workers()"))
    timescaledb_state.wait_for_scheduler(jobs_db, present=True)
    probe = timescaledb_state.run_in_timescaledb(jobs_db, timescaledb_state.probe_id(jobs_db))
    again = fleet(jobs_db, "jobs", "run", "--once", "--json")
    assert again.exit_code == 0, again.output
    statuses = {_outcomes(again)[f"timescaledb_job_{i}"]["status"] for i in policies.values()}
    with jobs_db.connect() as conn:
        taken_after = set(conn.execute(sa.text("SELECT job_id FROM timescaledb_job_takeovers")).scalars())
    if probe == "Success":
        assert statuses == {"handed_back"}
        assert not taken_after & set(policies.values())
        assert _shown_job(jobs_db, policies[f"{REFRESH} meter_readings_1h"])[0]["run_by"] == "TimescaleDB"
    else:  # e.g. PostgreSQL 15.20: TimescaleDB's runs fail; the jobs stay with fleet jobs run
        assert statuses == {"not_due"}
        assert set(policies.values()) <= taken_after
        shown, report = _shown_job(jobs_db, policies[f"{REFRESH} meter_readings_1h"])
        assert report["timescaledb_scheduler"]["state"] == "failing"
        assert shown["run_by"] == "fleet jobs run"


def test_refresh_policy_run_by_timescaledb_or_taken_over_when_its_run_fails(jobs_db):
    timescaledb_state.hand_back_all(jobs_db)
    policies = _policy_jobs(jobs_db)
    refresh = policies[f"{REFRESH} meter_readings_1h"]
    name = f"timescaledb_job_{refresh}"
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)
    with jobs_db.begin() as conn:
        conn.execute(INSERT_METER, [{"t": start + timedelta(minutes=m)} for m in range(0, 180, 15)])

    status = timescaledb_state.run_in_timescaledb(jobs_db, refresh)
    if status == "Success":  # newer PostgreSQL: TimescaleDB runs it, we never do
        assert _materialised(jobs_db, "meter_readings_1h") == 3
        shown, report = _shown_job(jobs_db, refresh)
        assert (shown["run_by"], shown["last_run_by"], shown["status"]) == ("TimescaleDB", "TimescaleDB", "Success")
        assert name not in report["failing_policies"]
        result = fleet(jobs_db, "jobs", "run", "--once", "--json")
        assert result.exit_code == 0, result.output
        assert name not in _outcomes(result)
        _scan_alerts(jobs_db)
        assert _open_policy_alert(jobs_db, name) is None
        assert _failing_metric(jobs_db, name) == 0
        return

    # TimescaleDB's run failed (PostgreSQL 15.20): ops see it, with TimescaleDB's own error.
    assert status == "Failed"
    error = _last_error(jobs_db, refresh)
    # (On PostgreSQL 15.20 the error comes after the refresh did its work: the rows may be materialised already.)
    shown, report = _shown_job(jobs_db, refresh)
    assert (shown["status"], shown["last_run_by"], shown["last_error"]) == ("Failed", "TimescaleDB", error)
    assert shown["timescaledb_stats"]["last_run_status"] == "Failed"
    assert name in report["failing_policies"]
    human = fleet(jobs_db, "policies", "show")
    assert f"error: {error}" in human.stdout and "FAILING" in human.stdout
    _scan_alerts(jobs_db)
    alert = _open_policy_alert(jobs_db, name)
    assert alert is not None and alert.details["error"] == error and alert.details["lastRunBy"] == "TimescaleDB"
    assert _failing_metric(jobs_db, name) == 1

    # fleet jobs run takes it over and runs it: the hours are materialised, the alert resolves, the metric clears;
    # TimescaleDB's failure stays visible in its own stats.
    result = fleet(jobs_db, "jobs", "run", "--once", "--json")
    assert result.exit_code == 0, result.output
    assert _outcomes(result)[name]["status"] == "succeeded"
    assert _materialised(jobs_db, "meter_readings_1h") == 3
    shown, report = _shown_job(jobs_db, refresh)
    assert (shown["run_by"], shown["last_run_by"], shown["status"]) == ("fleet jobs run", "fleet jobs run", "Success")
    assert shown["timescaledb_stats"]["last_run_status"] == "Failed"
    assert name not in report["failing_policies"]
    _scan_alerts(jobs_db)
    assert _open_policy_alert(jobs_db, name) is None
    assert _failing_metric(jobs_db, name) == 0


FAILING_PROC = """
CREATE OR REPLACE PROCEDURE fleet_test_job(job_id integer, config jsonb) LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'fleet test: failing on purpose';
END $$
"""
SUCCEEDING_PROC = """
CREATE OR REPLACE PROCEDURE fleet_test_job(job_id integer, config jsonb) LANGUAGE plpgsql AS $$
BEGIN
    NULL;
END $$
"""


def test_failing_job_is_visible_and_alerted_whoever_runs_it(jobs_db):
    probe = timescaledb_state.probe_status(jobs_db)
    with jobs_db.begin() as conn:
        conn.execute(sa.text(FAILING_PROC))
        job_id = conn.execute(
            sa.text("SELECT add_job('fleet_test_job', '1 hour', initial_start => now() + interval '1 hour')")
        ).scalar_one()
    name = f"timescaledb_job_{job_id}"
    try:
        # TimescaleDB's run fails on every server (with our exception, or with the server's own error).
        assert timescaledb_state.run_in_timescaledb(jobs_db, job_id) == "Failed"
        error = _last_error(jobs_db, job_id)
        shown, report = _shown_job(jobs_db, job_id)
        assert (shown["status"], shown["last_run_by"], shown["last_error"]) == ("Failed", "TimescaleDB", error)
        assert name in report["failing_policies"]
        _scan_alerts(jobs_db)
        assert _open_policy_alert(jobs_db, name).details["error"] == error
        assert _failing_metric(jobs_db, name) == 1

        # fleet jobs run takes it over (why depends on the server) and its own run fails too: still alerted.
        result = fleet(jobs_db, "jobs", "run", "--once", "--json")
        assert result.exit_code == 1, result.output
        outcome = _outcomes(result)[name]
        assert outcome["status"] == "failed" and "fleet test: failing on purpose" in outcome["error"]
        with jobs_db.connect() as conn:
            reason = conn.execute(
                sa.text("SELECT reason FROM timescaledb_job_takeovers WHERE job_id = :id"), {"id": job_id}
            ).scalar_one()
        assert reason == ("scheduler_failing" if probe == "Failed" else "job_failed")
        _scan_alerts(jobs_db)
        alert = _open_policy_alert(jobs_db, name)
        assert alert.details["lastRunBy"] == "fleet jobs run" and "failing on purpose" in alert.details["error"]
        assert _failing_metric(jobs_db, name) == 1

        # Fixed: the next run succeeds, the alert resolves and the metric clears.
        with jobs_db.begin() as conn:
            conn.execute(sa.text(SUCCEEDING_PROC))
            conn.execute(
                sa.text("UPDATE job_runs SET started_at = started_at - interval '2 hours' WHERE job_name = :n"),
                {"n": name},
            )
        fixed = fleet(jobs_db, "jobs", "run", "--once", "--json")
        assert fixed.exit_code == 0, fixed.output
        assert _outcomes(fixed)[name]["status"] == "succeeded"
        _scan_alerts(jobs_db)
        assert _open_policy_alert(jobs_db, name) is None
        assert _failing_metric(jobs_db, name) == 0
    finally:
        with jobs_db.begin() as conn:
            conn.execute(sa.text("DELETE FROM timescaledb_job_takeovers WHERE job_id = :id"), {"id": job_id})
            conn.execute(sa.text("SELECT delete_job(:id)"), {"id": job_id})
            conn.execute(sa.text("DROP PROCEDURE fleet_test_job(integer, jsonb)"))
