"""Slow and hostile clients do not exhaust the workers (issue 16): raw sockets against a real gunicorn.

The server has one worker with two threads, so two held threads would stop it. Slowloris connections (a request
head dribbled a line at a time) wait in the worker's poller without a thread and are closed
FLEET_REQUEST_READ_TIMEOUT_S after their first byte; a body that does not arrive in time gets a 408; a client
that asks for answers and does not read them is disconnected after FLEET_RESPONSE_WRITE_TIMEOUT_S. Meanwhile a
device's readings and /health are served at once, and every reading acknowledged is stored exactly once."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.integration.gunicorn_server import Server, gunicorn, http
from tests.support.api import device_key

pytestmark = pytest.mark.native

READ_TIMEOUT_S = 2.0
WRITE_TIMEOUT_S = 2.0
SLOWLORIS = 40
#: Closed by then: the bound, plus the worker's pending sweep (its event loop wakes at least once a second).
CLOSE_BOUND_S = READ_TIMEOUT_S + 1.5
#: What the server logs when a client did not take its response within the write timeout (api/admission.py).
GAVE_UP_LINE = "client did not take its response within"
#: A stalled reader is given up on by then. Not WRITE_TIMEOUT_S and a margin: the kernel now and then takes more of
#: an unread answer into its buffers after a second or so (seen in CI: two stalls of 1.3 and 1.5 s), and the
#: write timeout bounds each answer's sendall, so every such release starts a new one.
GIVE_UP_BOUND_S = 6 * WRITE_TIMEOUT_S
#: A well-behaved request while the slow clients are at it.
SERVED_BOUND_S = 1.0
INGEST = "/v1/telemetry/ingest"


@pytest.fixture
def server(clean_db: Engine, tmp_path: Path) -> Iterator[Server]:
    env = {
        "DATABASE_URL": clean_db.url.render_as_string(hide_password=False),
        "FLEET_RATE_LIMIT": "off",
        "FLEET_REQUEST_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
        "FLEET_RESPONSE_WRITE_TIMEOUT_S": str(WRITE_TIMEOUT_S),
    }
    with gunicorn(env, tmp_path / "gunicorn.log", workers=1, threads=2) as srv:
        yield srv


def _port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


class Device(threading.Thread):
    """Posts one new reading after another, each on a new connection; records what it was told."""

    def __init__(self, server: Server, key: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.server, self.key, self.stop = server, key, stop
        self.sent: list[str] = []
        self.acknowledged: list[str] = []
        self.latencies: list[float] = []
        self.statuses: list[int] = []

    def run(self) -> None:
        base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        n = 0
        while not self.stop.is_set():
            n += 1
            ts = (base + timedelta(seconds=n)).isoformat()
            body = {
                "type": "METER",
                "payload": {"meterId": "slow-m", "kwhConsumedAc": 0.1, "voltage": 230.0, "timestamp": ts},
            }
            started = time.monotonic()
            reply = http(self.server.url + INGEST, body, key=self.key)
            self.latencies.append(time.monotonic() - started)
            self.statuses.append(reply.status)
            self.sent.append(ts)
            if reply.status == 200:
                self.acknowledged.append(ts)
            time.sleep(0.05)


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed `sock` (EOF or reset), reading whatever it sent; None if it did not."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < seconds:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:  # reset
            return time.monotonic() - started
    return None


def _logged_within(server: Server, line: str, seconds: float) -> float | None:
    """Seconds until `line` appeared in the server's log; None if it did not within `seconds`."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if line in server.log.read_text():
            return round(time.monotonic() - started, 2)
        time.sleep(0.1)
    return None


def _stored(eng: Engine) -> list[str]:
    with eng.connect() as conn:
        rows = conn.execute(sa.text("SELECT recorded_at FROM meter_readings WHERE meter_id = 'slow-m'")).scalars()
        return [r.astimezone(UTC).isoformat() for r in rows]


def test_slowloris_holds_no_thread_and_is_closed_at_the_bound(server: Server, clean_db: Engine) -> None:
    key = device_key(clean_db)
    stop = threading.Event()
    device = Device(server, key, stop)
    slow: list[tuple[socket.socket, float]] = []
    for _ in range(SLOWLORIS):
        sock = socket.create_connection(("127.0.0.1", _port(server)), timeout=5)
        sock.sendall(f"POST {INGEST} HTTP/1.1\r\nHost: fleet\r\n".encode())
        slow.append((sock, time.monotonic()))
    device.start()
    health: list[float] = []
    try:
        for _ in range(int(READ_TIMEOUT_S * 2)):  # keep dribbling past the bound: a header line a second
            for sock, _opened in slow:
                with contextlib.suppress(OSError):  # closed by the server already
                    sock.sendall(b"X-Slow: 1\r\n")
            started = time.monotonic()
            assert http(server.url + "/health").status == 200
            health.append(time.monotonic() - started)
            time.sleep(0.5)
        closed = [_closed_within(sock, CLOSE_BOUND_S) for sock, _ in slow]
    finally:
        stop.set()
        device.join(10)
        for sock, _ in slow:
            sock.close()
    stored = _stored(clean_db)
    print(
        f"\n[slowloris] connections={SLOWLORIS}, closed={sum(c is not None for c in closed)},"
        f" device sent={len(device.sent)} acknowledged={len(device.acknowledged)} stored={len(stored)}"
        f" duplicated={len(stored) - len(set(stored))}, longest={max(device.latencies) * 1000:.0f} ms,"
        f" health longest={max(health) * 1000:.0f} ms"
    )
    assert all(c is not None for c in closed), "a slowloris connection outlived the read bound"
    assert len(device.sent) >= 20 and set(device.statuses) == {200}
    assert max(device.latencies) <= SERVED_BOUND_S and max(health) <= SERVED_BOUND_S
    assert sorted(stored) == sorted(device.acknowledged) and len(stored) == len(set(stored))


def test_a_body_that_does_not_arrive_in_time_gets_a_408(server: Server, clean_db: Engine) -> None:
    key = device_key(clean_db)
    sock = socket.create_connection(("127.0.0.1", _port(server)), timeout=10)
    with sock:
        head = (
            f"POST {INGEST} HTTP/1.1\r\nHost: fleet\r\nContent-Type: application/json\r\nX-API-Key: {key}\r\n"
            "Content-Length: 1000\r\n\r\n"
        )
        sock.sendall(head.encode() + b'{"type": "METER", ')
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        waited = time.monotonic() - started
    print(f"\n[slow body] answered after {waited:.2f} s: {answer.splitlines()[0] if answer else b'(closed)'}")
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert READ_TIMEOUT_S - 0.5 <= waited <= READ_TIMEOUT_S + 1.5
    assert _stored(clean_db) == []


def test_a_reader_that_does_not_read_is_disconnected_and_holds_no_thread(server: Server, clean_db: Engine) -> None:
    key = device_key(clean_db)
    reader = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.connect(("127.0.0.1", _port(server)))
    stop = threading.Event()
    device = Device(server, key, stop)
    with reader:
        # Many answers asked for at once (pipelined), none read: megabytes the kernel's buffers cannot hold.
        reader.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: fleet\r\n\r\n" * 400)
        device.start()
        try:
            gave_up_after = _logged_within(server, GAVE_UP_LINE, GIVE_UP_BOUND_S)
        finally:
            stop.set()
            device.join(10)
        received = 0
        reader.settimeout(2)
        try:
            while chunk := reader.recv(1 << 20):
                received += len(chunk)
            disconnected = True
        except TimeoutError:
            disconnected = False
        except OSError:
            disconnected = True
    stored = _stored(clean_db)
    print(
        f"\n[slow reader] the server gave up after {gave_up_after} s; the reader then took {received} bytes;"
        f" disconnected: {disconnected};"
        f" device sent={len(device.sent)} acknowledged={len(device.acknowledged)} stored={len(stored)},"
        f" longest={max(device.latencies) * 1000:.0f} ms"
    )
    assert gave_up_after is not None, f"the server did not give up on the reader within {GIVE_UP_BOUND_S} s"
    assert disconnected, "the server gave up on the reader but did not close its connection"
    assert set(device.statuses) == {200} and max(device.latencies) <= SERVED_BOUND_S
    assert sorted(stored) == sorted(device.acknowledged)
