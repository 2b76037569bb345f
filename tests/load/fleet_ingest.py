"""The fleet ingesting in the background: single readings POSTed to `fleet serve` at the fleet's rate (or as fast
as the server takes them), from a separate process, while a benchmark measures something else.

    with FleetIngest(port, device_key, rate=333.3, window_start=today) as ingest:
        a0 = time.time(); ...; a1 = time.time()
        ingest.set_rate(0)          # unpaced from now on: as fast as `threads` clients get answers
        ...
    ingest.window(a0, a1)          # readings/s acknowledged in [a0, a1), latency p50/p95/p99, errors

Each of `threads` client threads (in one spawned process, so its CPU and GIL are not the measuring process's)
sends one reading per request on a new connection, as a device does (devices do not hold connections open), with
`POST /v1/telemetry/ingest` and a device-role key: reading number n of bench_ingest's ReadingFactory (20,000
devices, METER and VEHICLE alternating, every (device, minute) distinct, timestamps from `window_start` on, one
minute of timestamps per 20,000 readings). Paced: thread k sends at t0 + (j * threads + k) / rate, an open-loop
schedule; when the server falls behind by more than a second the schedule is moved on (the backlog dropped), so a
server that cannot keep up shows as a lower rate, not as an ever-growing queue. Bounded: `max_seconds` and the
caller's exit stop it; every request has a 30 s timeout. Loopback only.
"""

from __future__ import annotations

import http.client
import multiprocessing as mp
import queue
import threading
import time
from datetime import datetime
from typing import Any

from tests.load.bench_ingest import ReadingFactory
from tests.load.benchlib import summarize

#: 10,000 meters + 10,000 vehicles, one reading a minute each.
FLEET_RATE = 20_000 / 60.0


def _client(
    k: int,
    threads: int,
    port: int,
    api_key: str,
    first: int,
    factory: ReadingFactory,
    rate: Any,
    stop: Any,
    out: list[tuple[float, float, bool]],
) -> None:
    headers = {"X-API-Key": api_key, "Content-Type": "application/json", "Connection": "close"}
    j = 0
    next_at = time.time()
    paced_at = -1.0
    while not stop.is_set():
        r = rate.value
        if r > 0:
            if paced_at != r:  # (re)start the schedule at a new rate
                paced_at, next_at = r, time.time() + k / r
            delay = next_at - time.time()
            if delay > 0 and stop.wait(delay):
                break
            next_at += threads / r
            if next_at < time.time() - 1.0:
                next_at = time.time()
        else:
            paced_at = -1.0
        body = factory.body(first + j * threads + k, 1)
        j += 1
        started = time.time()
        ok = False
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", "/v1/telemetry/ingest", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            ok = 200 <= resp.status < 300
        except (OSError, http.client.HTTPException):
            ok = False
        finally:
            conn.close()
        done = time.time()
        out.append((done, done - started, ok))


def _main(
    port: int,
    api_key: str,
    first: int,
    window_start: datetime,
    threads: int,
    rate: Any,
    stop: Any,
    max_seconds: float,
    results: Any,
) -> None:
    factory = ReadingFactory(window_start)
    local_stop = threading.Event()
    outs: list[list[tuple[float, float, bool]]] = [[] for _ in range(threads)]
    workers = [
        threading.Thread(
            target=_client, args=(k, threads, port, api_key, first, factory, rate, local_stop, outs[k]), daemon=True
        )
        for k in range(threads)
    ]
    for w in workers:
        w.start()
    stop.wait(max_seconds)
    local_stop.set()
    for w in workers:
        w.join(timeout=35)
    results.put(([item for out in outs for item in out], max(len(out) for out in outs)))


class FleetIngest:
    """Background fleet ingest through the API (see the module docstring); a context manager."""

    def __init__(
        self,
        port: int,
        api_key: str,
        *,
        window_start: datetime,
        rate: float = FLEET_RATE,
        first: int = 0,
        threads: int = 16,
        max_seconds: float = 1800.0,
    ) -> None:
        ctx = mp.get_context("spawn")
        self._rate = ctx.Value("d", rate)
        self._stop = ctx.Event()
        self._results: Any = ctx.Queue()
        self._proc = ctx.Process(
            target=_main,
            args=(port, api_key, first, window_start, threads, self._rate, self._stop, max_seconds, self._results),
            name="fleet-ingest",
            daemon=True,
        )
        self.first = first
        self.threads = threads
        self.records: list[tuple[float, float, bool]] = []
        self.per_thread = 0
        self.pid: int | None = None

    def __enter__(self) -> FleetIngest:
        self._proc.start()
        self.pid = self._proc.pid
        time.sleep(1.0)  # the spawned interpreter imports the project before its first request
        return self

    def set_rate(self, rate: float) -> None:
        """Readings/s from now on; 0: unpaced."""
        self._rate.value = rate

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        try:
            self.records, self.per_thread = self._results.get(timeout=60)
        except queue.Empty:
            self.records, self.per_thread = [], 0
        self._proc.join(timeout=30)
        if self._proc.is_alive():
            self._proc.terminate()  # SIGTERM to that one PID
            self._proc.join(10)

    @property
    def sent(self) -> int:
        """Reading numbers used so far (the next FleetIngest should start at first + sent)."""
        return (self.per_thread + 1) * self.threads

    def window(self, start: float, end: float) -> dict[str, Any]:
        """Requests completed in [start, end) (epoch seconds): acknowledged readings/s, errors, latency (ms)."""
        inside = [r for r in self.records if start <= r[0] < end]
        ok = [r for r in inside if r[2]]
        seconds = max(end - start, 1e-9)
        return {
            "seconds": round(end - start, 2),
            "readings": len(ok),
            "errors": len(inside) - len(ok),
            "readings_per_s": len(ok) / seconds,
            "latency": summarize([r[1] for r in ok]),
        }
