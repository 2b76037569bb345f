"""A reading that got a 2xx is stored exactly once, whatever fails (native engine, real gunicorn).

The scenarios share a real gunicorn (`fleet serve`, 2 workers x 4 threads, the shipped database settings but
rate limiting) serving a PostgreSQL + TimescaleDB cluster of this module's own (started here, so stopping it
disturbs no other test). Each scenario runs a bounded load generator: CLIENTS threads, each with one keep-alive
`http.client` connection, posting single readings and small batches for a fleet of meters and vehicles shared
by all clients. Every reading is new, unique per (device, timestamp). Now and then a client deliberately
re-sends a request that was already acknowledged (a device that did not see the answer), and holds a new
reading back to send it only when the load stops (a late backlog: older than its device's newest). A client
that gets a 503 or loses its connection keeps the request and re-sends the same body later, as a device does
(it honours Retry-After, divided by RETRY_AFTER_SCALE to keep the test short); when the load stops, every
client drains its pending requests until all are acknowledged. Everything is on loopback and bounded in
requests and time.

Scenarios:

- database restart: the cluster is stopped (`pg_ctl stop -m fast`: in-flight transactions are aborted, every
  pooled connection dies, connects are refused) for a few seconds, then started again, under load.
- database unreachable: the same, but while it is down its port drops connection attempts (a host that
  vanished from the network): a connect hangs until FLEET_DB_CONNECT_TIMEOUT. Held longer than the latency
  bound, so a request waiting for the database to come back fails the test.
  In both, every request gets a fast 503 problem document with Retry-After (p99 of the 503s and the slowest
  request are bounded: no request waits out the outage), never a 500 and never a client timeout; gunicorn keeps
  its workers; when the database is back the app recovers by itself (pre-ping replaces the dead pooled
  connections): every request started RECOVERY_BOUND_S after it is back succeeds, without a restart of
  gunicorn, and /ready says so.
- worker crash: gunicorn's workers are SIGKILLed mid-load, one after the other. Clients whose request was in
  flight, or whose keep-alive connection belonged to a dead worker, see a connection error and re-send;
  gunicorn forks replacements. A request whose answer was lost may or may not have been committed: its
  re-send then counts the reading as a duplicate, never as a second row.

Accounting, checked after each scenario against the database:

- every 2xx answer is well formed (received = readings sent, stored + duplicates = received); a deliberate
  re-send of an acknowledged request stores nothing; no status but 200 and 503 ever;
- history holds exactly one row per (device, timestamp) and the sets are equal: acknowledged = stored = sent
  (acknowledged is a subset of stored: nothing acknowledged was lost; stored is a subset of sent: nothing was
  invented), with the values that were sent;
- the `stored` counts of all 2xx answers add up to at most the rows in history; the difference is made of
  readings committed by a request whose answer was lost (a 503 or a connection error), so it is at most the
  number of such readings; a single reading is reported `stored` by at most one answer;
- current state (`meters_current`, `vehicles_current`) is the newest stored reading of each device, although
  re-sends and the late backlog deliver older readings last.
"""

from __future__ import annotations

import http.client as http_client
import itertools
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import port_for
import pytest
import sqlalchemy as sa
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy.engine import Engine

import db
from db import keys
from db.migrate import upgrade
from tests.conftest import cluster_dir, native_executor, truncate_all
from tests.integration.gunicorn_server import Server, gunicorn, http, parent_pid
from tests.support.api import device_key

pytestmark = pytest.mark.native

DBNAME = "fleet_reliability"
INGEST_PATH = "/v1/telemetry/ingest"

WORKERS, THREADS = 2, 4
#: Client threads, each with its own keep-alive connection.
CLIENTS = 8
#: Devices shared by all clients (so concurrent requests upsert the same current-state rows).
METERS, VEHICLES = 8, 8
#: Most requests one client sends (new readings and deliberate re-sends; re-sends after failures come on top).
MAX_REQUESTS_PER_CLIENT = 2000
#: Seconds a client waits between two requests (bounds the load on a shared 2-core machine).
PACE_S = 0.02
#: Share of requests that re-send an already acknowledged request.
DELIBERATE_RETRY_SHARE = 0.08
#: Share of new requests whose last reading is held back and sent only when the load stops: readings older
#: than their device's newest, arriving last, which must go to history without moving current state back.
HELD_BACK_SHARE = 0.05
#: Retry-After is honoured divided by this (5 s -> 0.5 s): a device's behaviour on a shorter clock.
RETRY_AFTER_SCALE = 10
#: Client socket timeout: a request slower than this counts as hung.
CLIENT_TIMEOUT_S = 20.0
#: Successful answers before a failure is injected (and, after worker crashes, before the load stops).
WARM_UP_ANSWERS = 100
#: Seconds a client keeps re-sending its pending requests after the load stops.
DRAIN_S = 30.0

#: How each outage is held, seconds: the port refuses connections (a stopped server), or drops them (a host
#: that vanished: connects hang until FLEET_DB_CONNECT_TIMEOUT). The second is held longer than
#: MAX_OUTAGE_LATENCY_S, so a connect that waited for the database to come back would fail the test.
OUTAGE_S = {"restart": 3.0, "unreachable": 5.5}
#: Bound on the 99th percentile of the 503s' latency during an outage.
P99_503_BOUND_S = 2.5
#: Bound on the slowest request (whatever its answer) started from the outage on: when the database is
#: unreachable, the first requests of each worker wait for the connect timeout (3 s) before the app knows.
MAX_OUTAGE_LATENCY_S = 5.0
#: Every request started this long after the database accepts connections again must succeed (each worker
#: process notices by itself: a failed connect keeps new connects off for db.FAIL_FAST_PAUSE_S).
RECOVERY_BOUND_S = 2.5
#: Seconds the load goes on after RECOVERY_BOUND_S.
AFTER_RECOVERY_S = 1.0
#: Seconds gunicorn may take to replace a killed worker.
RESPAWN_BOUND_S = 15.0


# --- the cluster and the server -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """A PostgreSQL cluster of this module's own, which the tests may stop and start."""

    proc: PostgreSQLExecutor
    url: str
    engine: Engine

    def ensure_running(self) -> None:
        """Start the cluster if a failed test left it stopped."""
        if not self.proc.running():
            self.proc.start()


@pytest.fixture(scope="module")
def cluster(engine_kind: str) -> Iterator[Cluster]:
    """A throw-away PostgreSQL 15 + TimescaleDB cluster (as `native_proc`), migrated, used only here."""
    assert engine_kind == "native"
    base, pg_ctl = cluster_dir("fleet-reliability-")
    proc = native_executor(base, pg_ctl, DBNAME)
    try:
        with proc, DatabaseJanitor(user=proc.user, host=proc.host, port=proc.port, dbname=DBNAME):
            url = f"postgresql+psycopg://{proc.user}@{proc.host}:{proc.port}/{DBNAME}"
            eng = db.make_engine(url, pool_size=1, connect_timeout=10)
            upgrade(eng)
            cluster = Cluster(proc, url, eng)
            try:
                yield cluster
            finally:
                eng.dispose()
                cluster.ensure_running()  # the janitor drops the database through it
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def cluster_db(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster, running, with the platform's tables empty before and after the test."""
    cluster.ensure_running()
    truncate_all(cluster.engine)
    yield cluster
    cluster.ensure_running()
    cluster.engine.dispose()  # its pooled connection may have died with the outage
    truncate_all(cluster.engine)


@pytest.fixture(scope="module")
def server(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`fleet serve` on the cluster with the shipped pool and timeout settings (rate limiting off: the load
    generator shares one key), shared by the scenarios: each one checks it recovers by itself."""
    env = {"DATABASE_URL": cluster.url, "FLEET_RATE_LIMIT": "off"}
    log = tmp_path_factory.mktemp("reliability-gunicorn") / "gunicorn.log"
    with gunicorn(env, log, workers=WORKERS, threads=THREADS) as srv:
        yield srv


def worker_pids(master: int) -> set[int]:
    """The PIDs of gunicorn's workers: the children of its master."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if parent_pid(int(stat.parent.name)) == master:
                children.add(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
    return children


def wait_for_workers(master: int, count: int, without: set[int], timeout: float) -> set[int]:
    """Wait until the master has `count` workers, none of them in `without`; returns their PIDs."""
    deadline = time.monotonic() + timeout
    while True:
        pids = worker_pids(master)
        if len(pids) == count and not pids & without:
            return pids
        assert time.monotonic() < deadline, f"gunicorn has workers {pids}, wanted {count} without {without}"
        time.sleep(0.05)


@contextmanager
def black_hole(port: int) -> Iterator[None]:
    """While the cluster is stopped, its port drops every connection attempt, like a host that vanished from
    the network: a listener that never accepts, its queue filled, so the kernel drops further SYNs and a
    client's connect hangs until its own timeout. At the end the port is closed (connections are refused)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(0)
    filler = socket.create_connection(("127.0.0.1", port), timeout=5)  # the one queue slot
    try:
        yield
    finally:
        filler.close()
        listener.close()


# --- the load generator -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """One reading; `key` is its identity in history."""

    kind: str  # METER | VEHICLE
    device_id: str
    recorded_at: datetime
    values: tuple[float | bool, ...]  # meter: kWh, voltage; vehicle: soc, kWh, battery temp, charging

    @property
    def key(self) -> tuple[str, datetime]:
        return (self.device_id, self.recorded_at)

    def item(self) -> dict[str, object]:
        ts = self.recorded_at.isoformat()
        if self.kind == "METER":
            kwh, voltage = self.values
            payload = {"meterId": self.device_id, "kwhConsumedAc": kwh, "voltage": voltage, "timestamp": ts}
        else:
            soc, kwh, temp, charging = self.values
            payload = {
                "vehicleId": self.device_id,
                "soc": soc,
                "kwhDeliveredDc": kwh,
                "batteryTemp": temp,
                "isCharging": charging,
                "timestamp": ts,
            }
        return {"type": self.kind, "payload": payload}


@dataclass(frozen=True)
class Request:
    readings: tuple[Reading, ...]
    body: bytes
    deliberate_retry: bool = False  # a re-send of a request that already got a 2xx

    @classmethod
    def of(cls, readings: tuple[Reading, ...]) -> Request:
        """One reading as an object, several as a batch (array)."""
        items = [r.item() for r in readings]
        return cls(readings, json.dumps(items[0] if len(items) == 1 else items).encode())


@dataclass(frozen=True)
class Attempt:
    """One HTTP exchange; status None is a connection error or a timeout (the answer, if any, was lost)."""

    request: Request
    started: float  # time.monotonic()
    latency: float
    status: int | None
    headers: dict[str, str]
    body: bytes
    error: str | None = None


class Fleet:
    """The devices and their reading clocks, shared by the clients (each reading is new and unique)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6)
        self._devices = [("METER", f"rel-m-{i:02d}") for i in range(METERS)] + [
            ("VEHICLE", f"rel-v-{i:02d}") for i in range(VEHICLES)
        ]
        self._counters = Counter[str]()

    def next_reading(self, rng: random.Random) -> Reading:
        kind, device = rng.choice(self._devices)
        with self._lock:
            self._counters[device] += 1
            n = self._counters[device]
        ts = self._base + timedelta(seconds=n)
        if kind == "METER":
            return Reading(kind, device, ts, (round(0.01 * (n % 500), 2), 220.0 + n % 20))
        return Reading(kind, device, ts, (float(n % 101), round(0.01 * (n % 300), 2), 20.0 + n % 15, n % 2 == 0))


@dataclass
class Ledger:
    """What the clients sent and what they were told."""

    attempts: list[Attempt] = field(default_factory=list)
    unacknowledged: list[Request] = field(default_factory=list)  # still pending when the drain ended
    crashes: list[BaseException] = field(default_factory=list)

    def sent(self) -> dict[tuple[str, datetime], Reading]:
        return {r.key: r for a in self.attempts for r in a.request.readings}

    def acknowledged(self) -> set[tuple[str, datetime]]:
        return {r.key for a in self.attempts if a.status == 200 for r in a.request.readings}

    def by_status(self) -> Counter[int | None]:
        return Counter(a.status for a in self.attempts)


class Client(threading.Thread):
    """One device gateway: a keep-alive connection, new readings, deliberate re-sends, retries of failures."""

    def __init__(self, index: int, port: int, key: str, fleet: Fleet, stop: threading.Event) -> None:
        super().__init__(name=f"reliability-client-{index}", daemon=True)
        self.port, self.key, self.fleet, self.stop = port, key, fleet, stop
        self.rng = random.Random(index)
        self.conn: http_client.HTTPConnection | None = None
        self.attempts: list[Attempt] = []
        self.pending: list[tuple[float, Request]] = []  # (not before, request)
        self.acked: list[Request] = []
        self.held: list[Reading] = []  # new readings kept back until the load stops (a device's late backlog)
        self.new_requests = 0
        self.crash: BaseException | None = None

    def run(self) -> None:
        try:
            drain_deadline: float | None = None
            while True:
                if self.stop.is_set():
                    if drain_deadline is None:  # the readings held back go out last: older than the newest
                        drain_deadline = time.monotonic() + DRAIN_S
                        self.pending += [(0.0, Request.of((r,))) for r in self.held]
                    if not self.pending or time.monotonic() > drain_deadline:
                        return
                request = self._next_request(draining=self.stop.is_set())
                if request is None:
                    time.sleep(PACE_S)
                    continue
                self._handle(self._send(request))
                time.sleep(PACE_S)
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.crash = exc
        finally:
            if self.conn is not None:
                self.conn.close()

    def _next_request(self, draining: bool) -> Request | None:
        now = time.monotonic()
        due = [p for p in self.pending if p[0] <= now]
        if due:
            first = min(due, key=lambda p: p[0])
            self.pending.remove(first)
            return first[1]
        if draining or self.new_requests >= MAX_REQUESTS_PER_CLIENT:
            return None
        self.new_requests += 1
        if self.acked and self.rng.random() < DELIBERATE_RETRY_SHARE:
            original = self.rng.choice(self.acked)
            return Request(original.readings, original.body, deliberate_retry=True)
        size = 1 if self.rng.random() < 0.7 else self.rng.randint(2, 5)
        readings = [self.fleet.next_reading(self.rng) for _ in range(size)]
        if self.rng.random() < HELD_BACK_SHARE:
            self.held.append(readings.pop())  # sent at the very end, late
        return Request.of(tuple(readings)) if readings else None

    def _send(self, request: Request) -> Attempt:
        if self.conn is None:
            self.conn = http_client.HTTPConnection("127.0.0.1", self.port, timeout=CLIENT_TIMEOUT_S)
        headers = {"Content-Type": "application/json", "X-API-Key": self.key}
        started = time.monotonic()
        try:
            self.conn.request("POST", INGEST_PATH, body=request.body, headers=headers)
            resp = self.conn.getresponse()
            body = resp.read()
        except (OSError, http_client.HTTPException) as exc:  # reset, refused, closed, timed out
            self.conn.close()
            self.conn = None
            return Attempt(request, started, time.monotonic() - started, None, {}, b"", type(exc).__name__)
        if resp.will_close:
            self.conn.close()
            self.conn = None
        reply_headers = {k.lower(): v for k, v in resp.getheaders()}
        return Attempt(request, started, time.monotonic() - started, resp.status, reply_headers, body)

    def _handle(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)
        request = attempt.request
        if attempt.status is not None and 200 <= attempt.status < 300:
            if not request.deliberate_retry:
                self.acked.append(request)
            return
        if request.deliberate_retry:
            return  # already acknowledged once: nothing to re-send
        if attempt.status == 503:
            retry_after = float(attempt.headers.get("retry-after", "5"))
            delay = retry_after / RETRY_AFTER_SCALE * self.rng.uniform(0.8, 1.2)
        elif attempt.status is None:
            delay = self.rng.uniform(0.05, 0.2)
        else:
            return  # anything else fails the test (see check_answers)
        self.pending.append((time.monotonic() + delay, request))


class Load:
    """CLIENTS clients against one server; `finish()` stops new readings, drains, and returns the ledger."""

    def __init__(self, server: Server, key: str) -> None:
        self.stop = threading.Event()
        fleet = Fleet()
        port = int(server.url.rsplit(":", 1)[1])
        self.clients = [Client(i, port, key, fleet, self.stop) for i in range(CLIENTS)]
        for client in self.clients:
            client.start()

    def answers(self) -> list[Attempt]:
        """Attempts so far (a snapshot; the lists only grow)."""
        return [a for c in self.clients for a in list(c.attempts)]

    def wait_for(self, predicate_name: str, predicate: Callable[[], bool], timeout: float) -> float:
        """Poll `predicate()` until true; returns when (monotonic) it became true."""
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {predicate_name}"
            stopped = [c.crash for c in self.clients if not c.is_alive()]
            assert not stopped, f"a client stopped early: {stopped!r}"
            time.sleep(0.02)
        return time.monotonic()

    def finish(self) -> Ledger:
        self.stop.set()
        for client in self.clients:
            client.join(timeout=DRAIN_S + CLIENT_TIMEOUT_S + 10)
        ledger = Ledger()
        for client in self.clients:
            assert not client.is_alive(), f"{client.name} did not finish"
            ledger.attempts += client.attempts
            ledger.unacknowledged += [r for _, r in client.pending]
            if client.crash is not None:
                ledger.crashes.append(client.crash)
        return ledger


# --- the checks ---------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def check_answers(ledger: Ledger) -> None:
    """Only 200s and well-formed 503 problems; every 2xx body adds up; deliberate re-sends store nothing."""
    assert not ledger.crashes, ledger.crashes
    statuses = ledger.by_status()
    assert set(statuses) <= {200, 503, None}, statuses
    for a in ledger.attempts:
        if a.status == 200:
            answer = json.loads(a.body)
            n = len(a.request.readings)
            assert answer["received"] == n and answer["stored"] + answer["duplicates"] == n, answer
            if a.request.deliberate_retry:
                assert answer == {"received": n, "stored": 0, "duplicates": n}, "a re-send stored a reading again"
        elif a.status == 503:
            assert a.headers.get("content-type") == "application/problem+json", a.headers
            assert int(a.headers["retry-after"]) > 0
            assert json.loads(a.body)["status"] == 503
    assert not ledger.unacknowledged, f"{len(ledger.unacknowledged)} requests never acknowledged"


def stored_readings(eng: Engine) -> tuple[list[tuple], list[tuple]]:
    """History rows (device, recorded_at, values...) and current-state rows, both kinds."""
    meter_cols = "meter_id, recorded_at, kwh_consumed_ac, voltage"
    vehicle_cols = "vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp, is_charging"
    with eng.connect() as conn:

        def rows(columns: str, table: str) -> list[tuple]:
            return [tuple(r) for r in conn.execute(sa.text(f"SELECT {columns} FROM {table}"))]

        history = rows(meter_cols, "meter_readings") + rows(vehicle_cols, "vehicle_readings")
        current = rows(meter_cols, "meters_current") + rows(vehicle_cols, "vehicles_current")
    return history, current


def check_accounting(eng: Engine, ledger: Ledger) -> dict[str, int]:
    """History = exactly what was sent and acknowledged, once each; current state = newest; returns counts."""
    history, current = stored_readings(eng)
    sent = ledger.sent()
    acked = ledger.acknowledged()
    rows_per_key = Counter((r[0], r[1]) for r in history)
    duplicated = {k: n for k, n in rows_per_key.items() if n > 1}
    assert not duplicated, f"readings stored more than once: {list(duplicated.items())[:5]}"
    stored = set(rows_per_key)
    assert acked - stored == set(), f"acknowledged but not stored: {sorted(acked - stored)[:5]}"
    assert stored - set(sent) == set(), f"stored but never sent: {sorted(stored - set(sent))[:5]}"
    assert stored == set(sent) == acked
    for row in history:
        reading = sent[(row[0], row[1])]
        assert row[2:] == reading.values, (row, reading)

    # What the answers said adds up to what is stored.
    ok = [a for a in ledger.attempts if a.status == 200]
    reported_stored = sum(json.loads(a.body)["stored"] for a in ok)
    ambiguous = {r.key for a in ledger.attempts if a.status != 200 for r in a.request.readings}
    assert reported_stored <= len(history), "answers reported more readings stored than history holds"
    committed_unanswered = len(history) - reported_stored
    assert committed_unanswered <= len(ambiguous)
    single_stored = Counter(
        a.request.readings[0].key for a in ok if len(a.request.readings) == 1 and json.loads(a.body)["stored"]
    )
    assert max(single_stored.values(), default=0) <= 1, "a reading was reported stored twice"

    # Current state: the newest stored reading of each device, with its values.
    newest: dict[str, Reading] = {}
    for key in stored:
        reading = sent[key]
        if reading.device_id not in newest or reading.recorded_at > newest[reading.device_id].recorded_at:
            newest[reading.device_id] = reading
    assert {r[0]: (r[1], *r[2:]) for r in current} == {d: (r.recorded_at, *r.values) for d, r in newest.items()}, (
        "current state is not the newest stored reading"
    )
    return {  # what issue 16 asks every scenario to print: sent, acknowledged, stored, duplicated
        "requests": len(ledger.attempts),
        "sent": len(sent),
        "acknowledged": len(acked),
        "stored": len(history),
        "duplicated": len(duplicated),  # asserted 0 above
        "reported_stored": reported_stored,
        "committed_unanswered": committed_unanswered,
        "deliberate_retries": sum(1 for a in ledger.attempts if a.request.deliberate_retry),
        "duplicates_reported": sum(json.loads(a.body)["duplicates"] for a in ok),
    }


def summary(name: str, **figures: object) -> None:
    print(f"\n[{name}] " + ", ".join(f"{k}={v}" for k, v in figures.items()))


# --- the scenarios ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("outage", ["restart", "unreachable"])
def test_database_outage_gives_fast_503s_and_loses_or_doubles_nothing(
    outage: str, cluster_db: Cluster, server: Server
) -> None:
    master = server.proc.pid
    workers_before = worker_pids(master)
    assert len(workers_before) == WORKERS
    load = Load(server, device_key(cluster_db.engine))
    try:
        load.wait_for("warm-up", lambda: sum(a.status == 200 for a in load.answers()) >= WARM_UP_ANSWERS, timeout=30)
        down_at = time.monotonic()
        cluster_db.proc.stop()
        stopped_at = time.monotonic()
        with black_hole(cluster_db.proc.port) if outage == "unreachable" else nullcontext():
            time.sleep(OUTAGE_S[outage])
        cluster_db.proc.start()
        up_at = time.monotonic()
        time.sleep(RECOVERY_BOUND_S + AFTER_RECOVERY_S)  # the load goes on as the app recovers
    finally:
        cluster_db.ensure_running()
        ledger = load.finish()

    check_answers(ledger)
    unavailable = [a for a in ledger.attempts if a.status == 503]
    assert len(unavailable) >= CLIENTS, "the outage was not observed: the test proves nothing"
    latencies = [a.latency for a in unavailable]
    p99 = percentile(latencies, 99)
    slowest = max(a.latency for a in ledger.attempts if a.started >= down_at)
    since_up = [a for a in ledger.attempts if a.started >= up_at]
    first_ok = min((a.started + a.latency - up_at for a in since_up if a.status == 200), default=float("inf"))
    last_failure = max((a.started + a.latency - up_at for a in since_up if a.status != 200), default=0.0)
    late = [a for a in since_up if a.started >= up_at + RECOVERY_BOUND_S]
    figures = check_accounting(cluster_db.engine, ledger)
    summary(
        f"outage: {outage}",
        stop_s=round(stopped_at - down_at, 2),
        down_s=round(up_at - stopped_at, 2),
        statuses=dict(ledger.by_status()),
        p50_503_ms=round(statistics.median(latencies) * 1000, 1),
        p99_503_ms=round(p99 * 1000, 1),
        max_503_ms=round(max(latencies) * 1000, 1),
        slowest_since_down_ms=round(slowest * 1000, 1),
        first_ok_after_up_s=round(first_ok, 3),
        last_failure_after_up_s=round(last_failure, 3),
        late_requests=len(late),
        **figures,
    )
    assert p99 <= P99_503_BOUND_S, p99
    assert slowest <= MAX_OUTAGE_LATENCY_S, f"a request took {slowest:.1f} s during the outage"
    if outage == "unreachable":  # the connects did hang, and were cut by the connect timeout
        assert slowest >= 1.0, "no connect hung: the black hole was not effective"
    # Recovered by itself: late in the run everything succeeds, with the same workers, and /ready says so.
    assert late and all(a.status == 200 for a in late), Counter(a.status for a in late)
    assert not any(a.error == "TimeoutError" for a in ledger.attempts), "a request hung"
    assert worker_pids(master) == workers_before, "a worker died or was replaced during the outage"
    assert http(server.url + "/ready").status == 200


def test_worker_crash_loses_or_doubles_nothing(cluster_db: Cluster, server: Server) -> None:
    master = server.proc.pid
    originals = worker_pids(master)
    assert len(originals) == WORKERS
    load = Load(server, device_key(cluster_db.engine))
    respawn: list[float] = []
    try:
        load.wait_for("warm-up", lambda: sum(a.status == 200 for a in load.answers()) >= WARM_UP_ANSWERS, timeout=30)
        killed: set[int] = set()
        for victim in sorted(originals):  # every original worker dies with requests in flight
            seen = len(load.answers())
            load.wait_for("requests in flight", lambda seen=seen: len(load.answers()) >= seen + 50, timeout=30)
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            killed.add(victim)
            wait_for_workers(master, WORKERS, without=killed, timeout=RESPAWN_BOUND_S)
            respawn.append(time.monotonic() - killed_at)
        after_kills = time.monotonic()
        load.wait_for(
            "successes after the crashes",
            lambda: sum(a.status == 200 and a.started >= after_kills for a in load.answers()) >= WARM_UP_ANSWERS,
            timeout=30,
        )
    finally:
        ledger = load.finish()

    check_answers(ledger)
    lost = [a for a in ledger.attempts if a.status is None]
    assert lost, "no request lost its answer: the crash was not observed"
    assert 503 not in ledger.by_status(), "the database was up: no 503 expected"
    figures = check_accounting(cluster_db.engine, ledger)
    summary(
        "worker crash",
        statuses=dict(ledger.by_status()),
        errors=dict(Counter(a.error for a in lost)),
        respawn_s=[round(s, 2) for s in respawn],
        **figures,
    )
    assert worker_pids(master).isdisjoint(originals) and len(worker_pids(master)) == WORKERS
    assert http(server.url + "/ready").status == 200


def test_pooled_engine_gives_up_connecting_after_3_s_and_then_fails_fast() -> None:
    """The app's engine (pooled) on an unreachable database: the first connect waits for the connect timeout,
    the next ones fail at once for db.FAIL_FAST_PAUSE_S, then one tries again (here: refused, at once)."""
    port = port_for.select_random()
    eng = db.make_engine(f"postgresql+psycopg://fleet@127.0.0.1:{port}/fleet", pool_size=2)

    def connect() -> tuple[float, str]:
        started = time.monotonic()
        with pytest.raises(sa.exc.OperationalError) as failed:
            eng.connect()
        return time.monotonic() - started, str(failed.value.orig)

    try:
        with black_hole(port):
            first, first_error = connect()
            second, second_error = connect()
        time.sleep(db.FAIL_FAST_PAUSE_S)
        third, third_error = connect()
    finally:
        eng.dispose()
    assert db.POOLED_CONNECT_TIMEOUT_S - 0.5 <= first <= db.POOLED_CONNECT_TIMEOUT_S + 1.5, first_error
    assert second < 0.5 and "the last connect failed" in second_error
    assert third < 0.5 and "refused" in third_error  # a real try


# --- a frozen database, a lock pile-up, a full disk (issue 16) ----------------------------------------------

#: How long the database is frozen (SIGSTOP to the postmaster and every backend): no answer, no reset.
FROZEN_S = 30.0
#: The shipped bounds (config/): a request's unit of work is abandoned FLEET_INGEST_STATEMENT_TIMEOUT_MS +
#: FLEET_DB_DEADLINE_GRACE_MS after it started (2 + 1 s); a new connection gives up after the 3 s connect timeout.
ABANDON_S = 3.0
#: Slowest answer allowed while frozen: an idle pooled connection's ping abandoned (3 s), then a connect that
#: times out (3 s) before the process knows the database is down, with room for a loaded machine.
MAX_FROZEN_LATENCY_S = 2 * ABANDON_S + 1.0
#: The bulk of the 503s: at once (the process knows) or at the abandon bound.
P99_FROZEN_503_S = ABANDON_S + 0.5
#: Dashboards' requests: status, listings and analytics, each on a new connection, with a read key.
DASHBOARD_PATHS = ("/v1/vehicles/rel-v-00", "/v1/meters/rel-m-00", "/v1/analytics/performance/rel-v-00", "/v1/meters")
#: A write queued behind a lock gives up after FLEET_INGEST_LOCK_TIMEOUT_MS (1 s); while every thread waits so, new
#: requests wait for a thread, up to admission control's FLEET_INGEST_MAX_QUEUE_MS (1 s) before they are shed: 2 s
#: (1,993 ms seen once), plus room for a loaded machine.
MAX_LOCKED_LATENCY_S = 3.0
LOCK_HELD_S = 8.0


@dataclass(frozen=True)
class Read:
    started: float
    latency: float
    status: int | None
    retry_after: str | None


class Dashboards(threading.Thread):
    """A dashboard polling status and analytics with a read key, each request on a new connection."""

    def __init__(self, server: Server, key: str) -> None:
        super().__init__(name="reliability-dashboards", daemon=True)
        self.url, self.key = server.url, key
        self.stop = threading.Event()
        self.reads: list[Read] = []

    def run(self) -> None:
        while not self.stop.is_set():
            for path in DASHBOARD_PATHS:
                started = time.monotonic()
                try:
                    reply = http(self.url + path, key=self.key)
                    status, retry_after = reply.status, reply.headers.get("retry-after")
                except OSError:
                    status, retry_after = None, None
                self.reads.append(Read(started, time.monotonic() - started, status, retry_after))
                time.sleep(PACE_S * 5)

    def finish(self) -> list[Read]:
        self.stop.set()
        self.join(timeout=CLIENT_TIMEOUT_S + 5)
        return list(self.reads)


def postgres_pids(proc: PostgreSQLExecutor) -> list[int]:
    """The postmaster (from postmaster.pid) and every process it forked (backends, background workers)."""
    postmaster = int((Path(proc.datadir) / "postmaster.pid").read_text().split()[0])
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if parent_pid(int(stat.parent.name)) == postmaster:
                children.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return [postmaster, *children]


@contextmanager
def frozen(proc: PostgreSQLExecutor) -> Iterator[list[int]]:
    """The whole cluster stopped (SIGSTOP) and continued at the end: its sockets stay open, nothing answers."""
    pids = postgres_pids(proc)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield pids
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def read_key(eng: Engine) -> str:
    with eng.begin() as conn:
        return keys.create_key(conn, "reliability dashboards", "read", None)[1]


def longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch of [start, end) in which none of `times` fell."""
    points = [start, *sorted(t for t in times if start <= t < end), end]
    return max(b - a for a, b in itertools.pairwise(points))


def test_frozen_database_answers_503_in_bounded_time_and_loses_or_doubles_nothing(
    cluster_db: Cluster, server: Server
) -> None:
    master = server.proc.pid
    workers_before = worker_pids(master)
    dashboards = Dashboards(server, read_key(cluster_db.engine))
    load = Load(server, device_key(cluster_db.engine))
    dashboards.start()
    probes: dict[str, tuple[float, int, dict]] = {}
    try:
        load.wait_for("warm-up", lambda: sum(a.status == 200 for a in load.answers()) >= WARM_UP_ANSWERS, timeout=30)
        with frozen(cluster_db.proc) as pids:
            frozen_at = time.monotonic()
            time.sleep(2 * ABANDON_S)  # every worker has met the frozen database by now
            for path in ("/ready", "/health"):
                started = time.monotonic()
                reply = http(server.url + path)
                probes[path] = (time.monotonic() - started, reply.status, reply.json())
            time.sleep(FROZEN_S - (time.monotonic() - frozen_at))
        resumed_at = time.monotonic()
        time.sleep(RECOVERY_BOUND_S + AFTER_RECOVERY_S)
    finally:
        ledger = load.finish()
        reads = dashboards.finish()

    check_answers(ledger)
    during = [a for a in ledger.attempts if frozen_at <= a.started < resumed_at]
    unavailable = [a for a in during if a.status == 503]
    since_frozen = [a for a in ledger.attempts if a.started >= frozen_at]
    reads_during = [r for r in reads if frozen_at <= r.started < resumed_at]
    longest = max(a.latency for a in since_frozen)
    longest_read = max(r.latency for r in reads_during)
    finished = [a.started + a.latency for a in ledger.attempts] + [r.started + r.latency for r in reads]
    gap = longest_gap(finished, frozen_at, resumed_at)
    late = [a for a in ledger.attempts if a.started >= resumed_at + RECOVERY_BOUND_S]
    late_reads = [r for r in reads if r.started >= resumed_at + RECOVERY_BOUND_S]
    figures = check_accounting(cluster_db.engine, ledger)
    summary(
        "frozen database",
        frozen_s=round(resumed_at - frozen_at, 1),
        processes_stopped=len(pids),
        statuses=dict(ledger.by_status()),
        statuses_frozen=dict(Counter(a.status for a in during)),
        reads_frozen=dict(Counter(r.status for r in reads_during)),
        **figures,
        longest_ms=round(longest * 1000),
        longest_read_ms=round(longest_read * 1000),
        p99_503_ms=round(percentile([a.latency for a in unavailable], 99) * 1000),
        longest_silence_s=round(gap, 2),
        ready=(round(probes["/ready"][0], 2), probes["/ready"][1], probes["/ready"][2]["database"]),
        health_s=round(probes["/health"][0], 3),
    )
    assert len(unavailable) >= CLIENTS, "the freeze was not observed: the test proves nothing"
    assert longest <= MAX_FROZEN_LATENCY_S and longest_read <= MAX_FROZEN_LATENCY_S, (longest, longest_read)
    assert percentile([a.latency for a in unavailable], 99) <= P99_FROZEN_503_S
    assert {r.status for r in reads_during} <= {200, 503} and any(r.status == 503 for r in reads_during)
    assert all(r.retry_after for r in reads_during if r.status == 503)
    # Never do all the workers hang: answers kept coming throughout, and /health was answered at once.
    assert gap <= MAX_FROZEN_LATENCY_S, f"no answer at all for {gap:.1f} s"
    assert probes["/health"][1] == 200 and probes["/health"][0] < 1.0
    # /ready says not ready, and why, within the bound.
    ready_s, ready_status, ready_body = probes["/ready"]
    assert ready_status == 503 and ready_s <= MAX_FROZEN_LATENCY_S
    assert ready_body["ready"] is False and ready_body["database"].startswith("unavailable: "), ready_body
    # Recovered by itself, with the same workers.
    assert late and all(a.status == 200 for a in late), Counter(a.status for a in late)
    assert late_reads and all(r.status == 200 for r in late_reads), Counter(r.status for r in late_reads)
    assert worker_pids(master) == workers_before
    assert http(server.url + "/ready").status == 200


def test_lock_pile_up_fails_ingest_fast_and_loses_nothing(cluster_db: Cluster, server: Server) -> None:
    """A long transaction holds meters_current (a hand-run migration would): meter ingest gives up after
    FLEET_INGEST_LOCK_TIMEOUT_MS with a 503 instead of queueing behind it; vehicles do not wait for the lock.

    A vehicle request may still be shed (503 "overloaded"): when a client's connection shares a worker with more
    lock-waiting meter requests than the worker has threads, it waits for a thread past admission control's queue
    bound (seen once in CI: 4 vehicle requests stored, 1 shed). It is never refused for the lock itself."""
    load = Load(server, device_key(cluster_db.engine))
    try:
        load.wait_for("warm-up", lambda: sum(a.status == 200 for a in load.answers()) >= WARM_UP_ANSWERS, timeout=30)
        with cluster_db.engine.connect() as holder:
            transaction = holder.begin()
            holder.execute(sa.text("LOCK TABLE meters_current IN ACCESS EXCLUSIVE MODE"))
            locked_at = time.monotonic()
            time.sleep(LOCK_HELD_S)
            released_at = time.monotonic()  # before: requests queued on the lock proceed as soon as it goes
            transaction.rollback()
        time.sleep(RECOVERY_BOUND_S)
    finally:
        ledger = load.finish()

    check_answers(ledger)
    during = [a for a in ledger.attempts if locked_at <= a.started and a.started + a.latency < released_at]
    with_meters = [a for a in during if any(r.kind == "METER" for r in a.request.readings)]
    vehicles_only = [a for a in during if all(r.kind == "VEHICLE" for r in a.request.readings)]
    late = [a for a in ledger.attempts if a.started >= released_at + 0.5]
    figures = check_accounting(cluster_db.engine, ledger)
    longest = max(a.latency for a in ledger.attempts if a.started >= locked_at)
    summary(
        "lock pile-up",
        held_s=round(released_at - locked_at, 1),
        meters_while_locked=dict(Counter(a.status for a in with_meters)),
        vehicles_while_locked=dict(Counter(a.status for a in vehicles_only)),
        **figures,
        longest_ms=round(longest * 1000),
    )
    assert with_meters and {a.status for a in with_meters} == {503}, Counter(a.status for a in with_meters)
    assert max(a.latency for a in with_meters) <= MAX_LOCKED_LATENCY_S
    assert vehicles_only and any(a.status == 200 for a in vehicles_only), Counter(a.status for a in vehicles_only)
    not_stored = [a for a in vehicles_only if a.status != 200]
    assert all(a.status == 503 and b'"overloaded: ' in a.body for a in not_stored), [a.body for a in not_stored]
    assert longest <= MAX_LOCKED_LATENCY_S
    assert late and all(a.status == 200 for a in late)


#: The tablespace's size: a filesystem that fills up while the test ingests.
TINY_FS = "16M"
#: Free space left on it once the meters' chunk exists: a few hundred readings more, then "No space left".
LEFT_FREE_BYTES = 96 * 1024


@contextmanager
def tiny_tablespace(cluster: Cluster) -> Iterator[Path]:
    """A size-limited tmpfs mounted for the cluster's tablespace `tiny`, where meter_readings' new chunks go.
    Under /tmp itself: the server (user postgres) must reach it, and pytest's own directories are root's."""
    mount = Path(tempfile.mkdtemp(prefix="fleet-tiny-"))
    mount.chmod(0o755)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TINY_FS},mode=0755", "tmpfs", str(mount)], check=True, timeout=30
    )
    location = mount / "pg"
    location.mkdir()
    shutil.chown(location, "postgres", "postgres")
    try:
        with cluster.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f"CREATE TABLESPACE tiny LOCATION '{location}'"))
            conn.execute(sa.text("SELECT attach_tablespace('tiny', 'meter_readings')"))
        yield mount
    finally:
        with cluster.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("SELECT detach_tablespaces('meter_readings')"))
            conn.execute(sa.text("TRUNCATE meter_readings"))  # drops its chunks, the one in `tiny` with them
            conn.execute(sa.text("DROP TABLESPACE IF EXISTS tiny"))
        subprocess.run(["umount", str(mount)], check=True, timeout=30)
        mount.rmdir()


def test_full_disk_answers_503_keeps_what_was_acknowledged_and_recovers(cluster_db: Cluster, server: Server) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited filesystem needs root (CI and sessions run as root)")
    with tiny_tablespace(cluster_db) as mount:
        load = Load(server, device_key(cluster_db.engine))
        try:
            load.wait_for("warm-up", lambda: sum(a.status == 200 for a in load.answers()) >= 20, timeout=30)
            free = shutil.disk_usage(mount).free
            filler = mount / "filler"
            with filler.open("wb") as out:  # the rest of the filesystem, but a little
                out.write(b"\0" * max(0, free - LEFT_FREE_BYTES))
            filled_at = time.monotonic()
            load.wait_for(
                "503s for the full disk",
                lambda: sum(a.status == 503 and a.started >= filled_at for a in load.answers()) >= CLIENTS,
                timeout=60,
            )
            time.sleep(2.0)
            filler.unlink()  # space returns
            freed_at = time.monotonic()
            time.sleep(RECOVERY_BOUND_S + AFTER_RECOVERY_S)
        finally:
            ledger = load.finish()
        check_answers(ledger)
        figures = check_accounting(cluster_db.engine, ledger)
        full = [a for a in ledger.attempts if filled_at <= a.started < freed_at]
        late = [a for a in ledger.attempts if a.started >= freed_at + RECOVERY_BOUND_S]
        longest = max(a.latency for a in ledger.attempts)
        summary(
            "full disk",
            statuses_while_full=dict(Counter(a.status for a in full)),
            **figures,
            longest_ms=round(longest * 1000),
        )
        assert any(a.status == 503 for a in full)
        assert longest <= MAX_LOCKED_LATENCY_S, "a write on a full disk fails at once"
        assert late and all(a.status == 200 for a in late), Counter(a.status for a in late)
