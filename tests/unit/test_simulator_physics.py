"""The simulator's device fleet without network: physics, the API's bounds, pacing, re-sends and late readings.

A fake clock drives `DemoFleet.due`, so a simulated day takes well under a second.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import marshmallow as ma
import pytest

from api.ingest.schemas import ReadingBounds, load_reading
from db import demo
from jobs import simulator
from jobs.simulator import ChargerPair, DemoFleet, FleetConfig, Outgoing, build_fleet

WALL0 = datetime(2025, 3, 1, tzinfo=UTC).timestamp()
DAY = 86_400.0


def run(fleet: DemoFleet, seconds: float, start: float = 0.0) -> list[tuple[float, Outgoing]]:
    """Every reading the fleet sends over `seconds`, with the (fake) time it was sent."""
    sent: list[tuple[float, Outgoing]] = []
    while (t := fleet.next_due()) <= start + seconds:
        sent += [(t, o) for o in fleet.due(t, WALL0 + t)]
    return sent


@pytest.fixture(scope="module")
def day() -> tuple[DemoFleet, list[tuple[float, Outgoing]]]:
    """A day of a 20 + 20 fleet reporting every minute."""
    fleet = build_fleet(FleetConfig(meters=20, vehicles=20, interval=60.0), seed=42, start=0.0)
    sent = run(fleet, DAY)
    return fleet, sent + [(DAY, o) for o in fleet.flush()]


def payloads(sent: list[tuple[float, Outgoing]], kind: str) -> dict[str, list[dict]]:
    """New and late readings (no re-sends) per device, in timestamp order."""
    by_device: dict[str, list[dict]] = defaultdict(list)
    for _, o in sent:
        if o.kind != "resend" and o.item["type"] == kind:
            p = o.item["payload"]
            by_device[p["meterId" if kind == "METER" else "vehicleId"]].append(p)
    for readings in by_device.values():
        readings.sort(key=lambda p: p["timestamp"])
    return by_device


def test_every_reading_passes_the_api_validation(day):
    _, sent = day
    window = ReadingBounds(max_future=timedelta(seconds=300), max_age=timedelta(days=30))
    for t, o in sent[::5]:  # a sample: marshmallow takes ~0.1 ms a reading
        try:
            load_reading(o.item, window, datetime.fromtimestamp(WALL0 + t, UTC))
        except ma.ValidationError as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"{o.item} refused: {exc.messages}")


def test_values_within_the_api_bounds_and_plausible(day):
    _, sent = day
    for _, o in sent:
        p = o.item["payload"]
        if o.item["type"] == "METER":
            assert 0 <= p["kwhConsumedAc"] <= simulator.CHARGER_KW[1] * 1.05 * 2 * 60 / 3600
            assert 220 <= p["voltage"] <= 245
        else:
            assert 0 <= p["soc"] <= 100
            assert 0 <= p["kwhDeliveredDc"] <= simulator.CHARGER_KW[1] * 2 * 60 / 3600
            assert -10 < p["batteryTemp"] < 60
            assert isinstance(p["isCharging"], bool)


def test_charger_efficiency_per_vehicle(day):
    """DC / AC over the day: 0.88-0.95 for healthy chargers, below 0.85 for the inefficient ones."""
    fleet, sent = day
    meters, vehicles = payloads(sent, "METER"), payloads(sent, "VEHICLE")
    low = set(fleet.low_efficiency())
    assert len(low) == 2  # 10 % of 20
    for number in range(1, 21):
        vehicle = demo.vehicle_id("demo-", number)
        ac = sum(p["kwhConsumedAc"] for p in meters[demo.meter_id("demo-", number)])
        dc = sum(p["kwhDeliveredDc"] for p in vehicles[vehicle])
        assert ac > 5, vehicle  # it charged during the day
        # The last reports of the meter and the vehicle are up to an interval apart: allow a little slack.
        lo, hi = simulator.LOW_EFFICIENCY if vehicle in low else simulator.EFFICIENCY
        assert lo - 0.01 <= dc / ac <= hi + 0.01, (vehicle, dc / ac)
        if vehicle in low:
            assert dc / ac < 0.85


def test_energy_is_conserved_between_pair_and_reports(day):
    """What a meter and its vehicle reported adds up to what the charger drew and delivered (to rounding)."""
    fleet, sent = day
    meters, vehicles = payloads(sent, "METER"), payloads(sent, "VEHICLE")
    for pair in fleet.pairs:
        assert pair.meter_id is not None
        assert sum(p["kwhConsumedAc"] for p in meters[pair.meter_id]) <= pair.cum_ac + 1e-6
        assert sum(p["kwhDeliveredDc"] for p in vehicles[pair.vehicle_id]) <= pair.cum_dc + 1e-6
        # Nothing is lost: the meter reported all but what the charger drew after its last report (the pair's
        # clock is its vehicle's last report, less than an interval after its meter's).
        unreported = pair.cum_ac - sum(p["kwhConsumedAc"] for p in meters[pair.meter_id])
        assert unreported <= simulator.CHARGER_KW[1] * 1.05 * 60 / 3600 + 1e-5


def test_soc_rises_while_charging_and_sessions_come_and_go(day):
    _, sent = day
    sessions = 0
    for readings in payloads(sent, "VEHICLE").values():
        for before, after in itertools.pairwise(readings):
            if before["isCharging"] and after["isCharging"]:
                assert after["soc"] >= before["soc"]
                assert after["kwhDeliveredDc"] > 0
            if not before["isCharging"] and after["isCharging"]:
                sessions += 1
            if not before["isCharging"] and not after["isCharging"]:
                assert after["soc"] <= before["soc"]  # driving
                assert after["kwhDeliveredDc"] == 0
    assert sessions >= 20  # vehicles plug in again after driving


def test_battery_temperature_varies_and_follows_charging(day):
    _, sent = day
    for vehicle, readings in payloads(sent, "VEHICLE").items():
        temps = [p["batteryTemp"] for p in readings]
        assert max(temps) - min(temps) > 1.0, vehicle


def test_meter_kwh_matches_a_7_to_11_kw_charger(day):
    """A charging pair's meter draws 7-11 kW (less when tapering above 80 % SoC): kWh per minute."""
    fleet, sent = day
    full_power = 0
    meters = payloads(sent, "METER")
    for pair in fleet.pairs:
        for p in meters[pair.meter_id][1:]:
            kw = p["kwhConsumedAc"] * 60  # kWh in a minute -> kW
            assert kw <= simulator.CHARGER_KW[1] * 1.05
            full_power += kw >= simulator.CHARGER_KW[0] * 0.95
    assert full_power > 1000


def test_meter_without_vehicle_measures_a_household_load():
    fleet = build_fleet(FleetConfig(meters=3, vehicles=1, interval=60.0), seed=1, start=0.0)
    readings = payloads(run(fleet, 3600), "METER")
    for number in (2, 3):
        kwh = [p["kwhConsumedAc"] for p in readings[demo.meter_id("demo-", number)][1:]]
        assert all(0.1 / 60 * 0.99 <= k <= 5.0 / 60 * 1.01 for k in kwh)


def test_vehicle_without_meter_still_reports():
    fleet = build_fleet(FleetConfig(meters=0, vehicles=2, interval=60.0), seed=1, start=0.0)
    assert len(payloads(run(fleet, 600), "VEHICLE")) == 2


def test_each_device_keeps_its_own_pace_and_phase():
    interval = 10.0
    fleet = build_fleet(
        FleetConfig(meters=10, vehicles=10, interval=interval, retry_rate=0, late_rate=0, skewed_share=0),
        seed=3,
        start=0.0,
    )
    sent = run(fleet, 100.0)
    times: dict[str, list[float]] = defaultdict(list)
    for t, o in sent:
        p = o.item["payload"]
        times[p.get("meterId") or p["vehicleId"]].append(t)
    assert len(times) == 20
    for ts in times.values():
        assert all(b - a == pytest.approx(interval) for a, b in itertools.pairwise(ts))
    phases = sorted(ts[0] for ts in times.values())
    assert len({round(p, 3) for p in phases}) == 20  # not all at once
    assert phases[-1] - phases[0] > interval / 2  # spread over the interval
    # A vehicle and its meter report within a couple of seconds of each other.
    for number in range(1, 11):
        gap = abs(times[demo.vehicle_id("demo-", number)][0] - times[demo.meter_id("demo-", number)][0])
        assert min(gap, interval - gap) <= 2.0


def test_resends_repeat_a_sent_reading_and_late_ones_arrive_out_of_order():
    fleet = build_fleet(FleetConfig(meters=5, vehicles=5, interval=1.0, retry_rate=0.2, late_rate=0.2), 9, 0.0)
    sent = run(fleet, 120.0)
    sent += [(121.0, o) for o in fleet.flush()]
    seen: dict[str, str] = {}  # device -> newest timestamp sent so far
    items = []
    resends = late_out_of_order = 0
    for _, o in sent:
        p = o.item["payload"]
        device = p.get("meterId") or p["vehicleId"]
        if o.kind == "resend":
            assert o.item in items  # the same reading again, byte for byte
            resends += 1
        elif o.kind == "late":
            late_out_of_order += p["timestamp"] < seen.get(device, "")
        items.append(o.item)
        seen[device] = max(seen.get(device, ""), p["timestamp"])
    assert resends > 50 and late_out_of_order > 50
    new = [o for _, o in sent if o.kind != "resend"]
    assert len(new) == fleet.generated  # every generated reading is sent once (late ones included)
    keys = {(o.item["type"], o.item["payload"]["timestamp"], str(o.item["payload"])) for o in new}
    assert len(keys) == len(new)


def test_count_limit_generates_exactly_that_many():
    fleet = build_fleet(FleetConfig(meters=4, vehicles=4, interval=1.0), seed=5, start=0.0)
    made = 0
    while fleet.generated < 17:
        t = fleet.next_due()
        fleet.due(t, WALL0 + t, limit=17 - fleet.generated)
        made += 1
    assert fleet.generated == 17


def test_skewed_clocks_and_the_showcase_vehicle():
    fleet = build_fleet(FleetConfig(meters=20, vehicles=20, interval=60.0, skewed_share=0.1), seed=7, start=0.0)
    skewed = fleet.skewed()
    assert len(skewed) == 4
    assert all(simulator.SKEW_SECONDS[0] <= abs(s) <= simulator.SKEW_SECONDS[1] for s in skewed.values())
    showcase = fleet.pairs[0]
    assert showcase.vehicle_id == demo.vehicle_id("demo-", 1) and showcase.meter_id == demo.meter_id("demo-", 1)
    assert showcase.charging and showcase.vehicle_id not in skewed and showcase.meter_id not in skewed
    assert showcase.vehicle_id not in fleet.low_efficiency()
    sent = run(fleet, 600.0)
    for t, o in sent:
        if o.kind != "new":
            continue  # held back: sent after it was taken
        p = o.item["payload"]
        offset = datetime.fromisoformat(p["timestamp"]).timestamp() - (WALL0 + t)
        assert offset == pytest.approx(skewed.get(p.get("meterId") or p["vehicleId"], 0.0), abs=0.002)


def test_same_seed_same_fleet():
    def sample(seed: int) -> list[dict]:
        fleet = build_fleet(FleetConfig(meters=3, vehicles=3, interval=5.0), seed=seed, start=0.0)
        return [o.item for _, o in run(fleet, 60.0)]

    assert sample(11) == sample(11)
    assert sample(11) != sample(12)


def test_a_full_battery_stops_charging_and_soc_stays_in_range():
    pair = ChargerPair(
        vehicle_id="v",
        meter_id="m",
        capacity_kwh=50.0,
        charger_kw=11.0,
        efficiency=0.9,
        efficiency_range=simulator.EFFICIENCY,
        soc=97.0,
        target_soc=100.0,
        charging=True,
        ambient_c=20.0,
        battery_temp=20.0,
        drive_pct_per_hour=10.0,
        idle_until=0.0,
        t=0.0,
    )
    rng = random.Random(0)
    for t in range(60, 3 * 86_400, 60):
        pair.advance(float(t), rng)
        assert 0.0 <= pair.soc <= 100.0
        assert pair.cum_dc <= pair.cum_ac * simulator.EFFICIENCY[1] + 1e-9
    assert pair.cum_dc >= pair.cum_ac * simulator.EFFICIENCY[0] - 1e-9


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="interval"):
        DemoFleet(FleetConfig(interval=0.5), random.Random(), 0.0)
    with pytest.raises(ValueError, match="at least one"):
        DemoFleet(FleetConfig(meters=0, vehicles=0), random.Random(), 0.0)
    with pytest.raises(ValueError, match="prefix"):
        DemoFleet(FleetConfig(prefix="has space"), random.Random(), 0.0)


def test_a_stalled_scheduler_skips_reports_and_never_repeats_a_timestamp():
    fleet = build_fleet(FleetConfig(meters=3, vehicles=3, interval=1.0, retry_rate=0, late_rate=0), 2, 0.0)
    sent = run(fleet, 5.0)
    # Stalled for 10.4 s: each device reports once (the missed reports are skipped), then keeps its pace.
    sent += [(15.4, o) for o in fleet.due(15.4, WALL0 + 15.4)]
    assert fleet.next_due() >= 15.4 + 0.5
    sent += run(fleet, 3.0, start=15.4)
    stamps: dict[str, list[str]] = defaultdict(list)
    for _, o in sent:
        p = o.item["payload"]
        stamps[p.get("meterId") or p["vehicleId"]].append(p["timestamp"])
    for device, ts in stamps.items():
        assert ts == sorted(set(ts)), device


def test_timestamps_stay_unique_when_the_wall_clock_steps_back():
    fleet = build_fleet(FleetConfig(meters=1, vehicles=0, interval=1.0, retry_rate=0, late_rate=0), 2, 0.0)
    t1 = fleet.next_due()
    [first] = fleet.due(t1, WALL0)
    t2 = fleet.next_due()
    [second] = fleet.due(t2, WALL0 - 60.0)  # NTP stepped the clock back
    assert second.item["payload"]["timestamp"] > first.item["payload"]["timestamp"]


def test_retry_waits_honour_retry_after_with_jitter_and_a_cap():
    rng = random.Random(3)
    told = [simulator.retry_wait(1, 5.0, rng) for _ in range(200)]
    assert all(5.0 <= w < 7.5 for w in told)  # never earlier than told, at most half as long again
    assert max(told) - min(told) > 1.0  # spread: senders told the same value do not come back together
    assert simulator.retry_wait(1, 6000.0, rng) == simulator.RETRY_WAIT_CAP_S
    untold = [simulator.retry_wait(3, None, rng) for _ in range(200)]
    assert all(0.0 <= w <= 2.0 for w in untold) and max(untold) > 1.5  # full jitter of 0.5 x 2^2
    assert all(simulator.retry_wait(20, None, rng) <= simulator.RETRY_WAIT_CAP_S for _ in range(50))
