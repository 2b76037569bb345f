"""Who runs TimescaleDB's jobs (refresh, compression, retention policies): TimescaleDB's scheduler or `fleet jobs run`.

TimescaleDB's own background scheduler may be absent (no background workers: the embedded engine,
`timescaledb.max_background_workers = 0`, no scheduler process for this database) or present but failing every
run (PostgreSQL 15.20 with TimescaleDB 2.28.3: `cannot drop portal "" while it is being set up`), while
`CALL run_job(id)` from a session works. So it is detected, never assumed:

- health (`scheduler_health`): absent (see above), failing or healthy according to the probe: a no-op job
  (`fleet_scheduler_probe`, migration 0008) that always stays with TimescaleDB, whose `job_stats` show whether
  TimescaleDB's runs currently succeed; unknown while the probe has not run yet;
- per job (`decide`): a job TimescaleDB's scheduler cannot run (absent or failing), or whose last run by
  TimescaleDB failed, is taken over: in one transaction a `timescaledb_job_takeovers` row is written and the job
  is paused in TimescaleDB (`alter_job(id, scheduled => false)`), so TimescaleDB starts no new run of it; from
  then on `fleet jobs run` runs it with `CALL run_job` on its schedule_interval, but never while a run that
  TimescaleDB started is still going (`running_in_timescaledb`: a TimescaleDB worker of that job in
  pg_stat_activity, or a run marked started and not finished in the last minute, the launch of a worker);
- a taken-over job is handed back (scheduled again, row deleted, in one transaction) once the probe has
  succeeded since the takeover (and, for a job taken over because its own run failed, once our last run of it
  succeeded); a taken-over job someone re-enabled in TimescaleDB is theirs again (row deleted). A job paused by
  an operator (scheduled false, no takeover row) is run by nobody.

All functions run in the caller's transaction. TimescaleDB's timestamps are read through isfinite(): a job that
never ran has -infinity there, which psycopg cannot turn into a datetime.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from db.edition import EditionInfo, describe
from db.job_runs import JobRun, get_runs, timescaledb_job_name

#: TimescaleDB's own housekeeping jobs have ids below 1000; policies and user jobs start at 1000.
FIRST_USER_JOB_ID = 1000
#: The no-op job whose runs by TimescaleDB tell whether TimescaleDB's scheduler works (migration 0008).
PROBE_PROC = "fleet_scheduler_probe"
SCHEDULER_BACKEND_TYPE = "TimescaleDB Background Worker Scheduler"
#: A run TimescaleDB marked started this recently, and not finished, counts as running even before its worker
#: shows in pg_stat_activity (the scheduler marks the start, then launches the worker); older ones are crashes.
LAUNCH_GRACE = timedelta(minutes=1)

RUN_BY_TIMESCALEDB = "TimescaleDB"
RUN_BY_FLEET = "fleet jobs run"
RUN_BY_NOBODY = "nobody (paused in TimescaleDB)"

HealthState = Literal["absent", "failing", "healthy", "unknown"]
Action = Literal["timescaledb", "paused", "take_over", "fleet", "hand_back", "released"]


@dataclass(frozen=True)
class SchedulerHealth:
    """Whether TimescaleDB's background scheduler runs this database's jobs successfully, and why we think so."""

    state: HealthState
    reason: str
    probe_job_id: int | None = None
    probe_last_status: str | None = None
    probe_last_started_at: datetime | None = None
    probe_last_success_at: datetime | None = None
    probe_last_error: str | None = None


@dataclass(frozen=True)
class TimescaleJob:
    """One TimescaleDB job (id >= 1000), TimescaleDB's record of its runs, and our takeover of it, if any."""

    job_id: int
    application_name: str
    proc_name: str
    relation: str | None
    schedule_interval: timedelta
    scheduled: bool
    #: TimescaleDB's last run: 'Success', 'Failed' or None (never); runs by `CALL run_job` are not recorded.
    last_run_status: str | None
    last_run_started_at: datetime | None
    last_successful_finish: datetime | None
    next_start: datetime | None
    total_runs: int | None
    total_failures: int | None
    #: The newest error TimescaleDB recorded for it (timescaledb_information.job_errors), and when.
    last_error: str | None
    last_error_at: datetime | None
    running_in_timescaledb: bool
    taken_at: datetime | None
    takeover_reason: str | None
    takeover_detail: str | None
    taken_by: str | None

    @property
    def name(self) -> str:
        """Its job_runs name (`timescaledb_job_<id>`)."""
        return timescaledb_job_name(self.job_id)

    @property
    def is_probe(self) -> bool:
        return self.proc_name == PROBE_PROC

    @property
    def taken_over(self) -> bool:
        return self.taken_at is not None

    @property
    def description(self) -> str:
        return f"{self.proc_name} on {self.relation}" if self.relation else self.proc_name


@dataclass(frozen=True)
class Decision:
    """What `fleet jobs run` does with one TimescaleDB job now, and why."""

    action: Action
    reason: str
    #: For take_over: the takeover_reason recorded (db.schema.TAKEOVER_REASONS).
    takeover_reason: str | None = None

    @property
    def run_by(self) -> str:
        """Who runs the job once this decision is carried out."""
        if self.action in ("take_over", "fleet"):
            return RUN_BY_FLEET
        if self.action == "paused":
            return RUN_BY_NOBODY
        return RUN_BY_TIMESCALEDB


_SERVER = sa.text(
    """
    SELECT coalesce(current_setting('timescaledb.max_background_workers', true), '0')::int AS workers,
           EXISTS (SELECT 1 FROM pg_stat_activity
                    WHERE datname = current_database() AND backend_type = :scheduler) AS scheduler_running
    """
)

_JOBS = sa.text(
    """
    SELECT j.job_id, j.application_name, j.proc_name, j.hypertable_name AS relation, j.schedule_interval,
           j.scheduled, s.last_run_status, s.total_runs, s.total_failures,
           CASE WHEN isfinite(s.last_run_started_at) THEN s.last_run_started_at END AS last_run_started_at,
           CASE WHEN isfinite(s.last_successful_finish) THEN s.last_successful_finish END AS last_successful_finish,
           CASE WHEN isfinite(coalesce(s.next_start, j.next_start)) THEN coalesce(s.next_start, j.next_start) END
               AS next_start,
           e.err_message AS last_error,
           CASE WHEN isfinite(e.start_time) THEN e.start_time END AS last_error_at,
           (EXISTS (SELECT 1 FROM pg_stat_activity a
                     WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
                       AND a.backend_type = j.application_name)
            -- last_run_duration is NULL while the last start is newer than the last finish.
            OR (isfinite(s.last_run_started_at) AND s.last_run_duration IS NULL
                AND s.last_run_started_at > now() - :grace)
           ) AS running_in_timescaledb,
           t.taken_at, t.reason AS takeover_reason, t.detail AS takeover_detail, t.taken_by
      FROM timescaledb_information.jobs j
      LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
      LEFT JOIN LATERAL (
            SELECT err.err_message, err.start_time FROM timescaledb_information.job_errors err
             WHERE err.job_id = j.job_id ORDER BY err.start_time DESC NULLS LAST LIMIT 1) e ON true
      LEFT JOIN timescaledb_job_takeovers t ON t.job_id = j.job_id
     WHERE j.job_id >= :first
     ORDER BY j.job_id
    """
)

_TAKE_OVER = sa.text(
    """
    INSERT INTO timescaledb_job_takeovers (job_id, reason, detail, taken_by) VALUES (:job_id, :reason, :detail, :by)
    ON CONFLICT (job_id) DO NOTHING
    RETURNING job_id
    """
)
_PAUSE = sa.text("SELECT alter_job(:job_id, scheduled => false)")
_RESUME = sa.text("SELECT alter_job(:job_id, scheduled => true, next_start => :next_start)")
_RELEASE = sa.text("DELETE FROM timescaledb_job_takeovers WHERE job_id = :job_id RETURNING job_id")
_NOW = sa.text("SELECT now()")


def scheduler_health(conn: Connection, info: EditionInfo, jobs: list[TimescaleJob] | None = None) -> SchedulerHealth:
    """Whether TimescaleDB's scheduler is there for this database, and whether its runs succeed (the probe)."""
    if not info.community:
        return SchedulerHealth("absent", "Apache edition: no TimescaleDB policies or jobs")
    if info.embedded:
        return SchedulerHealth("absent", "the embedded engine has no background workers")
    server = conn.execute(_SERVER, {"scheduler": SCHEDULER_BACKEND_TYPE}).one()
    if server.workers <= 0:
        return SchedulerHealth("absent", "timescaledb.max_background_workers is 0: no background workers")
    if not server.scheduler_running:
        return SchedulerHealth("absent", "no TimescaleDB scheduler process for this database in pg_stat_activity")
    probe = next((j for j in (jobs if jobs is not None else list_jobs(conn)) if j.is_probe), None)
    if probe is None:
        return SchedulerHealth("unknown", f"no probe job ({PROBE_PROC}): judged by each job's own runs")

    def judged(state: HealthState, reason: str) -> SchedulerHealth:
        return SchedulerHealth(
            state,
            reason,
            probe_job_id=probe.job_id,
            probe_last_status=probe.last_run_status,
            probe_last_started_at=probe.last_run_started_at,
            probe_last_success_at=probe.last_successful_finish,
            probe_last_error=probe.last_error if probe.last_run_status == "Failed" else None,
        )

    if not probe.scheduled:
        return judged("unknown", f"the probe job {probe.job_id} is paused: judged by each job's own runs")
    if probe.last_run_status == "Failed":
        return judged("failing", f"TimescaleDB's runs fail (probe job {probe.job_id}: {probe.last_error or 'failed'})")
    if probe.last_run_status == "Success":
        return judged("healthy", f"TimescaleDB's runs succeed (probe job {probe.job_id})")
    return judged("unknown", f"the probe job {probe.job_id} has not run yet")


def list_jobs(conn: Connection) -> list[TimescaleJob]:
    """Every TimescaleDB job with id >= 1000 (policies, the probe, user jobs), with runs and takeover (Community)."""
    rows = conn.execute(_JOBS, {"first": FIRST_USER_JOB_ID, "grace": LAUNCH_GRACE}).mappings()
    return [TimescaleJob(**r) for r in rows]


def decide(job: TimescaleJob, health: SchedulerHealth, our_run: JobRun | None = None) -> Decision:
    """What to do with `job` given TimescaleDB's health and our last run of it (pure; see the module docstring)."""
    if job.is_probe:
        return Decision("timescaledb", "the scheduler probe always stays with TimescaleDB")
    if job.taken_over:
        if job.scheduled:
            return Decision("released", "scheduled again in TimescaleDB (alter_job ... scheduled => true): theirs")
        recovered = (
            health.state == "healthy"
            and health.probe_last_success_at is not None
            and job.taken_at is not None
            and health.probe_last_success_at > job.taken_at
        )
        ours_ok = our_run is not None and our_run.result == "succeeded"
        if recovered and (job.takeover_reason != "job_failed" or ours_ok):
            return Decision("hand_back", f"TimescaleDB's runs succeed again ({health.reason})")
        return Decision("fleet", job.takeover_detail or job.takeover_reason or "taken over")
    if not job.scheduled:
        return Decision("paused", "paused in TimescaleDB (not by fleet jobs run): nobody runs it")
    if health.state == "absent":
        return Decision("take_over", health.reason, "scheduler_absent")
    if health.state == "failing":
        return Decision("take_over", health.reason, "scheduler_failing")
    if job.last_run_status == "Failed":
        error = f": {job.last_error}" if job.last_error else ""
        return Decision("take_over", f"TimescaleDB's last run of job {job.job_id} failed{error}", "job_failed")
    return Decision("timescaledb", health.reason)


def take_over(conn: Connection, job: TimescaleJob, decision: Decision, holder: str) -> bool:
    """Record the takeover and pause the job in TimescaleDB, together; False if another scheduler already did."""
    taken = conn.execute(
        _TAKE_OVER,
        {"job_id": job.job_id, "reason": decision.takeover_reason, "detail": decision.reason[:2000], "by": holder},
    ).scalar_one_or_none()
    if taken is None:
        return False
    conn.execute(_PAUSE, {"job_id": job.job_id})
    return True


def hand_back(conn: Connection, job: TimescaleJob, our_run: JobRun | None) -> bool:
    """Schedule the job in TimescaleDB again and forget the takeover, together; its next start follows our last
    run (no extra run). False if it was no longer taken over. The caller must hold the job's run lock."""
    if conn.execute(_RELEASE, {"job_id": job.job_id}).scalar_one_or_none() is None:
        return False
    now = conn.execute(_NOW).scalar_one()
    next_start = now
    if our_run is not None and our_run.started_at is not None:
        next_start = max(now, our_run.started_at + job.schedule_interval)
    conn.execute(_RESUME, {"job_id": job.job_id, "next_start": next_start})
    return True


def release(conn: Connection, job: TimescaleJob) -> bool:
    """Forget the takeover of a job someone scheduled again in TimescaleDB."""
    return conn.execute(_RELEASE, {"job_id": job.job_id}).scalar_one_or_none() is not None


def get_job(conn: Connection, job_id: int) -> TimescaleJob | None:
    """One job, read fresh."""
    return next((j for j in list_jobs(conn) if j.job_id == job_id), None)


# --- the effective status of each policy, for alerts and metrics ---------------------------------------------


@dataclass(frozen=True)
class PolicyStatus:
    """The last finished run of a policy job, by whoever ran it, and whether it failed."""

    job: str
    job_id: int | None
    proc_name: str
    relation: str | None
    run_by: str
    last_run_by: str | None
    last_run_started_at: datetime | None
    last_result: str | None
    last_error: str | None

    @property
    def failing(self) -> bool:
        return self.last_result == "failed"


def last_run(job: TimescaleJob, our_run: JobRun | None) -> tuple[str | None, datetime | None, str | None, str | None]:
    """(by, started_at, result, error) of the newest finished run of `job`: TimescaleDB's or ours."""
    theirs = None
    if job.last_run_status in ("Success", "Failed") and job.last_run_started_at is not None:
        failed = job.last_run_status == "Failed"
        theirs = (RUN_BY_TIMESCALEDB, job.last_run_started_at, "failed" if failed else "succeeded")
    ours = None
    if our_run is not None and our_run.started_at is not None and our_run.result in ("succeeded", "failed"):
        ours = (RUN_BY_FLEET, our_run.started_at, our_run.result)
    if theirs is None and ours is None:
        return None, None, None, None
    if ours is None or (theirs is not None and theirs[1] > ours[1]):
        assert theirs is not None
        return (*theirs, job.last_error if theirs[2] == "failed" else None)
    return (*ours, our_run.error if ours[2] == "failed" and our_run is not None else None)


def policy_statuses(
    conn: Connection,
    info: EditionInfo,
    runs: dict[str, JobRun],
    health: SchedulerHealth | None = None,
    jobs: list[TimescaleJob] | None = None,
) -> list[PolicyStatus]:
    """Every policy job's effective last run: TimescaleDB jobs >= 1000 except the probe (Community), the
    project's `retention` job (Apache edition)."""
    out = []
    if info.community:
        jobs = list_jobs(conn) if jobs is None else jobs
        health = health or scheduler_health(conn, info, jobs)
        for j in jobs:
            if j.is_probe:
                continue
            by, started, result, error = last_run(j, runs.get(j.name))
            out.append(
                PolicyStatus(
                    j.name,
                    j.job_id,
                    j.proc_name,
                    j.relation,
                    decide(j, health, runs.get(j.name)).run_by,
                    by,
                    started,
                    result,
                    error,
                )
            )
    else:
        run = runs.get("retention")
        if run is not None and run.result in ("succeeded", "failed"):
            out.append(
                PolicyStatus(
                    "retention",
                    None,
                    "drop_chunks",
                    None,
                    RUN_BY_FLEET,
                    RUN_BY_FLEET,
                    run.started_at,
                    run.result,
                    run.error,
                )
            )
    return out


def current_policy_statuses(conn: Connection) -> list[PolicyStatus]:
    """policy_statuses of this database, everything read fresh."""
    return policy_statuses(conn, describe(conn), get_runs(conn))


def policy_alert_inputs(statuses: list[PolicyStatus]) -> dict[str, tuple[bool, dict[str, Any]]]:
    """{job name: (failing, details)} for db.alerts.evaluate_policy_alerts (a job that never ran is left out)."""
    return {
        s.job: (
            s.failing,
            {
                "jobId": s.job_id,
                "procName": s.proc_name,
                "relation": s.relation,
                "runBy": s.run_by,
                "lastRunBy": s.last_run_by,
                "lastRunStartedAt": s.last_run_started_at.isoformat() if s.last_run_started_at else None,
                "lastResult": s.last_result,
                "error": s.last_error,
            },
        )
        for s in statuses
        if s.last_result is not None
    }
