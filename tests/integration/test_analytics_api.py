"""Analytics through the HTTP API on both engines: the 24 h vehicle performance report and the fleet view.

Every expected number is computed here, in plain Python, from the readings and mappings the test itself
posted through the API (`FleetData` keeps them): never from the platform's SQL. On the embedded (Community)
engine the continuous aggregates are refreshed the way the policy would (up to a point in the window), so
both the materialised hours and the real-time hours are exercised; the native (Apache) engine reads the
hypertables.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import is_community
from tests.support.api import build_client, with_api_key
from tests.support.fleet import (
    HOUR,
    FleetData,
    api_time,
    assert_report_matches,
    floor_hour,
    iso,
    post_all,
    post_mappings,
    refresh_like_policy,
)

#: Admin may ingest, map and read.
APP = {"role": "admin", "FLEET_RATE_LIMIT": "off"}
pytestmark = pytest.mark.app(**APP)

NOW = datetime.now(UTC).replace(microsecond=0)
#: The latest UTC midnight at least 3 h ago: windows around it end before now.
MIDNIGHT = (NOW - timedelta(hours=3)).replace(hour=0, minute=0, second=0)


# --- the main scenario: 28 hours over two midnights, three chunks ------------------------------------------

WINDOW_START = MIDNIGHT - timedelta(days=1) - 2 * HOUR
WINDOW_END = MIDNIGHT + 2 * HOUR
REMAP_AT = MIDNIGHT + timedelta(minutes=30)  # mid-hour: the AC of hour MIDNIGHT is still MA's
GAP_HOUR = WINDOW_START + 10 * HOUR  # nobody reports
VEHICLE_ONLY_HOUR = WINDOW_START + 12 * HOUR  # the meter is down for this hour, the vehicle is not
VEHICLE_CLOCK_AHEAD = timedelta(seconds=7)


def scenario(prefix: str, seed: int = 3) -> FleetData:
    """Vehicle {p}V on meter {p}MA, re-mapped mid-window to {p}MB, which misses every other minute; the
    vehicle's clock runs 7 s ahead of its meters'; partial first and last hours; a silent hour; an hour with
    only the vehicle; readings exactly on both window boundaries and one second before the start."""
    rng = random.Random(seed)
    d = FleetData()
    v, ma, mb = f"{prefix}V", f"{prefix}MA", f"{prefix}MB"
    d.map(v, ma, WINDOW_START - timedelta(hours=5))
    d.map(v, mb, REMAP_AT)
    t = WINDOW_START - HOUR
    while t < WINDOW_END + HOUR:
        hour = floor_hour(t)
        if hour != GAP_HOUR:
            if hour != VEHICLE_ONLY_HOUR:
                d.meter(ma, t, round(rng.uniform(0.10, 0.19), 4))  # MA keeps reporting after the re-map
            if t >= MIDNIGHT and (t - MIDNIGHT).total_seconds() % 120 == 0:
                d.meter(mb, t, round(rng.uniform(0.12, 0.18), 4))
            if WINDOW_START + timedelta(minutes=20) <= t < MIDNIGHT + HOUR + timedelta(minutes=35):
                d.vehicle(v, t + VEHICLE_CLOCK_AHEAD, round(rng.uniform(0.09, 0.16), 4), round(rng.uniform(18, 35), 1))
        t += timedelta(minutes=1)
    # On the boundaries: start is inside the window, end and one second before start are outside.
    d.vehicle(v, WINDOW_START, 0.0123, 40.5)
    d.vehicle(v, WINDOW_START - timedelta(seconds=1), 0.5, 44.0)
    d.vehicle(v, WINDOW_END, 0.4321, 12.0)
    d.meter(mb, WINDOW_END, 0.77)
    return d


@pytest.fixture
def loaded(client, clean_db, engine_kind) -> Iterator[FleetData]:
    data = scenario("s-")
    post_mappings(client, data)
    items = list(data.posted)
    # Retries: the first 500 items again. Late readings: hour 5's readings are posted last, out of order.
    late_hour = WINDOW_START + 5 * HOUR
    is_late = [floor_hour(datetime.fromisoformat(i["payload"]["timestamp"])) == late_hour for i in items]
    hour5 = [i for i, late in zip(items, is_late, strict=True) if late]
    rest = [i for i, late in zip(items, is_late, strict=True) if not late]
    post_all(client, data, rest)
    post_all(client, data, rest[:500])
    post_all(client, data, hour5)
    if is_community(engine_kind):
        refresh_like_policy(clean_db, MIDNIGHT)  # materialised up to midnight, the rest real-time
    yield data


def test_performance_matches_independent_sums_over_two_midnights(client, loaded):
    resp = client.get(f"/v1/analytics/performance/s-V?startDate={iso(WINDOW_START)}&endDate={iso(WINDOW_END)}")
    assert resp.status_code == 200, resp.get_json()
    report = resp.get_json()
    expected = loaded.expected_performance("s-V", WINDOW_START, WINDOW_END)
    assert_report_matches(report, expected, "s-V", WINDOW_START, WINDOW_END)

    hours = {h["hour"]: h for h in report["hourlyBreakdown"]}
    assert len(hours) == 28
    # The silent hour is null on both sides, the meter-down hour has DC and no AC: gaps are never zeros.
    assert (hours[api_time(GAP_HOUR)]["acConsumed"], hours[api_time(GAP_HOUR)]["dcDelivered"]) == (None, None)
    assert hours[api_time(VEHICLE_ONLY_HOUR)]["acConsumed"] is None
    assert hours[api_time(VEHICLE_ONLY_HOUR)]["dcDelivered"] is not None
    # The re-map: hour MIDNIGHT still MA's (mapped at the hour's start), the next one MB's, with half the readings.
    assert hours[api_time(MIDNIGHT)]["meterId"] == "s-MA"
    assert hours[api_time(MIDNIGHT + HOUR)]["meterId"] == "s-MB"
    assert hours[api_time(MIDNIGHT + HOUR)]["meterReadings"] == 30
    # The 7 s clock offset changes nothing in the sums and shows in the correlation instead.
    assert report["correlation"]["typicalClockOffsetSeconds"] == pytest.approx(7.0)
    assert report["correlation"]["matchRate"] < 0.01


def test_performance_duplicates_are_counted_once(client, loaded):
    # The fixture posted 500 items twice: the platform stored them once and the sums say so.
    first_hour = WINDOW_START + HOUR
    resp = client.get(f"/v1/analytics/performance/s-V?startDate={iso(first_hour)}&endDate={iso(first_hour + HOUR)}")
    hour = resp.get_json()["hourlyBreakdown"][0]
    assert (hour["meterReadings"], hour["vehicleReadings"]) == (60, 60)


def test_performance_partial_window_and_boundaries(client, loaded):
    # A window whose start and end are not on the hour is widened to whole hours.
    start, end = WINDOW_START + timedelta(minutes=10), WINDOW_START + 2 * HOUR + timedelta(seconds=1)
    resp = client.get(f"/v1/analytics/performance/s-V?startDate={iso(start)}&endDate={iso(end)}")
    report = resp.get_json()
    assert report["period"] == {"start": WINDOW_START.isoformat(), "end": (WINDOW_START + 3 * HOUR).isoformat()}
    expected = loaded.expected_performance("s-V", WINDOW_START, WINDOW_START + 3 * HOUR)
    assert_report_matches(report, expected, "s-V", WINDOW_START, WINDOW_START + 3 * HOUR)
    # The reading exactly at the start is in (its 40.5 °C is the window's maximum); the one a second before is not.
    assert report["batteryMetrics"]["maxTemperature"] == 40.5
    assert report["hourlyBreakdown"][0]["vehicleReadings"] == 1 + 40  # the boundary reading + minutes 20..59


def test_performance_window_spanning_the_current_hour(client, clean_db, engine_kind):
    d = FleetData()
    now = datetime.now(UTC).replace(microsecond=0)
    if now.minute == 59 and now.second >= 50:  # the API must see the same current hour as this test
        time.sleep(11)
        now = datetime.now(UTC).replace(microsecond=0)
    current = floor_hour(now)
    d.map("c-V", "c-M", current - 3 * HOUR)
    t = current - HOUR
    while t <= now:  # the previous hour and the current one up to now (at least the reading on the hour)
        d.meter("c-M", t, 0.15)
        d.vehicle("c-V", t, 0.135, 25.0)
        t += timedelta(seconds=30)
    post_mappings(client, d)
    post_all(client, d)
    if is_community(engine_kind):
        refresh_like_policy(clean_db, current)  # the current hour is not materialised: real-time only
    resp = client.get("/v1/analytics/performance/c-V")  # default: the 24 hours up to the end of this hour
    assert resp.status_code == 200
    report = resp.get_json()
    start, end = current - timedelta(hours=23), current + HOUR
    assert_report_matches(report, d.expected_performance("c-V", start, end), "c-V", start, end)
    assert report["hourlyBreakdown"][-1]["dcDelivered"] is not None


def test_performance_unknown_vehicle_is_404(client):
    for vehicle_id in ("nobody", "x" * 65):
        resp = client.get(f"/v1/analytics/performance/{vehicle_id}")
        assert resp.status_code == 404
        assert resp.mimetype == "application/problem+json"


def test_performance_mapped_vehicle_without_readings_has_null_hours(client):
    d = FleetData()
    d.map("quiet-V", "quiet-M", WINDOW_START)
    post_mappings(client, d)
    resp = client.get(f"/v1/analytics/performance/quiet-V?startDate={iso(WINDOW_START)}")
    report = resp.get_json()
    assert resp.status_code == 200
    assert len(report["hourlyBreakdown"]) == 24
    assert {h["acConsumed"] for h in report["hourlyBreakdown"]} == {None}
    assert report["energyMetrics"] == {
        "totalAcConsumed": 0.0,
        "totalDcDelivered": 0.0,
        "efficiencyRatio": None,
        "powerLoss": 0.0,
    }
    assert report["correlation"]["matchRate"] is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("startDate=yesterday", "startDate"),
        ("startDate=2026-11-20T10:00:00", "startDate"),  # no time zone
        ("endDate=2026-13-01T00:00:00Z", "endDate"),
        ("startDate=0001-01-01T00:00:00Z", "startDate"),  # outside the supported range
        ("startDate=2026-11-20T10:00:00Z&endDate=2026-11-20T10:00:00Z", "startDate"),  # start = end
        ("startDate=2026-11-21T10:00:00Z&endDate=2026-11-20T10:00:00Z", "startDate"),  # start > end
        ("startDate=2026-10-01T00:00:00Z&endDate=2026-11-02T00:00:00Z", "endDate"),  # 32 days > 31
    ],
)
def test_performance_bad_dates_are_422_naming_the_parameter(client, query, field):
    resp = client.get(f"/v1/analytics/performance/s-V?{query}")
    assert resp.status_code == 422, resp.get_json()
    body = resp.get_json()
    assert resp.mimetype == "application/problem+json"
    assert field in body["errors"]["query"], body


def test_performance_max_window_is_configurable(make_client):
    client = make_client(FLEET_ANALYTICS_MAX_WINDOW_DAYS="2")
    d = FleetData()
    d.map("w-V", "w-M", WINDOW_START)
    post_mappings(client, d)
    ok = f"/v1/analytics/performance/w-V?startDate={iso(WINDOW_START)}&endDate={iso(WINDOW_START + timedelta(days=2))}"
    assert client.get(ok).status_code == 200
    too_long = ok.replace(iso(WINDOW_START + timedelta(days=2)), iso(WINDOW_START + timedelta(days=2, hours=1)))
    assert client.get(too_long).status_code == 422


def test_performance_needs_a_read_key(make_app, clean_db):
    app = make_app(role=None)
    assert app.test_client().get("/v1/analytics/performance/v").status_code == 401
    with_api_key(app, clean_db, "device")
    assert app.test_client().get("/v1/analytics/performance/v").status_code == 403
    with_api_key(app, clean_db, "read")
    assert app.test_client().get("/v1/analytics/performance/v").status_code == 404


# --- fleet view ---------------------------------------------------------------------------------------------

FLEET_START = MIDNIGHT - 6 * HOUR
FLEET_END = MIDNIGHT - 2 * HOUR


def fleet_scenario() -> FleetData:
    """f-A at 92 %, f-B at 80 % (below 85 %), f-C at 88 % re-mapped from f-MC to f-MC2 mid-window, f-D reports
    but was never mapped (no AC), f-E is mapped to a reporting meter but silent (no DC), f-F reported only
    outside the window (not listed)."""
    rng = random.Random(5)
    d = FleetData()
    for v, m in (("f-A", "f-MA"), ("f-B", "f-MB"), ("f-C", "f-MC"), ("f-E", "f-ME"), ("f-F", "f-MF")):
        d.map(v, m, FLEET_START - 2 * HOUR)
    d.map("f-C", "f-MC2", FLEET_START + 2 * HOUR)
    t = FLEET_START - HOUR
    while t < FLEET_END + HOUR:
        inside = FLEET_START <= t < FLEET_END
        # f-C's two meters see the same load, so its efficiency stays 88 % across the re-map.
        for v, meters, eff in (("f-A", ("f-MA",), 0.92), ("f-B", ("f-MB",), 0.80), ("f-C", ("f-MC", "f-MC2"), 0.88)):
            ac = round(rng.uniform(0.1, 0.2), 4)
            for m in meters:
                d.meter(m, t, ac)
            d.vehicle(v, t, round(ac * eff, 4), 25.0)
        d.vehicle("f-D", t, 0.1, 25.0)
        d.meter("f-ME", t, 0.05)
        if not inside:
            d.meter("f-MF", t, 0.1)
            d.vehicle("f-F", t, 0.09, 25.0)
        t += timedelta(minutes=2)
    return d


@pytest.fixture
def fleet_loaded(client, clean_db, engine_kind) -> FleetData:
    data = fleet_scenario()
    post_mappings(client, data)
    post_all(client, data)
    if is_community(engine_kind):
        refresh_like_policy(clean_db, FLEET_START + 2 * HOUR)
    return data


def _fleet(client, query: str = "") -> tuple[list[dict], dict]:
    resp = client.get(f"/v1/analytics/fleet?startDate={iso(FLEET_START)}&endDate={iso(FLEET_END)}{query}")
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json(), json.loads(resp.headers["X-Pagination"])


def test_fleet_totals_match_independent_sums(client, fleet_loaded):
    rows, pagination = _fleet(client)
    expected = fleet_loaded.expected_fleet(FLEET_START, FLEET_END)
    assert [r["vehicleId"] for r in rows] == sorted(expected)  # f-F reported only outside the window
    assert pagination["total"] == len(expected) == 5
    for row in rows:
        exp = expected[row["vehicleId"]]
        for key, value in (("totalAcConsumed", exp["ac"]), ("totalDcDelivered", exp["dc"])):
            assert row[key] == (None if value is None else pytest.approx(value, abs=1e-6)), row
        eff = exp["dc"] / exp["ac"] if exp["ac"] and exp["dc"] is not None else None
        assert row["efficiencyRatio"] == (None if eff is None else pytest.approx(eff, abs=1e-6)), row
        assert row["belowThreshold"] == (None if eff is None else eff < 0.85), row
        assert (row["meterReadings"], row["vehicleReadings"]) == (exp["meter_readings"], exp["vehicle_readings"])


def test_fleet_sorting_filtering_and_paging(client, fleet_loaded):
    by_eff, _ = _fleet(client, "&sort=efficiency")
    assert [r["vehicleId"] for r in by_eff] == ["f-B", "f-C", "f-A", "f-D", "f-E"]  # unknown efficiency last
    by_eff_desc, _ = _fleet(client, "&sort=-efficiency")
    assert [r["vehicleId"] for r in by_eff_desc] == ["f-A", "f-C", "f-B", "f-D", "f-E"]
    below, pagination = _fleet(client, "&belowThreshold=true")
    assert [r["vehicleId"] for r in below] == ["f-B"] and pagination["total"] == 1
    page2, pagination = _fleet(client, "&page=2&page_size=2")
    assert [r["vehicleId"] for r in page2] == ["f-C", "f-D"]
    assert pagination["total"] == 5
    past_end, pagination = _fleet(client, "&page=9&page_size=2")
    assert past_end == []
    assert pagination["total"] == 5


def test_fleet_threshold_is_configurable(make_client, fleet_loaded):
    client = make_client(FLEET_EFFICIENCY_ALERT_THRESHOLD="0.9")
    below, _ = _fleet(client, "&belowThreshold=true")
    assert [r["vehicleId"] for r in below] == ["f-B", "f-C"]


@pytest.mark.parametrize("query", ["sort=speed", "belowThreshold=maybe", "startDate=nope", "page_size=0"])
def test_fleet_bad_query_is_422(client, query):
    resp = client.get(f"/v1/analytics/fleet?{query}")
    assert resp.status_code == 422, resp.get_json()


# --- the same dataset on both editions ----------------------------------------------------------------------


def test_analytics_identical_on_both_editions(both_editions):
    data = scenario("eq-", seed=17)
    fleet = fleet_scenario()
    responses = {}
    for kind, eng in both_editions.items():
        client = build_client(eng, **APP)
        post_mappings(client, data)
        post_all(client, data)
        post_mappings(client, fleet)
        post_all(client, fleet)
        if is_community(kind):
            refresh_like_policy(eng, MIDNIGHT - 3 * HOUR)  # part materialised, part real-time
        perf = client.get(f"/v1/analytics/performance/eq-V?startDate={iso(WINDOW_START)}&endDate={iso(WINDOW_END)}")
        fleet_view = client.get(f"/v1/analytics/fleet?startDate={iso(WINDOW_START)}&endDate={iso(WINDOW_END)}")
        responses[kind] = (perf.status_code, perf.get_json(), fleet_view.get_json())
    reference = responses.pop("native-apache")
    assert reference[0] == 200
    assert responses and all(response == reference for response in responses.values())
    assert_report_matches(
        reference[1],
        data.expected_performance("eq-V", WINDOW_START, WINDOW_END),
        "eq-V",
        WINDOW_START,
        WINDOW_END,
    )
