"""The hourly correlation rollup and late data on the Community engines (native Community and embedded).

- closed hours are read from the rollups only: with raw history gone, a materialised window answers the same;
- a late vehicle or meter reading, and a re-map from a past instant, invalidate the hours they change, and the
  next refresh makes the rollup agree with raw readings (the Apache path, run on the same database) and with the
  expected figures computed here from what was posted;
- a reading older than the compression horizon is stored once into a compressed chunk, leaves current state
  alone, and shows in the rollups and analytics after the next refresh.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from db import analytics
from tests.support.builders import vehicle_reading
from tests.support.fleet import (
    HOUR,
    FleetData,
    assert_report_matches,
    floor_hour,
    iso,
    post_all,
    post_mappings,
    refresh_like_policy,
)

#: Admin may ingest, map and read.
pytestmark = [pytest.mark.community, pytest.mark.app(role="admin", FLEET_RATE_LIMIT="off")]

NOW = datetime.now(UTC).replace(microsecond=0)
#: Two days ago at 00:00: a window of closed hours, all older than the ingest's invalidation margin.
DAY = (NOW - timedelta(days=2)).replace(hour=0, minute=0, second=0)
START, END = DAY, DAY + 6 * HOUR


def paired_day(prefix: str) -> FleetData:
    """Vehicle {p}V on meter {p}M for six hours, a reading a minute each; the vehicle 3 s ahead, and in hour 2
    the meter misses every other minute (half the vehicle's readings have no meter reading within 29 s)."""
    d = FleetData()
    d.map(f"{prefix}V", f"{prefix}M", START - HOUR)
    t = START
    while t < END:
        if not (floor_hour(t) == START + 2 * HOUR and t.minute % 2):
            d.meter(f"{prefix}M", t, 0.15)
        d.vehicle(f"{prefix}V", t + timedelta(seconds=3), 0.13, 20.0 + t.minute / 10)
        t += timedelta(minutes=1)
    return d


def report(client, vehicle_id: str, start: datetime = START, end: datetime = END) -> dict:
    resp = client.get(f"/v1/analytics/performance/{vehicle_id}?startDate={iso(start)}&endDate={iso(end)}")
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def raw_path_correlation(eng: Engine, vehicle_id: str) -> analytics.Correlation:
    """The Apache path's answer (hypertables only), on the same database."""
    with eng.connect() as conn:
        return analytics.vehicle_performance(conn, vehicle_id, START, END, community=False).correlation


def stored_hours(eng: Engine, vehicle_id: str) -> dict[datetime, tuple[int, int, int]]:
    with eng.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT bucket, vehicle_readings, mapped_readings, matched_readings FROM vehicle_correlation_1h"
                " WHERE vehicle_id = :v"
            ),
            {"v": vehicle_id},
        )
        return {r.bucket: (r.vehicle_readings, r.mapped_readings, r.matched_readings) for r in rows}


def invalidations(eng: Engine) -> set[tuple[str, datetime]]:
    """The logged vehicle hours of the test's window (a re-map from a past instant also logs every later hour up
    to now: hours the refresh will simply pass)."""
    with eng.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT vehicle_id, bucket FROM correlation_invalidations WHERE bucket >= :s AND bucket < :e"),
            {"s": START, "e": END},
        )
        return {(r.vehicle_id, r.bucket) for r in rows}


def test_closed_hours_are_read_from_the_rollups_alone(client, clean_db):
    d = paired_day("r-")
    post_mappings(client, d)
    post_all(client, d)
    refresh_like_policy(clean_db, END)
    hours = stored_hours(clean_db, "r-V")
    assert sorted(hours) == [START + i * HOUR for i in range(6)]
    assert hours[START + 2 * HOUR] == (60, 60, 30)  # the hour where the meter missed every other minute
    before = report(client, "r-V")
    assert_report_matches(before, d.expected_performance("r-V", START, END), "r-V", START, END)

    # Raw history gone (TRUNCATE reaches neither the aggregates nor the correlation rollup): same answer.
    with clean_db.begin() as conn:
        conn.execute(sa.text("TRUNCATE meter_readings, vehicle_readings"))
    assert report(client, "r-V") == before
    assert raw_path_correlation(clean_db, "r-V").vehicle_readings == 0  # the raw path really has nothing left


def test_late_vehicle_and_meter_readings_recompute_their_hours(client, clean_db):
    d = paired_day("l-")
    post_mappings(client, d)
    post_all(client, d)
    refresh_like_policy(clean_db, END)
    assert invalidations(clean_db) == set()

    gap_hour = START + 2 * HOUR
    late = FleetData(mappings=d.mappings)
    late.meter("l-M", gap_hour + timedelta(minutes=7, seconds=1), 0.2)  # the vehicle's 07:03 now has a meter 2 s off
    late.vehicle("l-V", START + 4 * HOUR + timedelta(minutes=30, seconds=33), 0.11, 30.0)  # a second reading
    post_all(client, late)
    for (m, t), kwh in late.meters.items():
        d.meter(m, t, kwh)
    for (v, t), (kwh, temp) in late.vehicles.items():
        d.vehicle(v, t, kwh, temp)
    # The vehicle hour each late reading touches is logged, nothing else.
    assert invalidations(clean_db) == {("l-V", gap_hour), ("l-V", START + 4 * HOUR)}

    refresh_like_policy(clean_db, END)
    assert invalidations(clean_db) == set()
    hours = stored_hours(clean_db, "l-V")
    assert hours[gap_hour] == (60, 60, 31)
    assert hours[START + 4 * HOUR] == (61, 61, 60)  # 30:33: the nearest meter reading (31:00) is 27 s away
    got = report(client, "l-V")
    assert_report_matches(got, d.expected_performance("l-V", START, END), "l-V", START, END)
    raw = raw_path_correlation(clean_db, "l-V")
    corr = got["correlation"]
    assert (corr["vehicleReadings"], corr["matchedReadings"]) == (raw.vehicle_readings, raw.matched_readings)
    assert corr["typicalClockOffsetSeconds"] == pytest.approx(raw.typical_offset_seconds, abs=1e-9)


def test_remap_from_a_past_instant_recomputes_the_hours_since(client, clean_db):
    d = paired_day("p-")
    t = START
    while t < END:  # a second meter, reporting 20 s after each minute
        d.meter("p-M2", t + timedelta(seconds=20), 0.1)
        t += timedelta(minutes=1)
    post_mappings(client, d)
    post_all(client, d)
    refresh_like_policy(clean_db, END)

    remap_at = START + 3 * HOUR + timedelta(minutes=30)
    resp = client.post("/v1/mappings", json={"vehicleId": "p-V", "meterId": "p-M2", "validFrom": iso(remap_at)})
    assert resp.status_code == 201, resp.get_json()
    d.map("p-V", "p-M2", remap_at)
    assert invalidations(clean_db) == {("p-V", START + h * HOUR) for h in (3, 4, 5)}

    refresh_like_policy(clean_db, END)
    got = report(client, "p-V")
    assert_report_matches(got, d.expected_performance("p-V", START, END), "p-V", START, END)
    # From the re-map on, the vehicle's readings (3 s past the minute) are 17 s after p-M2's: unmatched.
    assert stored_hours(clean_db, "p-V")[START + 4 * HOUR] == (60, 60, 0)


def test_late_reading_into_a_compressed_chunk(client, clean_db, engine_kind):
    old_day = (NOW - timedelta(days=10)).replace(hour=0, minute=0, second=0)  # past compression (7 d), within 30 d
    d = FleetData()
    d.map("z-V", "z-M", old_day - HOUR)
    t = old_day
    while t < old_day + 2 * HOUR:
        d.meter("z-M", t, 0.2)
        d.vehicle("z-V", t, 0.18, 25.0)
        t += timedelta(minutes=1)
    d.vehicle("z-V", NOW - timedelta(minutes=5), 0.01, 22.0)  # the current state: a recent reading
    post_mappings(client, d)
    post_all(client, d)
    refresh_like_policy(clean_db, floor_hour(NOW))
    with clean_db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        jobs = conn.execute(
            sa.text("SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = 'policy_compression'")
        ).scalars()
        for job_id in jobs.all():
            conn.execute(sa.text("CALL run_job(:j)"), {"j": job_id})
        compressed = conn.execute(
            sa.text(
                "SELECT hypertable_name, count(*) FROM timescaledb_information.chunks"
                " WHERE is_compressed AND range_end <= :t GROUP BY 1"
            ),
            {"t": old_day + timedelta(days=1)},
        ).all()
        current_before = conn.execute(sa.text("SELECT * FROM vehicles_current WHERE vehicle_id = 'z-V'")).one()
    assert dict(compressed) == {"meter_readings": 1, "vehicle_readings": 1}

    late_at = old_day + timedelta(minutes=30, seconds=30)  # between two stored minutes
    item = vehicle_reading("z-V", soc=40, kwh=0.5, temp=31.5, timestamp=iso(late_at))
    first = client.post("/v1/telemetry/ingest", json=item)
    retry = client.post("/v1/telemetry/ingest", json=item)
    assert first.status_code == retry.status_code == 200, (first.get_json(), retry.get_json())
    assert (first.get_json()["stored"], first.get_json()["duplicates"]) == (1, 0)
    assert (retry.get_json()["stored"], retry.get_json()["duplicates"]) == (0, 1)
    d.vehicle("z-V", late_at, 0.5, 31.5)
    with clean_db.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM vehicle_readings WHERE vehicle_id = 'z-V' AND recorded_at = :t"),
                {"t": late_at},
            ).scalar_one()
            == 1
        )
        assert conn.execute(sa.text("SELECT * FROM vehicles_current WHERE vehicle_id = 'z-V'")).one() == current_before

    window = (old_day, old_day + 2 * HOUR)
    refresh_like_policy(clean_db, floor_hour(NOW))
    got = report(client, "z-V", *window)
    assert_report_matches(got, d.expected_performance("z-V", *window), "z-V", *window)
    assert got["hourlyBreakdown"][0]["dcDelivered"] == pytest.approx(60 * 0.18 + 0.5, abs=1e-6)
    assert got["correlation"]["vehicleReadings"] == 121
