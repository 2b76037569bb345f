"""Vehicle -> meter mapping administration (POST/GET /v1/mappings) through the Flask test client, on both engines."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise

import pytest
import sqlalchemy as sa

from db.schema import DEVICE_ID_MAX_LENGTH, vehicle_meter_mapping
from tests.support.api import with_api_key

URL = "/v1/mappings"
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
T1 = T0 + timedelta(days=10)
T2 = T0 + timedelta(days=20)
pytestmark = pytest.mark.app(role="admin")


def remap(client, vehicle_id: str, meter_id: str, valid_from: datetime | None = None):
    body = {"vehicleId": vehicle_id, "meterId": meter_id}
    if valid_from is not None:
        body["validFrom"] = valid_from.isoformat()
    return client.post(URL, json=body)


def created(client, vehicle_id: str, meter_id: str, valid_from: datetime | None = None) -> dict:
    resp = remap(client, vehicle_id, meter_id, valid_from)
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def listing(client, **params) -> list[tuple[str, str, datetime, datetime | None]]:
    """(vehicle, meter, validFrom, validTo) of every mapping the GET returns, in its order."""
    query = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in params.items()}
    resp = client.get(URL, query_string={"page_size": 1000, **query})
    assert resp.status_code == 200, resp.get_json()
    return [
        (
            m["vehicleId"],
            m["meterId"],
            datetime.fromisoformat(m["validFrom"]),
            m["validTo"] and datetime.fromisoformat(m["validTo"]),
        )
        for m in resp.get_json()
    ]


def stored(eng) -> list[tuple]:
    with eng.connect() as conn:
        t = vehicle_meter_mapping
        query = sa.select(t.c.vehicle_id, t.c.meter_id, t.c.valid_from, t.c.valid_to).order_by(
            t.c.vehicle_id, t.c.valid_from
        )
        return [tuple(r) for r in conn.execute(query)]


def test_mapping_create_returns_201_with_the_mapping(client, clean_db):
    berlin = timezone(timedelta(hours=1))

    resp = remap(client, "v-1", "m-1", T0.astimezone(berlin))

    body = resp.get_json()
    assert resp.status_code == 201, body
    assert {k: body[k] for k in ("vehicleId", "meterId", "validFrom", "validTo")} == {
        "vehicleId": "v-1",
        "meterId": "m-1",
        "validFrom": T0.isoformat(),  # written back in UTC
        "validTo": None,
    }
    assert datetime.fromisoformat(body["createdAt"]).tzinfo is not None
    assert stored(clean_db) == [("v-1", "m-1", T0, None)]
    assert listing(client) == [("v-1", "m-1", T0, None)]


def test_mapping_valid_from_defaults_to_now(client):
    before = datetime.now(UTC)

    body = created(client, "v-1", "m-1")

    valid_from = datetime.fromisoformat(body["validFrom"])
    assert before - timedelta(seconds=5) <= valid_from <= datetime.now(UTC) + timedelta(seconds=5)


def test_remap_closes_the_previous_mapping_at_valid_from(client, clean_db):
    created(client, "v-1", "m-1", T0)

    body = created(client, "v-1", "m-2", T1)

    assert (body["meterId"], datetime.fromisoformat(body["validFrom"]), body["validTo"]) == ("m-2", T1, None)
    assert listing(client, vehicleId="v-1") == [("v-1", "m-1", T0, T1), ("v-1", "m-2", T1, None)]
    assert stored(clean_db) == [("v-1", "m-1", T0, T1), ("v-1", "m-2", T1, None)]


def test_remap_to_the_meter_in_effect_is_a_noop(client, clean_db):
    first = created(client, "v-1", "m-1", T0)

    resp = remap(client, "v-1", "m-1", T1)

    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == first
    assert stored(clean_db) == [("v-1", "m-1", T0, None)]


@pytest.mark.parametrize(
    "valid_from",
    [T1 - timedelta(days=1), T1, T0 - timedelta(days=1)],
    ids=["inside-the-open-range", "at-the-open-start", "before-all-history"],
)
def test_remap_into_the_past_is_409_and_changes_nothing(client, clean_db, valid_from):
    created(client, "v-1", "m-1", T0)
    created(client, "v-1", "m-2", T1)
    before = stored(clean_db)

    resp = remap(client, "v-1", "m-3", valid_from)

    assert resp.status_code == 409, resp.get_json()
    assert resp.content_type == "application/problem+json"
    body = resp.get_json()
    assert body["status"] == 409
    assert "rewrite the past" in body["detail"]
    assert "'m-2'" in body["detail"]
    assert stored(clean_db) == before


def test_interleaved_remaps_of_several_vehicles_keep_each_history(client, clean_db):
    # Two vehicles moved between depots in an interleaved order, a meter feeding both, retries, a late
    # correction that would rewrite the past, and a return to the first meter.
    steps = [
        ("v-1", "m-1", T0, 201),
        ("v-2", "m-1", T0, 201),
        ("v-1", "m-2", T1, 201),
        ("v-1", "m-2", T1, 200),  # retried request
        ("v-2", "m-3", T1 + timedelta(hours=1), 201),
        ("v-2", "m-2", T1, 409),  # earlier than v-2's open mapping
        ("v-1", "m-1", T2, 201),  # back to the first depot
        ("v-2", "m-3", T2, 200),
    ]
    for vehicle_id, meter_id, valid_from, status in steps:
        resp = remap(client, vehicle_id, meter_id, valid_from)
        assert resp.status_code == status, (vehicle_id, meter_id, valid_from, resp.get_json())

    assert listing(client) == [
        ("v-1", "m-1", T0, T1),
        ("v-1", "m-2", T1, T2),
        ("v-1", "m-1", T2, None),
        ("v-2", "m-1", T0, T1 + timedelta(hours=1)),
        ("v-2", "m-3", T1 + timedelta(hours=1), None),
    ]


@pytest.mark.parametrize("history", [False, True], ids=["first-mapping", "with-open-mapping"])
def test_concurrent_remaps_of_one_vehicle_serialise(app, clean_db, history):
    if history:
        created(app.test_client(), "v-1", "m-0", T0)
    attempts = [(f"m-{n}", T1 + timedelta(hours=n)) for n in range(1, 7)]
    barrier = threading.Barrier(len(attempts))
    results: dict[str, tuple[int, dict]] = {}

    def attempt(meter_id: str, valid_from: datetime) -> None:
        client = app.test_client()
        barrier.wait()
        resp = remap(client, "v-1", meter_id, valid_from)
        results[meter_id] = (resp.status_code, resp.get_json())

    threads = [threading.Thread(target=attempt, args=a) for a in attempts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)

    assert len(results) == len(attempts)
    assert {status for status, _ in results.values()} <= {201, 409}, results
    won = {m for m, (status, _) in results.items() if status == 201}
    # Serialised, the latest start can never conflict: whatever ran before it started earlier.
    latest = attempts[-1][0]
    assert latest in won, results
    chain = stored(clean_db)
    assert [m for _, m, _, _ in chain] == (["m-0"] if history else []) + sorted(won, key=lambda m: int(m[2:]))
    # A chain: each mapping ends where the next starts, and only the last is open.
    for (_, _, _, end), (_, _, start, _) in pairwise(chain):
        assert end == start
    assert chain[-1][3] is None
    for meter_id in won:
        assert (meter_id, dict(attempts)[meter_id]) in {(m, f) for _, m, f, _ in chain}


def test_concurrent_remaps_starting_now_all_succeed(app, clean_db):
    # Without validFrom a re-map starts when it gets the vehicle's lock, so one that waited for another
    # still starts after it: none is refused as rewriting the past.
    created(app.test_client(), "v-1", "m-0")
    meters = [f"m-{n}" for n in range(1, 6)]
    barrier = threading.Barrier(len(meters))
    statuses: dict[str, int] = {}

    def attempt(meter_id: str) -> None:
        client = app.test_client()
        barrier.wait()
        statuses[meter_id] = remap(client, "v-1", meter_id).status_code

    threads = [threading.Thread(target=attempt, args=(m,)) for m in meters]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)

    assert statuses == dict.fromkeys(meters, 201)
    chain = stored(clean_db)
    assert sorted(m for _, m, _, _ in chain) == ["m-0", *meters]
    for (_, _, _, end), (_, _, start, _) in pairwise(chain):
        assert end == start


def test_list_mappings_at_an_instant(client):
    created(client, "v-1", "m-1", T0)
    created(client, "v-1", "m-2", T1)
    created(client, "v-2", "m-2", T0)

    assert listing(client, at=T0 + timedelta(hours=1)) == [("v-1", "m-1", T0, T1), ("v-2", "m-2", T0, None)]
    assert listing(client, at=T1) == [("v-1", "m-2", T1, None), ("v-2", "m-2", T0, None)]  # half-open ranges
    assert listing(client, at=T0 - timedelta(seconds=1)) == []
    assert listing(client, meterId="m-2", at=T0 + timedelta(hours=1)) == [("v-2", "m-2", T0, None)]
    assert listing(client, vehicleId="v-1", at=T1 - timedelta(microseconds=1)) == [("v-1", "m-1", T0, T1)]
    assert listing(client, meterId="m-2") == [("v-1", "m-2", T1, None), ("v-2", "m-2", T0, None)]
    assert listing(client, vehicleId="v-3") == []


def test_list_mappings_is_paged(client):
    for n in range(5):
        created(client, f"v-{n}", "m-1", T0)

    resp = client.get(URL, query_string={"page": 2, "page_size": 2})

    assert resp.status_code == 200
    assert [m["vehicleId"] for m in resp.get_json()] == ["v-2", "v-3"]
    assert '"total": 5' in resp.headers["X-Pagination"]


GOOD = {"vehicleId": "v-1", "meterId": "m-1", "validFrom": T0.isoformat()}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"vehicleId": "v-1", "validFrom": T0.isoformat()}, "meterId"),
        ({"meterId": "m-1"}, "vehicleId"),
        ({**GOOD, "depot": "north"}, "depot"),
        ({**GOOD, "validFrom": "2026-03-01T08:00:00"}, "validFrom"),  # naive: which time zone?
        ({**GOOD, "validFrom": "yesterday"}, "validFrom"),
        ({**GOOD, "vehicleId": "v" * (DEVICE_ID_MAX_LENGTH + 1)}, "vehicleId"),
        ({**GOOD, "vehicleId": ""}, "vehicleId"),
        ({**GOOD, "meterId": "m 1"}, "meterId"),
        ({**GOOD, "meterId": "m\x00"}, "meterId"),
        ({**GOOD, "meterId": 17}, "meterId"),
        ([GOOD], "_schema"),
    ],
)
def test_mapping_bad_input_is_422_naming_the_field_and_writes_nothing(client, clean_db, body, field):
    resp = client.post(URL, json=body)

    assert resp.status_code == 422, resp.get_json()
    assert resp.content_type == "application/problem+json"
    assert field in resp.get_json()["errors"]["json"]
    assert stored(clean_db) == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"at": "2026-03-01T08:00:00"}, "at"),
        ({"at": "soon"}, "at"),
        ({"vehicleId": "v" * (DEVICE_ID_MAX_LENGTH + 1)}, "vehicleId"),
        ({"meterId": ""}, "meterId"),
    ],
)
def test_list_mappings_bad_query_is_422_naming_the_field(client, query, field):
    resp = client.get(URL, query_string=query)

    assert resp.status_code == 422, resp.get_json()
    assert field in resp.get_json()["errors"]["query"]


def test_mappings_change_needs_an_admin_key(make_app, clean_db):
    app = make_app(role=None)
    body = {"vehicleId": "v-auth", "meterId": "m-auth"}
    assert app.test_client().post("/v1/mappings", json=body).status_code == 401
    with_api_key(app, clean_db, "read")
    assert app.test_client().get("/v1/mappings").status_code == 200
    assert app.test_client().post("/v1/mappings", json=body).status_code == 403
