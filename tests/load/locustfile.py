"""Locust scenarios for the fleet: steady reporting, a burst, and dashboards alongside (headless, loopback only).

Run through `python -m tests.load.run_locust` (which starts the database and gunicorn, loads a fleet day,
creates the keys and passes them in), or by hand:

    FLEET_LOAD_DEVICE_KEY=fk_... FLEET_LOAD_READ_KEY=fk_... FLEET_LOAD_SCENARIO=steady \\
    locust -f tests/load/locustfile.py --headless --host http://127.0.0.1:8000 \\
        -u 20020 -r 1000 --run-time 6m --stop-timeout 30 --csv var/load/steady --html var/load/steady.html

(-u counts every user: the devices plus the FLEET_LOAD_DASHBOARDS dashboard users.)

Scenarios (FLEET_LOAD_SCENARIO):
- `steady`: every device user is one device (meters and vehicles alternating) reporting one reading every
  FLEET_LOAD_PACING_SECONDS (60), each at its own phase of the minute: the fleet's real arrival pattern.
  Dashboard users (FLEET_LOAD_DASHBOARDS of them) read status, 24 h performance and the fleet view meanwhile.
- `burst`: every device reports exactly once, all within the same FLEET_LOAD_BURST_WINDOW_SECONDS (10) window
  that opens at FLEET_LOAD_BURST_AT (epoch seconds; default FLEET_LOAD_BURST_DELAY_SECONDS, 60, after start).
- `capacity` (user class `Saturator`): each user sends single readings back to back, for the fleet's devices in
  turn: the readings per second the server acknowledges when it is kept busy (its single-reading capacity, with
  this load generator's own cost per request). A 429 or 503 is counted and not retried.
- `overload`: devices as in `steady`, at a pacing that offers more than the capacity (the runner sets it), with
  dashboards. Devices make new readings until FLEET_LOAD_OVERLOAD_END (epoch seconds), then only finish the
  ones they hold: a device keeps its reading and re-sends it when told to come back, up to
  FLEET_LOAD_RETRY_ATTEMPTS tries, as a real device buffers what it has not delivered. The statistics are reset
  one pacing period after the last device spawned: the percentiles and the checks are those of the overload
  phase (and the drain after it); the start-up's own (spawning, every device's first reading, Retry-After not
  yet adapted) go to the summary as `startup`, and its failures count in the zero-errors check.

Devices open a new connection for each reading (`Connection: close`): a device reporting once a minute does
not hold a TCP connection open (gunicorn closes idle ones after 2 s), and one socket per report keeps the
load generator's port and file use bounded with 20,000 devices. Dashboards keep theirs alive.

Device ids are those of tests/load/fleet_day.py (`meter-00001`.. and `ev-00001`.., vehicle i charged from
meter i, 1-based): against a database loaded with a fleet day, dashboards read real numbers and devices
update existing current state. FLEET_LOAD_FLEET_SIZE is the number of meters (= vehicles).

The run ends with a verdict (exit code 0 PASS, 1 FAIL): zero failed requests; each request class within its
p99 limit; steady: the ingest rate over the steady phase (after spawning and one pacing period) at least 95 %
of what the devices offer (users / pacing), for at least FLEET_LOAD_MIN_STEADY_SECONDS; burst: every device's
reading acknowledged, the burst actually offered within its window (the load generator kept up) and drained
(last answer) within FLEET_LOAD_BURST_DRAIN_SECONDS of the window's opening; capacity: a measured rate; overload:
every answer within FLEET_LOAD_MAX_ANSWER_MS (5 s), requests were shed, and every reading made was acknowledged
stored once (the goodput, reported, is held against the capacity by tests/load/run_locust.py, which measures it
again afterwards). A JSON summary (checks, readings stored and duplicates as the API acknowledged them,
percentiles, ingest rate per 10 s) goes to FLEET_LOAD_SUMMARY when set.
"""

from __future__ import annotations

import gc
import itertools
import json
import math
import os
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import gevent
from locust import FastHttpUser, between, constant, events, task
from locust.env import Environment

SCENARIO = os.environ.get("FLEET_LOAD_SCENARIO", "steady")
DEVICE_KEY = os.environ.get("FLEET_LOAD_DEVICE_KEY", "")
READ_KEY = os.environ.get("FLEET_LOAD_READ_KEY", "")
PACING_SECONDS = float(os.environ.get("FLEET_LOAD_PACING_SECONDS", "60"))
DASHBOARDS = int(os.environ.get("FLEET_LOAD_DASHBOARDS", "0"))
FLEET_SIZE = int(os.environ.get("FLEET_LOAD_FLEET_SIZE", "10000"))  # meters = vehicles = this
BURST_WINDOW_SECONDS = float(os.environ.get("FLEET_LOAD_BURST_WINDOW_SECONDS", "10"))
BURST_AT = float(
    os.environ.get("FLEET_LOAD_BURST_AT") or time.time() + float(os.environ.get("FLEET_LOAD_BURST_DELAY_SECONDS", "60"))
)
BURST_DRAIN_SECONDS = float(os.environ.get("FLEET_LOAD_BURST_DRAIN_SECONDS", "50"))
MIN_STEADY_SECONDS = float(os.environ.get("FLEET_LOAD_MIN_STEADY_SECONDS", "0"))
#: overload: new readings until this instant (epoch seconds); the capacity the goodput is held against (readings/s).
OVERLOAD_END = float(os.environ.get("FLEET_LOAD_OVERLOAD_END") or 0) or math.inf
CAPACITY = float(os.environ.get("FLEET_LOAD_CAPACITY", "0"))
MAX_ANSWER_MS = float(os.environ.get("FLEET_LOAD_MAX_ANSWER_MS", "5000"))
#: capacity: the first seconds (connections opening, caches warming) are not measured.
CAPACITY_WARMUP_SECONDS = 10.0
SUMMARY_PATH = os.environ.get("FLEET_LOAD_SUMMARY", "")
#: p99 limits (ms) per request class for the verdict.
P99_LIMITS_MS = {
    "ingest": float(os.environ.get("FLEET_LOAD_P99_INGEST_MS", "500")),
    "status": float(os.environ.get("FLEET_LOAD_P99_STATUS_MS", "100")),
    "performance": float(os.environ.get("FLEET_LOAD_P99_PERFORMANCE_MS", "500")),
    "fleet": float(os.environ.get("FLEET_LOAD_P99_FLEET_MS", "5000")),
}
#: Share of the offered ingest rate the steady phase must reach.
MIN_RATE_SHARE = 0.95
RATE_BUCKET_SECONDS = 10
#: Dashboard answers slower than this are listed in the summary with when they were asked (to tell, say, the
#: load generator's own spawning pauses from the server's).
SLOW_READ_MS = 500.0
#: A device told to come back (429, or 503 with Retry-After: shed by admission control, database unavailable)
#: retries the same reading after Retry-After x a random factor in [1, 1.5) (no header: exponential back-off from
#: 1 s), never waiting longer than this, and gives up after RETRY_ATTEMPTS tries (a failure).
RETRY_WAIT_CAP_SECONDS = 180.0  # the server's longest Retry-After (FLEET_SHED_RETRY_AFTER_MAX_S, 120) x 1.5
RETRY_ATTEMPTS = int(os.environ.get("FLEET_LOAD_RETRY_ATTEMPTS", "8"))


def meter_id(i: int) -> str:
    """Id of meter number i (1-based), as tests/load/fleet_day.py names it."""
    return f"meter-{i:05d}"


def vehicle_id(i: int) -> str:
    """Id of vehicle number i (1-based), charged from meter i, as tests/load/fleet_day.py names it."""
    return f"ev-{i:05d}"


_device_numbers = itertools.count()


class _Tally:
    """What this run saw: ingest answers (stored / duplicates), completions per 10 s, burst timing."""

    def __init__(self) -> None:
        self.stored = 0
        self.duplicates = 0
        self.ingest_ok = 0
        self.retries = 0  # 429/503 answers the device waited out and retried
        self.readings_made = 0  # distinct readings devices set out to deliver (a retry is not a new one)
        self.abandoned = 0  # readings a device gave up on (RETRY_ATTEMPTS answers 429/503)
        self.refused = 0  # capacity: 429/503 answers (not retried)
        self.slow_reads: list[tuple[float, str, float]] = []  # (seconds since start, request, ms) over SLOW_READ_MS
        self.environment: Environment | None = None
        # overload: the statistics of the start-up (spawning and the first pacing period), kept apart
        self.startup_stats: dict[str, dict[str, Any]] | None = None
        self.startup_ended: float | None = None
        self.per_bucket: Counter[int] = Counter()
        self.first_send: float | None = None
        self.last_send: float | None = None
        self.last_answer: float | None = None
        self.spawned_at: float | None = None
        self.started_at = time.time()

    def ingest_answer(self, started: float, elapsed_ms: float, doc: dict[str, Any]) -> None:
        self.stored += int(doc.get("stored", 0))
        self.duplicates += int(doc.get("duplicates", 0))
        self.ingest_ok += 1
        done = started + elapsed_ms / 1000.0
        self.per_bucket[int(done // RATE_BUCKET_SECONDS)] += 1
        self.first_send = started if self.first_send is None else min(self.first_send, started)
        self.last_send = started if self.last_send is None else max(self.last_send, started)
        self.last_answer = done if self.last_answer is None else max(self.last_answer, done)


TALLY = _Tally()


def _device_reading(kind: str, number: int, rng: random.Random) -> dict[str, Any]:
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    if kind == "meter":
        return {
            "type": "METER",
            "payload": {
                "meterId": meter_id(number),
                "kwhConsumedAc": round(rng.uniform(0.0, 0.19), 4),
                "voltage": round(rng.uniform(225, 245), 1),
                "timestamp": now,
            },
        }
    return {
        "type": "VEHICLE",
        "payload": {
            "vehicleId": vehicle_id(number),
            "soc": round(rng.uniform(5, 99), 1),
            "kwhDeliveredDc": round(rng.uniform(0.0, 0.17), 4),
            "batteryTemp": round(rng.uniform(10, 45), 1),
            "isCharging": rng.random() < 0.3,
            "timestamp": now,
        },
    }


def _failure(resp: Any) -> str:
    """What went wrong: the HTTP status and the start of the body, or the connection error (status 0)."""
    if resp.status_code == 0:
        return f"no answer: {type(resp.error).__name__}: {str(resp.error)[:150]}"
    return f"HTTP {resp.status_code}: {(resp.text or '')[:200]}"


class Device(FastHttpUser):
    """One meter or vehicle (alternating), reporting on its own schedule."""

    weight = 1000
    # Readings are acknowledged within seconds or the device retries; a slow answer is an error here.
    network_timeout = 30.0
    connection_timeout = 30.0

    def wait_time(self) -> float:
        if SCENARIO == "burst" or time.time() >= OVERLOAD_END:
            return 24 * 3600.0  # reported once (burst) or the overload is over: quiet for the rest of the run
        # constant pacing: one reading every PACING_SECONDS whatever the answer took
        return max(0.0, PACING_SECONDS - (time.monotonic() - self._task_started))

    def on_start(self) -> None:
        number = next(_device_numbers)
        self.kind = "meter" if number % 2 == 0 else "vehicle"
        self.number = 1 + (number // 2) % FLEET_SIZE
        self.rng = random.Random(number)
        self.headers = {"X-API-Key": DEVICE_KEY, "Content-Type": "application/json", "Connection": "close"}
        self._task_started = time.monotonic()
        if SCENARIO == "burst":
            # Every device at a random instant of the same window.
            at = BURST_AT + self.rng.uniform(0, BURST_WINDOW_SECONDS)
        else:
            at = time.time() + self.rng.uniform(0, PACING_SECONDS)  # the device's phase within the minute
        gevent.sleep(max(0.0, at - time.time()))

    @task
    def report(self) -> None:
        self._task_started = time.monotonic()
        if time.time() >= OVERLOAD_END:
            return
        reading = _device_reading(self.kind, self.number, self.rng)  # a retry sends the same reading
        TALLY.readings_made += 1
        for attempt in range(1, RETRY_ATTEMPTS + 1):
            wait = self._send(reading, last_attempt=attempt == RETRY_ATTEMPTS)
            if wait is None:
                return
            TALLY.retries += 1
            gevent.sleep(
                min(RETRY_WAIT_CAP_SECONDS, wait * self.rng.uniform(1.0, 1.5) if wait else 2.0 ** (attempt - 1))
            )

    def _send(self, reading: dict[str, Any], *, last_attempt: bool) -> float | None:
        """POST one reading; the seconds to wait before retrying it (0: no Retry-After), or None when done."""
        started = time.time()
        with self.client.post(
            "/v1/telemetry/ingest",
            json=reading,
            headers=self.headers,
            name=f"ingest {self.kind}",
            catch_response=True,
        ) as resp:
            if resp.status_code in (429, 503) and not last_attempt:
                # Told to come back: an answer, not an error of the platform's (it is counted in TALLY.retries).
                resp.success()
                try:
                    return max(0.0, float(resp.headers.get("Retry-After") or 0))
                except ValueError:
                    return 0.0
            if resp.status_code != 200:
                resp.failure(_failure(resp))
                if resp.status_code in (429, 503):
                    TALLY.abandoned += 1
                return None
            try:
                doc = json.loads(resp.content)
            except (TypeError, ValueError):
                resp.failure("HTTP 200 without a JSON body")
                return None
            resp.success()
            TALLY.ingest_answer(started, resp.request_meta["response_time"] or 0.0, doc)
            return None


_saturator_numbers = itertools.count()


class Saturator(FastHttpUser):
    """The capacity scenario: single readings back to back, each on a new connection as devices send them.
    User k of K sends for the fleet's devices k, k + K, k + 2K, ... in turn (meters and vehicles alternating), so
    a device's next reading comes a full round of the fleet later, never twice within one second."""

    wait_time = constant(0)
    network_timeout = 30.0
    connection_timeout = 30.0

    def on_start(self) -> None:
        self.numbers = itertools.count(next(_saturator_numbers), int(os.environ.get("FLEET_LOAD_SATURATORS", "1")))
        self.rng = random.Random()
        self.headers = {"X-API-Key": DEVICE_KEY, "Content-Type": "application/json", "Connection": "close"}

    @task
    def report(self) -> None:
        n = next(self.numbers) % (2 * FLEET_SIZE)
        kind = "meter" if n % 2 == 0 else "vehicle"
        started = time.time()
        with self.client.post(
            "/v1/telemetry/ingest",
            json=_device_reading(kind, 1 + n // 2, self.rng),
            headers=self.headers,
            name=f"ingest {kind}",
            catch_response=True,
        ) as resp:
            if resp.status_code in (429, 503):
                resp.success()  # the server's answer to too much load: counted, not an error of the run
                TALLY.refused += 1
            elif resp.status_code != 200:
                resp.failure(_failure(resp))
            else:
                resp.success()
                TALLY.ingest_answer(started, resp.request_meta["response_time"] or 0.0, json.loads(resp.content))


class Dashboard(FastHttpUser):
    """A fleet operator's dashboard: mostly status, some 24 h performance, now and then the fleet view; a call
    every 2-6 s (20 dashboards: ~5 calls/s, the fleet view ~0.4/s)."""

    fixed_count = DASHBOARDS
    wait_time = between(2.0, 6.0)
    network_timeout = 30.0
    connection_timeout = 30.0

    def on_start(self) -> None:
        self.headers = {"X-API-Key": READ_KEY}
        self.rng = random.Random()

    def _get(self, path: str, name: str) -> None:
        started = time.time()
        with self.client.get(path, headers=self.headers, name=name, catch_response=True) as resp:
            elapsed_ms = resp.request_meta["response_time"] or 0.0
            if elapsed_ms > SLOW_READ_MS and len(TALLY.slow_reads) < 200:
                TALLY.slow_reads.append((round(started - TALLY.started_at, 1), name, round(elapsed_ms)))
            # A device that has not reported yet in this run is a legitimate 404 for status.
            if resp.status_code == 200 or (resp.status_code == 404 and name.startswith("status")):
                resp.success()
            else:
                resp.failure(_failure(resp))

    @task(6)
    def vehicle_status(self) -> None:
        self._get(f"/v1/vehicles/{vehicle_id(self.rng.randint(1, FLEET_SIZE))}", "status vehicle")

    @task(3)
    def meter_status(self) -> None:
        self._get(f"/v1/meters/{meter_id(self.rng.randint(1, FLEET_SIZE))}", "status meter")

    @task(3)
    def performance(self) -> None:
        # The default window: the 24 hours up to the end of the current hour.
        self._get(f"/v1/analytics/performance/{vehicle_id(self.rng.randint(1, FLEET_SIZE))}", "performance 24h")

    @task(1)
    def fleet(self) -> None:
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        start = end - timedelta(hours=1)
        self._get(
            f"/v1/analytics/fleet?startDate={start.isoformat()}&endDate={end.isoformat()}".replace("+", "%2B")
            + "&sort=efficiency&page_size=50",
            "fleet 1h",
        )


@events.init.add_listener
def _init(environment: Environment, **_kwargs: object) -> None:
    TALLY.environment = environment


def _overload_phase_starts() -> None:
    """The overload's own statistics start here: the start-up (every device spawned and sending its first reading
    while Retry-After has not yet adapted, and the load generator busy spawning) is kept apart and reported."""
    if TALLY.environment is None:
        return
    TALLY.startup_stats = _stats_by_name(TALLY.environment.stats)
    TALLY.startup_ended = time.time()
    TALLY.environment.stats.reset_all()


@events.spawning_complete.add_listener
def _spawned(user_count: int, **_kwargs: object) -> None:
    if TALLY.spawned_at is None:
        TALLY.spawned_at = time.time()
        if SCENARIO == "overload":
            gevent.spawn_later(PACING_SECONDS, _overload_phase_starts)
        # 20,000 users are millions of long-lived objects: every full collection walked them all and stalled
        # every greenlet of this process meanwhile, adding its pause to the response times of requests in
        # flight. Frozen, they are left out of collections; what requests allocate is still collected.
        gc.collect()
        gc.freeze()


def _request_class(name: str) -> str:
    return name.split(" ", 1)[0]


def _get_total(by_name: dict[str, dict[str, Any]], key: str) -> float:
    return float(by_name.get("Aggregated", {}).get(key) or 0)


def _stats_by_name(stats: Any) -> dict[str, dict[str, Any]]:
    """Requests, failures, percentiles (ms), max, mean and rate per request name and 'Aggregated'."""
    out: dict[str, dict[str, Any]] = {}
    for entry in [*stats.entries.values(), stats.total]:
        p = {q: entry.get_response_time_percentile(q / 100) for q in (50, 95, 99)}
        out[entry.name] = {
            "requests": entry.num_requests,
            "failures": entry.num_failures,
            "p50": p[50],
            "p95": p[95],
            "p99": p[99],
            "max": entry.max_response_time,
            "mean": entry.avg_response_time,
            "rps": entry.total_rps,
        }
    return out


def _steady_phase(ended: float, warmup: float = PACING_SECONDS) -> tuple[float, float, float]:
    """(start, end, readings/s) of the steady phase: whole 10 s buckets from `warmup` seconds (one pacing period)
    after the last user spawned to the last full bucket before `ended`."""
    spawned = TALLY.spawned_at or TALLY.started_at
    first = math.ceil((spawned + warmup) / RATE_BUCKET_SECONDS)
    last = math.floor(ended / RATE_BUCKET_SECONDS) - 1  # the bucket `ended` falls in is incomplete
    if last < first:
        return 0.0, 0.0, 0.0
    done = sum(TALLY.per_bucket.get(b, 0) for b in range(first, last + 1))
    seconds = (last + 1 - first) * RATE_BUCKET_SECONDS
    return first * RATE_BUCKET_SECONDS, (last + 1) * RATE_BUCKET_SECONDS, done / seconds


@events.quitting.add_listener
def verdict(environment: Environment, **_kwargs: object) -> None:
    """PASS only when every check holds; exit code 1 otherwise. Writes FLEET_LOAD_SUMMARY when set."""
    ended = time.time()
    stats = environment.stats
    total = stats.total
    runner = environment.runner
    devices = int(os.environ.get("FLEET_LOAD_DEVICES", "0")) or (
        runner.target_user_classes_count.get("Device", 0) if runner else 0
    )
    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": bool(ok), "detail": detail})

    startup = TALLY.startup_stats or {}
    startup_failures = int(_get_total(startup, "failures"))
    failures = total.num_failures + startup_failures
    check("requests made", total.num_requests > 0, f"{total.num_requests} requests")
    check(
        "zero errors",
        failures == 0,
        f"{failures} failed of {total.num_requests + int(_get_total(startup, 'requests'))}",
    )
    per_name = _stats_by_name(stats)
    for name, st in per_name.items():
        limit = P99_LIMITS_MS.get(_request_class(name or ""))
        if limit is not None:
            check(f"{name} p99 <= {limit:g} ms", st["p99"] <= limit, f"p99 {st['p99']:.0f} ms")
    summary: dict[str, Any] = {
        "scenario": SCENARIO,
        "devices": devices,
        "dashboards": DASHBOARDS,
        "fleet_size": FLEET_SIZE,
        "started_at": TALLY.started_at,
        "spawned_at": TALLY.spawned_at,
        "ended_at": ended,
        "ingest_ok": TALLY.ingest_ok,
        "stored": TALLY.stored,
        "duplicates": TALLY.duplicates,
        "retries": TALLY.retries,
        "readings_made": TALLY.readings_made,
        "abandoned": TALLY.abandoned,
        "refused": TALLY.refused,
        "slow_reads": TALLY.slow_reads,
        "startup": {"per_name": TALLY.startup_stats, "ended_at": TALLY.startup_ended} if TALLY.startup_stats else None,
        "per_name": per_name,
        "rate_per_10s": {str(b * RATE_BUCKET_SECONDS): n for b, n in sorted(TALLY.per_bucket.items())},
        "p99_limits_ms": P99_LIMITS_MS,
    }
    if SCENARIO == "burst":
        drain = None if TALLY.last_answer is None else TALLY.last_answer - BURST_AT
        offered = None if TALLY.last_send is None else TALLY.last_send - BURST_AT
        summary["burst"] = {
            "opens_at": BURST_AT,
            "window_seconds": BURST_WINDOW_SECONDS,
            "first_send_s": None if TALLY.first_send is None else TALLY.first_send - BURST_AT,
            "last_send_s": offered,
            "drain_s": drain,
            "drain_limit_s": BURST_DRAIN_SECONDS,
        }
        check(
            "every device's reading acknowledged",
            TALLY.ingest_ok == devices,
            f"{TALLY.ingest_ok} of {devices} devices",
        )
        check(
            "burst offered within its window (load generator kept up)",
            offered is not None and offered <= BURST_WINDOW_SECONDS + 1.0,
            f"last reading sent {offered if offered is None else round(offered, 1)} s after the window opened"
            f" (window {BURST_WINDOW_SECONDS:g} s)",
        )
        check(
            f"burst drained within {BURST_DRAIN_SECONDS:g} s",
            drain is not None and drain <= BURST_DRAIN_SECONDS,
            f"last answer {drain if drain is None else round(drain, 1)} s after the window opened",
        )
    elif SCENARIO == "capacity":
        start, end, rate = _steady_phase(ended, warmup=CAPACITY_WARMUP_SECONDS)
        summary["capacity"] = {"phase_start": start, "phase_end": end, "phase_seconds": end - start, "rate": rate}
        check("capacity measured over >= 30 s", end - start >= 30 and rate > 0, f"{rate:.1f} readings/s over"
              f" {end - start:.0f} s; {TALLY.refused} answered 429/503")  # fmt: skip
    elif SCENARIO == "overload":
        start, end, rate = _steady_phase(min(ended, OVERLOAD_END))
        offered = devices / PACING_SECONDS if PACING_SECONDS else 0.0
        slowest = max((e.max_response_time or 0.0 for e in [*stats.entries.values(), total]), default=0.0)
        summary["overload"] = {
            "phase_start": start,
            "phase_end": end,
            "phase_seconds": end - start,
            "goodput": rate,
            "offered_rate": offered,
            "capacity": CAPACITY,
            "slowest_answer_ms": slowest,
            "startup_slowest_ms": _get_total(startup, "max") if startup else None,
            "startup_status_p99_ms": max(
                (startup.get(n, {}).get("p99") or 0.0 for n in ("status vehicle", "status meter")), default=None
            )
            if startup
            else None,
        }
        check(
            f"overload phase >= {MIN_STEADY_SECONDS:g} s at >= 1.9 x capacity offered",
            end - start >= MIN_STEADY_SECONDS and offered >= 1.9 * CAPACITY > 0,
            f"{end - start:.0f} s, {offered:.1f} readings/s offered vs capacity {CAPACITY:.1f}/s",
        )
        check("requests were shed", TALLY.retries > 0, f"{TALLY.retries} answers 429/503, retried")
        check(f"every answer within {MAX_ANSWER_MS:g} ms", slowest <= MAX_ANSWER_MS, f"slowest {slowest:.0f} ms")
        check(
            "every reading made was acknowledged stored, once",
            TALLY.readings_made == TALLY.stored and TALLY.duplicates == 0 and TALLY.abandoned == 0,
            f"{TALLY.readings_made} made, {TALLY.stored} stored, {TALLY.duplicates} duplicates,"
            f" {TALLY.abandoned} abandoned",
        )
    else:
        start, end, rate = _steady_phase(ended)
        offered = devices / PACING_SECONDS if PACING_SECONDS else 0.0
        summary["steady"] = {
            "phase_start": start,
            "phase_end": end,
            "phase_seconds": end - start,
            "rate": rate,
            "offered_rate": offered,
        }
        check(
            f"steady ingest rate >= {MIN_RATE_SHARE:.0%} of offered",
            offered > 0 and rate >= MIN_RATE_SHARE * offered,
            f"{rate:.1f} readings/s vs {offered:.1f} offered over {end - start:.0f} s",
        )
        if MIN_STEADY_SECONDS:
            check(
                f"steady phase >= {MIN_STEADY_SECONDS:g} s",
                end - start >= MIN_STEADY_SECONDS,
                f"{end - start:.0f} s at full rate",
            )
    failed = [c for c in checks if not c["ok"]]
    summary["checks"] = checks
    summary["verdict"] = "FAIL" if failed else "PASS"
    for c in checks:
        print(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['check']}: {c['detail']}")
    if failed:
        print("VERDICT: FAIL - " + "; ".join(f"{c['check']} ({c['detail']})" for c in failed))
        environment.process_exit_code = 1
    else:
        print(f"VERDICT: PASS - {total.num_requests} requests, 0 errors, every check held")
        environment.process_exit_code = 0
    if SUMMARY_PATH:
        with open(SUMMARY_PATH, "w") as f:
            json.dump(summary, f, indent=2)
