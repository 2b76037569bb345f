"""The ingest fast path accepts only what marshmallow accepts, and reads it the same way.

`api.ingest.schemas._load_valid_body` checks plainly valid bodies without marshmallow (for speed) and hands
everything else to marshmallow, which stays the authority on rejections. These tests feed both paths valid
bodies and thousands of mutated ones: whenever the fast path accepts a body, marshmallow must accept it too
and produce equal readings.
"""

from __future__ import annotations

import copy
import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import marshmallow as ma
import pytest

from api.ingest import schemas

WINDOW = schemas.ReadingBounds(max_future=timedelta(minutes=5), max_age=timedelta(days=30))
NOW = datetime.now(UTC)


def meter(**payload: Any) -> dict:
    base = {"meterId": "m-1", "kwhConsumedAc": 0.125, "voltage": 230.5, "timestamp": "2026-01-01T00:00:00Z"}
    base["timestamp"] = (NOW - timedelta(hours=1)).isoformat()
    return {"type": "METER", "payload": {**base, **payload}}


def vehicle(**payload: Any) -> dict:
    base = {
        "vehicleId": "v-1",
        "soc": 55,
        "kwhDeliveredDc": 0.11,
        "batteryTemp": 24.5,
        "timestamp": (NOW - timedelta(minutes=3)).replace(tzinfo=None).isoformat() + "+02:00",
    }
    return {"type": "VEHICLE", "payload": {**base, **payload}}


def slow(body: Any, monkeypatch: pytest.MonkeyPatch) -> list | str:
    """marshmallow's verdict: the readings, or 'rejected'."""
    with monkeypatch.context() as m:
        m.setattr(schemas, "_load_valid_body", lambda *args: None)
        try:
            return schemas.load_body(body, WINDOW, 1000)
        except ma.ValidationError:
            return "rejected"


def fast(body: Any) -> list | None:
    return schemas._load_valid_body(body, WINDOW, 1000, datetime.now(UTC))


def test_fast_path_reads_valid_bodies_exactly_as_marshmallow(monkeypatch):
    bodies = [
        meter(),
        vehicle(),
        vehicle(isCharging=True),
        vehicle(isCharging=None),
        [meter(), vehicle(), meter(meterId="m-2", kwhConsumedAc=0, voltage=50)],
        meter(kwhConsumedAc=100, voltage=1000.0),
        vehicle(soc=0, batteryTemp=-50, kwhDeliveredDc=100.0),
        meter(meterId="x" * 64, timestamp=(NOW - timedelta(days=29)).isoformat()),
        meter(timestamp=(NOW + timedelta(minutes=4)).astimezone(UTC).isoformat().replace("+00:00", "Z")),
    ]
    for body in bodies:
        got = fast(body)
        assert got is not None, body  # plainly valid: the fast path takes it
        assert got == slow(body, monkeypatch)


@pytest.mark.parametrize(
    "body",
    [
        meter(kwhConsumedAc=True),
        meter(kwhConsumedAc="0.1"),
        meter(kwhConsumedAc=-0.001),
        meter(kwhConsumedAc=math.nan),
        meter(kwhConsumedAc=math.inf),
        meter(kwhConsumedAc=10**400),
        meter(voltage=49.9),
        vehicle(soc=100.01),
        vehicle(batteryTemp=-50.5),
        meter(meterId=""),
        meter(meterId="x" * 65),
        meter(meterId="a b"),
        meter(meterId="a\x00b"),
        meter(meterId="bad\nid"),
        meter(meterId=42),
        meter(timestamp="2026-11-26T10:00:00"),  # no time zone
        meter(timestamp="yesterday"),
        meter(timestamp=(NOW + timedelta(hours=2)).isoformat()),  # NOW is import time: keep far from the edge
        meter(timestamp=(NOW - timedelta(days=31)).isoformat()),
        meter(extra=1),
        {"type": "METER", "payload": vehicle()["payload"]},
        {"type": "TRUCK", "payload": meter()["payload"]},
        {"type": "METER", "payload": meter()["payload"], "x": 1},
        {"type": "METER"},
        [],
        [meter()] * 1001,
        "METER",
        None,
        [meter(), "x"],
    ],
)
def test_fast_path_leaves_every_invalid_body_to_marshmallow(body, monkeypatch):
    assert fast(body) is None
    assert slow(body, monkeypatch) == "rejected"


@pytest.mark.parametrize("charging", ["true", 1, "yes"])
def test_fast_path_defers_lenient_booleans_to_marshmallow(charging, monkeypatch):
    # marshmallow's Boolean takes "true", 1, "yes"...: the fast path only takes JSON booleans, and defers.
    body = vehicle(isCharging=charging)
    assert fast(body) is None
    assert slow(body, monkeypatch)[0].is_charging is True


def _mutations(rng: random.Random) -> Any:
    """A valid item with one field replaced by something odd (often still valid, often not)."""
    item = copy.deepcopy(rng.choice([meter(), vehicle(), vehicle(isCharging=False)]))
    oddities = [
        None,
        True,
        False,
        0,
        -1,
        1,
        1.5,
        100,
        100.0000001,
        -50,
        1000,
        1000.1,
        10**20,
        math.nan,
        -math.inf,
        "",
        " ",
        "1",
        "true",
        "x" * 64,
        "x" * 65,
        "é🙂",
        "\u202eabc",
        "a\tb",
        [],
        {},
        "2026-11-26T10:00:00Z",
        (NOW - timedelta(seconds=rng.randrange(0, 40 * 86400))).isoformat(),
        (NOW + timedelta(seconds=rng.randrange(0, 600))).isoformat(),
        "2026-W48-4T10:00:00+00:00",
        "20261126T100000Z",
    ]
    target = item if rng.random() < 0.1 else item["payload"]
    key = rng.choice([*target.keys(), "isCharging", "extra"])
    if rng.random() < 0.1:
        target.pop(key, None)
    else:
        target[key] = rng.choice(oddities)
    return item


def test_fast_path_never_accepts_what_marshmallow_rejects(monkeypatch):
    rng = random.Random(20261126)
    accepted = 0
    for _ in range(3000):
        body = _mutations(rng)
        got = fast(body)
        if got is not None:
            accepted += 1
            assert got == slow(body, monkeypatch), body
    assert accepted > 300  # the corpus also exercises the accepting branch
