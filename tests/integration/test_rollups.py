"""Hourly rollups, the per-vehicle energy view and the archival policies, per edition.

Expected numbers are computed here in plain Python from the readings the test writes.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from db import edition
from tests.conftest import is_community
from tests.support.builders import INSERT_MAPPING, INSERT_METER, INSERT_VEHICLE

# Two days back: inside the refresh window and the retention, not yet compressed.
WINDOW_START = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)
WINDOW_END = WINDOW_START + timedelta(hours=4)


def make_dataset(prefix: str, seed: int = 7) -> dict[str, list[dict]]:
    """Readings as devices send them: rounded values, a meter that misses every other minute, a vehicle
    whose clock runs 7 s behind, a partial last hour. Vehicle {prefix}v1 is mapped to {prefix}m1 for the
    first two hours and to {prefix}m2 after that."""
    rng = random.Random(seed)
    meters, vehicles = [], []
    for minute in range(0, 230):
        t = WINDOW_START + timedelta(minutes=minute)
        meters.append(
            {"id": f"{prefix}m1", "t": t, "kwh": round(rng.uniform(0.1, 0.2), 3), "v": round(rng.uniform(228, 233), 1)}
        )
        if minute % 2 == 0:
            meters.append(
                {
                    "id": f"{prefix}m2",
                    "t": t,
                    "kwh": round(rng.uniform(0.2, 0.4), 3),
                    "v": round(rng.uniform(228, 233), 1),
                }
            )
        vehicles.append(
            {
                "id": f"{prefix}v1",
                "t": t - timedelta(seconds=7),
                "soc": round(20 + minute * 0.3, 1),
                "kwh": round(rng.uniform(0.08, 0.17), 3),
                "temp": round(rng.uniform(24, 38), 1),
            }
        )
    remap = WINDOW_START + timedelta(hours=2)
    mappings = [
        {"v": f"{prefix}v1", "m": f"{prefix}m1", "f": WINDOW_START - timedelta(days=1), "t": remap},
        {"v": f"{prefix}v1", "m": f"{prefix}m2", "f": remap, "t": None},
    ]
    return {"meters": meters, "vehicles": vehicles, "mappings": mappings}


def load(eng: Engine, data: dict[str, list[dict]]) -> None:
    with eng.begin() as conn:
        conn.execute(INSERT_METER, data["meters"])
        conn.execute(INSERT_VEHICLE, data["vehicles"])
        conn.execute(INSERT_MAPPING, data["mappings"])


def refresh(eng: Engine, start: datetime, end: datetime) -> None:
    # refresh_continuous_aggregate cannot run inside a transaction block.
    with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for rollup in ("meter_readings_1h", "vehicle_readings_1h"):
            conn.execute(sa.text("CALL refresh_continuous_aggregate(:r, :s, :e)"), {"r": rollup, "s": start, "e": end})


def hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def expected_meter_hours(data: dict[str, list[dict]]) -> dict[tuple[str, datetime], tuple[float, int, float, float]]:
    groups: dict[tuple[str, datetime], list[dict]] = defaultdict(list)
    for r in data["meters"]:
        groups[(r["id"], hour(r["t"]))].append(r)
    return {
        key: (sum(r["kwh"] for r in rs), len(rs), min(r["v"] for r in rs), max(r["v"] for r in rs))
        for key, rs in groups.items()
    }


def expected_vehicle_energy(data: dict[str, list[dict]], vehicle: str) -> dict[datetime, dict]:
    """Per hour: AC of the meter mapped at the hour's start, DC of the vehicle, efficiency, counts."""
    out: dict[datetime, dict] = {}
    for r in data["vehicles"]:
        if r["id"] != vehicle:
            continue
        h = out.setdefault(hour(r["t"]), {"ac": None, "dc": 0.0, "n_v": 0, "n_m": 0, "temps": []})
        h["dc"] += r["kwh"]
        h["n_v"] += 1
        h["temps"].append(r["temp"])
    for m in data["mappings"]:
        if m["v"] != vehicle:
            continue
        for r in data["meters"]:
            b = hour(r["t"])
            if r["id"] == m["m"] and m["f"] <= b and (m["t"] is None or b < m["t"]):
                h = out.setdefault(b, {"ac": None, "dc": None, "n_v": 0, "n_m": 0, "temps": []})
                h["ac"] = (h["ac"] or 0.0) + r["kwh"]
                h["n_m"] += 1
    for h in out.values():
        h["eff"] = h["dc"] / h["ac"] if h["ac"] and h["dc"] is not None else None
    return out


@pytest.fixture
def loaded(clean_db: Engine, engine_kind: str) -> Iterator[tuple[Engine, dict]]:
    data = make_dataset(prefix=f"{engine_kind[:3]}-")
    load(clean_db, data)
    if is_community(engine_kind):
        refresh(clean_db, WINDOW_START - timedelta(hours=1), WINDOW_END + timedelta(hours=1))
    yield clean_db, data


def test_rollups_meter_hours_equal_independent_sums(loaded):
    eng, data = loaded
    with eng.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT meter_id, bucket, kwh_consumed_ac, reading_count, voltage_min, voltage_max"
                " FROM meter_readings_1h WHERE bucket >= :s AND bucket < :e"
            ),
            {"s": WINDOW_START, "e": WINDOW_END},
        ).all()
    got = {(r.meter_id, r.bucket): (r.kwh_consumed_ac, r.reading_count, r.voltage_min, r.voltage_max) for r in rows}
    expected = expected_meter_hours(data)
    assert got.keys() == expected.keys()
    for key, (kwh, n, vmin, vmax) in expected.items():
        assert got[key][0] == pytest.approx(kwh, abs=1e-9)
        assert got[key][1:] == (n, vmin, vmax)


def test_rollups_vehicle_energy_follows_mapping_in_time(loaded, engine_kind):
    eng, data = loaded
    vehicle = f"{engine_kind[:3]}-v1"
    with eng.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT bucket, meter_id, kwh_consumed_ac, kwh_delivered_dc, efficiency, power_loss,"
                " meter_reading_count, vehicle_reading_count, battery_temp_min, battery_temp_max"
                " FROM vehicle_energy_1h WHERE vehicle_id = :v ORDER BY bucket"
            ),
            {"v": vehicle},
        ).all()
    expected = expected_vehicle_energy(data, vehicle)
    assert [r.bucket for r in rows] == sorted(expected)
    for r in rows:
        e = expected[r.bucket]
        # The vehicle's clock runs 7 s behind: its first reading falls in the hour before the window.
        assert r.kwh_consumed_ac == (pytest.approx(e["ac"], abs=1e-9) if e["ac"] is not None else None)
        assert r.kwh_delivered_dc == pytest.approx(e["dc"], abs=1e-9)
        assert r.efficiency == (pytest.approx(e["eff"], abs=1e-12) if e["eff"] is not None else None)
        if e["ac"] is not None:
            assert r.power_loss == pytest.approx(e["ac"] - e["dc"], abs=1e-9)
        assert (r.meter_reading_count, r.vehicle_reading_count) == (e["n_m"], e["n_v"])
        assert (r.battery_temp_min, r.battery_temp_max) == (min(e["temps"]), max(e["temps"]))
    by_hour = {r.bucket: r.meter_id for r in rows}
    assert by_hour[WINDOW_START + timedelta(hours=1)] == f"{engine_kind[:3]}-m1"
    assert by_hour[WINDOW_START + timedelta(hours=2)] == f"{engine_kind[:3]}-m2"


@pytest.mark.community
def test_rollups_are_realtime_continuous_aggregates(engine):
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT view_name, materialized_only FROM timescaledb_information.continuous_aggregates"
                " ORDER BY view_name"
            )
        ).all()
        views = conn.execute(sa.text("SELECT viewname FROM pg_views WHERE viewname = 'vehicle_energy_1h'")).all()
    assert [(r.view_name, r.materialized_only) for r in rows] == [
        ("meter_readings_1h", False),
        ("vehicle_readings_1h", False),
    ]
    assert len(views) == 1


@pytest.mark.community
def test_rollups_policies_have_the_configured_windows(engine):
    with engine.connect() as conn:
        jobs = conn.execute(
            sa.text(
                "SELECT proc_name, hypertable_name, schedule_interval, config FROM timescaledb_information.jobs"
                " WHERE hypertable_name IS NOT NULL"
            )
        ).all()
        compression = conn.execute(
            sa.text(
                "SELECT hypertable_name, attname, segmentby_column_index, orderby_column_index, orderby_asc"
                " FROM timescaledb_information.compression_settings ORDER BY hypertable_name, attname"
            )
        ).all()
    policies = {(j.proc_name, j.hypertable_name): j for j in jobs}
    assert set(policies) == {
        ("policy_refresh_continuous_aggregate", "meter_readings_1h"),
        ("policy_refresh_continuous_aggregate", "vehicle_readings_1h"),
        ("policy_retention", "meter_readings_1h"),
        ("policy_retention", "vehicle_readings_1h"),
        ("policy_compression", "meter_readings"),
        ("policy_compression", "vehicle_readings"),
        ("policy_retention", "meter_readings"),
        ("policy_retention", "vehicle_readings"),
    }

    def interval(text: str) -> timedelta:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT CAST(:t AS interval)"), {"t": text}).scalar_one()

    for rollup in ("meter_readings_1h", "vehicle_readings_1h"):
        refresh_job = policies[("policy_refresh_continuous_aggregate", rollup)]
        assert interval(refresh_job.config["start_offset"]) == timedelta(days=30)
        assert interval(refresh_job.config["end_offset"]) == timedelta(hours=1)
        assert refresh_job.schedule_interval == timedelta(minutes=30)
        assert interval(policies[("policy_retention", rollup)].config["drop_after"]) == timedelta(days=1095)
    for table in ("meter_readings", "vehicle_readings"):
        assert interval(policies[("policy_compression", table)].config["compress_after"]) == timedelta(days=7)
        raw_retention = interval(policies[("policy_retention", table)].config["drop_after"])
        assert raw_retention == timedelta(days=90)
        # Raw rows are dropped only long after the refresh window has passed over them, and rollups
        # outlive raw history.
        assert raw_retention > interval(
            policies[("policy_refresh_continuous_aggregate", table + "_1h")].config["start_offset"]
        )
        assert interval(policies[("policy_retention", table + "_1h")].config["drop_after"]) > raw_retention
    assert [
        (c.hypertable_name, c.attname, c.segmentby_column_index, c.orderby_column_index, c.orderby_asc)
        for c in compression
    ] == [
        ("meter_readings", "meter_id", 1, None, None),
        ("meter_readings", "recorded_at", None, 1, False),
        ("vehicle_readings", "recorded_at", None, 1, False),
        ("vehicle_readings", "vehicle_id", 1, None, None),
    ]


@pytest.mark.community
def test_rollups_current_hour_visible_before_any_refresh(clean_db):
    now_hour = hour(datetime.now(UTC))
    readings = [{"id": "emb-rt", "t": now_hour + timedelta(seconds=s), "kwh": 0.125, "v": 230.0} for s in (0, 1, 2)]
    with clean_db.begin() as conn:
        conn.execute(INSERT_METER, readings)
    with clean_db.connect() as conn:
        got = conn.execute(
            sa.text("SELECT kwh_consumed_ac, reading_count FROM meter_readings_1h WHERE meter_id = 'emb-rt'")
        ).one()
    assert (got.kwh_consumed_ac, got.reading_count) == (0.375, 3)


@pytest.mark.apache
def test_rollups_apache_path_uses_views_and_attempts_no_community_feature(engine):
    # The migration ran to head on this server: had it issued any Community-only statement, the Apache
    # edition would have refused it ("not supported under the current apache license") and failed it.
    with engine.connect() as conn:
        info = edition.describe(conn)
        views = set(conn.execute(sa.text("SELECT viewname FROM pg_views WHERE schemaname = 'public'")).scalars())
        matviews = conn.execute(sa.text("SELECT count(*) FROM pg_matviews")).scalar_one()
        caggs = conn.execute(sa.text("SELECT count(*) FROM timescaledb_information.continuous_aggregates")).scalar_one()
        jobs = conn.execute(
            sa.text("SELECT count(*) FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL")
        ).scalar_one()
        compressed = conn.execute(
            sa.text("SELECT count(*) FROM timescaledb_information.hypertables WHERE compression_enabled")
        ).scalar_one()
    assert info.license == "apache" and not info.community
    assert {"meter_readings_1h", "vehicle_readings_1h", "vehicle_energy_1h"} <= views
    assert (matviews, caggs, jobs, compressed) == (0, 0, 0, 0)
    assert info.continuous_aggregates == () and info.policies == ()


def test_rollups_identical_on_both_editions(both_editions):
    data = make_dataset(prefix="eq-", seed=11)
    results = {}
    for kind, eng in both_editions.items():
        load(eng, data)
        if is_community(kind):
            # Materialise half the window: the rest comes through real-time aggregation, and must agree too.
            refresh(eng, WINDOW_START - timedelta(hours=1), WINDOW_START + timedelta(hours=2))
        with eng.connect() as conn:
            results[kind] = [
                tuple(round(v, 9) if isinstance(v, float) else v for v in row)
                for row in conn.execute(sa.text("SELECT * FROM vehicle_energy_1h ORDER BY vehicle_id, bucket"))
            ]
    reference = results.pop("native-apache")
    assert results and all(result == reference for result in results.values())
    assert len(reference) >= 4
