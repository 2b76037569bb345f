"""`fleet simulate`: a device fleet that posts realistic readings through the HTTP ingest API.

Devices are the demo fleet of `fleet demo seed` (same prefix, same counts: vehicle i charges on meter i).
Each device reports every `interval` seconds with its own phase, so reports spread over the interval instead
of arriving all at once; a vehicle and its meter report a couple of seconds apart, like two devices that both
report "every minute" by their own clocks.

Physics (`ChargerPair`, advanced continuously in time, so every kWh a meter reports is accounted for):
- a vehicle charges at 7-11 kW AC (tapering above 80 % SoC) until a target SoC of 80-100 %, then drives for
  10-40 minutes (SoC falling 5-25 % an hour) and plugs in again (unless still above 95 %);
- DC = AC x efficiency, 0.88-0.95 for most vehicles and 0.72-0.84 for a few (`low_efficiency_share`), with a
  little noise per step; SoC rises by DC / battery capacity; battery temperature relaxes towards ambient
  plus a charging-power-dependent rise, with sensor noise;
- a meter reports the AC energy its vehicle's charger drew since its previous report (voltage 230/240 V,
  sagging a little under load); a meter without a vehicle measures a wandering household load.

Network behaviour (`DemoFleet.due`): a reading is sometimes sent twice (a lost acknowledgement: the API
counts the copy as a duplicate), sometimes held back and sent after newer ones (late and out of order), and a
few devices' clocks run seconds fast or slow (`skewed_share`).

Sending (`Simulator`): a few sender threads, each with one keep-alive HTTP connection (http.client); single
readings, or with `batch` one request per second carrying every reading due (a gateway). Transient failures
(connection refused, 5xx, 429) are retried (`retry_wait`): after Retry-After x a random factor in [1, 1.5) when
the answer has one, else after a jittered exponential back-off, never longer than RETRY_WAIT_CAP_S; 4xx answers
are not retried.
Standard library only, and cheap: the scheduler sleeps until the next device is due.
"""

from __future__ import annotations

import heapq
import http.client
import json
import math
import queue
import random
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TextIO
from urllib.parse import urlsplit

from db import demo

INGEST_PATH = "/v1/telemetry/ingest"
READY_PATH = "/ready"

#: Charger AC power range, kW (home and depot wallboxes).
CHARGER_KW = (7.0, 11.0)
#: Charger efficiency (DC into the battery / AC from the grid) of a healthy charger, and of a poor one.
EFFICIENCY = (0.88, 0.95)
LOW_EFFICIENCY = (0.72, 0.84)
#: Battery capacity, kWh.
CAPACITY_KWH = (50.0, 100.0)
#: Clock skew of the skewed devices, seconds (either sign); well within the API's future tolerance.
SKEW_SECONDS = (3.0, 20.0)
#: Driving time between charging sessions, seconds, and the SoC it costs per hour.
IDLE_SECONDS = (600.0, 2400.0)
DRIVE_PCT_PER_HOUR = (5.0, 25.0)
#: Smallest and largest reporting interval, seconds (11 kW over an hour is 11 kWh, well inside the API's bound).
MIN_INTERVAL = 1.0
MAX_INTERVAL = 3600.0
#: A late reading is held back for this many intervals (at most MAX_LATE_SECONDS).
LATE_INTERVALS = (1.5, 3.5)
MAX_LATE_SECONDS = 300.0
#: A retried reading is re-sent this many seconds after the original.
RESEND_SECONDS = (0.2, 2.0)
#: Batch mode: how often the gateway sends what is due, seconds; and the most readings per request.
GATEWAY_PERIOD = 1.0
MAX_BATCH = 1000
#: Bounds of the API (api/ingest/schemas.py); readings are generated well inside them.
BATTERY_TEMP_BOUNDS = (-50.0, 100.0)
VOLTAGE_BOUNDS = (50.0, 1000.0)

Kind = Literal["new", "late", "resend"]


def _clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


def _timestamp(epoch_ms: int) -> str:
    """ISO 8601 in UTC with milliseconds: distinct for readings 1 s apart, exact for re-sends."""
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds")


# --- physics ------------------------------------------------------------------------------------------------


@dataclass
class ChargerPair:
    """A vehicle and the charger it plugs into, advanced continuously in time (seconds on any clock).

    `cum_ac` / `cum_dc` are the energies drawn from the grid and delivered into the battery since the start;
    the meter and the vehicle each report the difference since their own previous report.
    """

    vehicle_id: str
    meter_id: str | None
    capacity_kwh: float
    charger_kw: float
    efficiency: float
    efficiency_range: tuple[float, float]
    soc: float
    target_soc: float
    charging: bool
    ambient_c: float
    battery_temp: float
    drive_pct_per_hour: float
    idle_until: float
    t: float
    power_kw: float = 0.0
    cum_ac: float = 0.0
    cum_dc: float = 0.0

    def advance(self, t: float, rng: random.Random) -> None:
        """Move the pair's state forward to time `t` (seconds); a `t` in the past is ignored."""
        remaining = t - self.t
        while remaining > 1e-9:
            now = t - remaining
            if self.charging:
                remaining -= self._charge(now, remaining, rng)
            else:
                remaining -= self._idle(now, remaining, rng)
        self.t = max(self.t, t)

    def _charge(self, now: float, dt: float, rng: random.Random) -> float:
        taper = 1.0 if self.soc < 80.0 else max(0.3, 1.0 - 0.7 * (self.soc - 80.0) / 20.0)
        p_ac = self.charger_kw * taper * (1.0 + rng.gauss(0.0, 0.01))
        eff = _clamp(self.efficiency + rng.gauss(0.0, 0.004), *self.efficiency_range)
        p_dc = p_ac * eff
        to_target = max(0.0, (self.target_soc - self.soc) / 100.0 * self.capacity_kwh)
        step = min(dt, to_target / p_dc * 3600.0)
        e_ac = p_ac * step / 3600.0
        self.cum_ac += e_ac
        self.cum_dc += e_ac * eff
        self.soc = _clamp(self.soc + e_ac * eff / self.capacity_kwh * 100.0, 0.0, 100.0)
        self.power_kw = p_ac
        self._relax_temp(self.ambient_c + 6.0 + 8.0 * p_ac / CHARGER_KW[1], 900.0, step)
        if step < dt or self.soc >= self.target_soc:  # full: unplug, drive or stand for a while
            self.charging = False
            self.power_kw = 0.0
            self.idle_until = now + step + rng.uniform(*IDLE_SECONDS)
            self.drive_pct_per_hour = rng.uniform(*DRIVE_PCT_PER_HOUR)
        return step

    def _idle(self, now: float, dt: float, rng: random.Random) -> float:
        step = min(dt, max(0.0, self.idle_until - now))
        self.soc = _clamp(self.soc - self.drive_pct_per_hour * step / 3600.0, 0.0, 100.0)
        self._relax_temp(self.ambient_c + 2.0, 1800.0, step)
        if step < dt or now + step >= self.idle_until:  # plugged in again
            if self.soc < 95.0:
                self.charging = True
                self.target_soc = min(100.0, rng.uniform(max(80.0, self.soc + 5.0), 100.0))
            else:
                self.idle_until = now + step + rng.uniform(*IDLE_SECONDS)
        # A zero step (the idle time ended exactly now) still makes progress: the state switched.
        return step

    def _relax_temp(self, target: float, tau: float, dt: float) -> None:
        self.battery_temp += (target - self.battery_temp) * (1.0 - math.exp(-dt / tau))


@dataclass
class Device:
    """One reporting device: its id, clock skew, schedule, and what it has reported so far."""

    device_id: str
    kind: Literal["METER", "VEHICLE"]
    skew_s: float
    phase_s: float
    pair: ChargerPair | None = None
    #: Meters only: nominal supply voltage, and (no vehicle) a household load.
    nominal_v: float = 230.0
    house_kw: float = 0.0
    house_t: float | None = None
    house_cum: float = 0.0
    reported: float = 0.0  # kWh reported so far (rounded values), so rounding never loses energy
    last_ms: int = 0  # timestamp of the previous reading, epoch ms: each reading gets a later one

    def read(self, t: float, wall: float, rng: random.Random) -> dict[str, Any]:
        """This device's reading at time `t` (physics clock) and `wall` (epoch seconds, before skew)."""
        # A later timestamp than the previous reading's even if the wall clock stepped back: a new reading must
        # never look like a retry of the previous one (same device and timestamp).
        self.last_ms = max(round((wall + self.skew_s) * 1000), self.last_ms + 1)
        ts = _timestamp(self.last_ms)
        if self.kind == "VEHICLE":
            pair = self.pair
            assert pair is not None
            pair.advance(t, rng)
            kwh = self._delta(pair.cum_dc)
            temp = _clamp(pair.battery_temp + rng.gauss(0.0, 0.15), *BATTERY_TEMP_BOUNDS)
            return {
                "type": "VEHICLE",
                "payload": {
                    "vehicleId": self.device_id,
                    "soc": round(pair.soc, 3),
                    "kwhDeliveredDc": kwh,
                    "batteryTemp": round(temp, 2),
                    "isCharging": pair.charging,
                    "timestamp": ts,
                },
            }
        if self.pair is not None:
            self.pair.advance(t, rng)
            cum, load = self.pair.cum_ac, self.pair.power_kw
        else:
            if self.house_t is not None:
                self.house_cum += self.house_kw * max(0.0, t - self.house_t) / 3600.0
            self.house_t = t
            self.house_kw = _clamp(self.house_kw + rng.gauss(0.0, 0.3), 0.1, 5.0)
            cum, load = self.house_cum, self.house_kw
        voltage = _clamp(self.nominal_v - 3.0 * load / CHARGER_KW[1] + rng.gauss(0.0, 0.8), *VOLTAGE_BOUNDS)
        return {
            "type": "METER",
            "payload": {
                "meterId": self.device_id,
                "kwhConsumedAc": self._delta(cum),
                "voltage": round(voltage, 1),
                "timestamp": ts,
            },
        }

    def _delta(self, cumulative: float) -> float:
        kwh = max(0.0, round(cumulative - self.reported, 6))
        self.reported += kwh
        return kwh


# --- the fleet ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetConfig:
    """Which devices, how often they report, and how often the network misbehaves."""

    meters: int = 20
    vehicles: int = 20
    prefix: str = "demo-"
    interval: float = 60.0
    #: Share of readings sent twice (a lost acknowledgement), and of readings held back (late, out of order).
    retry_rate: float = 0.03
    late_rate: float = 0.02
    #: Share of devices whose clock is seconds off, and of vehicles whose charger is inefficient.
    skewed_share: float = 0.1
    low_efficiency_share: float = 0.1


@dataclass(frozen=True)
class Outgoing:
    """A reading to send now: the API item, and whether it is new, late (held back) or a re-send."""

    item: dict[str, Any]
    kind: Kind


class DemoFleet:
    """The devices, their schedule, and the readings held back (late) or to be re-sent.

    The clock is the caller's: `due(now, wall)` takes a monotonic time for the schedule and physics and the
    wall clock (epoch seconds) for timestamps, so tests can run a day of readings in milliseconds.
    """

    def __init__(self, config: FleetConfig, rng: random.Random, start: float) -> None:
        if not MIN_INTERVAL <= config.interval <= MAX_INTERVAL:
            raise ValueError(f"interval must be {MIN_INTERVAL:g} to {MAX_INTERVAL:g} seconds")
        meter_ids, vehicle_ids = demo.device_ids(config.prefix, config.meters, config.vehicles)
        if not meter_ids and not vehicle_ids:
            raise ValueError("the fleet needs at least one meter or vehicle")
        self.config = config
        self.rng = rng
        self.generated = 0
        self._seq = 0
        self._schedule: list[tuple[float, int, Device]] = []
        self._held: list[tuple[float, int, Outgoing]] = []
        self.pairs: list[ChargerPair] = []
        self.devices: list[Device] = []

        n_low = round(config.low_efficiency_share * len(vehicle_ids))
        # Vehicle 1 (the demo's showcase: the URL scripts/run.sh prints) always starts charging, healthy and
        # on time; the inefficient and skewed devices are drawn from the others.
        low = set(rng.sample(vehicle_ids[1:], min(n_low, max(0, len(vehicle_ids) - 1))))
        meters: dict[str, Device] = {}
        for number, meter in enumerate(meter_ids, start=1):
            meters[meter] = Device(
                meter,
                "METER",
                skew_s=0.0,
                phase_s=rng.uniform(0.0, config.interval),
                nominal_v=rng.choice((230.0, 240.0)),
                house_kw=rng.uniform(0.3, 2.0),
                house_t=start,
            )
            if number > len(vehicle_ids):
                self.devices.append(meters[meter])
        for number, vehicle in enumerate(vehicle_ids, start=1):
            meter_dev = meters.get(demo.meter_id(config.prefix, number))
            pair = self._new_pair(
                vehicle, meter_dev.device_id if meter_dev else None, vehicle in low, number == 1, start
            )
            self.pairs.append(pair)
            # Both ends of a pair report within a couple of seconds of each other.
            gap = rng.uniform(-1.0, 1.0) * min(2.0, config.interval / 5.0)
            phase = (meter_dev.phase_s + gap) % config.interval if meter_dev else rng.uniform(0.0, config.interval)
            self.devices.append(Device(vehicle, "VEHICLE", 0.0, phase, pair=pair))
            if meter_dev:
                meter_dev.pair = pair
                self.devices.append(meter_dev)
        showcase = {demo.meter_id(config.prefix, 1), demo.vehicle_id(config.prefix, 1)}
        skewable = [d for d in self.devices if d.device_id not in showcase]
        for device in rng.sample(skewable, min(len(skewable), round(config.skewed_share * len(self.devices)))):
            device.skew_s = rng.choice((-1.0, 1.0)) * rng.uniform(*SKEW_SECONDS)
        for device in self.devices:
            self._push_schedule(start + device.phase_s, device)

    def _new_pair(
        self, vehicle: str, meter: str | None, low_efficiency: bool, showcase: bool, start: float
    ) -> ChargerPair:
        rng = self.rng
        eff_range = LOW_EFFICIENCY if low_efficiency else EFFICIENCY
        ambient = rng.uniform(8.0, 28.0)
        charging = showcase or rng.random() < 0.75
        soc = rng.uniform(20.0, 40.0) if showcase else rng.uniform(10.0, 85.0 if charging else 95.0)
        return ChargerPair(
            vehicle_id=vehicle,
            meter_id=meter,
            capacity_kwh=rng.uniform(*CAPACITY_KWH),
            charger_kw=rng.uniform(*CHARGER_KW),
            efficiency=rng.uniform(eff_range[0] + 0.01, eff_range[1] - 0.01),
            efficiency_range=eff_range,
            soc=soc,
            target_soc=min(100.0, rng.uniform(max(80.0, soc + 5.0), 100.0)),
            charging=charging,
            ambient_c=ambient,
            battery_temp=ambient + rng.uniform(0.0, 8.0),
            drive_pct_per_hour=rng.uniform(*DRIVE_PCT_PER_HOUR),
            idle_until=start + rng.uniform(0.0, IDLE_SECONDS[1]),
            t=start,
        )

    # -- schedule --

    def _push_schedule(self, at: float, device: Device) -> None:
        self._seq += 1
        heapq.heappush(self._schedule, (at, self._seq, device))

    def _hold(self, at: float, out: Outgoing) -> None:
        self._seq += 1
        heapq.heappush(self._held, (at, self._seq, out))

    def next_due(self) -> float:
        """When the next reading (new or held) is due, on the schedule's clock."""
        return min(self._schedule[0][0] if self._schedule else math.inf, self._held[0][0] if self._held else math.inf)

    def due(self, now: float, wall: float, limit: int | None = None) -> list[Outgoing]:
        """Readings to send at `now`: every device whose report is due (at most `limit` new readings), and
        held-back or re-sent readings whose time has come."""
        out: list[Outgoing] = []
        cfg, rng = self.config, self.rng
        made = 0
        while self._schedule and self._schedule[0][0] <= now and (limit is None or made < limit):
            at, _, device = heapq.heappop(self._schedule)
            next_at = at + cfg.interval
            if next_at < now + cfg.interval / 2:  # fell behind: skip the missed reports, keep the phase
                next_at += math.ceil((now + cfg.interval / 2 - next_at) / cfg.interval) * cfg.interval
            self._push_schedule(next_at, device)
            reading = Outgoing(device.read(now, wall, rng), "new")
            made += 1
            if rng.random() < cfg.late_rate:
                delay = min(MAX_LATE_SECONDS, rng.uniform(*LATE_INTERVALS) * cfg.interval)
                self._hold(now + delay, Outgoing(reading.item, "late"))
                continue
            out.append(reading)
            if rng.random() < cfg.retry_rate:
                self._hold(now + rng.uniform(*RESEND_SECONDS), Outgoing(reading.item, "resend"))
        self.generated += made
        while self._held and self._held[0][0] <= now:
            out.append(heapq.heappop(self._held)[2])
        return out

    def flush(self) -> list[Outgoing]:
        """Every reading still held back (late or to be re-sent), to send before stopping."""
        held = [h[2] for h in sorted(self._held)]
        self._held.clear()
        return held

    # -- descriptions --

    def charging(self) -> int:
        """Vehicles charging now."""
        return sum(p.charging for p in self.pairs)

    def skewed(self) -> dict[str, float]:
        """Devices whose clock is off, and by how many seconds."""
        return {d.device_id: round(d.skew_s, 3) for d in self.devices if d.skew_s}

    def low_efficiency(self) -> list[str]:
        """Vehicles with an inefficient charger."""
        return [p.vehicle_id for p in self.pairs if p.efficiency_range == LOW_EFFICIENCY]


def build_fleet(config: FleetConfig, seed: int | None, start: float) -> DemoFleet:
    """The demo fleet, its random state seeded by `seed` (None: a fresh fleet each time), starting at `start`."""
    return DemoFleet(config, random.Random(seed), start)


# --- HTTP ---------------------------------------------------------------------------------------------------

#: Reconnect instead of reusing a connection idle this long: gunicorn closes idle keep-alive connections
#: after 2 s (its default), and a request on a connection the server is closing fails.
KEEPALIVE_IDLE_SECONDS = 1.5


class HttpClient:
    """One keep-alive HTTP connection to the API (not thread-safe: one per sender thread)."""

    def __init__(self, base_url: str, key: str, timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._headers = {"Content-Type": "application/json", "X-API-Key": key, "Connection": "keep-alive"}
        self._conn: http.client.HTTPConnection | None = None
        self._last_used = 0.0

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body. Raises OSError or http.client.HTTPException when the API is unreachable.

        A reused connection that the server closed in the meantime is replaced once, silently."""
        for attempt in range(2):
            if self._conn is not None and time.monotonic() - self._last_used > KEEPALIVE_IDLE_SECONDS:
                self.close()
            reused = self._conn is not None
            conn = self._conn or self._connect()
            try:
                conn.request(method, self._prefix + path, body=body, headers=self._headers)
                resp = conn.getresponse()
                data = resp.read()
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if reused and attempt == 0:
                    continue
                raise
            except OSError:
                self.close()
                raise
            self._last_used = time.monotonic()
            if resp.will_close:
                self.close()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        raise AssertionError("unreachable")  # pragma: no cover

    def _connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        self._conn = cls(self._host, self._port, timeout=self._timeout)
        return self._conn

    def close(self) -> None:
        """Close the connection (the next request opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# --- the simulator ------------------------------------------------------------------------------------------


@dataclass
class Stats:
    """Counters, in readings unless named otherwise."""

    generated: int = 0  # new readings (on time or late); re-sends not included
    sent: int = 0  # readings in requests that got an answer or were given up
    stored: int = 0  # the API stored them (new)
    duplicates: int = 0  # the API already had them (re-sends)
    rejected: int = 0  # refused with a 4xx (not retried)
    failed: int = 0  # given up after retries (5xx, unreachable)
    unsent: int = 0  # still queued when the simulator had to stop
    resent: int = 0  # deliberate re-sends among `sent`
    late: int = 0  # held-back readings among `sent`
    requests: int = 0  # HTTP requests answered (any status)
    request_retries: int = 0  # requests repeated after a transient failure
    http_5xx: int = 0  # answers 500-599
    http_4xx: int = 0  # answers 400-499 other than 429
    rate_limited: int = 0  # answers 429
    unreachable: int = 0  # connection failures and timeouts

    @property
    def errors(self) -> int:
        """Readings that were not accepted (rejected, failed or never sent)."""
        return self.rejected + self.failed + self.unsent


@dataclass
class Summary:
    """The outcome of a run."""

    url: str
    meters: int
    vehicles: int
    interval: float
    batch: bool
    elapsed_s: float
    stats: Stats
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    skewed_devices: dict[str, float]
    low_efficiency_vehicles: list[str]
    stopped_by: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No 5xx, the API was always reachable, and every reading was accepted."""
        s = self.stats
        return not (s.http_5xx or s.unreachable or s.errors or self.problems)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly, counters at the top level."""
        data = asdict(self)
        stats = data.pop("stats")
        return {**data, **stats, "errors": self.stats.errors, "ok": self.ok}


@dataclass(frozen=True)
class SimulatorConfig:
    """Where to send, for how long, and how."""

    url: str
    key: str
    fleet: FleetConfig = field(default_factory=FleetConfig)
    #: Seconds to run; None: until `count` or stop().
    duration: float | None = 60.0
    #: New readings to send; None: until `duration` or stop().
    count: int | None = None
    batch: bool = False
    seed: int | None = None
    concurrency: int = 2
    timeout: float = 30.0
    #: Seconds to wait for the API's /ready before starting (0: one try).
    wait_ready: float = 30.0
    #: Seconds between progress lines (0: none).
    progress_every: float = 5.0
    #: Attempts per request before giving up on its readings (transient failures only).
    max_attempts: int = 4


class Simulator:
    """Runs a DemoFleet against the API: the schedule in the calling thread, requests in sender threads."""

    def __init__(self, config: SimulatorConfig, progress: TextIO | None = None) -> None:
        self.config = config
        self.stats = Stats()
        self._progress_out = progress
        self._jitter = random.Random()  # retry waits (retry_wait); shared by the sender threads
        self._lock = threading.Lock()
        self._stop = threading.Event()  # stop generating; drain what is queued
        self._abort = threading.Event()  # stop sending: give up on queued readings and retries
        self._senders_done = threading.Event()
        self._queue: queue.Queue[list[Outgoing]] = queue.Queue(maxsize=max(64, 16 * config.concurrency))
        self._latencies: deque[float] = deque(maxlen=10_000)
        self._problems: list[str] = []
        self._stopped_by = "duration"
        HttpClient(config.url, config.key, config.timeout)  # validate the URL now

    def stop(self, abort: bool = False) -> None:
        """Stop generating readings (thread- and signal-safe); `abort` also gives up on the queued ones."""
        if not self._stop.is_set():
            self._stopped_by = "signal"
        self._stop.set()
        if abort:
            self._abort.set()

    def run(self) -> Summary:
        """Run until the duration or count is reached or stop() is called; the summary of the run."""
        cfg = self.config
        started = time.monotonic()
        fleet = build_fleet(cfg.fleet, cfg.seed, started)
        if not self._wait_ready():
            return self._summary(fleet, started)
        senders = [
            threading.Thread(target=self._sender, name=f"simulate-sender-{i}", daemon=True)
            for i in range(cfg.concurrency)
        ]
        for t in senders:
            t.start()
        start = time.monotonic()
        deadline = start + cfg.duration if cfg.duration else math.inf
        next_progress = start + cfg.progress_every if cfg.progress_every else math.inf
        next_flush = start + GATEWAY_PERIOD
        pending: list[Outgoing] = []
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            if cfg.count is not None and fleet.generated >= cfg.count:
                self._stopped_by = "count"
                break
            remaining = None if cfg.count is None else cfg.count - fleet.generated
            out = fleet.due(now, time.time(), remaining)
            if cfg.batch:
                pending += out
                if now >= next_flush:
                    self._enqueue_batches(pending)
                    pending = []
                    next_flush = now + GATEWAY_PERIOD
            else:
                for o in out:
                    self._put([o])
            if now >= next_progress:
                self._print_progress(fleet, now - start)
                next_progress += cfg.progress_every
            wake = min(fleet.next_due(), deadline, next_progress, next_flush if cfg.batch else math.inf)
            self._stop.wait(max(0.0, wake - time.monotonic()))
        pending += fleet.flush()  # late and re-sent readings still held: send them now
        if cfg.batch:
            self._enqueue_batches(pending)
        else:
            for o in pending:
                self._put([o])
        self._drain(timeout=5.0 if self._stopped_by == "signal" else max(30.0, cfg.timeout))
        for t in senders:
            t.join(timeout=cfg.timeout + 5.0)
        return self._summary(fleet, start)

    # -- queueing --

    def _enqueue_batches(self, readings: list[Outgoing]) -> None:
        for i in range(0, len(readings), MAX_BATCH):
            self._put(readings[i : i + MAX_BATCH])

    def _put(self, readings: list[Outgoing]) -> None:
        while not self._abort.is_set():
            try:
                self._queue.put(readings, timeout=0.5)
                return
            except queue.Full:
                continue
        self._count(unsent=len(readings))

    def _drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline and not self._abort.is_set():
            time.sleep(0.05)
        if self._queue.unfinished_tasks:
            self._abort.set()
        self._senders_done.set()

    def _sender(self) -> None:
        client = HttpClient(self.config.url, self.config.key, self.config.timeout)
        try:
            while True:
                try:
                    readings = self._queue.get(timeout=0.2)
                except queue.Empty:
                    if self._senders_done.is_set():
                        return
                    continue
                try:
                    if self._abort.is_set():
                        self._count(unsent=len(readings))
                    else:
                        self._post(client, readings)
                finally:
                    self._queue.task_done()
        finally:
            client.close()

    # -- requests --

    def _post(self, client: HttpClient, readings: list[Outgoing]) -> None:
        cfg = self.config
        items = [o.item for o in readings]
        body = json.dumps(items if cfg.batch else items[0], separators=(",", ":")).encode()
        n = len(readings)
        for attempt in range(1, cfg.max_attempts + 1):
            began = time.monotonic()
            retry_after: float | None = None
            try:
                status, headers, data = client.request("POST", INGEST_PATH, body)
            except (OSError, http.client.HTTPException) as exc:
                self._count(unreachable=1)
                self._problem(f"API unreachable: {type(exc).__name__}: {exc}")
            else:
                self._record(status, time.monotonic() - began)
                result = _ingest_result(data) if status == 200 else None
                if result is not None:
                    late = sum(o.kind == "late" for o in readings)
                    resent = sum(o.kind == "resend" for o in readings)
                    self._count(
                        sent=n, stored=result["stored"], duplicates=result["duplicates"], late=late, resent=resent
                    )
                    return
                if status == 200:  # an answer that is not the ingest contract's: a broken API
                    self._count(sent=n, failed=n)
                    self._problem(f"HTTP 200 without an ingest result: {data[:300].decode(errors='replace')}")
                    return
                if status != 429 and status < 500:
                    self._count(sent=n, rejected=n)
                    self._problem(f"HTTP {status}: {data[:300].decode(errors='replace')}")
                    if status in (401, 403):  # the key is wrong: nothing will ever be stored
                        self.stop(abort=True)
                        self._stopped_by = f"HTTP {status}"
                    return
                retry_after = _retry_after(headers)
                if status >= 500:
                    self._problem(f"HTTP {status}: {data[:300].decode(errors='replace')}")
            if attempt == cfg.max_attempts or self._abort.is_set():
                break
            self._count(request_retries=1)
            if self._abort.wait(retry_wait(attempt, retry_after, self._jitter)):
                break
        self._count(sent=n, failed=n)

    def _record(self, status: int, seconds: float) -> None:
        with self._lock:
            self.stats.requests += 1
            self._latencies.append(seconds)
            if status >= 500:
                self.stats.http_5xx += 1
            elif status == 429:
                self.stats.rate_limited += 1
            elif status >= 400:
                self.stats.http_4xx += 1

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    def _problem(self, message: str) -> None:
        """Say what went wrong, the first few times (a broken API would otherwise flood the terminal)."""
        with self._lock:
            if len(self._problems) < 5:
                self._problems.append(message)
                self._say(f"simulate: {message}")
            elif len(self._problems) == 5:
                self._problems.append("(more problems not shown)")
                self._say("simulate: more problems not shown")

    # -- start and reporting --

    def _wait_ready(self) -> bool:
        client = HttpClient(self.config.url, self.config.key, min(5.0, self.config.timeout))
        deadline = time.monotonic() + self.config.wait_ready
        last = "no answer"
        try:
            while True:
                try:
                    status, _, data = client.request("GET", READY_PATH)
                    if status == 200:
                        return True
                    last = f"HTTP {status}: {data[:200].decode(errors='replace')}"
                except (OSError, http.client.HTTPException) as exc:
                    last = f"{type(exc).__name__}: {exc}"
                if time.monotonic() >= deadline or self._stop.wait(0.5):
                    break
        finally:
            client.close()
        self._count(unreachable=1)
        self._problems.append(f"API not ready at {self.config.url}{READY_PATH}: {last}")
        self._say(f"simulate: {self._problems[-1]}")
        self._stopped_by = "API not ready"
        return False

    def _summary(self, fleet: DemoFleet, start: float) -> Summary:
        with self._lock:
            lat = sorted(self._latencies)
            stats = Stats(**asdict(self.stats))
        stats.generated = fleet.generated
        return Summary(
            url=self.config.url,
            meters=self.config.fleet.meters,
            vehicles=self.config.fleet.vehicles,
            interval=self.config.fleet.interval,
            batch=self.config.batch,
            elapsed_s=round(time.monotonic() - start, 3),
            stats=stats,
            latency_ms_p50=_percentile_ms(lat, 0.50),
            latency_ms_p95=_percentile_ms(lat, 0.95),
            skewed_devices=fleet.skewed(),
            low_efficiency_vehicles=fleet.low_efficiency(),
            stopped_by=self._stopped_by,
            problems=[p for p in self._problems if not p.startswith("(")],
        )

    def _print_progress(self, fleet: DemoFleet, elapsed: float) -> None:
        with self._lock:
            s = self.stats
            p95 = _percentile_ms(sorted(self._latencies), 0.95)
            line = (
                f"simulate: {elapsed:5.0f} s  readings {fleet.generated}  sent {s.sent}  stored {s.stored}"
                f"  duplicates {s.duplicates}  errors {s.errors}  |  requests {s.requests}"
                f" (p95 {p95 if p95 is not None else '-'} ms)  queued {self._queue.qsize()}"
                f"  charging {fleet.charging()}/{len(fleet.pairs)}"
            )
        self._say(line)

    def _say(self, line: str) -> None:
        if self._progress_out is not None:
            print(line, file=self._progress_out, flush=True)


def _ingest_result(data: bytes) -> dict[str, int] | None:
    try:
        result = json.loads(data)
        return {"stored": int(result["stored"]), "duplicates": int(result["duplicates"])}
    except (ValueError, TypeError, KeyError):
        return None


#: Longest wait before a retry, whatever Retry-After says: the API's longest (FLEET_SHED_RETRY_AFTER_MAX_S, 120 s)
#: x the jitter factor.
RETRY_WAIT_CAP_S = 180.0


def retry_wait(attempt: int, retry_after: float | None, rng: random.Random) -> float:
    """Seconds to wait before retry number `attempt` (1-based). With Retry-After: at least that (the server's
    admission control spreads its values; the factor in [1, 1.5) spreads them further, so that senders told the
    same value do not come back together); without: a back-off of 0.5 x 2^(attempt-1) s, "full jitter" (a random
    share of it). Capped at RETRY_WAIT_CAP_S."""
    if retry_after is not None:
        return min(RETRY_WAIT_CAP_S, retry_after * rng.uniform(1.0, 1.5))
    return min(RETRY_WAIT_CAP_S, rng.uniform(0.0, 0.5 * 2 ** (attempt - 1)))


def _retry_after(headers: dict[str, str]) -> float | None:
    try:
        return max(0.0, float(headers["retry-after"]))
    except (KeyError, ValueError):
        return None


def _percentile_ms(sorted_seconds: list[float], q: float) -> float | None:
    if not sorted_seconds:
        return None
    return round(sorted_seconds[min(len(sorted_seconds) - 1, int(q * len(sorted_seconds)))] * 1000.0, 1)


def human_summary(summary: Summary) -> str:
    """A few lines for a terminal."""
    s = summary.stats
    lines = [
        f"simulated {summary.meters} meters and {summary.vehicles} vehicles for {summary.elapsed_s:.1f} s"
        f" (every {summary.interval:g} s, {'batches' if summary.batch else 'single readings'};"
        f" stopped by {summary.stopped_by}) against {summary.url}",
        f"readings: {s.generated} new, {s.sent} sent ({s.resent} re-sent, {s.late} late); stored {s.stored},"
        f" duplicates {s.duplicates}, errors {s.errors} (rejected {s.rejected}, failed {s.failed},"
        f" unsent {s.unsent})",
        f"requests: {s.requests} answered, p50 {summary.latency_ms_p50} ms, p95 {summary.latency_ms_p95} ms;"
        f" 5xx {s.http_5xx}, 4xx {s.http_4xx}, 429 {s.rate_limited}, unreachable {s.unreachable},"
        f" retried {s.request_retries}",
        f"clock skew: {', '.join(f'{d} {v:+.1f} s' for d, v in list(summary.skewed_devices.items())[:6]) or 'none'}"
        + (" ..." if len(summary.skewed_devices) > 6 else ""),
        f"inefficient chargers: {', '.join(summary.low_efficiency_vehicles[:6]) or 'none'}"
        + (" ..." if len(summary.low_efficiency_vehicles) > 6 else ""),
    ]
    lines += [f"problem: {p}" for p in summary.problems]
    lines.append("ok" if summary.ok else "FAILED: some readings were not accepted or the API failed")
    return "\n".join(lines)
