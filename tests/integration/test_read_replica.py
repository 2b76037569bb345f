"""DATABASE_READ_URL against a real streaming replica (native engine).

A primary PostgreSQL 15 + TimescaleDB cluster (wal_level=replica; initdb's default pg_hba already lets
`replication` connect from loopback, which the fixture checks) and a hot standby made from it with
`pg_basebackup -R`, streaming from it on another port. Migrations run on the primary and reach the standby
through WAL, like everything else.

How the tests know where a read went: WAL replay on the standby is paused, then the primary is changed. A read
served by the app that still shows the old state came from the standby; a write that succeeds, or a key that is
accepted (or refused) at once, went to the primary. After replay resumes the app's reads catch up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import port_for
import psycopg
import pytest
import sqlalchemy as sa
from flask import Flask
from pytest_postgresql.executors import PostgreSQLExecutor
from sqlalchemy.engine import Engine

from api import create_app
from config import Settings
from db import keys
from db.migrate import upgrade
from tests.conftest import PG_BIN, PG_LIB, TIMESCALEDB_OPTIONS, cluster_dir, make_test_engine, selected_engines
from tests.support.api import new_key
from tests.support.builders import meter_reading, vehicle_reading

pytestmark = pytest.mark.native

DBNAME = "fleet_replicated"
#: Every wait here is bounded: replay of a few statements takes milliseconds.
WAIT_S = 30.0


def _as_postgres(args: list[str]) -> list[str]:
    # PostgreSQL's tools refuse to run as root (and the suite runs as root in CI): run them as `postgres`.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class StandbyExecutor(PostgreSQLExecutor):
    """A hot standby of `primary`: its data directory is a `pg_basebackup -R` of the primary, not an initdb."""

    def __init__(self, primary: PostgreSQLExecutor, **kwargs: Any) -> None:
        self.primary = primary
        super().__init__(**kwargs)

    def init_directory(self) -> None:
        if self._directory_initialised:
            return
        self.clean_directory()
        # -R writes standby.signal and primary_conninfo; -X stream copies the WAL needed to start; -c fast
        # does not wait for the primary's next checkpoint.
        command = [
            str(PG_BIN / "pg_basebackup"),
            *("-h", self.primary.host, "-p", str(self.primary.port), "-U", self.primary.user),
            *("-D", self.datadir, "-R", "-X", "stream", "-c", "fast", "--no-password"),
        ]
        subprocess.run(_as_postgres(command), check=True, cwd="/", timeout=120, capture_output=True)
        self._directory_initialised = True


@dataclass
class Replication:
    primary: Engine
    standby: Engine
    primary_url: str
    standby_url: str


def _url(proc: PostgreSQLExecutor) -> str:
    return f"postgresql+psycopg://{proc.user}@{proc.host}:{proc.port}/{DBNAME}"


def _wait(what: str, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_S:g} s waiting for {what}")
        time.sleep(0.05)


def _scalar(engine: Engine, query: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(query), params).scalar_one()


def wait_for_replay(rep: Replication) -> None:
    """Until the standby has replayed everything the primary has written so far."""
    lsn = _scalar(rep.primary, "SELECT CAST(pg_current_wal_lsn() AS text)")
    _wait(
        f"replay of {lsn}",
        lambda: _scalar(rep.standby, "SELECT pg_last_wal_replay_lsn() >= CAST(:lsn AS pg_lsn)", lsn=lsn),
    )


def pause_replay(rep: Replication) -> None:
    _scalar(rep.standby, "SELECT CAST(pg_wal_replay_pause() AS text)")
    _wait("replay to pause", lambda: _scalar(rep.standby, "SELECT pg_get_wal_replay_pause_state()") == "paused")


def resume_replay(rep: Replication) -> None:
    _scalar(rep.standby, "SELECT CAST(pg_wal_replay_resume() AS text)")
    wait_for_replay(rep)


@pytest.fixture(scope="module")
def replication() -> Iterator[Replication]:
    """A primary and a streaming hot standby of it, both with TimescaleDB; the database migrated on the primary."""
    if "native" not in selected_engines():
        pytest.skip("native engine not selected (FLEET_TEST_ENGINES)")
    if not (PG_BIN / "pg_basebackup").exists() or not list(PG_LIB.glob("timescaledb-*.so")):
        pytest.fail("PostgreSQL 15 with TimescaleDB is required: run scripts/provision-native.sh")
    base, pg_ctl = cluster_dir("fleet-replica-")
    common = {"executable": pg_ctl, "host": "127.0.0.1", "unixsocketdir": str(base), "startparams": "-w"}
    primary = PostgreSQLExecutor(
        **common,
        port=port_for.select_random(),
        datadir=str(base / "primary"),
        logfile=str(base / "primary.log"),
        dbname=DBNAME,
        postgres_options=f"{TIMESCALEDB_OPTIONS} -c wal_level=replica -c max_wal_senders=4",
    )
    try:
        with primary:
            admin = f"host=127.0.0.1 port={primary.port} user={primary.user} dbname=postgres"
            with psycopg.connect(admin, autocommit=True) as conn:
                # initdb's pg_hba lets `replication` connect from loopback: the standby needs that entry.
                rules = conn.execute(
                    "SELECT count(*) FROM pg_hba_file_rules"
                    " WHERE 'replication' = ANY(database) AND type = 'host' AND address = '127.0.0.1'"
                ).fetchone()
                assert rules == (1,), "pg_hba.conf has no replication entry for 127.0.0.1"
                conn.execute(f"CREATE DATABASE {DBNAME}")
            standby = StandbyExecutor(
                primary,
                **common,
                port=port_for.select_random(),
                datadir=str(base / "standby"),
                logfile=str(base / "standby.log"),
                dbname=DBNAME,
                postgres_options=f"{TIMESCALEDB_OPTIONS} -c hot_standby=on",
            )
            with standby:
                rep = Replication(
                    primary=make_test_engine("native", _url(primary)),
                    standby=make_test_engine("native", _url(standby)),
                    primary_url=_url(primary),
                    standby_url=_url(standby),
                )
                try:
                    assert _scalar(rep.standby, "SELECT pg_is_in_recovery()") is True
                    _wait(
                        "the standby to stream from the primary",
                        lambda: _scalar(rep.standby, "SELECT count(*) FROM pg_stat_wal_receiver"
                                        " WHERE status = 'streaming'") == 1,
                    )  # fmt: skip
                    upgrade(rep.primary)  # on the primary only: the standby gets the schema by replay
                    wait_for_replay(rep)
                    yield rep
                finally:
                    rep.primary.dispose()
                    rep.standby.dispose()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def app(replication: Replication) -> Iterator[Flask]:
    settings = Settings.from_env(
        {
            "DATABASE_URL": replication.primary_url,
            "DATABASE_READ_URL": replication.standby_url,
            "FLEET_DB_POOL_SIZE": "2",
            "FLEET_RATE_LIMIT": "off",
            "FLEET_KEY_CACHE_SECONDS": "0",  # every request looks its key up: revocation shows at once
        }
    )
    app = create_app(settings)
    yield app
    app.extensions["fleet.db"].dispose()
    app.extensions["fleet.db_read"].dispose()
    # Leave the standby replaying and the database empty for the next test.
    if _scalar(replication.standby, "SELECT pg_get_wal_replay_pause_state()") != "not paused":
        resume_replay(replication)
    with replication.primary.begin() as conn:
        conn.execute(sa.text("TRUNCATE meter_readings, vehicle_readings, meters_current, vehicles_current,"
                             " vehicle_meter_mapping, api_keys, alerts"))  # fmt: skip
    wait_for_replay(replication)


def test_read_endpoints_are_served_by_the_replica_and_writes_by_the_primary(app, replication):
    admin_key, read_key = new_key(replication.primary, "admin"), new_key(replication.primary, "read")
    client = app.test_client()
    admin = {"X-API-Key": admin_key}
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    t0, t1 = now - timedelta(minutes=10), now - timedelta(minutes=5)
    window = f"startDate={(now - timedelta(hours=2)).isoformat()}&endDate={(now + timedelta(hours=1)).isoformat()}"
    window = window.replace("+", "%2B")

    mapping = {"vehicleId": "rep-v", "meterId": "rep-m", "validFrom": (now - timedelta(days=1)).isoformat()}
    mapped = client.post("/v1/mappings", json=mapping, headers=admin)
    assert mapped.status_code == 201, mapped.json
    stored = client.post(
        "/v1/telemetry/ingest",
        json=[meter_reading("rep-m", at=t0, kwh=0.5), vehicle_reading("rep-v", at=t0, kwh=0.45)],
        headers=admin,
    )
    assert stored.json == {"received": 2, "stored": 2, "duplicates": 0}
    wait_for_replay(replication)

    def reads() -> dict[str, Any]:
        meter = client.get("/v1/meters/rep-m", headers=admin)
        listing = client.get("/v1/vehicles", headers=admin)
        performance = client.get(f"/v1/analytics/performance/rep-v?{window}", headers=admin)
        fleet = client.get(f"/v1/analytics/fleet?{window}", headers=admin)
        alerts = client.get("/v1/alerts?status=all", headers=admin)
        for reply in (meter, listing, performance, fleet, alerts):
            assert reply.status_code == 200, reply.json
        return {
            "meter": (meter.json["recordedAt"], meter.json["kwhConsumedAc"]),
            "vehicles": [(v["vehicleId"], v["kwhDeliveredDc"]) for v in listing.json],
            "performance": performance.json["energyMetrics"]["totalAcConsumed"],
            "fleet": [(v["vehicleId"], v["totalDcDelivered"]) for v in fleet.json],
            "alerts": [a["deviceId"] for a in alerts.json],
        }

    before = reads()
    assert before == {
        "meter": (t0.isoformat(), 0.5),
        "vehicles": [("rep-v", 0.45)],
        "performance": 0.5,
        "fleet": [("rep-v", 0.45)],
        "alerts": [],
    }

    pause_replay(replication)
    # Writes go to the primary: accepted while the standby replays nothing (and could not accept them anyway).
    stored = client.post(
        "/v1/telemetry/ingest",
        json=[meter_reading("rep-m", at=t1, kwh=0.7), vehicle_reading("rep-v", at=t1, kwh=0.6)],
        headers=admin,
    )
    assert stored.json == {"received": 2, "stored": 2, "duplicates": 0}
    with replication.primary.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO alerts (kind, device_type, device_id) VALUES ('silent_device', 'meter', 'rep-m')")
        )
    assert _scalar(replication.primary, "SELECT count(*) FROM meter_readings WHERE meter_id = 'rep-m'") == 2
    assert _scalar(replication.standby, "SELECT count(*) FROM meter_readings WHERE meter_id = 'rep-m'") == 1

    # Status, listings, analytics and alerts still show the standby's (paused) state: they are read there.
    assert reads() == before

    # Key lookups stay on the primary: a key created now works at once, a key revoked now is refused at once,
    # although the standby knows neither change.
    newer_key = new_key(replication.primary, "read")
    assert client.get("/v1/meters/rep-m", headers={"X-API-Key": newer_key}).status_code == 200
    with replication.primary.begin() as conn:
        read_key_id = keys.find_active_key(conn, read_key).id
        keys.revoke_key(conn, read_key_id)
    assert client.get("/v1/meters/rep-m", headers={"X-API-Key": read_key}).status_code == 401
    # Mappings are read from the primary (an admin re-mapping a vehicle reads back what was just written).
    client.post("/v1/mappings", json={"vehicleId": "rep-v2", "meterId": "rep-m"}, headers=admin)
    listed = client.get("/v1/mappings?vehicleId=rep-v2", headers=admin)
    assert [m["meterId"] for m in listed.json] == ["rep-m"]

    resume_replay(replication)
    after = reads()
    assert after["meter"] == (t1.isoformat(), 0.7)
    assert after["vehicles"] == [("rep-v", 0.6)]
    assert after["performance"] == pytest.approx(1.2)
    assert after["fleet"] == [("rep-v", pytest.approx(1.05))]
    assert after["alerts"] == ["rep-m"]


def test_read_engine_is_the_standby_and_cannot_write(app, replication):
    read_engine, primary = app.extensions["fleet.db_read"], app.extensions["fleet.db"]
    assert _scalar(read_engine, "SELECT pg_is_in_recovery()") is True
    assert _scalar(primary, "SELECT pg_is_in_recovery()") is False
    with pytest.raises(sa.exc.InternalError, match="read-only transaction"), read_engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO alerts (kind, device_type, device_id) VALUES ('silent_device', 'meter', 'x')")
        )


def test_read_engine_cannot_write_even_when_its_url_names_a_primary(replication):
    # A promoted replica, or DATABASE_READ_URL set to the primary by mistake: the read engine's sessions are
    # read-only all the same, so nothing of the read path can write.
    settings = Settings.from_env(
        {
            "DATABASE_URL": replication.primary_url,
            "DATABASE_READ_URL": replication.primary_url,
            "FLEET_RATE_LIMIT": "off",
        }
    )
    app = create_app(settings)
    read_engine = app.extensions["fleet.db_read"]
    try:
        assert read_engine is not app.extensions["fleet.db"]
        assert _scalar(read_engine, "SELECT pg_is_in_recovery()") is False
        assert _scalar(read_engine, "SHOW default_transaction_read_only") == "on"
        with pytest.raises(sa.exc.InternalError, match="read-only transaction"), read_engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO alerts (kind, device_type, device_id) VALUES ('silent_device', 'meter', 'x')")
            )
        assert _scalar(app.extensions["fleet.db"], "SHOW default_transaction_read_only") == "off"
    finally:
        read_engine.dispose()
        app.extensions["fleet.db"].dispose()
