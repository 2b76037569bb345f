"""The API under a real gunicorn (`fleet serve`), on the native engine."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.integration.gunicorn_server import gunicorn, http
from tests.support.api import device_key, new_key
from tests.support.builders import meter_reading, vehicle_reading


@pytest.fixture
def gunicorn_url(clean_db, tmp_path):
    env = {"DATABASE_URL": clean_db.url.render_as_string(hide_password=False), "FLEET_DB_POOL_SIZE": "4"}
    with gunicorn(env, tmp_path / "gunicorn.log", workers=2, threads=2) as server:
        yield server.url


def _request(url: str, body: object | None = None, key: str = "") -> tuple[int, dict]:
    reply = http(url, body, key=key)
    return reply.status, reply.json()


@pytest.mark.native
def test_gunicorn_ingest_and_duplicates_end_to_end(gunicorn_url, clean_db):
    items = [meter_reading("g-m", minutes_ago=3), vehicle_reading("g-v", minutes_ago=3)]
    key = device_key(clean_db)
    assert _request(gunicorn_url + "/v1/telemetry/ingest", items)[0] == 401
    assert _request(gunicorn_url + "/v1/telemetry/ingest", items, key=key) == (
        200,
        {"received": 2, "stored": 2, "duplicates": 0},
    )
    # Retried through another worker, maybe: still stored once.
    for _ in range(4):
        assert _request(gunicorn_url + "/v1/telemetry/ingest", items, key=key)[1]["duplicates"] == 2
    status, problem = _request(gunicorn_url + "/v1/telemetry/ingest", {"type": "METER", "payload": {}}, key=key)
    assert status == 422 and "payload" in problem["errors"]["json"]
    with clean_db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM meter_readings")).scalar_one() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM vehicle_readings")).scalar_one() == 1


@pytest.mark.native
def test_gunicorn_unknown_query_parameter_is_a_400_naming_it(gunicorn_url, clean_db):
    """Contract strictness (issue 16) through the real server: a typo'd filter is refused, not ignored."""
    key = new_key(clean_db, "read")
    status, problem = _request(gunicorn_url + "/v1/analytics/fleet?belowTreshold=true", key=key)
    assert status == 400 and set(problem["errors"]["query"]) == {"belowTreshold"}
    assert "belowThreshold" in problem["detail"]  # what the operation does take
    assert _request(gunicorn_url + "/v1/analytics/fleet?belowThreshold=true", key=key)[0] == 200
