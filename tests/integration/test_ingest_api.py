"""POST /v1/telemetry/ingest through the Flask test client, on both engines."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.support.api import with_api_key
from tests.support.builders import NOW
from tests.support.builders import meter_reading as meter
from tests.support.builders import vehicle_reading as vehicle

URL = "/v1/telemetry/ingest"
#: A device key, small limits: a batch over 50 readings or a body over 64 KiB is refused.
pytestmark = pytest.mark.app(role="device", FLEET_MAX_BATCH="50", FLEET_MAX_BODY_BYTES="65536")


def counts(eng) -> dict[str, int]:
    with eng.connect() as conn:
        return {
            t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in ("meter_readings", "vehicle_readings", "meters_current", "vehicles_current")
        }


def current(eng, table: str, key: str, device_id: str):
    with eng.connect() as conn:
        return conn.execute(sa.text(f"SELECT * FROM {table} WHERE {key} = :d"), {"d": device_id}).mappings().one()


def test_ingest_single_meter_reading_writes_history_and_current(client, clean_db):
    resp = client.post(URL, json=meter(kwh=0.125, voltage=231.5))
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == {"received": 1, "stored": 1, "duplicates": 0}
    state = current(clean_db, "meters_current", "meter_id", "m-1")
    assert (state["kwh_consumed_ac"], state["voltage"], state["recorded_at"]) == (
        0.125,
        231.5,
        NOW - timedelta(minutes=10),
    )
    assert counts(clean_db)["meter_readings"] == 1


def test_ingest_single_vehicle_reading_with_charging_flag(client, clean_db):
    resp = client.post(URL, json=vehicle(soc=80, isCharging=True))
    assert resp.status_code == 200, resp.get_json()
    state = current(clean_db, "vehicles_current", "vehicle_id", "v-1")
    assert (state["soc"], state["is_charging"], state["battery_temp"]) == (80.0, True, 31.0)


def test_ingest_retry_is_a_duplicate_not_a_second_row(client, clean_db):
    first = client.post(URL, json=meter()).get_json()
    retry = client.post(URL, json=meter(kwh=9.0)).get_json()  # same device and time: first write wins
    assert (first["stored"], retry["stored"], retry["duplicates"]) == (1, 0, 1)
    with clean_db.connect() as conn:
        assert conn.execute(sa.text("SELECT kwh_consumed_ac FROM meter_readings")).scalars().all() == [0.25]


def test_ingest_late_reading_goes_to_history_but_not_current(client, clean_db):
    client.post(URL, json=vehicle(minutes_ago=1, soc=70))
    late = client.post(URL, json=vehicle(minutes_ago=30, soc=40)).get_json()
    assert late["stored"] == 1
    assert current(clean_db, "vehicles_current", "vehicle_id", "v-1")["soc"] == 70.0
    assert counts(clean_db)["vehicle_readings"] == 2


def test_ingest_batch_mixed_kinds_with_duplicates_inside(client, clean_db):
    batch = [meter("m-a", 5), meter("m-a", 4), meter("m-a", 4), meter("m-b", 5), vehicle("v-a", 5), vehicle("v-a", 3)]
    resp = client.post(URL, json=batch)
    assert resp.get_json() == {"received": 6, "stored": 5, "duplicates": 1}
    assert counts(clean_db) == {"meter_readings": 3, "vehicle_readings": 2, "meters_current": 2, "vehicles_current": 1}
    assert current(clean_db, "meters_current", "meter_id", "m-a")["recorded_at"] == NOW - timedelta(minutes=4)
    assert current(clean_db, "vehicles_current", "vehicle_id", "v-a")["recorded_at"] == NOW - timedelta(minutes=3)


def test_ingest_timestamps_in_other_zones_are_the_same_instant(client, clean_db):
    ts = NOW - timedelta(minutes=7)
    client.post(URL, json=meter(timestamp=ts.isoformat()))
    again = client.post(URL, json=meter(timestamp=ts.astimezone(datetime.now().astimezone().tzinfo).isoformat()))
    shifted = ts.astimezone(UTC).replace(tzinfo=None).isoformat() + "+00:00"
    third = client.post(URL, json=meter(timestamp=shifted))
    assert (again.get_json()["duplicates"], third.get_json()["duplicates"]) == (1, 1)


BAD_ITEMS = [
    ("unknown type", {"type": "BUS", "payload": {}}, ["type"]),
    ("missing payload", {"type": "METER"}, ["payload"]),
    ("extra envelope field", {**meter(), "extra": 1}, ["extra"]),
    (
        "missing field",
        {"type": "METER", "payload": {k: v for k, v in meter()["payload"].items() if k != "voltage"}},
        ["payload", "voltage"],
    ),
    ("extra payload field", meter(colour="red"), ["payload", "colour"]),
    ("string number", meter(kwhConsumedAc="0.5"), ["payload", "kwhConsumedAc"]),
    ("boolean number", meter(voltage=True), ["payload", "voltage"]),
    ("huge number", meter(kwhConsumedAc=10**400), ["payload", "kwhConsumedAc"]),
    ("negative energy", meter(kwh=-0.1), ["payload", "kwhConsumedAc"]),
    ("energy over bound", vehicle(kwh=1000.0), ["payload", "kwhDeliveredDc"]),
    ("soc over 100", vehicle(soc=100.5), ["payload", "soc"]),
    ("soc negative", vehicle(soc=-1), ["payload", "soc"]),
    ("implausible voltage", meter(voltage=5000), ["payload", "voltage"]),
    ("implausible temperature", vehicle(temp=-90), ["payload", "batteryTemp"]),
    ("naive timestamp", meter(timestamp="2026-01-01T00:00:00"), ["payload", "timestamp"]),
    ("unparseable timestamp", meter(timestamp="yesterday"), ["payload", "timestamp"]),
    ("timestamp in the future", meter(timestamp=(NOW + timedelta(hours=1)).isoformat()), ["payload", "timestamp"]),
    ("timestamp too old", meter(timestamp=(NOW - timedelta(days=40)).isoformat()), ["payload", "timestamp"]),
    ("empty id", meter(meter_id=""), ["payload", "meterId"]),
    ("id too long", meter(meter_id="m" * 65), ["payload", "meterId"]),
    ("id with control character", meter(meter_id="m\x00x"), ["payload", "meterId"]),
    ("id with space", meter(meter_id="m 1"), ["payload", "meterId"]),
    ("id not a string", vehicle(vehicle_id=12), ["payload", "vehicleId"]),
    ("payload not an object", {"type": "METER", "payload": [1]}, ["payload"]),
]


@pytest.mark.parametrize(("case", "item", "path"), BAD_ITEMS, ids=[c[0] for c in BAD_ITEMS])
def test_ingest_bad_reading_is_422_naming_the_field_and_nothing_is_written(client, clean_db, case, item, path):
    resp = client.post(URL, json=item)
    body = resp.get_json()
    assert resp.status_code == 422, body
    assert resp.content_type == "application/problem+json"
    node = body["errors"]["json"]
    for key in path:
        assert key in node, (case, body)
        node = node[key]
    assert counts(clean_db) == dict.fromkeys(counts(clean_db), 0)


def test_ingest_batch_with_one_bad_item_names_its_index_and_writes_nothing(client, clean_db):
    batch = [meter("m-ok", 5), vehicle("v-ok", 5), meter("m-bad", 5, kwh=-1.0), vehicle("v-ok", 4)]
    resp = client.post(URL, json=batch)
    assert resp.status_code == 422
    assert list(resp.get_json()["errors"]["json"]) == ["2"]
    assert "kwhConsumedAc" in resp.get_json()["errors"]["json"]["2"]["payload"]
    assert counts(clean_db) == dict.fromkeys(counts(clean_db), 0)


@pytest.mark.parametrize(
    ("case", "kwargs", "status"),
    [
        ("malformed JSON", {"data": '{"type": "METER",', "content_type": "application/json"}, 400),
        ("wrong content type", {"data": "type=METER", "content_type": "application/x-www-form-urlencoded"}, 415),
        ("no body", {"data": "", "content_type": "application/json"}, 400),
        ("deep nesting", {"data": "[" * 100000 + "]" * 100000, "content_type": "application/json"}, 413),
        ("nesting under the size limit", {"data": "[" * 5000 + "]" * 5000, "content_type": "application/json"}, 400),
        (
            "NaN token",
            {
                "data": '{"type":"METER","payload":{"meterId":"m","kwhConsumedAc":NaN,"voltage":230,'
                f'"timestamp":"{NOW.isoformat()}"}}}}',
                "content_type": "application/json",
            },
            422,
        ),
        ("empty batch", {"json": []}, 422),
        ("batch over the maximum", {"json": [meter(minutes_ago=i + 1) for i in range(51)]}, 422),
        ("body a string", {"json": "hello"}, 422),
        ("oversized body", {"data": '{"pad": "' + "x" * 70000 + '"}', "content_type": "application/json"}, 413),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_ingest_bad_request_bodies(client, clean_db, case, kwargs, status):
    resp = client.post(URL, **kwargs)
    assert resp.status_code == status, (case, resp.get_json())
    assert resp.content_type == "application/problem+json"
    assert counts(clean_db) == dict.fromkeys(counts(clean_db), 0)


@pytest.mark.native
def test_ingest_concurrent_writers_store_each_reading_once_and_keep_the_newest(make_app, engine, clean_db):
    """Many threads post interleaved, overlapping readings for the same devices (native engine)."""
    app = make_app()
    devices = [f"cc-{i}" for i in range(8)]
    minutes = list(range(1, 41))
    threads, errors = [], []

    def worker(offset: int) -> None:
        client = app.test_client()
        # Every thread posts every reading, in a different order, as single readings and small batches.
        order = minutes[offset:] + minutes[:offset]
        for m in order:
            items = [meter(d, m, kwh=m / 100) for d in devices[:4]] + [vehicle(d, m, soc=100 - m) for d in devices[4:]]
            resp = client.post(URL, json=items if m % 2 else items[0])
            if resp.status_code != 200:
                errors.append(resp.get_json())
            if m % 2 == 0:
                for item in items[1:]:
                    r = client.post(URL, json=item)
                    if r.status_code != 200:
                        errors.append(r.get_json())

    for offset in range(0, 40, 5):
        threads.append(threading.Thread(target=worker, args=(offset,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    with clean_db.connect() as conn:
        meter_rows = conn.execute(
            sa.text("SELECT meter_id, count(*), count(DISTINCT recorded_at) FROM meter_readings GROUP BY 1")
        ).all()
        vehicle_rows = conn.execute(sa.text("SELECT vehicle_id, count(*) FROM vehicle_readings GROUP BY 1")).all()
        newest_meters = dict(conn.execute(sa.text("SELECT meter_id, recorded_at FROM meters_current")).all())
        newest_vehicles = dict(conn.execute(sa.text("SELECT vehicle_id, soc FROM vehicles_current")).all())
    assert sorted(meter_rows) == [(d, 40, 40) for d in devices[:4]]
    assert sorted(vehicle_rows) == [(d, 40) for d in devices[4:]]
    assert newest_meters == dict.fromkeys(devices[:4], NOW - timedelta(minutes=1))
    assert newest_vehicles == dict.fromkeys(devices[4:], 99.0)


def test_ingest_needs_a_device_key(make_app, clean_db):
    app = make_app(role=None)
    assert app.test_client().post(URL, json=meter()).status_code == 401
    with_api_key(app, clean_db, "read")
    assert app.test_client().post(URL, json=meter()).status_code == 403
    assert counts(clean_db)["meter_readings"] == 0


def test_ingest_bound_key_only_for_its_own_device(make_client, clean_db):
    client = make_client(device_id="m-own")
    assert client.post(URL, json=meter("m-own")).status_code == 200
    refused = client.post(URL, json=[meter("m-own", 3), meter("m-other", 3)])
    assert refused.status_code == 403
    assert counts(clean_db)["meter_readings"] == 1


def test_ingest_cumulative_energy_is_refused_saying_a_reading_is_its_own_interval(client, clean_db):
    # The original design's own example readings: cumulative registers, not the energy of one interval.
    for item, field in ((meter(kwh=125.5), "kwhConsumedAc"), (vehicle(kwh=105.2), "kwhDeliveredDc")):
        resp = client.post(URL, json=item)
        assert resp.status_code == 422
        (message,) = resp.get_json()["errors"]["json"]["payload"][field]
        assert "own interval" in message and "cumulative" in message and "100 kWh" in message, message
    assert counts(clean_db) == dict.fromkeys(counts(clean_db), 0)


def test_ingest_energy_bound_is_the_setting_it_names(make_client, clean_db):
    # A fleet whose devices report every 30 minutes may raise it: 125.5 kWh is then one interval's energy.
    client = make_client(FLEET_MAX_INTERVAL_KWH="150")
    assert client.post(URL, json=meter(kwh=125.5)).get_json()["stored"] == 1
    resp = client.post(URL, json=vehicle(kwh=150.5))
    assert resp.status_code == 422
    (message,) = resp.get_json()["errors"]["json"]["payload"]["kwhDeliveredDc"]
    assert "150 kWh" in message and "FLEET_MAX_INTERVAL_KWH" in message, message
    assert counts(clean_db)["meter_readings"] == 1 and counts(clean_db)["vehicle_readings"] == 0


def test_ingest_energy_over_the_bound_is_named_beside_other_bad_fields(client, clean_db):
    bad = meter(kwh=125.5)
    bad["payload"]["voltage"] = 5000
    resp = client.post(URL, json=bad)
    assert resp.status_code == 422
    assert set(resp.get_json()["errors"]["json"]["payload"]) == {"kwhConsumedAc", "voltage"}
