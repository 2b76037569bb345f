"""Policy failures as alerts; which TimescaleDB jobs `fleet jobs run` has taken over; a scheduler probe job

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03

Why: TimescaleDB's own background scheduler may fail every job it runs (PostgreSQL 15.20 with TimescaleDB
2.28.3: `cannot drop portal "" while it is being set up`) while `CALL run_job(id)` from a session succeeds, so
refresh, compression and retention silently stop. `fleet jobs run` now detects that and runs those jobs itself
(jobs/scheduler.py), and ops must see a failing policy:
- `alerts` accepts kind `policy_failed` about device_type `job` (device_id: the job's name,
  `timescaledb_job_<id>`, or `retention` on the Apache edition);
- `timescaledb_job_takeovers`: one row per TimescaleDB job `fleet jobs run` runs instead of TimescaleDB, with
  why and since when. The job itself is paused in TimescaleDB (`alter_job(id, scheduled => false)`) so the two
  never run it at once; the row tells that pause apart from an operator's, and lets the job be handed back;
- Community edition only: `fleet_scheduler_probe`, a no-op procedure run by TimescaleDB every
  PROBE_INTERVAL as a job that always stays with TimescaleDB: its job_stats say whether TimescaleDB's own runs
  currently succeed on this server.

Cost: one new empty table, two CHECK constraints of `alerts` replaced (a scan of `alerts`, which is small),
one job. Well under a second on both editions. Downgrade hands every taken-over job back to TimescaleDB first.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

OLD_KINDS = ("low_efficiency", "correlation_lost", "silent_device")
OLD_DEVICE_TYPES = ("meter", "vehicle")
KINDS = (*OLD_KINDS, "policy_failed")
DEVICE_TYPES = (*OLD_DEVICE_TYPES, "job")
TAKEOVER_REASONS = ("scheduler_absent", "scheduler_failing", "job_failed")
PROBE = "fleet_scheduler_probe"
PROBE_INTERVAL = "5 minutes"

CREATE_PROBE = f"""
CREATE PROCEDURE {PROBE}(job_id integer, config jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    -- Deliberately empty: its success or failure in timescaledb_information.job_stats is the signal.
    NULL;
END
$$
"""


def _community() -> bool:
    license_ = op.get_bind().execute(sa.text("SELECT current_setting('timescaledb.license')")).scalar_one()
    return license_ == "timescale"


def _replace_checks(kinds: tuple[str, ...], device_types: tuple[str, ...]) -> None:
    op.drop_constraint(op.f("alerts_kind_check"), "alerts", type_="check")
    op.drop_constraint(op.f("alerts_device_type_check"), "alerts", type_="check")
    op.create_check_constraint(op.f("alerts_kind_check"), "alerts", f"kind IN {kinds!r}")
    op.create_check_constraint(op.f("alerts_device_type_check"), "alerts", f"device_type IN {device_types!r}")


def upgrade() -> None:
    _replace_checks(KINDS, DEVICE_TYPES)
    op.create_table(
        "timescaledb_job_takeovers",
        sa.Column("job_id", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("taken_by", sa.Text, nullable=True),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("job_id", name="timescaledb_job_takeovers_pkey"),
        sa.CheckConstraint(f"reason IN {TAKEOVER_REASONS!r}", name=op.f("timescaledb_job_takeovers_reason_check")),
    )
    if _community():
        op.execute(sa.text(CREATE_PROBE))
        op.execute(
            sa.text(f"SELECT add_job('{PROBE}', CAST(:every AS interval), initial_start => now())").bindparams(
                every=PROBE_INTERVAL
            )
        )


def downgrade() -> None:
    if _community():
        # Give TimescaleDB back every job it was relieved of, or they would stay paused with nobody running them.
        op.execute(
            sa.text(
                "SELECT alter_job(t.job_id, scheduled => true) FROM timescaledb_job_takeovers t"
                " JOIN timescaledb_information.jobs j ON j.job_id = t.job_id"
            )
        )
        op.execute(sa.text(f"SELECT delete_job(job_id) FROM timescaledb_information.jobs WHERE proc_name = '{PROBE}'"))
        op.execute(sa.text(f"DROP PROCEDURE IF EXISTS {PROBE}(integer, jsonb)"))
    op.drop_table("timescaledb_job_takeovers")
    op.execute(sa.text("DELETE FROM alerts WHERE kind = 'policy_failed' OR device_type = 'job'"))
    _replace_checks(OLD_KINDS, OLD_DEVICE_TYPES)
