"""Current status and fleet listings (GET /v1/meters, /v1/vehicles) through the Flask test client, on both engines.

Devices are written straight into the current-state tables; expected values are computed here from what
was written. Listing order is compared with ids whose order is the same in every collation.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from db.schema import DEVICE_ID_MAX_LENGTH, meters_current, vehicles_current
from tests.support.api import with_api_key

pytestmark = pytest.mark.app(role="read")


def meter(meter_id: str, minutes_ago: float = 1, kwh: float = 0.25, voltage: float = 230.0) -> dict:
    return {
        "meter_id": meter_id,
        "recorded_at": datetime.now(UTC) - timedelta(minutes=minutes_ago),
        "kwh_consumed_ac": kwh,
        "voltage": voltage,
    }


def vehicle(
    vehicle_id: str,
    minutes_ago: float = 1,
    soc: float = 50.0,
    kwh: float = 0.2,
    temp: float = 30.0,
    charging: bool | None = None,
) -> dict:
    return {
        "vehicle_id": vehicle_id,
        "recorded_at": datetime.now(UTC) - timedelta(minutes=minutes_ago),
        "soc": soc,
        "kwh_delivered_dc": kwh,
        "battery_temp": temp,
        "is_charging": charging,
    }


def put(eng, table, rows: list[dict]) -> None:
    # A short transaction of its own: nothing stays open while the test client makes requests.
    with eng.begin() as conn:
        conn.execute(table.insert(), rows)


def ids(resp, key: str) -> list[str]:
    assert resp.status_code == 200, resp.get_json()
    return [item[key] for item in resp.get_json()]


def pagination(resp) -> dict:
    return json.loads(resp.headers["X-Pagination"])


def test_meter_status_returns_newest_reading(client, clean_db):
    m = meter("m-1", minutes_ago=3, kwh=0.125, voltage=231.5)
    put(clean_db, meters_current, [m])

    resp = client.get("/v1/meters/m-1")

    body = resp.get_json()
    assert resp.status_code == 200, body
    assert {k: body[k] for k in ("meterId", "kwhConsumedAc", "voltage")} == {
        "meterId": "m-1",
        "kwhConsumedAc": 0.125,
        "voltage": 231.5,
    }
    assert body["recordedAt"].endswith("+00:00")
    assert datetime.fromisoformat(body["recordedAt"]) == m["recorded_at"]
    assert 3 * 60 - 5 <= body["lastSeenSecondsAgo"] < 3 * 60 + 120
    assert set(body) == {"meterId", "kwhConsumedAc", "voltage", "recordedAt", "lastSeenSecondsAgo"}


def test_vehicle_status_returns_newest_reading(client, clean_db):
    v = vehicle("v-1", minutes_ago=2, soc=55.5, kwh=0.17, temp=31.5, charging=True)
    put(clean_db, vehicles_current, [v, vehicle("v-2", charging=None)])

    resp = client.get("/v1/vehicles/v-1")

    body = resp.get_json()
    assert resp.status_code == 200, body
    assert {k: body[k] for k in ("vehicleId", "soc", "kwhDeliveredDc", "batteryTemp", "isCharging")} == {
        "vehicleId": "v-1",
        "soc": 55.5,
        "kwhDeliveredDc": 0.17,
        "batteryTemp": 31.5,
        "isCharging": True,
    }
    assert datetime.fromisoformat(body["recordedAt"]) == v["recorded_at"]
    assert 2 * 60 - 5 <= body["lastSeenSecondsAgo"] < 2 * 60 + 120
    assert client.get("/v1/vehicles/v-2").get_json()["isCharging"] is None


@pytest.mark.parametrize(
    "path",
    [
        "/v1/meters/m-unknown",
        "/v1/vehicles/v-unknown",
        "/v1/meters/v-1",  # a vehicle is not a meter
        "/v1/vehicles/" + "v" * (DEVICE_ID_MAX_LENGTH + 1),
        "/v1/meters/m%00x",  # PostgreSQL text cannot hold NUL: still a 404, never a 500
    ],
)
def test_device_status_unknown_is_404_problem(client, clean_db, path):
    put(clean_db, vehicles_current, [vehicle("v-1")])

    resp = client.get(path)

    assert resp.status_code == 404
    assert resp.content_type == "application/problem+json"
    body = resp.get_json()
    assert body["status"] == 404
    assert "has no reading" in body["detail"]


# id, minutes since the newest reading, soc, is_charging. The ids include a LIKE wildcard ('_') and a
# vehicle that does not report is_charging.
FLEET = [
    ("depot_a-1", 1, 20.0, True),
    ("depot_a-2", 30, 80.0, False),
    ("depotXa-3", 45, 90.0, True),
    ("bus-1", 2, 10.0, None),
    ("bus-2", 1, 49.9, True),
    ("bus-3", 120, 50.0, False),
]


@pytest.mark.parametrize(
    ("query", "wanted"),
    [
        ({}, lambda v: True),
        ({"isCharging": "true"}, lambda v: v[3] is True),
        ({"isCharging": "false"}, lambda v: v[3] is False),
        ({"socBelow": "50"}, lambda v: v[2] < 50),
        ({"silentForMinutes": "10"}, lambda v: v[1] > 10),
        ({"idPrefix": "depot_"}, lambda v: v[0].startswith("depot_")),
        ({"idPrefix": "bus-"}, lambda v: v[0].startswith("bus-")),
        ({"isCharging": "true", "socBelow": "50"}, lambda v: v[3] is True and v[2] < 50),
        ({"silentForMinutes": "10", "isCharging": "false", "idPrefix": "depot"}, lambda v: v[0] == "depot_a-2"),
    ],
    ids=lambda p: "&".join(f"{k}={v}" for k, v in p.items()) if isinstance(p, dict) else None,
)
def test_vehicle_listing_filters(client, clean_db, query, wanted):
    put(clean_db, vehicles_current, [vehicle(i, minutes_ago=m, soc=s, charging=c) for i, m, s, c in FLEET])
    expected = sorted(v[0] for v in FLEET if wanted(v))

    resp = client.get("/v1/vehicles", query_string=query)

    assert sorted(ids(resp, "vehicleId")) == expected
    assert pagination(resp)["total"] == len(expected)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"silentForMinutes": "15"}, ["m-b1", "m_b2"]),
        ({"idPrefix": "m_"}, ["m_b2"]),
        ({"idPrefix": "m-"}, ["m-a1", "m-b1"]),
        ({"idPrefix": "m-", "silentForMinutes": "15"}, ["m-b1"]),
        ({"idPrefix": "x"}, []),
    ],
)
def test_meter_listing_filters(client, clean_db, query, expected):
    put(
        clean_db,
        meters_current,
        [meter("m-a1", minutes_ago=1), meter("m-b1", minutes_ago=20), meter("m_b2", minutes_ago=60 * 24)],
    )

    resp = client.get("/v1/meters", query_string=query)

    assert sorted(ids(resp, "meterId")) == expected


def test_vehicle_listing_pages_are_ordered_complete_and_repeatable(client, clean_db):
    fleet = [f"v-{n:04d}" for n in range(1, 26)]
    rows = [vehicle(i, charging=(n % 2 == 0)) for n, i in enumerate(fleet)]
    random.Random(3).shuffle(rows)
    put(clean_db, vehicles_current, rows)

    pages = [client.get("/v1/vehicles", query_string={"page": p, "page_size": 10}) for p in (1, 2, 3)]

    assert [ids(r, "vehicleId") for r in pages] == [fleet[0:10], fleet[10:20], fleet[20:25]]
    assert pagination(pages[1]) == {
        "total": 25,
        "total_pages": 3,
        "first_page": 1,
        "last_page": 3,
        "page": 2,
        "previous_page": 1,
        "next_page": 3,
    }
    again = client.get("/v1/vehicles", query_string={"page": 2, "page_size": 10})
    assert ids(again, "vehicleId") == fleet[10:20]

    charging = [i for n, i in enumerate(fleet) if n % 2 == 0]
    filtered = client.get("/v1/vehicles", query_string={"isCharging": "true", "page": 2, "page_size": 5})
    assert ids(filtered, "vehicleId") == charging[5:10]
    assert pagination(filtered)["total"] == len(charging)

    beyond = client.get("/v1/vehicles", query_string={"page": 9, "page_size": 10})
    assert ids(beyond, "vehicleId") == []


def test_meter_listing_default_page_is_ordered_by_id(client, clean_db):
    fleet = [f"m-{n:03d}" for n in range(150)]
    rows = [meter(i) for i in fleet]
    random.Random(5).shuffle(rows)
    put(clean_db, meters_current, rows)

    resp = client.get("/v1/meters")

    assert ids(resp, "meterId") == fleet[:100]
    assert pagination(resp)["total"] == 150


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/vehicles?socBelow=abc", "socBelow"),
        ("/v1/vehicles?socBelow=101", "socBelow"),
        ("/v1/vehicles?socBelow=nan", "socBelow"),
        ("/v1/vehicles?isCharging=maybe", "isCharging"),
        ("/v1/vehicles?silentForMinutes=0", "silentForMinutes"),
        ("/v1/meters?silentForMinutes=1.5", "silentForMinutes"),
        ("/v1/meters?silentForMinutes=99999999999999999999", "silentForMinutes"),
        ("/v1/meters?idPrefix=" + "m" * (DEVICE_ID_MAX_LENGTH + 1), "idPrefix"),
        ("/v1/meters?idPrefix=m%00", "idPrefix"),
        ("/v1/meters?page_size=1001", "page_size"),
        ("/v1/vehicles?page=0", "page"),
    ],
)
def test_listing_bad_query_args_are_422_naming_the_field(client, path, field):
    resp = client.get(path)

    assert resp.status_code == 422, resp.get_json()
    assert resp.content_type == "application/problem+json"
    assert field in resp.get_json()["errors"]["query"]


def test_listing_accepts_the_largest_page_size(client, clean_db):
    put(clean_db, meters_current, [meter("m-1")])

    resp = client.get("/v1/meters", query_string={"page_size": 1000})

    assert ids(resp, "meterId") == ["m-1"]


def test_openapi_documents_status_and_listing_endpoints(client):
    spec = client.get("/openapi.json").get_json()

    for path in ("/v1/meters", "/v1/meters/{meter_id}", "/v1/vehicles", "/v1/vehicles/{vehicle_id}"):
        assert "get" in spec["paths"][path], path
    params = {p["name"] for p in spec["paths"]["/v1/vehicles"]["get"]["parameters"]}
    assert {"isCharging", "socBelow", "silentForMinutes", "idPrefix", "page", "page_size"} <= params


def test_status_needs_a_read_key(make_app, clean_db):
    app = make_app(role=None)
    assert app.test_client().get("/v1/vehicles").status_code == 401
    with_api_key(app, clean_db, "device")
    assert app.test_client().get("/v1/vehicles").status_code == 403
