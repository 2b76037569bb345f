"""`fleet policies show|set` on both editions, and the Apache edition's own retention job.

Every test that changes a policy uses `restore_policies`: the session shares one migrated database per engine,
and later tests (test_rollups.py among them) expect migration 0002's windows.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.engine import Engine

from cli import main
from jobs.retention import run_retention
from tests.conftest import is_community
from tests.integration import alerts_stand_in, timescaledb_state

# Migration 0002's windows (and 0005's Apache retention): what every test must leave behind.
DEFAULT_CONFIG = (
    ("meter_readings", "policy_retention", "drop_after", "90 days"),
    ("vehicle_readings", "policy_retention", "drop_after", "90 days"),
    ("meter_readings", "policy_compression", "compress_after", "7 days"),
    ("vehicle_readings", "policy_compression", "compress_after", "7 days"),
    ("meter_readings_1h", "policy_retention", "drop_after", "1095 days"),
    ("vehicle_readings_1h", "policy_retention", "drop_after", "1095 days"),
    ("meter_readings_1h", "policy_refresh_continuous_aggregate", "start_offset", "30 days"),
    ("vehicle_readings_1h", "policy_refresh_continuous_aggregate", "start_offset", "30 days"),
    ("meter_readings_1h", "policy_refresh_continuous_aggregate", "end_offset", "1 hour"),
    ("vehicle_readings_1h", "policy_refresh_continuous_aggregate", "end_offset", "1 hour"),
)
DEFAULT_REFRESH_EVERY = "30 minutes"

JOBS = sa.text(
    "SELECT job_id, proc_name, hypertable_name, schedule_interval, config FROM timescaledb_information.jobs"
    " WHERE hypertable_name IS NOT NULL"
)
INTERVAL = sa.text("SELECT CAST(:t AS interval)")


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def fleet(engine: Engine, *args: str, env: dict[str, str] | None = None) -> Result:
    """Run the `fleet` CLI in-process against the test database."""
    return CliRunner().invoke(main, list(args), env={"DATABASE_URL": _url(engine), **(env or {})})


def _restore_defaults(engine: Engine) -> None:
    # Plain SQL, independent of the code under test.
    with engine.begin() as conn:
        if conn.execute(sa.text("SELECT current_setting('timescaledb.license')")).scalar_one() != "timescale":
            for table in ("meter_readings", "vehicle_readings"):
                conn.execute(
                    sa.text(
                        "INSERT INTO retention_settings (hypertable_name, drop_after) VALUES (:t, INTERVAL '90 days')"
                        " ON CONFLICT (hypertable_name) DO UPDATE SET drop_after = EXCLUDED.drop_after"
                    ),
                    {"t": table},
                )
            return
        for relation, proc, key, value in DEFAULT_CONFIG:
            conn.execute(
                sa.text(
                    "SELECT alter_job(job_id, config => jsonb_set(config, CAST(:path AS text[]),"
                    " to_jsonb(CAST(:v AS interval))))"
                    " FROM timescaledb_information.jobs WHERE hypertable_name = :r AND proc_name = :p"
                ),
                {"path": "{" + key + "}", "v": value, "r": relation, "p": proc},
            )
        conn.execute(
            sa.text(
                "SELECT alter_job(job_id, schedule_interval => CAST(:v AS interval))"
                " FROM timescaledb_information.jobs WHERE proc_name = 'policy_refresh_continuous_aggregate'"
            ),
            {"v": DEFAULT_REFRESH_EVERY},
        )


@pytest.fixture
def restore_policies(engine: Engine) -> Iterator[Engine]:
    """The migrated engine; migration 0002's policies (Apache: 0005's retention settings) restored afterwards."""
    yield engine
    _restore_defaults(engine)


def _jobs(engine: Engine) -> dict[tuple[str, str], sa.Row]:
    with engine.connect() as conn:
        return {(j.proc_name, j.hypertable_name): j for j in conn.execute(JOBS)}


def _interval(engine: Engine, text: str) -> timedelta:
    with engine.connect() as conn:
        return conn.execute(INTERVAL, {"t": text}).scalar_one()


def _retention_settings(engine: Engine) -> dict[str, timedelta]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT hypertable_name, drop_after FROM retention_settings")).all())


# --- show ----------------------------------------------------------------------------------------------------


def test_policies_show_reports_every_hypertable_and_aggregate(engine, engine_kind):
    fleet_runs_before = timescaledb_state.jobs_fleet_runs(engine_kind, engine) if is_community(engine_kind) else set()
    result = fleet(engine, "policies", "show", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    community = is_community(engine_kind)
    assert report["edition"]["license"] == ("timescale" if community else "apache")
    # Who runs each policy depends on TimescaleDB's own state (derived independently of the CLI), which a run of
    # TimescaleDB's that ends meanwhile can change: the CLI saw the state before or the state after.
    fleet_runs_after = timescaledb_state.jobs_fleet_runs(engine_kind, engine) if community else set()
    tables = {h["name"]: h for h in report["hypertables"]}
    rollups = {a["name"]: a for a in report["aggregates"]}
    assert set(tables) == {"meter_readings", "vehicle_readings"}
    assert set(rollups) == {"meter_readings_1h", "vehicle_readings_1h"}
    for name, h in tables.items():
        assert h["chunk_interval"] == "1d"
        assert h["retention"]["drop_after"] == "90d"
        if community:
            assert h["retention"]["by"] == "TimescaleDB policy"
            assert h["compression"] == {**h["compression"], "available": True, "compress_after": "7d"}
            assert h["retention"]["job"]["job_id"] >= 1000
            # Embedded (no background workers) or TimescaleDB's runs failing: `fleet jobs run` runs the policies.
            job = h["retention"]["job"]
            assert job["run_by"] in {
                "fleet jobs run" if job["job_id"] in runs else "TimescaleDB"
                for runs in (fleet_runs_before, fleet_runs_after)
            }
        else:
            assert h["retention"]["by"] == "fleet jobs run"
            assert h["retention"]["job"]["job"] == "retention"
            assert h["compression"] == {"available": False, "reason": "unavailable on the Apache edition"}
        a = rollups[f"{name}_1h"]
        if community:
            refresh = a["refresh"]
            assert (refresh["start_offset"], refresh["end_offset"], refresh["schedule_interval"]) == (
                "30d",
                "1h",
                "30m",
            )
            assert refresh["job"]["schedule_interval"] == "30m"
            assert a["retention"]["drop_after"] == "1095d"
        else:
            assert a["kind"] == "plain view" and a["refresh"] is None and a["retention"] is None

    if community:
        corr = report["correlation_rollup"]
        assert (corr["name"], corr["kept_by"]) == ("vehicle_correlation_1h", "`fleet jobs run` (job `correlation`)")
        assert isinstance(corr["pending_invalidations"], int)
    else:
        assert "correlation_rollup" not in report

    human = fleet(engine, "policies", "show")
    assert human.exit_code == 0, human.output
    assert "meter_readings_1h" in human.stdout
    if community:
        assert "refresh from 30d to 1h ago every 30m; kept 1095d" in human.stdout
        assert "vehicle_correlation_1h" in human.stdout and "vehicle hours to recompute" in human.stdout
    else:
        assert "unavailable on the Apache edition" in human.stdout


def test_policies_help_and_usage_errors(engine):
    assert fleet(engine, "policies", "--help").exit_code == 0
    assert "--raw-retention" in fleet(engine, "policies", "set", "--help").stdout
    nothing = fleet(engine, "policies", "set")
    assert nothing.exit_code == 2
    assert "nothing to change" in nothing.stderr
    bad = fleet(engine, "policies", "set", "--raw-retention", "3 months")
    assert bad.exit_code == 2
    assert "is not an interval" in bad.stderr and "90d" in bad.stderr
    zero = fleet(engine, "policies", "set", "--refresh-every", "0m")
    assert zero.exit_code == 2
    assert "longer than zero" in zero.stderr


def test_policies_show_unreachable_database_is_a_clear_error():
    result = CliRunner().invoke(
        main,
        ["policies", "show"],
        env={"DATABASE_URL": "postgresql://x@127.0.0.1:1/db", "FLEET_DB_CONNECT_TIMEOUT": "2"},
    )
    assert result.exit_code == 1
    assert "cannot read the policies" in result.stderr


# --- set: refusals --------------------------------------------------------------------------------------------


@pytest.mark.community
@pytest.mark.parametrize(
    ("args", "says"),
    [
        # Raw history dropped while the refresh window still re-reads it.
        (
            ["--raw-retention", "20d"],
            ["raw retention 20d would drop raw readings the rollups have not finished with", "--raw-retention 31d"],
        ),
        # ... the same reached from the other side: a 90-day window plus the 1-day margin passes 90 days of raw.
        (
            ["--refresh-start", "90d"],
            ["raw retention 90d would drop raw readings", "--refresh-start 89d or less"],
        ),
        # Rollups kept for less time than raw history.
        (["--rollup-retention", "60d"], ["rollup retention 60d must be longer than raw retention 90d", "91d"]),
        (["--raw-retention", "2000d"], ["rollup retention 1095d must be longer than raw retention 2000d"]),
        # Refresh windows that are empty, backwards, too small or refreshed too rarely.
        (["--refresh-end", "30d"], ["refresh start 30d must reach further back than refresh end 30d"]),
        (["--refresh-end", "40d"], ["refresh start 30d must reach further back than refresh end 40d"]),
        (["--refresh-end", "30m"], ["refresh end 30m is less than one bucket (1h)", "--refresh-end 1h"]),
        (["--refresh-end", "719h"], ["the refresh window (30d to 29d23h ago) must cover at least two buckets"]),
        (["--refresh-every", "20d"], ["refreshing every 20d over a 29d23h window", "--refresh-every"]),
        # Late readings the API accepts would never reach the rollups.
        (["--refresh-start", "7d"], ["refresh start 7d is shorter than the oldest reading the API accepts"]),
        # Chunks dropped before they are ever compressed.
        (["--compress-after", "90d"], ["compress after 90d is not shorter than raw retention 90d", "89d or less"]),
    ],
)
def test_policies_set_refuses_unsafe_windows(restore_policies, args, says):
    before = _jobs(restore_policies)
    result = fleet(restore_policies, "policies", "set", *args)
    assert result.exit_code == 3, result.output
    assert "refused, nothing was changed" in result.stderr
    for text in says:
        assert text in result.stderr
    # One line per reason, naming both relations it applies to.
    assert "meter_readings" in result.stderr and "vehicle_readings" in result.stderr
    assert {k: (j.config, j.schedule_interval) for k, j in _jobs(restore_policies).items()} == {
        k: (j.config, j.schedule_interval) for k, j in before.items()
    }


@pytest.mark.community
def test_policies_set_refusal_is_whole_even_when_one_part_is_safe(restore_policies):
    before = _jobs(restore_policies)
    result = fleet(restore_policies, "policies", "set", "--compress-after", "3d", "--raw-retention", "10d")
    assert result.exit_code == 3
    assert _jobs(restore_policies) == before


@pytest.mark.apache
def test_policies_set_apache_refuses_compression_and_refresh(restore_policies):
    compress = fleet(restore_policies, "policies", "set", "--compress-after", "3d")
    assert compress.exit_code == 2
    assert "compression is unavailable on the Apache edition" in compress.stderr
    refresh = fleet(restore_policies, "policies", "set", "--refresh-every", "1h", "--raw-retention", "120d")
    assert refresh.exit_code == 2
    assert "nothing to refresh" in refresh.stderr
    rollups = fleet(restore_policies, "policies", "set", "--rollup-retention", "2000d")
    assert rollups.exit_code == 2
    assert "keep exactly what raw retention keeps" in rollups.stderr
    short = fleet(restore_policies, "policies", "set", "--raw-retention", "10d")
    assert short.exit_code == 3
    assert "would drop readings the API still accepts" in short.stderr
    assert set(_retention_settings(restore_policies).values()) == {timedelta(days=90)}


# --- set: accepted changes ----------------------------------------------------------------------------------


@pytest.mark.community
def test_policies_set_changes_every_window_in_one_go(restore_policies):
    before = _jobs(restore_policies)
    result = fleet(
        restore_policies,
        "policies",
        "set",
        "--raw-retention",
        "120d",
        "--rollup-retention",
        "2000d",
        "--compress-after",
        "3d",
        "--refresh-start",
        "40d",
        "--refresh-end",
        "2h",
        "--refresh-every",
        "1h",
        "--json",
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["applied"] is True and len(out["changes"]) == 12
    # Read back from TimescaleDB itself.
    jobs = _jobs(restore_policies)
    assert {k: j.job_id for k, j in jobs.items()} == {k: j.job_id for k, j in before.items()}  # altered, not re-added
    for table in ("meter_readings", "vehicle_readings"):
        rollup = f"{table}_1h"
        assert _interval(restore_policies, jobs[("policy_retention", table)].config["drop_after"]) == timedelta(
            days=120
        )
        compress = jobs[("policy_compression", table)].config["compress_after"]
        assert _interval(restore_policies, compress) == timedelta(days=3)
        kept = jobs[("policy_retention", rollup)].config["drop_after"]
        assert _interval(restore_policies, kept) == timedelta(days=2000)
        refresh = jobs[("policy_refresh_continuous_aggregate", rollup)]
        assert _interval(restore_policies, refresh.config["start_offset"]) == timedelta(days=40)
        assert _interval(restore_policies, refresh.config["end_offset"]) == timedelta(hours=2)
        assert refresh.schedule_interval == timedelta(hours=1)
    # The report printed with the change is read inside the same transaction: it shows the new windows.
    assert {a["refresh"]["start_offset"] for a in out["policies"]["aggregates"]} == {"40d"}

    again = fleet(restore_policies, "policies", "set", "--raw-retention", "120d")
    assert again.exit_code == 0
    assert "nothing to change" in again.stdout


@pytest.mark.community
def test_policies_set_dry_run_changes_nothing(restore_policies):
    before = _jobs(restore_policies)
    result = fleet(restore_policies, "policies", "set", "--raw-retention", "120d", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would change" in result.stdout and "raw retention 90d -> 120d" in result.stdout
    assert _jobs(restore_policies) == before


@pytest.mark.apache
def test_policies_set_apache_updates_the_retention_setting(restore_policies):
    result = fleet(restore_policies, "policies", "set", "--raw-retention", "120d")
    assert result.exit_code == 0, result.output
    assert "meter_readings: raw retention 90d -> 120d" in result.stdout
    assert "compression: unavailable on the Apache edition" in result.stdout
    assert _retention_settings(restore_policies) == {
        "meter_readings": timedelta(days=120),
        "vehicle_readings": timedelta(days=120),
    }
    shown = json.loads(fleet(restore_policies, "policies", "show", "--json").stdout)
    assert {h["retention"]["drop_after"] for h in shown["hypertables"]} == {"120d"}


# --- the Apache retention job ---------------------------------------------------------------------------------

INSERT_METER = sa.text(
    "INSERT INTO meter_readings (meter_id, recorded_at, kwh_consumed_ac, voltage) VALUES (:id, :t, 0.25, 230)"
)
INSERT_VEHICLE = sa.text(
    "INSERT INTO vehicle_readings (vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp)"
    " VALUES (:id, :t, 50, 0.2, 30)"
)
CHUNKS = sa.text(
    "SELECT hypertable_name, range_start, range_end FROM timescaledb_information.chunks"
    " WHERE hypertable_name IN ('meter_readings', 'vehicle_readings')"
)
AGES_DAYS = (400, 200, 95, 89, 45, 1)  # 1-day chunks: one chunk per age


def _load_ages(engine: Engine) -> datetime:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for days in AGES_DAYS:
            t = now - timedelta(days=days)
            conn.execute(INSERT_METER, [{"id": f"ret-m{i}", "t": t} for i in range(3)])
            conn.execute(INSERT_VEHICLE, [{"id": f"ret-v{i}", "t": t} for i in range(3)])
    return now


def _ages_left(engine: Engine, table: str, now: datetime) -> list[int]:
    with engine.connect() as conn:
        times = conn.execute(sa.text(f"SELECT DISTINCT recorded_at FROM {table} ORDER BY 1")).scalars().all()
    return sorted((round((now - t) / timedelta(days=1)) for t in times), reverse=True)


@pytest.mark.apache
def test_retention_job_drops_only_expired_chunks(clean_db, restore_policies, monkeypatch, tmp_path):
    now = _load_ages(clean_db)
    with clean_db.connect() as conn:
        assert len(conn.execute(CHUNKS).all()) == 2 * len(AGES_DAYS)
    monkeypatch.setitem(sys.modules, "jobs.alerts", alerts_stand_in)

    result = fleet(clean_db, "jobs", "run", "--once", "--json", env={"FLEET_TEST_ALERTS_LOG": str(tmp_path / "a")})
    assert result.exit_code == 0, result.output
    outcomes = {o["job"]: o for o in json.loads(result.stdout)["jobs"]}
    assert outcomes["retention"]["status"] == "succeeded"
    dropped = {t["hypertable"]: t["chunks"] for t in outcomes["retention"]["stats"]["tables"]}
    assert {k: len(v) for k, v in dropped.items()} == {"meter_readings": 3, "vehicle_readings": 3}

    # The chunks of 400, 200 and 95 days ago ended before the 90-day cutoff: gone. The chunk holding the
    # 89-day-old readings ends after the cutoff: kept whole, like every younger one.
    for table in ("meter_readings", "vehicle_readings"):
        assert _ages_left(clean_db, table, now) == [89, 45, 1]
    with clean_db.connect() as conn:
        chunks = conn.execute(CHUNKS).all()
        assert len(chunks) == 2 * 3
        assert min(c.range_end for c in chunks) > now - timedelta(days=90)
        counts = conn.execute(sa.text("SELECT count(*) FROM meter_readings WHERE meter_id LIKE 'ret-%'")).scalar_one()
        assert counts == 3 * 3

    # Safe to re-run: nothing more to drop.
    assert run_retention(clean_db).chunks_dropped == 0

    # A shorter retention takes effect at the next run (job_runs is reset so the job is due again).
    assert fleet(clean_db, "policies", "set", "--raw-retention", "60d").exit_code == 0
    with clean_db.begin() as conn:
        conn.execute(sa.text("DELETE FROM job_runs"))
    again = fleet(clean_db, "jobs", "run", "--once", env={"FLEET_TEST_ALERTS_LOG": str(tmp_path / "a")})
    assert again.exit_code == 0, again.output
    for table in ("meter_readings", "vehicle_readings"):
        assert _ages_left(clean_db, table, now) == [45, 1]


@pytest.mark.apache
def test_retention_job_without_settings_drops_nothing(clean_db, restore_policies):
    _load_ages(clean_db)
    with clean_db.begin() as conn:
        conn.execute(sa.text("DELETE FROM retention_settings"))
    assert run_retention(clean_db).tables == ()
    with clean_db.connect() as conn:
        assert len(conn.execute(CHUNKS).all()) == 2 * len(AGES_DAYS)
    shown = json.loads(fleet(clean_db, "policies", "show", "--json").stdout)
    assert {h["retention"]["drop_after"] for h in shown["hypertables"]} == {None}
