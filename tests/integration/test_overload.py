"""Admission control under a real gunicorn: a server with tiny bounds, offered more ingest than it can take.

One worker with one thread, ingest requests may wait 30 ms for it, reads 3 s. CLIENTS devices each send READINGS
unique readings on keep-alive connections, all at once, and retry a reading answered 503 after a short pause
(a scaled-down Retry-After: the test must stay short), until it is acknowledged. Meanwhile a dashboard reads a
vehicle's status over and over. Checks: shed answers are 503 with a Retry-After in the configured range and
come fast; every request is answered within the bound a client would wait; the dashboard is served
throughout; once every device got its acknowledgements, every reading is stored exactly once, none counted as a
duplicate (a shed request did nothing).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from db import keys
from tests.integration.gunicorn_server import gunicorn

pytestmark = pytest.mark.native

CLIENTS = 24
READINGS = 8
RETRY_AFTER_S = 1
#: Longest answer a device would wait for (the issue's bound for the locust scenario).
ANSWER_BOUND_S = 5.0


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: dict[int, int] = {}
        self.retry_after: list[str | None] = []
        self.slowest_s = 0.0
        self.slowest_shed_s = 0.0
        self.duplicates = 0
        self.read_statuses: dict[int, int] = {}
        self.slowest_read_s = 0.0
        self.ready_reports: list[dict] = []
        self.shed_answer: dict | None = None

    def count(self, status: int, seconds: float, retry_after: str | None, duplicates: int) -> None:
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.slowest_s = max(self.slowest_s, seconds)
            self.duplicates += duplicates
            if status == 503:
                self.retry_after.append(retry_after)
                self.slowest_shed_s = max(self.slowest_shed_s, seconds)


def post(conn: http.client.HTTPConnection, body: dict, key: str) -> tuple[int, str | None, dict, float]:
    started = time.perf_counter()
    conn.request(
        "POST", "/v1/telemetry/ingest", json.dumps(body), {"Content-Type": "application/json", "X-API-Key": key}
    )
    response = conn.getresponse()
    payload = json.loads(response.read() or b"{}")
    if response.status == 503:  # what a shed answer carries besides Retry-After
        payload["content_type"] = response.getheader("Content-Type")
        payload["request_id"] = response.getheader("X-Request-ID")
    return response.status, response.getheader("Retry-After"), payload, time.perf_counter() - started


def device(url: str, key: str, n: int, base: datetime, tally: Tally, errors: list[BaseException]) -> None:
    try:
        host = urlsplit(url)
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
        for i in range(READINGS):
            at = (base + timedelta(seconds=i)).isoformat()
            body = {
                "type": "METER",
                "payload": {"meterId": f"ov-{n}", "kwhConsumedAc": 0.1, "voltage": 230, "timestamp": at},
            }
            while True:
                status, retry_after, payload, seconds = post(conn, body, key)
                tally.count(status, seconds, retry_after, payload.get("duplicates", 0) if status == 200 else 0)
                if status == 200:
                    break
                assert status == 503, (status, payload)
                tally.shed_answer = payload
                time.sleep(0.05)  # honours Retry-After, scaled down
        conn.close()
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def dashboard(url: str, key: str, stop: threading.Event, tally: Tally) -> None:
    """Reads a meter's status over and over; every tenth time, /ready as a load balancer would."""
    host = urlsplit(url)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
    for n in range(1_000_000):
        if stop.is_set():
            break
        if n % 10 == 0:
            conn.request("GET", "/ready")
            response = conn.getresponse()
            tally.ready_reports.append({"status": response.status, **json.loads(response.read())})
        started = time.perf_counter()
        conn.request("GET", "/v1/meters/ov-0", headers={"X-API-Key": key})
        response = conn.getresponse()
        response.read()
        with tally.lock:
            tally.read_statuses[response.status] = tally.read_statuses.get(response.status, 0) + 1
            tally.slowest_read_s = max(tally.slowest_read_s, time.perf_counter() - started)
        time.sleep(0.02)
    conn.close()


def test_overload_is_shed_fast_reads_are_served_and_every_reading_is_stored_once(clean_db, tmp_path):
    env = {
        "DATABASE_URL": clean_db.url.render_as_string(hide_password=False),
        "FLEET_DB_POOL_SIZE": "1",
        "FLEET_RATE_LIMIT": "off",
        "FLEET_INGEST_MAX_QUEUE_MS": "30",
        "FLEET_READ_MAX_QUEUE_MS": "3000",
        "FLEET_SHED_RETRY_AFTER_S": str(RETRY_AFTER_S),
        "FLEET_SHED_RETRY_AFTER_MAX_S": str(3 * RETRY_AFTER_S),  # Retry-After stays in [1, 3] s
    }
    with clean_db.begin() as conn:
        device_key = keys.create_key(conn, "devices", "device")[1]
        read_key = keys.create_key(conn, "dashboard", "read")[1]
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    tally, errors = Tally(), []
    with gunicorn(env, tmp_path / "gunicorn.log", workers=1, threads=1) as server:
        # The dashboard's meter exists before the rush.
        first = http.client.HTTPConnection(urlsplit(server.url).hostname, urlsplit(server.url).port, timeout=30)
        body = {
            "type": "METER",
            "payload": {
                "meterId": "ov-0",
                "kwhConsumedAc": 0.1,
                "voltage": 230,
                "timestamp": (base - timedelta(minutes=1)).isoformat(),
            },
        }
        assert post(first, body, device_key)[0] == 200
        first.close()
        stop = threading.Event()
        reader = threading.Thread(target=dashboard, args=(server.url, read_key, stop, tally))
        reader.start()
        devices = [
            threading.Thread(target=device, args=(server.url, device_key, n, base, tally, errors))
            for n in range(CLIENTS)
        ]
        for t in devices:
            t.start()
        for t in devices:
            t.join(timeout=120)
        stop.set()
        reader.join(timeout=30)
        metrics_text = http.client.HTTPConnection(urlsplit(server.url).hostname, urlsplit(server.url).port, timeout=30)
        metrics_text.request("GET", "/metrics")
        exposition = metrics_text.getresponse().read().decode()
        metrics_text.close()

    sent = CLIENTS * READINGS
    with clean_db.connect() as conn:
        stored = conn.execute(sa.text("SELECT count(*) FROM meter_readings WHERE meter_id LIKE 'ov-%'")).scalar_one()
        distinct = conn.execute(
            sa.text("SELECT count(DISTINCT (meter_id, recorded_at)) FROM meter_readings WHERE meter_id LIKE 'ov-%'")
        ).scalar_one()
    shed = tally.statuses.get(503, 0)
    print(
        f"\nsent {sent} readings (+1), answers {tally.statuses}, shed {shed}, stored {stored - 1},"
        f" duplicates {tally.duplicates}, slowest answer {tally.slowest_s * 1000:.0f} ms, slowest 503"
        f" {tally.slowest_shed_s * 1000:.0f} ms; dashboard answers {tally.read_statuses},"
        f" slowest {tally.slowest_read_s * 1000:.0f} ms"
    )
    assert not errors, errors[:3]
    assert shed > 0, "the server was not overloaded: nothing was shed"
    assert set(tally.statuses) <= {200, 503}
    assert all(r is not None and RETRY_AFTER_S <= int(r) <= 3 * RETRY_AFTER_S for r in tally.retry_after)
    assert tally.slowest_s < ANSWER_BOUND_S
    # A problem document like every other error, with a request id, though Flask never saw the request.
    assert tally.shed_answer is not None
    assert tally.shed_answer["content_type"] == "application/problem+json"
    assert tally.shed_answer["status"] == 503 and "overloaded" in tally.shed_answer["detail"]
    assert len(tally.shed_answer["request_id"] or "") == 32
    assert tally.read_statuses and set(tally.read_statuses) == {200}, "the dashboard was not served throughout"
    # Reads first: a read waits for the request in hand, not behind the queue of ingest (whose bound is 30 ms here,
    # so this holds the line loosely; the locust overload scenario measures it at scale).
    assert tally.slowest_read_s < 1.0
    assert stored == distinct == sent + 1  # every reading once
    assert tally.duplicates == 0  # a shed request did nothing: no retry found its reading already stored
    assert f'fleet_requests_shed_total{{request_class="ingest"}} {float(shed)}' in exposition
    assert "fleet_requests_queued " in exposition
    # /ready stayed 200 (an overloaded node still serves) and said so while the one worker was shedding.
    overload = [r["overload"] for r in tally.ready_reports]
    print(f"/ready: {len(overload)} answers, {sum(o['shedding'] for o in overload)} said shedding; last {overload[-1]}")
    assert {r["status"] for r in tally.ready_reports} == {200}
    assert any(o["shedding"] and o["shed_by_this_worker"] > 0 for o in overload)
    assert overload[-1]["shed_by_this_worker"] <= shed
