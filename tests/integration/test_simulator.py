"""`fleet simulate` against a live gunicorn (native engine): what it says it stored is what the tables hold,
and its readings show up in the analytics API."""

from __future__ import annotations

import json
import time

import port_for
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from cli import main
from tests.integration.gunicorn_server import gunicorn, http


def _get(url: str, key: str = "") -> tuple[int, dict]:
    reply = http(url, key=key)
    return reply.status, reply.json()


@pytest.fixture
def api_url(clean_db, tmp_path):
    """`fleet serve` (gunicorn, 2 workers) on a free loopback port, on the test database."""
    env = {"DATABASE_URL": clean_db.url.render_as_string(hide_password=False), "FLEET_DB_POOL_SIZE": "4"}
    with gunicorn(env, tmp_path / "gunicorn.log") as server:
        yield server.url


def seed(engine, prefix: str, n: int) -> dict:
    env = {"DATABASE_URL": engine.url.render_as_string(hide_password=False)}
    result = CliRunner().invoke(
        main, ["demo", "seed", "--meters", str(n), "--vehicles", str(n), "--prefix", prefix, "--json"], env=env
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def simulate(url: str, key: str, *args: str) -> tuple[int, dict, str]:
    result = CliRunner().invoke(main, ["simulate", "--url", url, "--key", key, "--json", *args])
    summary = json.loads(result.stdout) if result.stdout.startswith("{") else {}
    return result.exit_code, summary, result.stderr


def rows(engine, prefix: str) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            table: conn.execute(
                sa.text(f"SELECT count(*) FROM {table} WHERE {column} LIKE :p"), {"p": prefix + "%"}
            ).scalar_one()
            for table, column in (("meter_readings", "meter_id"), ("vehicle_readings", "vehicle_id"))
        }


@pytest.mark.native
@pytest.mark.parametrize(
    "mode", [["--duration", "5"], ["--batch", "--count", "30"]], ids=["single-for-5s", "batch-30-readings"]
)
def test_simulated_readings_are_stored_once_and_reach_the_analytics(api_url, clean_db, mode):
    prefix = "sim-"
    seeded = seed(clean_db, prefix, 3)
    args = ["--meters", "3", "--vehicles", "3", "--prefix", prefix, "--interval", "1", *mode]
    # Re-sends and late readings often enough that a 30-reading run surely has both.
    args += ["--seed", "7", "--retry-rate", "0.3", "--late-rate", "0.3", "--progress", "1"]
    code, summary, progress = simulate(api_url, seeded["keys"]["device"]["key"], *args)
    assert code == 0, (summary, progress)
    assert "simulate:" in progress and "stored" in progress  # progress lines, every second here
    if "--count" in mode:
        assert (summary["stopped_by"], summary["generated"], summary["batch"]) == ("count", 30, True)
        assert summary["requests"] < summary["sent"]  # several readings a request
    else:
        assert summary["stopped_by"] == "duration" and 4.5 < summary["elapsed_s"] < 15

    # What the API said it stored is what the history tables hold; the deliberate re-sends were duplicates.
    stored = rows(clean_db, prefix)
    assert summary["stored"] == sum(stored.values()) == summary["generated"]
    assert stored["meter_readings"] > 0 and stored["vehicle_readings"] > 0
    assert summary["duplicates"] == summary["resent"] > 0
    assert summary["late"] > 0
    assert summary["sent"] == summary["generated"] + summary["resent"]
    assert (summary["errors"], summary["http_5xx"], summary["unreachable"], summary["ok"]) == (0, 0, 0, True)

    # Vehicle 1 charges from the start on meter 1: the analytics see its DC, and its meter's AC.
    vehicle, meter = seeded["first_vehicle_id"], seeded["first_meter_id"]
    status, perf = _get(f"{api_url}/v1/analytics/performance/{vehicle}", key=seeded["keys"]["read"]["key"])
    assert status == 200, perf
    with clean_db.connect() as conn:
        vehicle_rows = conn.execute(
            sa.text("SELECT count(*) FROM vehicle_readings WHERE vehicle_id = :v"), {"v": vehicle}
        ).scalar_one()
        assert conn.execute(
            sa.text("SELECT is_charging FROM vehicles_current WHERE vehicle_id = :v"), {"v": vehicle}
        ).scalar_one()
    hours = [h for h in perf["hourlyBreakdown"] if h["vehicleReadings"]]
    assert sum(h["vehicleReadings"] for h in hours) == vehicle_rows > 0
    assert all(h["meterId"] == meter and h["meterReadings"] > 0 for h in hours)
    energy = perf["energyMetrics"]
    assert energy["totalAcConsumed"] > 0 and energy["totalDcDelivered"] > 0
    # Meter and vehicle reports cover slightly different seconds of a 5 s run: only roughly 0.88-0.95.
    assert 0.5 < energy["efficiencyRatio"] < 1.5


@pytest.mark.native
def test_simulator_stops_at_once_on_a_refused_key(api_url):
    began = time.monotonic()
    code, summary, progress = simulate(api_url, "fk_not-a-key", "--meters", "1", "--vehicles", "1", "--interval", "1")
    assert code == 1
    assert time.monotonic() - began < 20  # not the default 60 s
    assert summary["stopped_by"] == "HTTP 401" and summary["rejected"] >= 1 and summary["stored"] == 0
    assert "HTTP 401" in progress


def test_simulator_fails_when_the_api_is_unreachable():
    url = f"http://127.0.0.1:{port_for.select_random()}"
    code, summary, progress = simulate(url, "fk_x", "--wait-ready", "0", "--duration", "5")
    assert code == 1
    assert summary["unreachable"] == 1 and summary["ok"] is False and summary["stopped_by"] == "API not ready"
    assert "API not ready" in progress


def test_simulator_refuses_bad_options():
    result = CliRunner().invoke(main, ["simulate", "--key", "k", "--interval", "0.5"])
    assert result.exit_code == 2
    result = CliRunner().invoke(main, ["simulate", "--key", "k", "--meters", "0", "--vehicles", "0"])
    assert result.exit_code == 1 and "at least one" in result.output
    result = CliRunner().invoke(main, ["simulate", "--key", "k", "--url", "ftp://x"])
    assert result.exit_code == 1 and "http" in result.output
