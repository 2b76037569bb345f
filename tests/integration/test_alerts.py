"""Alerts on both engines: scans that open, refresh and resolve; `fleet alerts`; GET /v1/alerts.

Data goes in through the HTTP API. Every expected verdict is computed here, in plain Python, from the readings
and mappings the test posted (`FleetData` keeps them) with the rules the alerts are specified by (efficiency
= ΣDC/ΣAC of the window with the meter mapped at each hour's start; a vehicle reading "matches" when its
mapped meter reported within 5 s; silent = newest reading older than N minutes), never from the platform's
SQL. The scans under test get `now` explicitly, so windows are deterministic; the CLI uses the database's
clock. On the embedded (Community) engine the hourly aggregates are partly materialised, partly real-time.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cli import main
from config import Settings
from db import alerts as db_alerts
from db.schema import alerts as alerts_table
from jobs.alerts import scan_alerts, scan_parameters
from tests.conftest import is_community
from tests.support.api import build_client, with_api_key
from tests.support.cli import cli_env
from tests.support.fleet import FleetData, floor_hour, iso, post_all, refresh_like_policy

#: Admin may ingest, map and read.
APP = {"role": "admin", "FLEET_RATE_LIMIT": "off"}
pytestmark = pytest.mark.app(**APP)

HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
REAL_NOW = datetime.now(UTC).replace(microsecond=0)
#: End of the first evaluation window: on the hour, well inside the ingest's accepted age.
T0 = floor_hour(REAL_NOW) - 8 * HOUR
#: Scans happen ten minutes into the hour: the window still ends on the hour (complete hours only).
SCAN_1 = T0 + 10 * MINUTE
SCAN_2 = T0 + 2 * HOUR + 10 * MINUTE
MIN_READINGS = 30
MIN_AC_KWH = 1.0
THRESHOLD = 0.85
#: Long enough that no device of the efficiency and correlation scenarios is ever silent.
NEVER_SILENT = 7 * 24 * 60


def utc_iso(t: datetime) -> str:
    """How the alerts' details write a time."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


#: The scan's thresholds as the platform runs them by default (FLEET_ALERT_* unset).
DEFAULTS = scan_parameters(Settings.from_env({}))


def scan(eng: Engine, now: datetime, **kwargs: Any) -> db_alerts.ScanStats:
    params: dict[str, Any] = {
        **DEFAULTS,
        "window": 2 * HOUR,
        "correlation_window": 2 * HOUR,
        "min_readings": MIN_READINGS,
        "min_ac_kwh": MIN_AC_KWH,
        "efficiency_threshold": THRESHOLD,
        "silent_minutes": NEVER_SILENT,
        **kwargs,
    }
    # A short transaction of its own: nothing stays open while the test client posts (one-slot embedded engine).
    with eng.begin() as conn:
        return db_alerts.scan(conn, now=now, **params)


def stored(eng: Engine, kind: str | None = None) -> list[dict]:
    a = alerts_table
    q = sa.select(a).order_by(a.c.id)
    if kind is not None:
        q = q.where(a.c.kind == kind)
    with eng.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def open_alerts(eng: Engine, kind: str) -> dict[str, dict]:
    rows = [r for r in stored(eng, kind) if r["resolved_at"] is None]
    by_device = {r["device_id"]: r for r in rows}
    assert len(by_device) == len(rows), rows  # never two open alerts for one device and kind
    return by_device


def post_new(client, data: FleetData, posted_before: int, mappings_before: int = 0) -> None:
    """Post what `data` gained since it held `posted_before` readings and `mappings_before` mappings."""
    for vehicle_id, meter_id, valid_from in data.mappings[mappings_before:]:
        resp = client.post(
            "/v1/mappings", json={"vehicleId": vehicle_id, "meterId": meter_id, "validFrom": iso(valid_from)}
        )
        assert resp.status_code == 201, resp.get_json()
    post_all(client, data, data.posted[posted_before:])


def transitions(open_before: set[str], verdicts: dict[str, bool]) -> tuple[set[str], set[str], set[str]]:
    """The specified semantics: (opened, refreshed, resolved) given the open alerts and the judged devices'
    verdicts (True: the condition holds). Devices without a verdict are left alone."""
    opened = {d for d, firing in verdicts.items() if firing and d not in open_before}
    refreshed = {d for d, firing in verdicts.items() if firing and d in open_before}
    resolved = {d for d, firing in verdicts.items() if not firing and d in open_before}
    return opened, refreshed, resolved


def counts(stats: db_alerts.KindStats) -> tuple[int, int, int]:
    return stats.opened, stats.refreshed, stats.resolved


# --- low efficiency -----------------------------------------------------------------------------------------


def efficiency_verdicts(data: FleetData, start: datetime, end: datetime) -> dict[str, tuple[bool, float]]:
    """Vehicles that can be judged over [start, end) -> (efficiency below the threshold, efficiency)."""
    verdicts = {}
    for vehicle_id, e in data.expected_fleet(start, end).items():
        if e["ac"] is None or e["dc"] is None or e["ac"] == 0:
            continue
        if e["meter_readings"] < MIN_READINGS or e["vehicle_readings"] < MIN_READINGS or e["ac"] < MIN_AC_KWH:
            continue
        efficiency = e["dc"] / e["ac"]
        verdicts[vehicle_id] = (efficiency < THRESHOLD, efficiency)
    return verdicts


def charge(data: FleetData, vehicle_id: str, start: datetime, minutes: int, efficiency: float, ac: float = 0.15):
    """`minutes` readings a minute apart on the vehicle and its meter, DC = AC x efficiency."""
    for i in range(minutes):
        t = start + i * MINUTE
        kwh = ac * (1 + (i % 7) * 0.05)
        data.meter(f"{vehicle_id}-M", t, round(kwh, 4))
        data.vehicle(vehicle_id, t, round(kwh * efficiency, 4), 25.0)


def efficiency_phase_1() -> FleetData:
    """[T0 - 2h, T0): e-low at 70 %, e-ok at 92 %, e-stale at 60 %; e-sparse (10 readings), e-idle (standby AC
    only) and e-unmapped (no meter) cannot be judged."""
    d = FleetData()
    for v in ("e-low", "e-ok", "e-stale", "e-sparse", "e-idle"):
        d.map(v, f"{v}-M", T0 - 5 * HOUR)
    start = T0 - 2 * HOUR
    charge(d, "e-low", start, 120, 0.70)
    charge(d, "e-ok", start, 120, 0.92)
    charge(d, "e-stale", start, 120, 0.60)
    charge(d, "e-sparse", start, 10, 0.50)
    charge(d, "e-idle", start, 120, 0.0, ac=0.002)
    for i in range(120):
        d.vehicle("e-unmapped", start + i * MINUTE, 0.1, 25.0)
    return d


def efficiency_phase_2(d: FleetData) -> None:
    """[T0, T0 + 2h): e-low is efficient again, e-ok drops to 60 %, e-stale sends 5 readings (cannot be judged)."""
    charge(d, "e-low", T0, 120, 0.93)
    charge(d, "e-ok", T0, 120, 0.60)
    charge(d, "e-stale", T0, 5, 0.60)


def test_low_efficiency_opens_refreshes_and_resolves(client, clean_db, engine_kind):
    d = efficiency_phase_1()
    post_new(client, d, 0)
    if is_community(engine_kind):
        refresh_like_policy(clean_db, T0 - HOUR)  # the window's first hour materialised, the second real-time

    verdicts_1 = efficiency_verdicts(d, T0 - 2 * HOUR, T0)
    assert set(verdicts_1) == {"e-low", "e-ok", "e-stale"}  # the scenario is what it claims
    stats = scan(clean_db, SCAN_1)
    assert (stats.window_start, stats.window_end) == (T0 - 2 * HOUR, T0)
    opened, _, _ = transitions(set(), {v: firing for v, (firing, _) in verdicts_1.items()})
    assert opened == {"e-low", "e-stale"}
    assert counts(stats.low_efficiency) == (len(opened), 0, 0)
    alerts_1 = open_alerts(clean_db, "low_efficiency")
    assert set(alerts_1) == opened
    for vehicle_id, alert in alerts_1.items():
        e = d.expected_fleet(T0 - 2 * HOUR, T0)[vehicle_id]
        details = alert["details"]
        assert alert["device_type"] == "vehicle"
        assert alert["opened_at"] == alert["last_seen_at"] == SCAN_1
        assert details["efficiency"] == pytest.approx(verdicts_1[vehicle_id][1], abs=1e-6)
        assert details["totalAcConsumed"] == pytest.approx(e["ac"], abs=1e-6)
        assert details["totalDcDelivered"] == pytest.approx(e["dc"], abs=1e-6)
        assert (details["meterReadings"], details["vehicleReadings"]) == (e["meter_readings"], e["vehicle_readings"])
        assert details["threshold"] == THRESHOLD
        assert (details["windowStart"], details["windowEnd"]) == (utc_iso(T0 - 2 * HOUR), utc_iso(T0))

    # Re-running changes nothing but last_seen_at: still one open alert per vehicle.
    again = scan(clean_db, SCAN_1 + MINUTE)
    assert counts(again.low_efficiency) == (0, len(opened), 0)
    assert {v: a["id"] for v, a in open_alerts(clean_db, "low_efficiency").items()} == {
        v: a["id"] for v, a in alerts_1.items()
    }
    assert {a["last_seen_at"] for a in open_alerts(clean_db, "low_efficiency").values()} == {SCAN_1 + MINUTE}

    posted, mapped = len(d.posted), len(d.mappings)
    efficiency_phase_2(d)
    post_new(client, d, posted, mapped)
    if is_community(engine_kind):
        refresh_like_policy(clean_db, T0 + HOUR)

    verdicts_2 = {v: firing for v, (firing, _) in efficiency_verdicts(d, T0, T0 + 2 * HOUR).items()}
    assert "e-stale" not in verdicts_2  # 5 readings: cannot be judged
    opened_2, refreshed_2, resolved_2 = transitions(set(alerts_1), verdicts_2)
    assert (opened_2, refreshed_2, resolved_2) == ({"e-ok"}, set(), {"e-low"})
    stats_2 = scan(clean_db, SCAN_2)
    assert counts(stats_2.low_efficiency) == (len(opened_2), len(refreshed_2), len(resolved_2))

    rows = {(r["device_id"], r["id"]): r for r in stored(clean_db, "low_efficiency")}
    low = rows[("e-low", alerts_1["e-low"]["id"])]
    assert low["resolved_at"] == SCAN_2
    assert low["details"]["efficiency"] == pytest.approx(verdicts_1["e-low"][1], abs=1e-6)  # what fired
    assert low["details"]["resolution"]["efficiency"] > THRESHOLD  # what cleared it
    # Too few readings to judge: e-stale's alert stays open, untouched since its last confirmation.
    stale = rows[("e-stale", alerts_1["e-stale"]["id"])]
    assert (stale["resolved_at"], stale["last_seen_at"]) == (None, SCAN_1 + MINUTE)
    assert set(open_alerts(clean_db, "low_efficiency")) == {"e-ok", "e-stale"}
    assert len(rows) == 3
    assert counts(stats_2.silent_device) == (0, 0, 0)


def test_low_efficiency_threshold_and_min_readings_are_parameters(client, clean_db, engine_kind):
    d = efficiency_phase_1()
    post_new(client, d, 0)
    if is_community(engine_kind):
        refresh_like_policy(clean_db, T0)
    # At 95 % e-ok (92 %) is low too; with min_readings 5 e-sparse (50 %) is judged as well.
    stats = scan(clean_db, SCAN_1, efficiency_threshold=0.95, min_readings=5)
    assert set(open_alerts(clean_db, "low_efficiency")) == {"e-low", "e-ok", "e-stale", "e-sparse"}
    assert stats.low_efficiency.opened == 4


# --- correlation --------------------------------------------------------------------------------------------


def correlation_verdicts(data: FleetData, start: datetime, end: datetime, min_match_rate: float = 0.5):
    """Vehicles that can be judged over [start, end) -> (correlation lost, match rate, median offset)."""
    verdicts = {}
    for vehicle_id in {v for v, _ in data.vehicles}:
        e = data.expected_performance(vehicle_id, start, end)
        mapped = [t for (v, t) in data.vehicles if v == vehicle_id and start <= t < end and data.meter_at(v, t)]
        if len(mapped) < MIN_READINGS:
            continue
        rate = e["matched"] / e["vehicle_readings"]
        offset = e["typical_offset"]
        lost = rate < min_match_rate or offset is None or abs(offset) > 5
        verdicts[vehicle_id] = (lost, rate, offset)
    return verdicts


def paired(data: FleetData, vehicle_id: str, meter_id: str, start: datetime, minutes: int, skew, *, meter_every=1):
    """A vehicle and a meter reporting every minute; the vehicle's clock is `skew(i)` seconds off."""
    for i in range(minutes):
        t = start + i * MINUTE
        if i % meter_every == 0:
            data.meter(meter_id, t, 0.15)
        data.vehicle(vehicle_id, t + timedelta(seconds=skew(i)), 0.13, 25.0)


def test_correlation_lost_for_skewed_clock_and_wrong_meter_and_resolved_when_fixed(client, clean_db, engine_kind):
    d = FleetData()
    start = T0 - 2 * HOUR
    for v in ("c-skew", "c-good", "c-half", "c-sparse"):
        d.map(v, f"{v}-M", T0 - 5 * HOUR)
    d.map("c-wrong", "c-wrong-M-typo", T0 - 5 * HOUR)  # its real meter c-wrong-M reports, the typo never does
    paired(d, "c-skew", "c-skew-M", start, 120, lambda i: 40)
    paired(d, "c-good", "c-good-M", start, 120, lambda i: i % 3)  # 0, 1, 2 s off
    paired(d, "c-half", "c-half-M", start, 120, lambda i: 0, meter_every=2)  # the meter misses every other minute
    paired(d, "c-wrong", "c-wrong-M", start, 120, lambda i: 0)
    paired(d, "c-sparse", "c-sparse-M", start, 10, lambda i: 40)
    # c-tie's meter reports 10 s before and 10 s after each vehicle reading: the earlier one is the nearest.
    d.map("c-tie", "c-tie-M", T0 - 5 * HOUR)
    for i in range(120):
        t = start + i * MINUTE + timedelta(seconds=15)
        d.vehicle("c-tie", t, 0.13, 25.0)
        d.meter("c-tie-M", t - timedelta(seconds=10), 0.075)
        d.meter("c-tie-M", t + timedelta(seconds=10), 0.075)
    # c-remap moves from meter A to meter B mid-hour; each meter is in step with the vehicle only while mapped.
    remap_at = start + 90 * MINUTE + timedelta(seconds=30)
    d.map("c-remap", "c-remap-A", T0 - 5 * HOUR)
    d.map("c-remap", "c-remap-B", remap_at)
    for i in range(120):
        t = start + i * MINUTE
        d.vehicle("c-remap", t, 0.13, 25.0)
        d.meter("c-remap-A", t if t < remap_at else t + timedelta(seconds=40), 0.15)
        d.meter("c-remap-B", t if t >= remap_at else t + timedelta(seconds=40), 0.15)
    post_new(client, d, 0)

    verdicts = correlation_verdicts(d, start, T0)
    assert set(verdicts) == {"c-skew", "c-good", "c-half", "c-wrong", "c-tie", "c-remap"}
    assert verdicts["c-half"][1] == 0.5  # exactly the minimum: not below it
    assert verdicts["c-tie"][2] == 10.0 and verdicts["c-remap"][1] == 1.0
    stats = scan(clean_db, SCAN_1)
    assert (stats.correlation_window_start, stats.correlation_window_end) == (start, T0)
    opened, _, _ = transitions(set(), {v: lost for v, (lost, _, _) in verdicts.items()})
    assert opened == {"c-skew", "c-wrong", "c-tie"}
    assert counts(stats.correlation_lost) == (3, 0, 0)
    found = open_alerts(clean_db, "correlation_lost")
    assert set(found) == opened
    for vehicle_id, alert in found.items():
        _, rate, offset = verdicts[vehicle_id]
        details = alert["details"]
        assert details["matchRate"] == pytest.approx(rate, abs=1e-6)
        assert details["medianOffsetSeconds"] == (None if offset is None else pytest.approx(offset, abs=1e-3))
        assert details["vehicleReadings"] == 120
        assert details["toleranceSeconds"] == 5
        assert details["minMatchRate"] == 0.5
    assert found["c-skew"]["details"]["meterIds"] == ["c-skew-M"]
    assert found["c-skew"]["details"]["medianOffsetSeconds"] == pytest.approx(-20.0)  # nearest: the next minute's
    assert found["c-wrong"]["details"]["meterIds"] == ["c-wrong-M-typo"]
    assert found["c-tie"]["details"]["medianOffsetSeconds"] == 10.0
    # Efficiency has nothing to say here: every judged vehicle is at 87 % or better.
    assert counts(stats.low_efficiency) == (0, 0, 0)

    # c-skew's clock is fixed; c-wrong is re-mapped to its real meter from T0 on.
    posted, mapped = len(d.posted), len(d.mappings)
    d.map("c-wrong", "c-wrong-M", T0)
    paired(d, "c-skew", "c-skew-M", T0, 120, lambda i: 1)
    paired(d, "c-wrong", "c-wrong-M", T0, 120, lambda i: 0)
    paired(d, "c-good", "c-good-M", T0, 120, lambda i: 40)  # and c-good's clock now runs 40 s off
    post_new(client, d, posted, mapped)

    verdicts_2 = {v: lost for v, (lost, _, _) in correlation_verdicts(d, T0, T0 + 2 * HOUR).items()}
    expected = transitions(set(found), verdicts_2)
    assert expected == ({"c-good"}, set(), {"c-skew", "c-wrong"})
    stats_2 = scan(clean_db, SCAN_2)
    assert counts(stats_2.correlation_lost) == tuple(map(len, expected))
    assert set(open_alerts(clean_db, "correlation_lost")) == {"c-good", "c-tie"}  # c-tie: not judged, stays
    resolved = {r["device_id"]: r for r in stored(clean_db, "correlation_lost") if r["resolved_at"] is not None}
    assert set(resolved) == {"c-skew", "c-wrong"}
    assert resolved["c-wrong"]["details"]["resolution"]["meterIds"] == ["c-wrong-M"]
    assert resolved["c-wrong"]["details"]["resolution"]["matchRate"] == 1


def test_correlation_window_is_separate_and_whole_hours(client, clean_db):
    d = FleetData()
    d.map("w-V", "w-M", T0 - 5 * HOUR)
    paired(d, "w-V", "w-M", T0 - 2 * HOUR, 60, lambda i: 40)  # skewed in the first hour only
    paired(d, "w-V", "w-M", T0 - HOUR, 60, lambda i: 0)
    post_new(client, d, 0)
    stats = scan(clean_db, SCAN_1, correlation_window=HOUR)
    assert (stats.correlation_window_start, stats.correlation_window_end) == (T0 - HOUR, T0)
    assert open_alerts(clean_db, "correlation_lost") == {}
    # Over both hours half the readings match (not below 0.5) but the median offset is -10 s.
    lost, rate, offset = correlation_verdicts(d, T0 - 2 * HOUR, T0)["w-V"]
    assert (lost, rate, offset) == (True, 0.5, -10.0)
    scan(clean_db, SCAN_1, correlation_window=2 * HOUR)
    assert set(open_alerts(clean_db, "correlation_lost")) == {"w-V"}
    with pytest.raises(ValueError, match="whole number of hours"):
        scan(clean_db, SCAN_1, correlation_window=timedelta(minutes=90))


# --- both editions -----------------------------------------------------------------------------------------


def test_alerts_identical_on_both_editions(both_editions):
    found = {}
    for kind, eng in both_editions.items():
        client = build_client(eng, **APP)
        d = efficiency_phase_1()
        d.map("x-skew", "x-skew-M", T0 - 5 * HOUR)
        paired(d, "x-skew", "x-skew-M", T0 - 2 * HOUR, 120, lambda i: 40)
        post_new(client, d, 0)
        if is_community(kind):
            refresh_like_policy(eng, T0 - HOUR)  # part materialised, part real-time
        stats = scan(eng, SCAN_1, silent_minutes=15)
        found[kind] = (
            stats,
            sorted(
                (a["kind"], a["device_type"], a["device_id"], a["opened_at"], a["last_seen_at"], a["details"])
                for a in stored(eng)
            ),
        )
    reference = found.pop("native-apache")
    assert found and all(result == reference for result in found.values())
    kinds = {(kind, device_id) for kind, _, device_id, *_ in reference[1]}
    assert {("low_efficiency", "e-low"), ("low_efficiency", "e-stale"), ("correlation_lost", "x-skew")} <= kinds


# --- silent devices -----------------------------------------------------------------------------------------


def test_silent_devices_open_and_resolve_when_they_report_again(client, clean_db):
    now = datetime.now(UTC).replace(microsecond=0)
    d = FleetData()
    last = {
        ("meter", "s-M-quiet"): now - 40 * MINUTE,
        ("meter", "s-M-live"): now - 2 * MINUTE,
        ("vehicle", "s-V-quiet"): now - 20 * MINUTE,
        ("vehicle", "s-V-live"): now - 1 * MINUTE,
    }
    for (device_type, device_id), t in last.items():
        for age in (30, 10, 0):  # older readings first; the newest is the one that counts
            if device_type == "meter":
                d.meter(device_id, t - age * MINUTE, 0.1)
            else:
                d.vehicle(device_id, t - age * MINUTE, 0.1, 25.0)
    post_new(client, d, 0)

    silent = {key for key, t in last.items() if t < now - 15 * MINUTE}
    assert silent == {("meter", "s-M-quiet"), ("vehicle", "s-V-quiet")}
    stats = scan(clean_db, now, silent_minutes=15)
    assert counts(stats.silent_device) == (2, 0, 0)
    found = open_alerts(clean_db, "silent_device")
    assert {(a["device_type"], d_id) for d_id, a in found.items()} == silent
    for (_, device_id), t in last.items():
        if device_id in found:
            details = found[device_id]["details"]
            assert details["lastRecordedAt"] == utc_iso(t)
            assert details["silentMinutes"] == pytest.approx((now - t).total_seconds() / 60, abs=0.05)
            assert details["thresholdMinutes"] == 15
    assert counts(scan(clean_db, now, silent_minutes=15).silent_device) == (0, 2, 0)

    # The quiet meter reports again; the quiet vehicle stays quiet.
    posted = len(d.posted)
    d.meter("s-M-quiet", now - MINUTE, 0.1)
    post_new(client, d, posted)
    later = now + 5 * MINUTE
    stats_2 = scan(clean_db, later, silent_minutes=15)
    assert counts(stats_2.silent_device) == (0, 1, 1)
    assert set(open_alerts(clean_db, "silent_device")) == {"s-V-quiet"}

    # Silent again later: a new alert (the resolved one stays in the history).
    stats_3 = scan(clean_db, later + HOUR, silent_minutes=15)
    assert stats_3.silent_device.opened == 3  # s-M-quiet again, and both live devices
    history = [r for r in stored(clean_db, "silent_device") if r["device_id"] == "s-M-quiet"]
    assert [r["resolved_at"] is None for r in history] == [False, True]
    assert history[0]["resolved_at"] == later


def test_silent_meter_and_vehicle_with_the_same_id_never_clash(client, clean_db):
    # The one-open-alert index is per (kind, device_type, device_id): a meter and a vehicle may share an id.
    now = datetime.now(UTC).replace(microsecond=0)
    d = FleetData()
    d.meter("same-id", now - 40 * MINUTE, 0.1)
    d.vehicle("same-id", now - 1 * MINUTE, 0.1, 25.0)
    post_new(client, d, 0)
    assert counts(scan(clean_db, now, silent_minutes=15).silent_device) == (1, 0, 0)
    # The live vehicle neither resolves nor refreshes the silent meter's alert.
    assert counts(scan(clean_db, now, silent_minutes=15).silent_device) == (0, 1, 0)
    (alert,) = open_alerts(clean_db, "silent_device").values()
    assert alert["device_type"] == "meter"
    # Both silent: the vehicle gets its own alert beside the meter's.
    assert counts(scan(clean_db, now + HOUR, silent_minutes=15).silent_device) == (1, 1, 0)
    assert sorted(a["device_type"] for a in stored(clean_db, "silent_device")) == ["meter", "vehicle"]


# --- re-runs and concurrency --------------------------------------------------------------------------------


def silent_fleet(client, n: int) -> set[str]:
    d = FleetData()
    now = datetime.now(UTC).replace(microsecond=0)
    for i in range(n):
        d.meter(f"q-M{i:03d}", now - 40 * MINUTE, 0.1)
    post_new(client, d, 0)
    return {f"q-M{i:03d}" for i in range(n)}


def test_repeated_scans_keep_exactly_one_open_alert_per_device_and_kind(client, clean_db):
    devices = silent_fleet(client, 20)
    now = datetime.now(UTC)
    results = [scan(clean_db, now + i * MINUTE, silent_minutes=15) for i in range(4)]
    assert [counts(r.silent_device) for r in results] == [(20, 0, 0)] + [(0, 20, 0)] * 3
    with clean_db.connect() as conn:
        dupes = conn.execute(
            sa.text("SELECT kind, device_id FROM alerts WHERE resolved_at IS NULL GROUP BY 1, 2 HAVING count(*) > 1")
        ).all()
    assert dupes == []
    assert set(open_alerts(clean_db, "silent_device")) == devices
    assert len(stored(clean_db)) == 20


@pytest.mark.native
def test_concurrent_scans_cannot_open_two_alerts_for_one_device(client, clean_db):
    devices = silent_fleet(client, 20)
    now = datetime.now(UTC)
    second: dict[str, db_alerts.ScanStats] = {}

    def scan_b() -> None:
        with clean_db.begin() as conn_b:
            second["stats"] = db_alerts.scan(conn_b, now=now, **{**DEFAULTS, "silent_minutes": 15})

    thread = threading.Thread(target=scan_b)
    with clean_db.connect() as conn_a:
        try:
            tx_a = conn_a.begin()
            first = db_alerts.scan(conn_a, now=now, **{**DEFAULTS, "silent_minutes": 15})  # inserted, not yet committed
            assert first.silent_device.opened == 20
            thread.start()
            # B reaches the conflicting insert and waits for A's transaction to end.
            waiting, deadline = 0, time.monotonic() + 30
            while not waiting and time.monotonic() < deadline:
                time.sleep(0.05)
                with clean_db.connect() as probe:
                    waiting = probe.execute(
                        sa.text(
                            "SELECT count(*) FROM pg_stat_activity"
                            " WHERE wait_event_type = 'Lock' AND wait_event = 'transactionid'"
                        )
                    ).scalar_one()
            assert waiting == 1 and thread.is_alive()
            tx_a.commit()
        finally:
            conn_a.rollback()  # no-op after the commit; lets B go if anything above failed
    thread.join(timeout=60)
    assert counts(second["stats"].silent_device) == (0, 0, 0)  # conflicted with A's alerts: no error, no duplicate
    assert set(open_alerts(clean_db, "silent_device")) == devices
    assert len(stored(clean_db)) == 20


@pytest.mark.native
def test_concurrent_scan_jobs_take_turns(client, clean_db):
    devices = silent_fleet(client, 10)
    settings = Settings.from_env({"FLEET_SILENT_MINUTES": "15"})
    barrier = threading.Barrier(3)
    results: list[db_alerts.ScanStats] = []

    def job() -> None:
        barrier.wait()
        results.append(scan_alerts(clean_db, settings))

    threads = [threading.Thread(target=job) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    # Serialised by the scan lock: one opened every alert, the others found them open and refreshed them.
    assert sorted(counts(r.silent_device) for r in results) == [(0, 10, 0), (0, 10, 0), (10, 0, 0)]
    assert set(open_alerts(clean_db, "silent_device")) == devices


# --- the CLI ------------------------------------------------------------------------------------------------


def test_cli_alerts_scan_and_list(runner, client, clean_db, engine_kind):
    now = datetime.now(UTC).replace(microsecond=0)
    d = FleetData()
    d.map("cli-V", "cli-V-M", now - 10 * HOUR)
    charge(d, "cli-V", floor_hour(now) - 3 * HOUR, 120, 0.70)  # ends >= 1 h ago: silent as well
    d.meter("cli-M-quiet", now - 40 * MINUTE, 0.1)
    d.meter("cli-M-live", now - MINUTE, 0.1)
    post_new(client, d, 0)
    if is_community(engine_kind):
        refresh_like_policy(clean_db, floor_hour(now) - 2 * HOUR)
    env = cli_env(clean_db)

    result = runner.invoke(main, ["alerts", "scan", "--json"], env=env)
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    # The database's clock: the default 24 h window ends at the start of the current hour.
    scanned_at = datetime.fromisoformat(stats["now"])
    assert abs((scanned_at - now).total_seconds()) < 120
    assert datetime.fromisoformat(stats["window_end"]) == floor_hour(scanned_at.astimezone(UTC))
    assert datetime.fromisoformat(stats["window_start"]) == floor_hour(scanned_at.astimezone(UTC)) - 24 * HOUR
    assert stats["low_efficiency"] == {"opened": 1, "refreshed": 0, "resolved": 0}
    assert stats["silent_device"] == {"opened": 3, "refreshed": 0, "resolved": 0}  # cli-V, its meter, cli-M-quiet
    assert stats["correlation_lost"] == {"opened": 0, "refreshed": 0, "resolved": 0}  # nothing in the last hour

    human = runner.invoke(main, ["alerts", "scan", "--threshold", "0.5", "--silent-minutes", "600"], env=env)
    assert human.exit_code == 0, human.output
    assert "low_efficiency" in human.output and "silent_device" in human.output
    # At 50 % the 70 % vehicle is fine, and nothing was silent for 10 hours: everything resolved.
    listed = runner.invoke(main, ["alerts", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output) == {"total": 0, "alerts": []}

    runner.invoke(main, ["alerts", "scan"], env=env)  # the defaults again: all reopened
    listed = json.loads(runner.invoke(main, ["alerts", "list", "--json"], env=env).output)
    assert listed["total"] == 4
    assert {(a["kind"], a["device_id"]) for a in listed["alerts"]} == {
        ("low_efficiency", "cli-V"),
        ("silent_device", "cli-V"),
        ("silent_device", "cli-V-M"),
        ("silent_device", "cli-M-quiet"),
    }
    everything = json.loads(runner.invoke(main, ["alerts", "list", "--status", "all", "--json"], env=env).output)
    assert everything["total"] == 8
    resolved = runner.invoke(
        main, ["alerts", "list", "--status", "resolved", "--kind", "low_efficiency", "--json"], env=env
    )
    assert [a["device_id"] for a in json.loads(resolved.output)["alerts"]] == ["cli-V"]
    by_device = json.loads(
        runner.invoke(main, ["alerts", "list", "--device", "cli-V", "--status", "all", "--json"], env=env).output
    )
    assert (
        sorted(a["kind"] for a in by_device["alerts"]) == ["low_efficiency", "low_efficiency"] + ["silent_device"] * 2
    )
    table = runner.invoke(main, ["alerts", "list", "--kind", "low_efficiency"], env=env)
    assert table.exit_code == 0
    assert "cli-V" in table.output and "efficiency 70.0% < 85%" in table.output and "1-1 of 1" in table.output
    none = runner.invoke(main, ["alerts", "list", "--kind", "correlation_lost"], env=env)
    assert none.exit_code == 0 and "no open alerts" in none.output


@pytest.mark.parametrize(
    "args",
    [
        ["alerts", "list", "--status", "maybe"],
        ["alerts", "list", "--kind", "fire"],
        ["alerts", "scan", "--window-hours", "0"],
        ["alerts", "scan", "--threshold", "1.5"],
        ["alerts", "scan", "--silent-minutes", "-1"],
    ],
)
def test_cli_alerts_bad_usage_is_exit_2(runner, args):
    result = runner.invoke(main, args)
    assert result.exit_code == 2, result.output


def test_cli_alerts_unreachable_database_is_a_clear_error(runner):
    env = {"DATABASE_URL": "postgresql://x@127.0.0.1:1/db", "FLEET_DB_CONNECT_TIMEOUT": "2"}
    for args in (["alerts", "scan"], ["alerts", "list"]):
        result = runner.invoke(main, args, env=env)
        assert result.exit_code == 1
        assert f"cannot {args[1]} alerts: connection failed" in result.output
        assert "Traceback" not in result.output


def test_cli_alerts_bad_setting_names_the_variable(runner):
    result = runner.invoke(main, ["alerts", "scan"], env={"FLEET_ALERT_WINDOW_HOURS": "1000"})
    assert result.exit_code == 1
    assert "FLEET_ALERT_WINDOW_HOURS" in result.output


# --- GET /v1/alerts -----------------------------------------------------------------------------------------

BASE = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
#: (kind, device_type, device_id, opened_at, resolved_at)
KNOWN_ALERTS = [
    ("low_efficiency", "vehicle", "a-V1", BASE - 3 * HOUR, None),
    ("silent_device", "meter", "a-M1", BASE - 2 * HOUR, None),
    ("silent_device", "vehicle", "a-V1", BASE - 5 * HOUR, BASE - 4 * HOUR),
    ("correlation_lost", "vehicle", "a-V2", BASE - HOUR, None),
    ("low_efficiency", "vehicle", "a-V1", BASE - 9 * HOUR, BASE - 8 * HOUR),
]


@pytest.fixture
def known_alerts(clean_db) -> dict[tuple[str, str, datetime], int]:
    """The KNOWN_ALERTS rows, stored as a scan would have; (kind, device_id, opened_at) -> id."""
    ids = {}
    with clean_db.begin() as conn:
        for kind, device_type, device_id, opened_at, resolved_at in KNOWN_ALERTS:
            ids[(kind, device_id, opened_at)] = conn.execute(
                sa.insert(alerts_table)
                .values(
                    kind=kind,
                    device_type=device_type,
                    device_id=device_id,
                    opened_at=opened_at,
                    last_seen_at=resolved_at or BASE,
                    resolved_at=resolved_at,
                    details={"note": f"{kind} of {device_id}"},
                )
                .returning(alerts_table.c.id)
            ).scalar_one()
    return ids


def expected_listing(*, status: str = "open", kind: str | None = None, device_id: str | None = None) -> list[tuple]:
    rows = [
        a
        for a in KNOWN_ALERTS
        if (status == "all" or (a[4] is None) == (status == "open"))
        and kind in (None, a[0])
        and device_id in (None, a[2])
    ]
    return [(a[0], a[2], a[3]) for a in sorted(rows, key=lambda a: a[3], reverse=True)]


@pytest.fixture
def reader(make_client):
    return make_client("read")


def listed(resp) -> list[tuple]:
    assert resp.status_code == 200, resp.get_json()
    return [(a["kind"], a["deviceId"], datetime.fromisoformat(a["openedAt"])) for a in resp.get_json()]


@pytest.mark.parametrize(
    ("query", "filters"),
    [
        ("", {}),
        ("?status=open", {"status": "open"}),
        ("?status=resolved", {"status": "resolved"}),
        ("?status=all", {"status": "all"}),
        ("?status=all&kind=silent_device", {"status": "all", "kind": "silent_device"}),
        ("?kind=low_efficiency", {"kind": "low_efficiency"}),
        ("?status=all&deviceId=a-V1", {"status": "all", "device_id": "a-V1"}),
        ("?deviceId=nobody", {"device_id": "nobody"}),
    ],
)
def test_api_alerts_filters(reader, known_alerts, query, filters):
    resp = reader.get(f"/v1/alerts{query}")
    assert listed(resp) == expected_listing(**filters)
    assert json.loads(resp.headers["X-Pagination"])["total"] == len(expected_listing(**filters))


def test_api_alerts_camel_case_fields(reader, known_alerts):
    resp = reader.get("/v1/alerts?status=resolved&kind=silent_device")
    (alert,) = resp.get_json()
    assert alert == {
        "id": known_alerts[("silent_device", "a-V1", BASE - 5 * HOUR)],
        "kind": "silent_device",
        "deviceType": "vehicle",
        "deviceId": "a-V1",
        "openedAt": (BASE - 5 * HOUR).isoformat(),
        "lastSeenAt": (BASE - 4 * HOUR).isoformat(),
        "resolvedAt": (BASE - 4 * HOUR).isoformat(),
        "details": {"note": "silent_device of a-V1"},
    }
    assert reader.get("/v1/alerts").get_json()[0]["resolvedAt"] is None


def test_api_alerts_paging(reader, known_alerts):
    everything = expected_listing(status="all")
    page1 = reader.get("/v1/alerts?status=all&page_size=2")
    page3 = reader.get("/v1/alerts?status=all&page_size=2&page=3")
    assert listed(page1) == everything[:2]
    assert listed(page3) == everything[4:]
    pagination = json.loads(page3.headers["X-Pagination"])
    assert (pagination["total"], pagination["total_pages"], pagination["page"]) == (5, 3, 3)
    assert listed(reader.get("/v1/alerts?status=all&page_size=2&page=9")) == []


@pytest.mark.parametrize(
    "query", ["status=maybe", "kind=fire", "deviceId=" + "x" * 65, "deviceId=a%20b", "page_size=0", "page_size=1001"]
)
def test_api_alerts_bad_query_is_422(reader, query):
    resp = reader.get(f"/v1/alerts?{query}")
    assert resp.status_code == 422, resp.get_json()
    assert resp.mimetype == "application/problem+json"


def test_api_alerts_need_a_read_key(make_app, clean_db):
    app = make_app(role=None)
    assert app.test_client().get("/v1/alerts").status_code == 401
    with_api_key(app, clean_db, "device")
    assert app.test_client().get("/v1/alerts").status_code == 403
    with_api_key(app, clean_db, "read")
    assert app.test_client().get("/v1/alerts").status_code == 200
