"""The API under a real gunicorn (`fleet serve`), on the native engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import port_for
import pytest
import sqlalchemy as sa

from db import keys


def _request(url: str, body: object | None = None, timeout: float = 10.0, key: str = "") -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", "X-API-Key": key})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def gunicorn_url(clean_db, tmp_path):
    port = port_for.select_random()
    env = {
        **os.environ,
        "DATABASE_URL": clean_db.url.render_as_string(hide_password=False),
        "FLEET_DB_POOL_SIZE": "4",
    }
    log = (tmp_path / "gunicorn.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if _request(url + "/ready", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()
            assert time.monotonic() < deadline, "gunicorn did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


@pytest.mark.native
def test_gunicorn_ingest_and_duplicates_end_to_end(gunicorn_url, clean_db):
    ts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
    items = [
        {
            "type": "METER",
            "payload": {"meterId": "g-m", "kwhConsumedAc": 0.5, "voltage": 230, "timestamp": ts.isoformat()},
        },
        {
            "type": "VEHICLE",
            "payload": {
                "vehicleId": "g-v",
                "soc": 50,
                "kwhDeliveredDc": 0.45,
                "batteryTemp": 30,
                "timestamp": ts.isoformat(),
            },
        },
    ]
    with clean_db.begin() as conn:
        key = keys.create_key(conn, "gateway", "device")[1]
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
