"""`fleet demo seed` on both engines: mappings and keys exist, the keys work, and a re-run is idempotent."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

import db
from api import create_app
from cli import main
from config import Settings
from db import demo, keys, mappings


@pytest.fixture
def seed(clean_db):
    """Run `fleet demo seed ARGS --json` against the test database; returns the parsed output."""
    runner = CliRunner()
    env = {"DATABASE_URL": clean_db.url.render_as_string(hide_password=False)}

    def invoke(*args: str) -> dict:
        result = runner.invoke(main, ["demo", "seed", *args, "--json"], env=env)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    return invoke


def open_mappings(engine, prefix: str) -> dict[str, tuple[str, datetime]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT vehicle_id, meter_id, valid_from FROM vehicle_meter_mapping"
                " WHERE valid_to IS NULL AND vehicle_id LIKE :p"
            ),
            {"p": prefix + "%"},
        )
        return {r.vehicle_id: (r.meter_id, r.valid_from) for r in rows}


def active_keys(engine) -> list[keys.ApiKey]:
    with engine.connect() as conn:
        return [k for k in keys.list_keys(conn) if k.active]


def test_seed_maps_vehicle_i_to_meter_i_and_issues_three_keys(seed, clean_db):
    out = seed("--meters", "3", "--vehicles", "3")
    assert out["mappings"]["created"] == 3 and out["mappings"]["skipped"] == []
    mapped = open_mappings(clean_db, "demo-")
    assert {v: m for v, (m, _) in mapped.items()} == {
        "demo-vehicle-00001": "demo-meter-00001",
        "demo-vehicle-00002": "demo-meter-00002",
        "demo-vehicle-00003": "demo-meter-00003",
    }
    # Valid from the start of the previous hour: the current hour's AC is joined through it.
    now = datetime.now(UTC)
    for _, valid_from in mapped.values():
        assert valid_from.minute == valid_from.second == valid_from.microsecond == 0
        assert now - timedelta(hours=2) < valid_from <= now - timedelta(hours=1)

    issued = out["keys"]
    assert set(issued) == {"device", "read", "admin"}
    with clean_db.connect() as conn:
        for role, k in issued.items():
            found = keys.find_active_key(conn, k["key"])
            assert found is not None and found.role == role and found.device_id is None  # device key: unbound
        # Only hashes are stored.
        stored = conn.execute(sa.text("SELECT key_hash, key_prefix FROM api_keys")).all()
    plaintexts = {k["key"] for k in issued.values()}
    assert not plaintexts & {value for row in stored for value in row}
    assert out["urls"]["performance"] == "http://127.0.0.1:8000/v1/analytics/performance/demo-vehicle-00001"


def test_seed_again_is_idempotent_and_rotates_the_keys(seed, clean_db):
    first = seed("--meters", "3", "--vehicles", "3")
    mapped = open_mappings(clean_db, "demo-")
    second = seed("--meters", "3", "--vehicles", "3")
    assert second["mappings"]["created"] == 0 and second["mappings"]["unchanged"] == 3
    assert open_mappings(clean_db, "demo-") == mapped
    with clean_db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM vehicle_meter_mapping")).scalar_one() == 3
    # One active key per demo role: the first run's keys were revoked, the new ones work.
    assert sorted(second["revoked_key_ids"]) == sorted(k["id"] for k in first["keys"].values())
    assert sorted(k.id for k in active_keys(clean_db)) == sorted(k["id"] for k in second["keys"].values())
    with clean_db.connect() as conn:
        assert keys.find_active_key(conn, first["keys"]["read"]["key"]) is None
        assert keys.find_active_key(conn, second["keys"]["read"]["key"]) is not None
    # Growing the fleet adds only the new pairs.
    third = seed("--meters", "5", "--vehicles", "5", "--no-keys")
    assert (third["mappings"]["created"], third["mappings"]["unchanged"], third["keys"]) == (2, 3, None)
    assert len(active_keys(clean_db)) == 3


def test_seed_leaves_an_operators_remap_alone(seed, clean_db):
    seed("--meters", "2", "--vehicles", "2", "--no-keys")
    with db.transaction(clean_db) as conn:
        mappings.remap_vehicle(conn, "demo-vehicle-00001", "depot-7-charger-3")
    again = seed("--meters", "2", "--vehicles", "2", "--no-keys")
    assert again["mappings"]["skipped"] == [
        {
            "vehicle_id": "demo-vehicle-00001",
            "wanted_meter_id": "demo-meter-00001",
            "current_meter_id": "depot-7-charger-3",
        }
    ]
    assert open_mappings(clean_db, "demo-")["demo-vehicle-00001"][0] == "depot-7-charger-3"


def test_seed_with_more_vehicles_than_meters_and_a_prefix(seed, clean_db):
    out = seed("--meters", "1", "--vehicles", "3", "--prefix", "t1-")
    assert out["mappings"]["created"] == 1
    assert {v: m for v, (m, _) in open_mappings(clean_db, "t1-").items()} == {"t1-vehicle-00001": "t1-meter-00001"}
    assert {k["name"] for k in out["keys"].values()} == {
        demo.demo_key_name("t1-", role) for role in ("device", "read", "admin")
    }


def test_seeded_vehicle_is_known_to_the_api_before_any_reading(seed, clean_db):
    out = seed("--meters", "1", "--vehicles", "1")
    app = create_app(Settings.from_env({"FLEET_KEY_CACHE_SECONDS": "0"}), engine=clean_db)
    client = app.test_client()
    read = {"X-API-Key": out["keys"]["read"]["key"]}
    resp = client.get("/v1/analytics/performance/demo-vehicle-00001", headers=read)
    assert resp.status_code == 200, resp.json
    assert resp.json["energyMetrics"]["totalAcConsumed"] == 0
    # The device key may ingest but not read; the read key may read but not ingest.
    assert client.get("/v1/vehicles", headers={"X-API-Key": out["keys"]["device"]["key"]}).status_code == 403
    assert client.post("/v1/telemetry/ingest", json=[], headers=read).status_code == 403


def test_seed_human_output_prints_keys_and_urls(clean_db):
    env = {"DATABASE_URL": clean_db.url.render_as_string(hide_password=False)}
    args = ["demo", "seed", "--meters", "2", "--vehicles", "2", "--url", "http://h:1/"]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    [read] = [k for k in active_keys(clean_db) if k.role == "read"]
    assert f"curl -H 'X-API-Key: {read.key_prefix}" in result.output
    assert "http://h:1/v1/analytics/performance/demo-vehicle-00001" in result.output
    assert "fleet simulate --url http://h:1 --key fk_" in result.output


def test_seed_refuses_a_bad_prefix_and_an_unreachable_database():
    runner = CliRunner()
    bad = runner.invoke(main, ["demo", "seed", "--prefix", "two words"], env={"DATABASE_URL": "postgresql://x@h/db"})
    assert bad.exit_code == 1 and "prefix" in bad.output
    down = runner.invoke(
        main, ["demo", "seed"], env={"DATABASE_URL": "postgresql://x@127.0.0.1:1/db", "FLEET_DB_CONNECT_TIMEOUT": "2"}
    )
    assert down.exit_code == 1 and "cannot seed the demo" in down.output
