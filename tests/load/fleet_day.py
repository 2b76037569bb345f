"""Bulk-load one full fleet day of readings, the way the fleet would have reported it, with COPY.

`load_fleet_day(url, meters=10_000, vehicles=10_000, day_start=...)` writes one reading per device per minute
(10,000 + 10,000 devices x 1,440 minutes = 28.8M history rows), the mapping of vehicle i to meter i, each
device's newest reading into meters_current / vehicles_current (the columns the ingest dual write fills), and
then runs VACUUM (ANALYZE) and CHECKPOINT so that the benchmark that follows reads a settled database.

What the data looks like (all values inside the ingest validation bounds of api/ingest/schemas.py, rounded
as devices report them: kWh to 4 decimals, V, degC and SoC % to 1 decimal):
- meter i feeds vehicle i (vehicle_meter_mapping valid from 30 days before the day, valid_to NULL);
- each vehicle has 0-2 charging sessions of 2-5 hours at 7-11 kW: its meter reports ~0.11-0.19 kWh a minute
  while charging and 0-0.005 kWh (charger standby) otherwise; a session stops early when the battery is full;
- the vehicle's DC energy of a minute is its meter's AC energy x the vehicle's charger efficiency (0.86-0.95;
  3 % of vehicles 0.78-0.85), so a day's DC/AC ratio is that efficiency; SoC rises with the DC energy over
  the battery's capacity (50-90 kWh) and falls during two short trips; battery temperature (10-45 degC)
  follows ambient, warmer while charging or driving; meter voltage 225-245 V, a little lower under load;
- ~5 % of vehicles report a few seconds (2-9 s, either way) off their meter's minute; ~3 % do not report
  isCharging (NULL), as the ingest contract allows; received_at / updated_at get the server default (now()).

How it is loaded (the fastest path PostgreSQL offers): binary COPY (`cursor.copy(...)`; text selectable) from
`loaders` worker processes (default 2, one per core), each owning a contiguous range of meter/vehicle pairs
and streaming both tables at once: one COPY per table on its own connection, each fed by a thread from a short
queue, so the server parses while the generator formats the next block. Rows go out time-major (minute by
minute, every device of the range) as real ingest writes them, so the heap and index layout match
production: a device's day is spread over ~1,440 heap pages of the chunk, not packed into a few.

Generation is kept cheap: every value is an integer in device units (1e-4 kWh, 0.1 V, ...) that indexes a
table of pre-encoded COPY fields, timestamps are pre-encoded per minute and offset, and a block of rows is
one `b"".join` of shared pieces; per-row Python work is the simulation step only. The generator is
deterministic per device (seeded by `seed` and the device number), so totals do not depend on `loaders`.
The per-device totals inside [day_start, day_start + minutes) are returned (exact, in 1e-4 kWh units) so a
benchmark can check the analytics endpoint against what was loaded.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import random
import struct
import sys
import threading
import time
import traceback
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

#: Energy values are integers in these units (kWh x 10^4: the 4 decimals devices report).
KWH_UNIT = 10_000
#: Largest energy of one reading the generator produces, in KWH_UNIT (0.19 kWh); pools cover a margin.
_MAX_KWH_UNITS = 2_000
#: Mapping validity starts this long before the day (the vehicle was assigned to its charger earlier).
MAPPING_LEAD = timedelta(days=30)
#: Minutes per generated block: rows of one block go out time-major for every device of a loader.
BLOCK_MINUTES = 60

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_BINARY_TRAILER = struct.pack(">h", -1)

METER_COLUMNS = ("meter_id", "recorded_at", "kwh_consumed_ac", "voltage")
VEHICLE_COLUMNS = ("vehicle_id", "recorded_at", "soc", "kwh_delivered_dc", "battery_temp", "is_charging")

# Plan of a vehicle's minute: idle, driving, or charging at a rate (> 0, KWH_UNIT per minute).
_IDLE = 0
_DRIVING = -1


def meter_id(i: int) -> str:
    """Id of meter number i (1-based)."""
    return f"meter-{i:05d}"


def vehicle_id(i: int) -> str:
    """Id of vehicle number i (1-based); it is charged from meter i."""
    return f"ev-{i:05d}"


@dataclass
class LoadStats:
    """What was loaded, how fast, and the exact per-device totals of the day window."""

    meters: int
    vehicles: int
    minutes: int
    day_start: datetime
    loaders: int
    copy_format: str
    meter_rows: int = 0
    vehicle_rows: int = 0
    #: History COPY, wall clock, from the first worker start to the last commit.
    copy_seconds: float = 0.0
    #: Seconds the workers spent generating rows (CPU in Python, summed over workers).
    generate_seconds: float = 0.0
    #: Mapping + current-state tables.
    current_seconds: float = 0.0
    vacuum_analyze_seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    total_seconds: float = 0.0
    #: meter id -> kWh x 10^4 consumed in the window (exact: the sum of the reported, rounded values).
    meter_ac_units: dict[str, int] = field(default_factory=dict, repr=False)
    #: vehicle id -> kWh x 10^4 delivered in the window.
    vehicle_dc_units: dict[str, int] = field(default_factory=dict, repr=False)
    #: vehicle id -> clock offset in seconds against its meter, for the vehicles whose clock is off.
    vehicle_offsets: dict[str, int] = field(default_factory=dict, repr=False)
    #: vehicle id -> meter id.
    mapping: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def day_end(self) -> datetime:
        return self.day_start + timedelta(minutes=self.minutes)

    @property
    def history_rows(self) -> int:
        return self.meter_rows + self.vehicle_rows

    @property
    def copy_rows_per_second(self) -> float:
        return self.history_rows / self.copy_seconds if self.copy_seconds else 0.0

    @property
    def generate_rows_per_second(self) -> float:
        """Rows per CPU second of the generator alone (one core)."""
        return self.history_rows / self.generate_seconds if self.generate_seconds else 0.0

    def expected_ac_kwh(self, vehicle: str) -> float:
        """AC kWh of the day window of the meter mapped to `vehicle`, rounded to 4 decimals."""
        return round(self.meter_ac_units[self.mapping[vehicle]] / KWH_UNIT, 4)

    def expected_dc_kwh(self, vehicle: str) -> float:
        """DC kWh of the day window of `vehicle`, rounded to 4 decimals."""
        return round(self.vehicle_dc_units[vehicle] / KWH_UNIT, 4)


# --- encoding ----------------------------------------------------------------------------------------------


class _Codec:
    """Pre-encoded COPY pieces. A row is `prefix + ts + fields...`, the last field carrying the row end.

    binary: prefix = field count + device id field; each field = int32 length + value (float8, int64
    microseconds since 2000-01-01, bool). text: prefix = the id; each field starts with a tab; the last ends
    with a newline. Float pieces encode n / scale exactly as PostgreSQL would parse the rounded decimal."""

    def __init__(self, copy_format: str) -> None:
        if copy_format not in ("binary", "text"):
            raise ValueError("copy_format must be 'binary' or 'text'")
        self.binary = copy_format == "binary"

    def header(self) -> bytes:
        return _BINARY_HEADER if self.binary else b""

    def trailer(self) -> bytes:
        return _BINARY_TRAILER if self.binary else b""

    def options(self) -> str:
        return "(FORMAT BINARY)" if self.binary else "(FORMAT TEXT)"

    def prefix(self, ncols: int, device: str) -> bytes:
        raw = device.encode()
        return struct.pack(">hi", ncols, len(raw)) + raw if self.binary else raw

    def timestamp(self, ts: datetime) -> bytes:
        if self.binary:
            delta = ts - _PG_EPOCH
            micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
            return struct.pack(">iq", 8, micros)
        return b"\t" + ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S+00").encode()

    def numbers(self, count: int, scale: int, decimals: int, last: bool = False) -> list[bytes]:
        """Pieces for n / scale, n in 0..count-1."""
        if self.binary:
            return [struct.pack(">id", 8, n / scale) for n in range(count)]
        end = "\n" if last else ""
        return [f"\t{n / scale:.{decimals}f}{end}".encode() for n in range(count)]

    def booleans(self, last: bool = False) -> dict[bool | None, bytes]:
        if self.binary:
            return {True: b"\x00\x00\x00\x01\x01", False: b"\x00\x00\x00\x01\x00", None: struct.pack(">i", -1)}
        end = "\n" if last else ""
        return {True: f"\tt{end}".encode(), False: f"\tf{end}".encode(), None: f"\t\\N{end}".encode()}


# --- simulation --------------------------------------------------------------------------------------------


@dataclass
class _Pair:
    """Meter i and (when i <= vehicles) vehicle i: fixed parameters, plan of the day, and running state."""

    i: int
    rng: random.Random
    has_vehicle: bool
    meter_prefix: bytes
    vehicle_prefix: bytes
    plan: array  # per minute: _IDLE, _DRIVING, or charging rate in KWH_UNIT per minute
    eff: int  # efficiency x 10^4
    cap_units_per_pct: float  # KWH_UNIT of DC that add 1 % of SoC
    drain_pct: float  # SoC % per minute of driving
    ambient: float  # degC x 10
    volt_nominal: int  # V x 10
    offset: int  # vehicle clock offset, seconds
    reports_charging: bool
    soc: float  # %
    temp: float  # degC x 10
    ac_units: int = 0
    dc_units: int = 0
    last_meter: tuple[int, int] = (0, 2300)  # (ac units, V x 10) of the newest reading
    last_vehicle: tuple[int, int, int, bool | None] = (0, 0, 200, None)  # (soc x10, dc units, temp x10, charging)


def _make_pair(i: int, vehicles: int, minutes: int, seed: int, codec: _Codec) -> _Pair:
    rng = random.Random(seed * 1_000_003 + i)
    plan = array("h", [_IDLE]) * minutes

    def fill(start: int, length: int, value: int) -> None:
        for t in range(max(start, 0), min(start + length, minutes)):
            if plan[t] == _IDLE:
                plan[t] = value

    # Charging first (a plugged-in vehicle does not drive): an overnight tail from the evening before, and
    # an evening or daytime session; a few vehicles do not charge at all that day. A meter without a vehicle
    # only reports its charger's standby.
    draw = rng.random()
    if draw < 0.45 and i <= vehicles:
        fill(rng.randrange(0, 90), rng.randrange(120, 301), _rate(rng))
    if draw > 0.15 and i <= vehicles:
        fill(rng.randrange(8 * 60, 21 * 60), rng.randrange(120, 301), _rate(rng))
    # Two trips: morning and afternoon.
    fill(rng.randrange(6 * 60, 9 * 60), rng.randrange(20, 75), _DRIVING)
    fill(rng.randrange(15 * 60, 19 * 60), rng.randrange(20, 75), _DRIVING)

    eff = rng.randrange(7_800, 8_500) if rng.random() < 0.03 else rng.randrange(8_600, 9_501)
    capacity_kwh = rng.uniform(50.0, 90.0)
    offset = 0
    if rng.random() < 0.05:
        offset = rng.choice((-1, 1)) * rng.randrange(2, 10)
    ambient = rng.uniform(120.0, 300.0)
    return _Pair(
        i=i,
        rng=rng,
        has_vehicle=i <= vehicles,
        meter_prefix=codec.prefix(len(METER_COLUMNS), meter_id(i)),
        vehicle_prefix=codec.prefix(len(VEHICLE_COLUMNS), vehicle_id(i)),
        plan=plan,
        eff=eff,
        cap_units_per_pct=capacity_kwh * KWH_UNIT / 100.0,
        drain_pct=rng.uniform(0.15, 0.35),
        ambient=ambient,
        volt_nominal=rng.randrange(2_310, 2_391),
        offset=offset,
        reports_charging=rng.random() >= 0.03,
        soc=rng.uniform(20.0, 70.0),
        temp=ambient + rng.uniform(-10.0, 10.0),
    )


def _rate(rng: random.Random) -> int:
    """Charging power 7-11 kW as KWH_UNIT per minute (1,167-1,833)."""
    return round(rng.uniform(7.0, 11.0) / 60.0 * KWH_UNIT)


class _Generator:
    """Time-major COPY blocks for a range of pairs; pieces are shared pre-encoded bytes."""

    def __init__(self, pairs: Sequence[_Pair], codec: _Codec, day_start: datetime, minutes: int) -> None:
        self.pairs = pairs
        self.minutes = minutes
        self.kwh = codec.numbers(_MAX_KWH_UNITS + 1, KWH_UNIT, 4)
        self.kwh_units = {piece: n for n, piece in enumerate(self.kwh)}
        self.volt_last = codec.numbers(2_501, 10, 1, last=True)
        self.tenths = codec.numbers(1_001, 10, 1)  # SoC % and degC, x 10
        self.charging_last = codec.booleans(last=True)
        offsets = {p.offset for p in pairs} | {0}
        self.ts = {
            o: [codec.timestamp(day_start + timedelta(minutes=t, seconds=o)) for t in range(minutes)] for o in offsets
        }

    def block(self, b0: int, b1: int) -> tuple[bytes, bytes, int, int]:
        """Meter and vehicle COPY data of minutes [b0, b1): (meter bytes, vehicle bytes, meter rows, vehicle rows)."""
        n = len(self.pairs)
        span = b1 - b0
        nv = sum(1 for p in self.pairs if p.has_vehicle)
        meter_pieces: list[bytes | None] = [None] * (span * n * 4)
        vehicle_pieces: list[bytes | None] = [None] * (span * nv * 6)
        kwh, volt_last, tenths, charging_last = self.kwh, self.volt_last, self.tenths, self.charging_last
        meter_ts = self.ts[0][b0:b1]
        jv = 0
        for j, p in enumerate(self.pairs):
            rnd = p.rng.random
            plan, eff, cap, drain = p.plan, p.eff, p.cap_units_per_pct, p.drain_pct
            ambient, vnom = p.ambient, p.volt_nominal
            soc, temp = p.soc, p.temp
            ac_sum = dc_sum = 0
            ac_col: list[bytes] = []
            volt_col: list[bytes] = []
            soc_col: list[bytes] = []
            dc_col: list[bytes] = []
            temp_col: list[bytes] = []
            chg_col: list[bytes] = []
            put_ac, put_volt, put_soc = ac_col.append, volt_col.append, soc_col.append
            put_dc, put_temp, put_chg = dc_col.append, temp_col.append, chg_col.append
            # Indexed by `charging` (False/True): what the vehicle reports, NULL if it does not report it.
            chg = [charging_last[False], charging_last[True]] if p.reports_charging else [charging_last[None]] * 2
            ac = dc = soc10 = temp10 = 0
            volt = vnom
            charging = False
            for t in range(b0, b1):
                mode = plan[t]
                charging = mode > 0 and soc < 100.0
                if charging:
                    ac = mode + int(rnd() * 81.0) - 40
                    if ac < 1_100:
                        ac = 1_100
                    elif ac > 1_900:
                        ac = 1_900
                    dc = (ac * eff + 5_000) // 10_000
                    soc += dc / cap
                    if soc > 100.0:
                        soc = 100.0
                    target = ambient + 90.0
                    volt = vnom - 20 + int(rnd() * 41.0) - 20
                else:
                    ac = int(rnd() * 51.0)
                    dc = (ac * eff + 5_000) // 10_000
                    if mode == _DRIVING:
                        soc -= drain
                        if soc < 5.0:
                            soc = 5.0
                        target = ambient + 50.0
                    else:
                        target = ambient
                    volt = vnom + int(rnd() * 41.0) - 20
                temp += (target - temp) * 0.03 + rnd() * 4.0 - 2.0
                if temp < 100.0:
                    temp = 100.0
                elif temp > 450.0:
                    temp = 450.0
                if volt < 2_250:
                    volt = 2_250
                elif volt > 2_450:
                    volt = 2_450
                soc10 = int(soc * 10.0 + 0.5)
                temp10 = int(temp + 0.5)
                ac_sum += ac
                dc_sum += dc
                put_ac(kwh[ac])
                put_volt(volt_last[volt])
                put_dc(kwh[dc])
                put_soc(tenths[soc10])
                put_temp(tenths[temp10])
                put_chg(chg[charging])
            p.soc, p.temp = soc, temp
            p.ac_units += ac_sum
            p.last_meter = (ac, volt)
            stride = n * 4
            meter_pieces[j * 4 :: stride] = [p.meter_prefix] * span
            meter_pieces[j * 4 + 1 :: stride] = meter_ts
            meter_pieces[j * 4 + 2 :: stride] = ac_col
            meter_pieces[j * 4 + 3 :: stride] = volt_col
            if not p.has_vehicle:
                continue
            # A reading taken before the window (negative clock offset in the first minute) is not the day's.
            if b0 == 0 and p.offset < 0:
                dc_sum -= self.kwh_units[dc_col[0]]
            p.dc_units += dc_sum
            p.last_vehicle = (soc10, dc, temp10, charging if p.reports_charging else None)
            stride = nv * 6
            base = jv * 6
            vehicle_pieces[base::stride] = [p.vehicle_prefix] * span
            vehicle_pieces[base + 1 :: stride] = self.ts[p.offset][b0:b1]
            vehicle_pieces[base + 2 :: stride] = soc_col
            vehicle_pieces[base + 3 :: stride] = dc_col
            vehicle_pieces[base + 4 :: stride] = temp_col
            vehicle_pieces[base + 5 :: stride] = chg_col
            jv += 1
        return b"".join(meter_pieces), b"".join(vehicle_pieces), span * n, span * nv  # type: ignore[arg-type]  # ints


# --- loading -----------------------------------------------------------------------------------------------


def _conninfo(url: str) -> str:
    """libpq URI for a SQLAlchemy `postgresql+psycopg://` URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _copy_statement(table: str, columns: Sequence[str], codec: _Codec) -> str:
    return f"COPY {table} ({', '.join(columns)}) FROM STDIN {codec.options()}"


class _CopyStream(threading.Thread):
    """One COPY on its own connection, fed whole blocks through a short queue by the generating thread, so
    the server parses one table's block while the generator formats the next. `counter[slot]` counts the
    rows handed to the connection: what the server has taken, give or take a socket buffer."""

    def __init__(self, conninfo: str, name: str, statement: str, codec: _Codec, counter: Any, slot: int) -> None:
        super().__init__(name=name, daemon=True)
        self.conninfo, self.statement, self.codec = conninfo, statement, codec
        self.counter, self.slot = counter, slot
        self.blocks: queue.Queue[tuple[bytes, int] | None] = queue.Queue(maxsize=2)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with (
                psycopg.connect(self.conninfo, application_name=self.name) as conn,
                conn.cursor() as cur,
                cur.copy(self.statement) as copy,
            ):
                copy.write(self.codec.header())
                while (item := self.blocks.get()) is not None:
                    if item is _ABORT:
                        raise RuntimeError("aborted: the generator failed")  # CopyFail, then rollback
                    copy.write(item[0])
                    self.counter[self.slot] += item[1]
                copy.write(self.codec.trailer())
            # Leaving the connection block without an exception committed the COPY.
        except BaseException as exc:
            self.error = exc

    def put(self, item: tuple[bytes, int] | None) -> None:
        """Queue a block (None: the end); raises if the COPY failed."""
        while True:
            if self.error is not None:
                raise RuntimeError(f"{self.name}: COPY failed: {self.error!r}") from self.error
            try:
                self.blocks.put(item, timeout=1.0)
                return
            except queue.Full:
                continue


_ABORT = (b"", -1)


def _worker(
    index: int,
    conninfo: str,
    pair_range: tuple[int, int],
    vehicles: int,
    minutes: int,
    day_start: datetime,
    seed: int,
    copy_format: str,
    block_minutes: int,
    counter: Any,
    results: Any,
) -> None:
    """One loader process: pairs [lo, hi), both tables at once (a COPY thread each), one transaction each."""
    streams: list[_CopyStream] = []
    try:
        codec = _Codec(copy_format)
        cpu0 = time.thread_time()
        pairs = [_make_pair(i, vehicles, minutes, seed, codec) for i in range(*pair_range)]
        gen = _Generator(pairs, codec, day_start, minutes)
        gen_seconds = time.thread_time() - cpu0
        meters = _CopyStream(
            conninfo,
            f"fleet-day-loader-{index}-meters",
            _copy_statement("meter_readings", METER_COLUMNS, codec),
            codec,
            counter,
            2 * index,
        )
        vehicles_ = _CopyStream(
            conninfo,
            f"fleet-day-loader-{index}-vehicles",
            _copy_statement("vehicle_readings", VEHICLE_COLUMNS, codec),
            codec,
            counter,
            2 * index + 1,
        )
        streams = [meters, vehicles_]
        for stream in streams:
            stream.start()
        for b0 in range(0, minutes, block_minutes):
            cpu0 = time.thread_time()
            mdata, vdata, mrows, vrows = gen.block(b0, min(b0 + block_minutes, minutes))
            gen_seconds += time.thread_time() - cpu0
            meters.put((mdata, mrows))
            if vrows:
                vehicles_.put((vdata, vrows))
        for stream in streams:
            stream.put(None)
        for stream in streams:
            stream.join()
            if stream.error is not None:
                raise RuntimeError(f"{stream.name}: COPY failed: {stream.error!r}") from stream.error
        last = day_start + timedelta(minutes=minutes - 1)
        results.put(
            {
                "index": index,
                "meter_rows": minutes * len(pairs),
                "vehicle_rows": minutes * sum(1 for p in pairs if p.has_vehicle),
                "generate_seconds": gen_seconds,
                "ac": {meter_id(p.i): p.ac_units for p in pairs},
                "dc": {vehicle_id(p.i): p.dc_units for p in pairs if p.has_vehicle},
                "offsets": {vehicle_id(p.i): p.offset for p in pairs if p.has_vehicle and p.offset},
                "meters_current": [
                    (meter_id(p.i), last, p.last_meter[0] / KWH_UNIT, p.last_meter[1] / 10) for p in pairs
                ],
                "vehicles_current": [
                    (
                        vehicle_id(p.i),
                        last + timedelta(seconds=p.offset),
                        p.last_vehicle[0] / 10,
                        p.last_vehicle[1] / KWH_UNIT,
                        p.last_vehicle[2] / 10,
                        p.last_vehicle[3],
                    )
                    for p in pairs
                    if p.has_vehicle
                ],
            }
        )
    except BaseException:
        for stream in streams:
            if stream.is_alive():
                with suppress(queue.Full):
                    stream.blocks.put(_ABORT, timeout=5.0)
        for stream in streams:
            stream.join(timeout=30.0)
        results.put({"index": index, "error": traceback.format_exc()})
        raise


def _split(count: int, parts: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges of 1..count in `parts` contiguous, nearly equal pieces (empty ones dropped)."""
    bounds = [1 + count * k // parts for k in range(parts + 1)]
    return [(lo, hi) for lo, hi in pairwise(bounds) if hi > lo]


def _print(message: str) -> None:
    print(message, flush=True)


def load_fleet_day(
    url: str,
    *,
    meters: int = 10_000,
    vehicles: int = 10_000,
    day_start: datetime,
    minutes: int = 1440,
    seed: int = 42,
    loaders: int = 2,
    copy_format: str = "binary",
    block_minutes: int = BLOCK_MINUTES,
    timeout: float = 1800.0,
    log: Callable[[str], None] = _print,
    append: bool = False,
) -> LoadStats:
    """Load `minutes` of readings of `meters` meters and `vehicles` vehicles (vehicle i charged from meter i)
    from `day_start` on into the empty, migrated database at `url`; then current state, VACUUM (ANALYZE) and
    CHECKPOINT (CHECKPOINT needs a superuser or pg_checkpoint). Raises TimeoutError after `timeout` seconds.

    `append=True` adds another stretch of history (e.g. the next day, with another `seed`) to a database this
    function loaded before: the history window must hold no rows yet, mappings in place are kept (a vehicle
    without one gets it), and current state moves forward only (an older reading never replaces a newer one).

    The loader processes are started with multiprocessing's "spawn" (no inherited connections or threads), so
    the caller must be an importable module or a script file, not code read from stdin."""
    if day_start.utcoffset() is None:
        raise ValueError("day_start must be timezone-aware")
    if not 0 < vehicles <= meters:
        raise ValueError("need 0 < vehicles <= meters: vehicle i is charged from meter i")
    if not 0 < minutes <= 1440 or loaders < 1 or block_minutes < 1:
        raise ValueError("need 0 < minutes <= 1440, loaders >= 1 and block_minutes >= 1")
    _Codec(copy_format)  # validates the format
    conninfo = _conninfo(url)
    stats = LoadStats(meters, vehicles, minutes, day_start.astimezone(UTC), loaders, copy_format)
    started = time.perf_counter()
    deadline = started + timeout
    with psycopg.connect(conninfo) as conn:
        for table in ("meter_readings", "vehicle_readings", "meters_current", "vehicles_current"):
            if append and table.endswith("_readings"):
                # Inside the window only: a clock offset puts a few readings of the day before seconds past its end.
                window = (stats.day_start + timedelta(minutes=1), stats.day_end - timedelta(minutes=1))
                query = f"SELECT EXISTS (SELECT FROM {table} WHERE recorded_at >= %s AND recorded_at < %s)"
                if conn.execute(query, window).fetchone()[0]:  # type: ignore[index]  # a row
                    raise RuntimeError(f"{table} already has rows in the window to append")
            elif not append and conn.execute(f"SELECT EXISTS (SELECT FROM {table})").fetchone()[0]:  # type: ignore[index]  # a row
                raise RuntimeError(f"{table} is not empty: load_fleet_day needs an empty, migrated database")
    # Readings span [day_start - 9 s, day_end - 60 s + 9 s] (vehicle clock offsets): exactly those chunks.
    _create_chunks(conninfo, stats.day_start - timedelta(seconds=10), stats.day_end - timedelta(seconds=50))

    expected = minutes * (meters + vehicles)
    log(
        f"load: {meters:,} meters + {vehicles:,} vehicles x {minutes:,} min = {expected:,} rows from"
        f" {stats.day_start.isoformat()}; {copy_format} COPY, {loaders} loader process(es)"
    )
    ctx = mp.get_context("spawn")
    results: Any = ctx.Queue()
    counter = ctx.Array("q", 2 * loaders, lock=False)  # rows handed to each COPY connection
    ranges = _split(meters, loaders)
    procs = [
        ctx.Process(
            target=_worker,
            args=(
                k,
                conninfo,
                r,
                vehicles,
                minutes,
                stats.day_start,
                seed,
                copy_format,
                block_minutes,
                counter,
                results,
            ),
            name=f"fleet-day-loader-{k}",
            daemon=True,
        )
        for k, r in enumerate(ranges)
    ]
    outputs: list[dict[str, Any]] = []
    copy_start = time.perf_counter()
    try:
        for proc in procs:
            proc.start()
        next_report, last_rows, last_at = copy_start + 10.0, 0, copy_start
        while len(outputs) < len(procs):
            now = time.perf_counter()
            if now > deadline:
                raise TimeoutError(f"load did not finish within {timeout:.0f} s")
            try:
                out = results.get(timeout=0.5)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"loader {dead[0].name} died (exit code {dead[0].exitcode})") from None
                if now >= next_report:
                    rows = sum(counter[:])
                    log(
                        f"load: {rows:,}/{expected:,} rows sent ({100 * rows / expected:.0f} %);"
                        f" {(rows - last_rows) / (now - last_at):,.0f} rows/s over the last {now - last_at:.0f} s,"
                        f" {rows / (now - copy_start):,.0f} rows/s since the start"
                    )
                    next_report, last_rows, last_at = next_report + 10.0, rows, now
                continue
            if "error" in out:
                raise RuntimeError(f"loader {out['index']} failed:\n{out['error']}")
            outputs.append(out)
        for proc in procs:
            proc.join(timeout=max(1.0, deadline - time.perf_counter()))
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM to that one PID
                proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        results.close()
    stats.copy_seconds = time.perf_counter() - copy_start
    for out in outputs:
        stats.meter_rows += out["meter_rows"]
        stats.vehicle_rows += out["vehicle_rows"]
        stats.generate_seconds += out["generate_seconds"]
        stats.meter_ac_units.update(out["ac"])
        stats.vehicle_dc_units.update(out["dc"])
        stats.vehicle_offsets.update(out["offsets"])
    log(
        f"load: history COPY {stats.history_rows:,} rows in {stats.copy_seconds:.1f} s ="
        f" {stats.copy_rows_per_second:,.0f} rows/s (generator alone: {stats.generate_seconds:.1f} CPU s,"
        f" {stats.generate_rows_per_second:,.0f} rows/s per core)"
    )

    t0 = time.perf_counter()
    valid_from = stats.day_start - MAPPING_LEAD
    stats.mapping = {vehicle_id(i): meter_id(i) for i in range(1, vehicles + 1)}
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        if append:
            _append_mapping_and_current(cur, stats.mapping, valid_from, outputs)
        else:
            with cur.copy("COPY vehicle_meter_mapping (vehicle_id, meter_id, valid_from, valid_to) FROM STDIN") as cp:
                for vid, mid in stats.mapping.items():
                    cp.write_row((vid, mid, valid_from, None))
            with cur.copy(f"COPY meters_current ({', '.join(METER_COLUMNS)}) FROM STDIN") as cp:
                for out in outputs:
                    for row in out["meters_current"]:
                        cp.write_row(row)
            with cur.copy(f"COPY vehicles_current ({', '.join(VEHICLE_COLUMNS)}) FROM STDIN") as cp:
                for out in outputs:
                    for row in out["vehicles_current"]:
                        cp.write_row(row)
    stats.current_seconds = time.perf_counter() - t0
    log(f"load: mapping + current state ({meters + 2 * vehicles:,} rows) in {stats.current_seconds:.1f} s")

    with psycopg.connect(conninfo, autocommit=True) as conn:
        t0 = time.perf_counter()
        # VACUUM, not only ANALYZE: it sets hint bits and the visibility map now, so neither the first reads
        # of the benchmark nor an insert-triggered autovacuum in the middle of it pay for that.
        conn.execute(
            "VACUUM (ANALYZE) meter_readings, vehicle_readings, meters_current, vehicles_current, vehicle_meter_mapping"
        )
        stats.vacuum_analyze_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        conn.execute("CHECKPOINT")
        stats.checkpoint_seconds = time.perf_counter() - t0
    stats.total_seconds = time.perf_counter() - started
    log(
        f"load: VACUUM (ANALYZE) {stats.vacuum_analyze_seconds:.1f} s, CHECKPOINT {stats.checkpoint_seconds:.1f} s;"
        f" total {stats.total_seconds:.1f} s"
    )
    return stats


def _create_chunks(conninfo: str, start: datetime, end: datetime) -> None:
    """Create both hypertables' chunks for [start, end] before the loader processes start.

    A COPY that creates a chunk holds a lock on the hypertable until it commits, at the end of the load. Each
    loader streams both tables: when one loader creates the new meter_readings chunk and the other the new
    vehicle_readings chunk, each one's COPY then waits for the other's lock while its generator waits for that
    COPY: a deadlock through the clients that PostgreSQL cannot detect (seen: the load stopped for good). So one
    row per table every 6 hours of the window is inserted and deleted in one committed transaction: the chunks
    stay, the rows do not, and the COPYs only insert into existing chunks."""
    points = []
    t = start
    while t < end:
        points.append(t)
        t += timedelta(hours=6)
    points.append(end)
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        for ts in points:
            cur.execute(
                "INSERT INTO meter_readings (meter_id, recorded_at, kwh_consumed_ac, voltage)"
                " VALUES ('fleet-day-chunk', %s, 0, 230) ON CONFLICT DO NOTHING",
                (ts,),
            )
            cur.execute(
                "INSERT INTO vehicle_readings (vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp)"
                " VALUES ('fleet-day-chunk', %s, 50, 0, 20) ON CONFLICT DO NOTHING",
                (ts,),
            )
        cur.execute("DELETE FROM meter_readings WHERE meter_id = 'fleet-day-chunk'")
        cur.execute("DELETE FROM vehicle_readings WHERE vehicle_id = 'fleet-day-chunk'")


def _append_mapping_and_current(
    cur: psycopg.Cursor[Any], mapping: dict[str, str], valid_from: datetime, outputs: list[dict[str, Any]]
) -> None:
    """Append mode: a mapping for each vehicle that has none; current state upserted, forwards only."""
    cur.execute("CREATE TEMP TABLE fleet_day_mapping (vehicle_id text, meter_id text) ON COMMIT DROP")
    with cur.copy("COPY fleet_day_mapping (vehicle_id, meter_id) FROM STDIN") as cp:
        for vid, mid in mapping.items():
            cp.write_row((vid, mid))
    cur.execute(
        "INSERT INTO vehicle_meter_mapping (vehicle_id, meter_id, valid_from, valid_to)"
        " SELECT n.vehicle_id, n.meter_id, %s, NULL FROM fleet_day_mapping n"
        " WHERE NOT EXISTS (SELECT FROM vehicle_meter_mapping m WHERE m.vehicle_id = n.vehicle_id)",
        (valid_from,),
    )
    for table, columns in (("meters_current", METER_COLUMNS), ("vehicles_current", VEHICLE_COLUMNS)):
        cur.execute(f"CREATE TEMP TABLE fleet_day_{table} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP")
        with cur.copy(f"COPY fleet_day_{table} ({', '.join(columns)}) FROM STDIN") as cp:
            for out in outputs:
                for row in out[table]:
                    cp.write_row(row)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns[1:])
        cur.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(columns)} FROM fleet_day_{table}"
            f" ON CONFLICT ({columns[0]}) DO UPDATE SET {updates}, updated_at = now()"
            f" WHERE {table}.recorded_at < EXCLUDED.recorded_at"
        )


def generate_text_blocks(
    *,
    meters: int,
    vehicles: int,
    day_start: datetime,
    minutes: int = 1440,
    seed: int = 42,
    block_minutes: int = BLOCK_MINUTES,
) -> Iterator[tuple[bytes, bytes]]:
    """The readings load_fleet_day would load with the same arguments (same values), generated in this process
    as COPY text blocks of `block_minutes` each, time-major: (meter lines, vehicle lines), tab-separated fields
    in METER_COLUMNS / VEHICLE_COLUMNS order, NULL as \\N. For loaders that cannot use COPY (the embedded
    engine takes them as multi-row INSERTs)."""
    if day_start.utcoffset() is None:
        raise ValueError("day_start must be timezone-aware")
    if not 0 < vehicles <= meters:
        raise ValueError("need 0 < vehicles <= meters: vehicle i is charged from meter i")
    codec = _Codec("text")
    pairs = [_make_pair(i, vehicles, minutes, seed, codec) for i in range(1, meters + 1)]
    gen = _Generator(pairs, codec, day_start.astimezone(UTC), minutes)
    for b0 in range(0, minutes, block_minutes):
        mdata, vdata, _, _ = gen.block(b0, min(b0 + block_minutes, minutes))
        yield mdata, vdata


def main(argv: Sequence[str] | None = None) -> int:
    """Quick check: `python -m tests.load.fleet_day URL --meters 200` (the database must be migrated and empty)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="postgresql+psycopg:// URL of a migrated, empty database")
    parser.add_argument("--meters", type=int, default=200)
    parser.add_argument("--vehicles", type=int, default=None, help="default: as many as meters")
    parser.add_argument("--minutes", type=int, default=1440)
    parser.add_argument("--day-start", default=None, help="ISO 8601 with offset; default: yesterday 00:00 UTC")
    parser.add_argument("--loaders", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--format", choices=("binary", "text"), default="binary")
    args = parser.parse_args(argv)
    if args.day_start:
        day_start = datetime.fromisoformat(args.day_start)
    else:
        day_start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    load_fleet_day(
        args.url,
        meters=args.meters,
        vehicles=args.vehicles if args.vehicles is not None else args.meters,
        day_start=day_start,
        minutes=args.minutes,
        loaders=args.loaders,
        copy_format=args.format,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
