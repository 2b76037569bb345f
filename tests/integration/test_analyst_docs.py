"""The analyst page's example SQL runs on both editions and answers what it says it answers.

The SQL is read from docs/ANALYSTS.md itself, so the page cannot drift from what works. Expected rows are
computed here from the readings the test writes.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import is_community
from tests.support.builders import INSERT_MAPPING, INSERT_METER, INSERT_VEHICLE
from tests.support.fleet import refresh_like_policy

DOC = Path(__file__).resolve().parents[2] / "docs" / "ANALYSTS.md"
HOUR = timedelta(hours=1)
# Three whole hours ending an hour ago: inside every example's window.
END = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - HOUR
START = END - 3 * HOUR


def example_queries() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_analyst_docs_has_three_examples():
    assert len(example_queries()) == 3


@pytest.fixture
def readings(clean_db, engine_kind):
    """a-good (95 %) on a-m1, a-bad (80 %) on a-m2, a-gap on a-m3 which is silent in the middle hour."""
    meters, vehicles = [], []
    for minute in range(180):
        t = START + timedelta(minutes=minute)
        for vehicle, meter, eff in (("a-good", "a-m1", 0.95), ("a-bad", "a-m2", 0.80), ("a-gap", "a-m3", 0.9)):
            ac = 0.15
            if not (meter == "a-m3" and START + HOUR <= t < START + 2 * HOUR):
                meters.append({"id": meter, "t": t, "kwh": ac, "v": 230.0})
            vehicles.append({"id": vehicle, "t": t, "kwh": round(ac * eff, 4), "temp": 25.0, "soc": 50.0})
    pairs = (("a-good", "a-m1"), ("a-bad", "a-m2"), ("a-gap", "a-m3"))
    with clean_db.begin() as conn:
        conn.execute(INSERT_METER, meters)
        conn.execute(INSERT_VEHICLE, vehicles)
        conn.execute(INSERT_MAPPING, [{"v": v, "m": m, "f": START - HOUR, "t": None} for v, m in pairs])
    if is_community(engine_kind):
        refresh_like_policy(clean_db, END)
    return meters, vehicles


def _run(eng, sql: str) -> list[sa.RowMapping]:
    with eng.connect() as conn:
        return list(conn.execute(sa.text(sql)).mappings())


def test_analyst_example_least_efficient_vehicles(clean_db, readings):
    rows = _run(clean_db, example_queries()[0])
    assert [r["vehicle_id"] for r in rows] == ["a-bad", "a-gap", "a-good"]
    by_id = {r["vehicle_id"]: r for r in rows}
    assert by_id["a-bad"]["efficiency"] == pytest.approx(round(0.15 * 0.80, 4) / 0.15)
    assert by_id["a-good"]["ac_kwh"] == pytest.approx(180 * 0.15)
    assert by_id["a-gap"]["hours"] == 2  # the hour without AC is left out, as the page says


def test_analyst_example_grid_load_profile(clean_db, readings):
    meters, _ = readings
    rows = _run(clean_db, example_queries()[1])
    expected: dict[datetime, list[float]] = {}
    for m in meters:
        expected.setdefault(m["t"].replace(minute=0), []).append(m["kwh"])
    got = {r["bucket"]: r for r in rows}
    assert set(got) == set(expected)
    for bucket, kwhs in expected.items():
        assert got[bucket]["ac_kwh"] == pytest.approx(sum(kwhs))
        assert got[bucket]["readings"] == len(kwhs)
    assert got[START + HOUR]["meters_reporting"] == 2  # a-m3 was silent


def test_analyst_example_data_quality(clean_db, readings):
    rows = _run(clean_db, example_queries()[2])
    assert [(r["vehicle_id"], r["bucket"], r["meter_reading_count"]) for r in rows] == [("a-gap", START + HOUR, 0)]
