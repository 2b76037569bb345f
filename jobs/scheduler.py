"""`fleet jobs run`: the scheduler for the work the database cannot schedule itself.

Jobs (plain functions over an Engine, each safe to re-run, each returning a stats dataclass that is logged and
kept in `job_runs.stats`):
- `retention` (Apache edition, no retention policy there): jobs.retention.run_retention, drop_chunks;
- `timescaledb_job_<id>` (Community edition): each TimescaleDB job (refresh, compression and retention
  policies, user jobs) that TimescaleDB's own scheduler cannot run or whose runs by it fail, through
  `CALL run_job(id)`, on its own `schedule_interval`. Which ones is detected at every tick, never assumed
  (db/timescaledb_jobs.py): such a job is first taken over (paused in TimescaleDB with
  `alter_job(id, scheduled => false)` and recorded in `timescaledb_job_takeovers`, in one transaction), and
  handed back (scheduled again) once TimescaleDB's runs succeed again (its probe job). Jobs TimescaleDB runs
  successfully are never run by us;
- `correlation` (Community edition): jobs.correlation.refresh_correlation, the hourly correlation rollup;
- `alerts` (everywhere): alert evaluation, `jobs.alerts.scan_alerts(engine, settings)`, then `policy_failed`
  alerts (`evaluate_policy_alerts`);
- `checkpoint` (embedded engine only: it has no checkpointer process): `CHECKPOINT`.

Concurrency invariant: any number of schedulers may run against one database (two `fleet jobs run` copies on
two hosts, or a crashed one being restarted); each due time of each job is run by exactly one of them, and on
a real PostgreSQL server never by two at once. Two mechanisms, because the engines differ:
- every run is claimed first with a conditional UPDATE of the job's `job_runs` row (db/job_runs.py): due
  (last start at least `every` ago) and not leased by another scheduler. The row lock (native) or the single
  connection (embedded) serialises claims, so one claimer wins each due time; the claim also sets a lease;
- on a real server the runner additionally holds a session advisory lock for the job on a connection of its own
  for the whole run (`pg_try_advisory_lock(hashtext('fleet-jobs'), hashtext(job))`): a run that outlives its
  lease still excludes every other runner, and a scheduler that dies releases the lock with its connection, so
  its job is taken over at once instead of after the lease. The embedded engine serves one connection at a time
  and releases advisory locks when a client disconnects: a held lock connection would lock every other client
  (the job itself included) out, so there the lease alone excludes (FLEET_JOBS_LEASE_SECONDS).
Due times are judged by the database's clock, never a scheduler's.

Never at the same time as TimescaleDB: a TimescaleDB job is run by us only while it is paused in TimescaleDB
(taken over), and, under the job's lock and before the claim, only if no run TimescaleDB started is still going
(`db.timescaledb_jobs` `running_in_timescaledb`; otherwise the job is `busy` and retried at the next tick). A
job is handed back only under its lock too, so no run of ours is in progress when TimescaleDB may start it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

import db
from config import Settings
from db import alerts, edition, job_runs, policies
from db import scheduler as scheduling
from db import timescaledb_jobs as tsjobs
from jobs.correlation import refresh_correlation
from jobs.retention import run_retention

logger = logging.getLogger(__name__)

#: Module that evaluates alerts (`scan_alerts(engine, settings)`); imported only when the alerts job runs.
ALERTS_MODULE = "jobs.alerts"
#: TimescaleDB's own housekeeping jobs have ids below 1000; policies and user jobs start at 1000.
FIRST_USER_JOB_ID = tsjobs.FIRST_USER_JOB_ID

JobFn = Callable[[Engine], Any]
ReadyFn = Callable[[Engine], str | None]
Status = Literal["succeeded", "failed", "not_due", "busy", "handed_back"]


@dataclass(frozen=True)
class Job:
    """A job the scheduler runs every `every`."""

    name: str
    every: timedelta
    run: JobFn
    description: str
    #: Checked under the job's lock before a run is claimed: None, or why it cannot run now (it is then busy).
    ready: ReadyFn | None = None


@dataclass(frozen=True)
class TimescaleJobStats:
    """One `CALL run_job(id)` of a TimescaleDB policy."""

    job_id: int
    proc_name: str
    relation: str | None
    seconds: float


@dataclass(frozen=True)
class CheckpointStats:
    """One CHECKPOINT of the embedded engine."""

    seconds: float


@dataclass(frozen=True)
class Outcome:
    """What one tick did (or did not do) with one job."""

    job: str
    description: str
    status: Status
    started_at: datetime | None = None
    seconds: float | None = None
    next_run: datetime | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        data: dict[str, Any] = policies.as_jsonable(asdict(self))
        return data


class JobUnavailable(RuntimeError):
    """The code a job needs is not installed."""


def _stats_dict(stats: Any) -> dict[str, Any]:
    if stats is None:
        return {}
    if is_dataclass(stats) and not isinstance(stats, type):
        data: dict[str, Any] = policies.as_jsonable(asdict(stats))
        return data
    return {"result": policies.as_jsonable(stats)}


def run_timescaledb_job(engine: Engine, job_id: int, proc_name: str, relation: str | None) -> TimescaleJobStats:
    """Run TimescaleDB job `job_id` now, in this process (`CALL run_job`)."""
    t0 = time.monotonic()
    scheduling.run_timescaledb_job(engine, job_id)
    seconds = time.monotonic() - t0
    return TimescaleJobStats(job_id=job_id, proc_name=proc_name, relation=relation, seconds=round(seconds, 3))


def run_checkpoint(engine: Engine) -> CheckpointStats:
    """Flush the embedded engine's WAL into its data files (it has no checkpointer of its own)."""
    t0 = time.monotonic()
    scheduling.checkpoint(engine)
    return CheckpointStats(seconds=round(time.monotonic() - t0, 3))


def run_alerts(engine: Engine, settings: Settings) -> Any:
    """Evaluate alerts with jobs.alerts.scan_alerts (imported here, lazily)."""
    # Lazy on purpose: alert evaluation is its own module (and its own work); the scheduler must start, and
    # run every other job, whatever happens to that import.
    try:
        from jobs.alerts import scan_alerts
    except ModuleNotFoundError as exc:
        if exc.name != ALERTS_MODULE:
            raise
        raise JobUnavailable(f"{ALERTS_MODULE} is not installed: alert evaluation cannot run") from None
    stats = scan_alerts(engine, settings)
    evaluate_policy_alerts(engine)
    return stats


def evaluate_policy_alerts(engine: Engine) -> alerts.KindStats:
    """Open, refresh and resolve `policy_failed` alerts: a policy job whose newest finished run, by TimescaleDB or
    by us, failed (db/timescaledb_jobs.py); one transaction."""
    with db.transaction(engine) as conn:
        alerts.lock_scans(conn)
        inputs = tsjobs.policy_alert_inputs(tsjobs.current_policy_statuses(conn))
        counts = alerts.evaluate_policy_alerts(conn, inputs)
    logger.info(
        "alert scan policy_failed: opened %d, refreshed %d, resolved %d",
        counts.opened,
        counts.refreshed,
        counts.resolved,
    )
    return counts


#: After taking jobs over, how long to let TimescaleDB's scheduler see the pause (it reads catalog changes each
#: time it wakes, before starting jobs, and marks a start before launching its worker) before the check that no
#: run of TimescaleDB's is going and our first run.
TAKEOVER_SETTLE_SECONDS = 1.0


@dataclass(frozen=True)
class Plan:
    """The jobs this database needs from us, and how runs are excluded on it."""

    info: edition.EditionInfo
    jobs: tuple[Job, ...]
    #: A real server: per-job session advisory locks on a dedicated connection (see the module docstring).
    session_locks: bool
    #: Whether TimescaleDB's own scheduler runs jobs successfully here (db/timescaledb_jobs.py).
    health: tsjobs.SchedulerHealth
    #: Taken-over TimescaleDB jobs to hand back to TimescaleDB at this tick (its runs succeed again).
    hand_backs: tuple[tsjobs.TimescaleJob, ...] = ()

    @property
    def runs_timescaledb_jobs(self) -> bool:
        """True when at least one TimescaleDB job is ours to run."""
        return any(j.name.startswith(job_runs.TIMESCALEDB_JOB_PREFIX) for j in self.jobs)


def _timescaledb_job(job: tsjobs.TimescaleJob) -> Job:
    return Job(
        name=job.name,
        every=job.schedule_interval,
        run=lambda eng: run_timescaledb_job(eng, job.job_id, job.proc_name, job.relation),
        description=job.description,
        ready=lambda eng: timescaledb_job_ready(eng, job.job_id),
    )


def timescaledb_job_ready(engine: Engine, job_id: int) -> str | None:
    """None if TimescaleDB job `job_id` is still ours and no run TimescaleDB started is going; else why not."""
    with engine.connect() as conn:
        job = tsjobs.get_job(conn, job_id)
    if job is None:
        return f"TimescaleDB job {job_id} no longer exists"
    if not job.taken_over or job.scheduled:
        return f"TimescaleDB job {job_id} is TimescaleDB's again"
    if job.running_in_timescaledb:
        return f"a run of job {job_id} that TimescaleDB started is still going: waiting for it to finish"
    return None


def _reconcile_timescaledb_jobs(
    engine: Engine, info: edition.EditionInfo, holder: str
) -> tuple[tsjobs.SchedulerHealth, list[tsjobs.TimescaleJob], list[tsjobs.TimescaleJob]]:
    """Take over the TimescaleDB jobs TimescaleDB cannot run; (health, jobs to run, jobs to hand back)."""
    with engine.connect() as conn:
        ts_jobs = tsjobs.list_jobs(conn) if info.community else []
        health = tsjobs.scheduler_health(conn, info, ts_jobs)
        runs = job_runs.get_runs(conn, [j.name for j in ts_jobs])
    ours: list[tsjobs.TimescaleJob] = []
    hand_backs: list[tsjobs.TimescaleJob] = []
    took = False
    for j in ts_jobs:
        decision = tsjobs.decide(j, health, runs.get(j.name))
        if decision.action == "take_over":
            with db.transaction(engine) as conn:
                if tsjobs.take_over(conn, j, decision, holder):
                    took = True
                    logger.warning(
                        "TimescaleDB job %d (%s) taken over by fleet jobs run and paused in TimescaleDB: %s",
                        j.job_id,
                        j.description,
                        decision.reason,
                    )
            ours.append(j)
        elif decision.action == "fleet":
            ours.append(j)
        elif decision.action == "hand_back":
            hand_backs.append(j)
        elif decision.action == "released":
            with db.transaction(engine) as conn:
                tsjobs.release(conn, j)
            logger.warning("TimescaleDB job %d (%s): %s", j.job_id, j.description, decision.reason)
    if took and not info.embedded:
        time.sleep(TAKEOVER_SETTLE_SECONDS)
    return health, ours, hand_backs


def plan_jobs(engine: Engine, settings: Settings, holder: str | None = None) -> Plan:
    """Which jobs to run on this database, with their intervals (read fresh: policies may have changed). Takes
    over the TimescaleDB jobs TimescaleDB's scheduler cannot run (see db/timescaledb_jobs.py)."""
    with engine.connect() as conn:
        info = edition.describe(conn)
    health, ours, hand_backs = _reconcile_timescaledb_jobs(engine, info, holder or default_holder())
    jobs: list[Job] = [_timescaledb_job(j) for j in ours]
    if not info.community:
        jobs.append(
            Job(
                "retention",
                timedelta(seconds=settings.jobs_retention_every_seconds),
                run_retention,
                "drop expired raw chunks (Apache edition: no retention policy)",
            )
        )
    if info.community:
        jobs.append(
            Job(
                "correlation",
                timedelta(seconds=settings.jobs_correlation_every_seconds),
                refresh_correlation,
                "materialise closed hours of the correlation rollup, recompute invalidated ones",
            )
        )
    jobs.append(
        Job(
            "alerts",
            timedelta(seconds=settings.jobs_alerts_every_seconds),
            lambda eng: run_alerts(eng, settings),
            "evaluate alerts",
        )
    )
    if info.embedded:
        jobs.append(
            Job(
                "checkpoint",
                timedelta(seconds=settings.jobs_checkpoint_every_seconds),
                run_checkpoint,
                "CHECKPOINT (the embedded engine has no checkpointer)",
            )
        )
    return Plan(
        info=info, jobs=tuple(jobs), session_locks=not info.embedded, health=health, hand_backs=tuple(hand_backs)
    )


def default_holder() -> str:
    """host:pid:random, so the record says which scheduler ran a job, and two in one process differ."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Scheduler:
    """Runs due jobs; `tick()` once, or `run_forever()` until stopped. Safe to run in several copies."""

    def __init__(self, engine: Engine, settings: Settings, *, holder: str | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.holder = holder or default_holder()
        self.lease = timedelta(seconds=settings.jobs_lease_seconds)

    def tick(self, stop: threading.Event | None = None) -> list[Outcome]:
        """Run every job that is due now, one after another; report on every job."""
        plan = plan_jobs(self.engine, self.settings, self.holder)
        names = [j.name for j in plan.jobs]
        with db.transaction(self.engine) as conn:
            job_runs.ensure_jobs(conn, names)
            runs = job_runs.get_runs(conn, names)
            now = job_runs.db_now(conn)
        outcomes = [self._hand_back(j, plan.session_locks) for j in plan.hand_backs]
        for job in plan.jobs:
            run = runs.get(job.name)
            if stop is not None and stop.is_set():
                break
            if not job_runs.is_due(run, job.every, now):
                assert run is not None and run.started_at is not None
                outcomes.append(Outcome(job.name, job.description, "not_due", next_run=run.started_at + job.every))
                continue
            outcomes.append(self._run_one(job, plan.session_locks))
        return outcomes

    def run_forever(self, stop: threading.Event, report: Callable[[list[Outcome]], None] | None = None) -> None:
        """Tick every FLEET_JOBS_TICK_SECONDS until `stop` is set; a database outage is logged and outlived."""
        logger.info(
            "scheduler %s started; looking for due jobs every %gs", self.holder, self.settings.jobs_tick_seconds
        )
        while not stop.is_set():
            try:
                outcomes = self.tick(stop)
            except SQLAlchemyError as exc:
                logger.warning(
                    "scheduler: database unavailable (%s); retrying in %gs",
                    exc.__cause__ or exc,
                    self.settings.jobs_tick_seconds,
                )
                outcomes = []
            if report is not None:
                report(outcomes)
            stop.wait(self.settings.jobs_tick_seconds)
        logger.info("scheduler %s stopped", self.holder)

    def _run_one(self, job: Job, session_locks: bool) -> Outcome:
        lock = scheduling.job_session_lock(self.engine, job.name) if session_locks else _held()
        with lock as got:
            if not got:
                return Outcome(job.name, job.description, "busy", error="running in another scheduler")
            not_ready = job.ready(self.engine) if job.ready is not None else None
            if not_ready is not None:
                return Outcome(job.name, job.description, "busy", error=not_ready)
            with db.transaction(self.engine) as conn:
                claim = job_runs.claim_run(
                    conn, job.name, self.holder, every=job.every, lease=self.lease, exclusive=session_locks
                )
            if claim is None:
                return Outcome(
                    job.name, job.description, "busy", error="claimed by another scheduler for this due time"
                )
            return self._execute(job, claim)

    def _hand_back(self, job: tsjobs.TimescaleJob, session_locks: bool) -> Outcome:
        """Give a taken-over job back to TimescaleDB, under its lock (no run of ours is then in progress)."""
        lock = scheduling.job_session_lock(self.engine, job.name) if session_locks else _held()
        with lock as got:
            if not got:
                return Outcome(job.name, job.description, "busy", error="running in another scheduler")
            with db.transaction(self.engine) as conn:
                fresh = tsjobs.get_job(conn, job.job_id)
                ours = job_runs.get_runs(conn, [job.name]).get(job.name)
                done = fresh is not None and fresh.taken_over and tsjobs.hand_back(conn, fresh, ours)
        if not done:
            return Outcome(job.name, job.description, "busy", error="no longer taken over")
        logger.warning(
            "TimescaleDB job %d (%s) handed back to TimescaleDB: its runs succeed", job.job_id, job.description
        )
        return Outcome(job.name, job.description, "handed_back")

    def _execute(self, job: Job, claim: job_runs.Claim) -> Outcome:
        t0 = time.monotonic()
        try:
            stats = _stats_dict(job.run(self.engine))
        except Exception as exc:
            seconds = time.monotonic() - t0
            error = f"{type(exc).__name__}: {exc}"[:2000]
            traceback = not isinstance(exc, JobUnavailable)
            logger.error("job %s failed after %.2fs: %s", job.name, seconds, error, exc_info=traceback)
            self._finish(claim, ok=False, error=error, stats={})
            return Outcome(job.name, job.description, "failed", claim.started_at, round(seconds, 3), error=error)
        except BaseException:
            self._finish(claim, ok=False, error="interrupted: the scheduler was stopped during the run", stats={})
            raise
        seconds = time.monotonic() - t0
        logger.info("job %s succeeded in %.2fs: %s", job.name, seconds, stats)
        self._finish(claim, ok=True, error=None, stats=stats)
        return Outcome(
            job.name,
            job.description,
            "succeeded",
            claim.started_at,
            round(seconds, 3),
            next_run=claim.started_at + job.every,
            stats=stats,
        )

    def _finish(self, claim: job_runs.Claim, *, ok: bool, error: str | None, stats: dict[str, Any]) -> None:
        try:
            with db.transaction(self.engine) as conn:
                recorded = job_runs.finish_run(conn, claim, ok=ok, error=error, stats=stats)
        except SQLAlchemyError as exc:
            logger.warning("job %s: could not record its outcome: %s", claim.job_name, exc.__cause__ or exc)
            return
        if not recorded:
            logger.warning("job %s: lease expired during the run; another scheduler took it over", claim.job_name)


@contextmanager
def _held() -> Iterator[bool]:
    yield True
