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
import threading
import time
from collections import Counter
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
from tests.conftest import (
    PG_BIN,
    PG_LIB,
    TIMESCALEDB_OPTIONS,
    cluster_dir,
    make_test_engine,
    selected_engines,
    truncate_all,
)
from tests.integration.gunicorn_server import gunicorn, http
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
    standby_proc: PostgreSQLExecutor


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
                    standby_proc=standby,
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
    truncate_all(replication.primary)
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


# --- a replica that goes away or falls behind (issue 16) -----------------------------------------------------

#: The replica is probed this often by each API process in these tests (FLEET_READ_REPLICA_CHECK_S).
CHECK_S = 0.2
#: Reads that may still fail once the replica stops: those in flight, and those started before the next probe.
FALLBACK_BOUND_S = 2.0
#: Slowest answer allowed: a read on a replica that just went away fails at once (connection reset or refused).
LONGEST_BOUND_S = 3.5


def _restart_standby(rep: Replication) -> None:
    if not rep.standby_proc.running():
        rep.standby_proc.start()
    rep.standby.dispose()

    def streaming() -> bool:
        try:
            return _scalar(rep.standby, "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'") == 1
        except sa.exc.OperationalError:  # still starting up (not yet accepting connections)
            return False

    _wait("the standby to stream again", streaming)
    wait_for_replay(rep)


@dataclass
class Exchange:
    started: float
    latency: float
    status: int
    retry_after: str | None


class _Traffic:
    """A device posting new readings and a dashboard reading status and analytics, against one server."""

    def __init__(self, url: str, device_key: str, read_key: str) -> None:
        self.url, self.device_key, self.read_key = url, device_key, read_key
        self.stop = threading.Event()
        self.writes: list[tuple[Exchange, str]] = []
        self.reads: list[Exchange] = []
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._write, self._read)]
        for thread in self.threads:
            thread.start()

    def _timed(self, path: str, body: object | None, key: str) -> Exchange:
        started = time.monotonic()
        reply = http(self.url + path, body, key=key)
        return Exchange(started, time.monotonic() - started, reply.status, reply.headers.get("retry-after"))

    def _write(self) -> None:
        base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        n = 0
        while not self.stop.is_set():
            n += 1
            at = base + timedelta(seconds=n)
            exchange = self._timed("/v1/telemetry/ingest", meter_reading("lost-m", at=at), self.device_key)
            self.writes.append((exchange, at.isoformat()))
            time.sleep(0.05)

    def _read(self) -> None:
        while not self.stop.is_set():
            for path in ("/v1/meters/lost-m", "/v1/meters", "/v1/analytics/fleet"):
                self.reads.append(self._timed(path, None, self.read_key))
            time.sleep(0.05)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


@pytest.mark.parametrize("fallback", ["primary", "unavailable"])
def test_replica_stopped_mid_run_reads_fall_back_and_ingest_goes_on(replication, tmp_path, fallback):
    env = {
        "DATABASE_URL": replication.primary_url,
        "DATABASE_READ_URL": replication.standby_url,
        "FLEET_RATE_LIMIT": "off",
        "FLEET_READ_REPLICA_CHECK_S": str(CHECK_S),
        "FLEET_READ_REPLICA_FALLBACK": fallback,
    }
    device_key, read_key = new_key(replication.primary, "device"), new_key(replication.primary, "read")
    try:
        with gunicorn(env, tmp_path / "gunicorn.log", workers=2, threads=2) as server:
            traffic = _Traffic(server.url, device_key, read_key)
            try:
                time.sleep(2.0)
                ready_before = http(server.url + "/ready").json()["replica"]
                replication.standby_proc.stop()
                stopped_at = time.monotonic()
                time.sleep(2 * FALLBACK_BOUND_S)
                ready_down = http(server.url + "/ready")
                metrics = http(server.url + "/metrics").body.decode()
                restarted_at = time.monotonic()  # before: reads may reach the replica as soon as it is back
                _restart_standby(replication)
                # Each worker finds it well again at its next probe (after a failed connect, its engine waits a
                # second before it tries the replica again).
                deadline = time.monotonic() + 10
                while (ready_after := http(server.url + "/ready").json()["replica"])["usable"] is not True:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
            finally:
                traffic.finish()
    finally:
        _restart_standby(replication)

    with replication.primary.connect() as conn:
        stored = [
            r.astimezone(UTC).isoformat()
            for r in conn.execute(sa.text("SELECT recorded_at FROM meter_readings WHERE meter_id = 'lost-m'")).scalars()
        ]
    truncate_all(replication.primary)
    acknowledged = [at for exchange, at in traffic.writes if exchange.status == 200]
    down = [r for r in traffic.reads if stopped_at + FALLBACK_BOUND_S <= r.started < restarted_at]
    longest = max(e.latency for e in [*traffic.reads, *(w for w, _ in traffic.writes)])
    print(
        f"\n[replica lost, fallback {fallback}] sent={len(traffic.writes)} acknowledged={len(acknowledged)}"
        f" stored={len(stored)} duplicated={len(stored) - len(set(stored))}, reads={len(traffic.reads)}"
        f" reads while down={dict(Counter(r.status for r in down))},"
        f" longest={longest * 1000:.0f} ms, ready while down={ready_down.status} {ready_down.json()['replica']}"
    )
    assert ready_before["usable"] is True and ready_before["reads_go_to"] == "replica"
    # Ingest never noticed: every reading acknowledged, stored exactly once.
    assert {w.status for w, _ in traffic.writes} == {200}
    assert sorted(stored) == sorted(acknowledged) and len(set(stored)) == len(stored)
    assert longest <= LONGEST_BOUND_S
    assert down, "no read while the replica was down: the test proves nothing"
    if fallback == "primary":
        assert {r.status for r in down} == {200}
        assert ready_down.json()["replica"]["reads_go_to"] == "primary"
        assert 'fleet_reads_fallen_back_total{outcome="primary"}' in metrics
    else:
        assert {r.status for r in down} == {503} and all(r.retry_after for r in down)
        assert ready_down.json()["replica"]["reads_go_to"] == "nowhere (503)"
        assert 'fleet_reads_fallen_back_total{outcome="unavailable"}' in metrics
    assert ready_down.status == 200 and ready_down.json()["replica"]["usable"] is False
    assert "fleet_read_replica_usable 0.0" in metrics
    assert ready_after["usable"] is True and ready_after["reads_go_to"] == "replica"


def test_lagging_replica_is_not_read_until_it_catches_up(replication):
    """Replay paused and the primary written: past FLEET_READ_REPLICA_MAX_LAG_S, reads show the primary's data."""
    settings = Settings.from_env(
        {
            "DATABASE_URL": replication.primary_url,
            "DATABASE_READ_URL": replication.standby_url,
            "FLEET_RATE_LIMIT": "off",
            "FLEET_READ_REPLICA_CHECK_S": str(CHECK_S),
            "FLEET_READ_REPLICA_MAX_LAG_S": "1",
        }
    )
    app = create_app(settings)
    client = app.test_client()
    headers = {"X-API-Key": new_key(replication.primary, "admin")}
    now = datetime.now(UTC).replace(microsecond=0)
    try:
        assert client.post("/v1/telemetry/ingest", json=meter_reading("lag-m", at=now - timedelta(minutes=2)),
                           headers=headers).status_code == 200  # fmt: skip
        wait_for_replay(replication)
        pause_replay(replication)
        newer = now - timedelta(minutes=1)
        assert client.post("/v1/telemetry/ingest", json=meter_reading("lag-m", at=newer, kwh=0.9),
                           headers=headers).status_code == 200  # fmt: skip
        _wait("the replica to count as lagging", lambda: client.get("/ready").json["replica"]["usable"] is False)
        replica = client.get("/ready").json["replica"]
        meter = client.get("/v1/meters/lag-m", headers=headers).json
        print(f"\n[replica lagging] {replica}; read {meter['recordedAt']} {meter['kwhConsumedAc']}")
        assert replica["reason"].startswith("lagging") and replica["reads_go_to"] == "primary"
        assert (meter["recordedAt"], meter["kwhConsumedAc"]) == (newer.isoformat(), 0.9)  # the primary's
        resume_replay(replication)
        _wait("the replica to be read again", lambda: client.get("/ready").json["replica"]["usable"] is True)
    finally:
        app.extensions["fleet.db"].dispose()
        app.extensions["fleet.db_read"].dispose()
        if _scalar(replication.standby, "SELECT pg_get_wal_replay_pause_state()") != "not paused":
            resume_replay(replication)
        truncate_all(replication.primary)
        wait_for_replay(replication)
