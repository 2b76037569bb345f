"""db.timescaledb_jobs.decide and last_run: who runs a TimescaleDB job, and its newest run (pure functions)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from db.job_runs import JobRun
from db.timescaledb_jobs import RUN_BY_FLEET, RUN_BY_TIMESCALEDB, SchedulerHealth, TimescaleJob, decide, last_run

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)

JOB = TimescaleJob(
    job_id=1000,
    application_name="Refresh Continuous Aggregate Policy [1000]",
    proc_name="policy_refresh_continuous_aggregate",
    relation="meter_readings_1h",
    schedule_interval=timedelta(minutes=30),
    scheduled=True,
    last_run_status=None,
    last_run_started_at=None,
    last_successful_finish=None,
    next_start=None,
    total_runs=None,
    total_failures=None,
    last_error=None,
    last_error_at=None,
    running_in_timescaledb=False,
    taken_at=None,
    takeover_reason=None,
    takeover_detail=None,
    taken_by=None,
)
HEALTHY = SchedulerHealth("healthy", "runs succeed", probe_job_id=1008, probe_last_success_at=T0)
FAILING = SchedulerHealth("failing", "runs fail (probe: cannot drop portal)")
ABSENT = SchedulerHealth("absent", "no background workers")
UNKNOWN = SchedulerHealth("unknown", "probe has not run yet")


def _ours(result: str, at: datetime = T0) -> JobRun:
    return JobRun("timescaledb_job_1000", "h", at, at, None, result, "boom" if result == "failed" else None, {}, 1, 0)


def _taken(reason: str, at: datetime) -> TimescaleJob:
    return replace(JOB, scheduled=False, taken_at=at, takeover_reason=reason, takeover_detail="why")


@pytest.mark.parametrize(
    ("health", "action", "reason"),
    [
        (ABSENT, "take_over", "scheduler_absent"),
        (FAILING, "take_over", "scheduler_failing"),
        (HEALTHY, "timescaledb", None),
    ],
)
def test_decide_scheduled_job_follows_timescaledb_health(health, action, reason):
    decision = decide(JOB, health)
    assert (decision.action, decision.takeover_reason) == (action, reason)
    assert decision.run_by == (RUN_BY_FLEET if action == "take_over" else RUN_BY_TIMESCALEDB)


@pytest.mark.parametrize("health", [HEALTHY, UNKNOWN])
def test_decide_job_whose_timescaledb_run_failed_is_taken_over(health):
    failed = replace(JOB, last_run_status="Failed", last_error="cannot drop portal")
    decision = decide(failed, health)
    assert (decision.action, decision.takeover_reason) == ("take_over", "job_failed")
    assert "cannot drop portal" in decision.reason


def test_decide_job_paused_by_an_operator_is_run_by_nobody():
    assert decide(replace(JOB, scheduled=False), FAILING).action == "paused"


def test_decide_probe_always_stays_with_timescaledb():
    assert decide(replace(JOB, proc_name="fleet_scheduler_probe"), ABSENT).action == "timescaledb"


def test_decide_taken_over_job_is_handed_back_only_after_a_probe_success_since():
    assert decide(_taken("scheduler_failing", T0 - timedelta(minutes=1)), HEALTHY).action == "hand_back"
    # The probe's success predates the takeover: nothing new learnt.
    assert decide(_taken("scheduler_failing", T0 + timedelta(minutes=1)), HEALTHY).action == "fleet"
    for health in (FAILING, ABSENT, UNKNOWN):
        assert decide(_taken("scheduler_absent", T0 - timedelta(minutes=1)), health).action == "fleet"


def test_decide_job_taken_over_for_its_own_failure_needs_our_last_run_to_succeed():
    job = _taken("job_failed", T0 - timedelta(minutes=1))
    assert decide(job, HEALTHY).action == "fleet"
    assert decide(job, HEALTHY, _ours("failed")).action == "fleet"
    assert decide(job, HEALTHY, _ours("succeeded")).action == "hand_back"


def test_decide_taken_over_job_scheduled_again_by_someone_is_released():
    job = replace(_taken("scheduler_failing", T0), scheduled=True)
    assert decide(job, FAILING).action == "released"


def test_last_run_is_the_newest_finished_run_of_either_runner():
    theirs = replace(JOB, last_run_status="Failed", last_run_started_at=T0, last_error="portal")
    assert last_run(theirs, None) == (RUN_BY_TIMESCALEDB, T0, "failed", "portal")
    later = T0 + timedelta(minutes=5)
    assert last_run(theirs, _ours("succeeded", later)) == (RUN_BY_FLEET, later, "succeeded", None)
    assert last_run(theirs, _ours("failed", T0 - timedelta(minutes=5)))[0] == RUN_BY_TIMESCALEDB
    running = replace(_ours("succeeded", later), result="running")
    assert last_run(theirs, running)[0] == RUN_BY_TIMESCALEDB
    assert last_run(JOB, None) == (None, None, None, None)
