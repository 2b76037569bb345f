"""Bad or hostile input never breaks the service: hand-written cases against every endpoint family, both engines.

Each case asserts the exact status (a 4xx problem document naming the field where there is one, or the 404/200
that is correct), that nothing was written for a refused write, and, after every test, that the platform's
tables are all still there with the seeded rows in them. The fuzzer (test_fuzz_openapi.py) explores the
documented shapes; these are the inputs it is unlikely to produce: bodies over the size limit (also chunked,
without Content-Length), 100,000-deep nesting, control and bidi characters, SQL fragments, non-finite and
400-digit numbers, duplicate keys, invalid UTF-8.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from sqlalchemy.engine import Engine
from werkzeug.test import EnvironBuilder, TestResponse, run_wsgi_app
from werkzeug.wrappers import Response

from api.auth import API_KEY_HEADER
from db import readings
from db.schema import vehicle_meter_mapping
from tests.conftest import PLATFORM_TABLES
from tests.support.builders import NOW, meter_reading, vehicle_reading

INGEST = "/v1/telemetry/ingest"
MAPPINGS = "/v1/mappings"
#: Small enough that an oversized body is cheap to build; large enough for a batch of readings.
MAX_BODY = 65_536
#: An admin client: every operation is open to it, so only the input decides the answer.
pytestmark = pytest.mark.app(role="admin", FLEET_MAX_BODY_BYTES=str(MAX_BODY), FLEET_RATE_LIMIT="off")
#: Tables a refused request must leave as they were (api_keys, alerts, job_runs: no endpoint writes them).
WRITTEN = ("meter_readings", "vehicle_readings", "meters_current", "vehicles_current", "vehicle_meter_mapping")


# --- fixtures and helpers ------------------------------------------------------------------------------------


def _seed(eng: Engine) -> None:
    with eng.begin() as conn:
        readings.insert_meter_readings(conn, [readings.MeterReading("m-1", NOW - timedelta(minutes=5), 0.25, 230.0)])
        readings.insert_vehicle_readings(
            conn, [readings.VehicleReading("v-1", NOW - timedelta(minutes=5), 50.0, 0.2, 30.0, True)]
        )
        conn.execute(
            vehicle_meter_mapping.insert(),
            {"vehicle_id": "v-1", "meter_id": "m-1", "valid_from": NOW - timedelta(days=1)},
        )


def _counts(eng: Engine) -> dict[str, int]:
    with eng.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in WRITTEN}


@pytest.fixture(autouse=True)
def seeded(clean_db: Engine) -> Iterator[Engine]:
    """The clean database with a meter, a vehicle mapped to it and a reading each; afterwards every platform
    table must still exist and the seeded readings still be there, whatever the test sent."""
    _seed(clean_db)
    yield clean_db
    with clean_db.connect() as conn:
        exists = {t: conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": t}).scalar() for t in PLATFORM_TABLES}
        seeded_rows = conn.execute(sa.text("SELECT count(*) FROM meter_readings WHERE meter_id = 'm-1'")).scalar_one()
    assert all(exists.values()), f"tables gone: {exists}"
    assert seeded_rows == 1


@pytest.fixture
def roomy_client(make_client: Callable[..., FlaskClient]) -> FlaskClient:
    """An admin client of an app with the default 1 MiB body limit: bodies big enough to nest 100,000 deep."""
    return make_client(FLEET_MAX_BODY_BYTES=str(1024 * 1024))


def problem(resp: TestResponse | Response, status: int, *path: str) -> dict[str, Any]:
    """Assert `resp` is a problem document with `status`, whose `errors` has `path` (location, field...)."""
    assert resp.status_code == status, (resp.status_code, resp.get_data()[:500])
    assert resp.mimetype == "application/problem+json", resp.headers
    body = json.loads(resp.get_data())
    assert body["status"] == status, body
    assert body["title"] and body["type"] and isinstance(body["detail"], str), body
    node: Any = body.get("errors")
    for key in path:
        assert isinstance(node, dict) and key in node, (path, body)
        node = node[key]
    return body


def post_raw(client: FlaskClient, url: str, body: bytes | str, content_type: str = "application/json") -> TestResponse:
    return client.post(url, data=body, content_type=content_type)


def path_id(device_id: str) -> str:
    return quote(device_id, safe="")


# --- huge bodies ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [INGEST, MAPPINGS])
def test_hostile_body_over_the_limit_is_413_and_writes_nothing(client, seeded, url):
    before = _counts(seeded)
    body = json.dumps([meter_reading(f"m-{i}") for i in range(600)])  # valid JSON, about 70 kB
    assert len(body) > MAX_BODY

    problem(post_raw(client, url, body), 413)

    assert _counts(seeded) == before


def post_chunked(client: FlaskClient, url: str, body: bytes) -> Response:
    """POST `body` as a chunked request, with no Content-Length, as gunicorn hands it to the app (it sets
    wsgi.input_terminated); the test client would add a Content-Length, so the app is called directly."""
    environ = EnvironBuilder(
        method="POST",
        path=url,
        input_stream=io.BytesIO(body),
        content_type="application/json",
        headers={API_KEY_HEADER: client.environ_base["HTTP_X_API_KEY"], "Transfer-Encoding": "chunked"},
    ).get_environ()
    del environ["CONTENT_LENGTH"]
    environ["wsgi.input_terminated"] = True
    app_iter, status, headers = run_wsgi_app(client.application, environ, buffered=True)
    return Response(b"".join(app_iter), status=status, headers=headers)


@pytest.mark.parametrize("url", [INGEST, MAPPINGS])
@pytest.mark.parametrize("extra", [1, 10_000])
def test_hostile_chunked_body_over_the_limit_is_413(client, seeded, url, extra):
    """A chunked request has no Content-Length to refuse it up front: werkzeug stops reading at the limit and
    hands over the first MAX_BODY bytes as if they were the body (a 400 for the cut JSON); it is a 413."""
    before = _counts(seeded)
    body = json.dumps(meter_reading()).encode()
    body += b" " * (MAX_BODY + extra - len(body))  # valid JSON for its first MAX_BODY bytes too

    problem(post_chunked(client, url, body), 413)

    assert _counts(seeded) == before


def test_hostile_chunked_body_up_to_the_limit_is_read(client, seeded):
    """The same transport with a body of exactly the limit is an ordinary request: the size, not chunking, is
    refused."""
    body = json.dumps(meter_reading("m-chunked")).encode()
    body += b" " * (MAX_BODY - len(body))

    resp = post_chunked(client, INGEST, body)

    assert resp.status_code == 200, resp.get_data()
    assert json.loads(resp.get_data()) == {"received": 1, "stored": 1, "duplicates": 0}


def test_hostile_get_with_a_huge_body_ignores_it(client):
    """GET endpoints never read a body: one over the limit changes nothing."""
    resp = client.get("/v1/meters", data=b"x" * (MAX_BODY * 2), content_type="application/json")
    assert resp.status_code == 200
    assert [m["meterId"] for m in resp.get_json()] == ["m-1"]


# --- deep nesting --------------------------------------------------------------------------------------------

DEPTH = 100_000
NESTED = [
    ("arrays", "[" * DEPTH + "]" * DEPTH),
    ("objects", '{"a":' * DEPTH + "1" + "}" * DEPTH),
    (
        "inside a reading",
        '{"type":"METER","payload":{"meterId":' + "[" * DEPTH + "]" * DEPTH + "}}",
    ),
]


@pytest.mark.parametrize("url", [INGEST, MAPPINGS])
@pytest.mark.parametrize(("case", "body"), NESTED, ids=[c for c, _ in NESTED])
def test_hostile_deep_nesting_is_400_never_a_recursion_error(roomy_client, seeded, url, case, body):
    before = _counts(seeded)

    resp = post_raw(roomy_client, url, body)

    assert "nested too deeply" in problem(resp, 400)["detail"]
    assert _counts(seeded) == before


# --- ids with control, bidi and other characters -------------------------------------------------------------

BAD_IDS = [
    ("NUL", "m\x00x"),
    ("RTL override", "m\u202ex"),
    ("zero-width space", "m\u200bx"),
    ("newline", "m\nx"),
    ("tab", "m\tx"),
    ("DEL", "m\x7fx"),
    ("space", "m x"),
    ("65 characters", "m" * 65),
    ("empty", ""),
    ("SQL with spaces", "' OR 1=1 --"),
    ("SQL statement", "'; DROP TABLE meters_current; --"),
]
BAD_ID_CASES = [pytest.param(v, id=k) for k, v in BAD_IDS]
#: An empty path segment is another URL altogether (the listing, or no route).
BAD_PATH_ID_CASES = [pytest.param(v, id=k) for k, v in BAD_IDS if v]


@pytest.mark.parametrize("bad", BAD_ID_CASES)
def test_hostile_ids_in_ingest_bodies_are_422_naming_the_field(client, seeded, bad):
    before = _counts(seeded)

    problem(client.post(INGEST, json=meter_reading(bad)), 422, "json", "payload", "meterId")
    batch = [meter_reading("m-ok"), vehicle_reading(bad)]
    problem(client.post(INGEST, json=batch), 422, "json", "1", "payload", "vehicleId")

    assert _counts(seeded) == before


@pytest.mark.parametrize("bad", BAD_ID_CASES)
@pytest.mark.parametrize("field", ["vehicleId", "meterId"])
def test_hostile_ids_in_mapping_bodies_are_422_naming_the_field(client, seeded, bad, field):
    before = _counts(seeded)
    body = {"vehicleId": "v-1", "meterId": "m-2", field: bad}

    problem(client.post(MAPPINGS, json=body), 422, "json", field)

    assert _counts(seeded) == before


@pytest.mark.parametrize("bad", BAD_ID_CASES)
@pytest.mark.parametrize(
    ("url", "param"),
    [
        ("/v1/meters", "idPrefix"),
        ("/v1/vehicles", "idPrefix"),
        ("/v1/mappings", "vehicleId"),
        ("/v1/mappings", "meterId"),
        ("/v1/alerts", "deviceId"),
    ],
)
def test_hostile_ids_in_query_parameters_are_422_naming_the_parameter(client, bad, url, param):
    problem(client.get(f"{url}?{urlencode({param: bad})}"), 422, "query", param)


@pytest.mark.parametrize("bad", BAD_PATH_ID_CASES)
@pytest.mark.parametrize("prefix", ["/v1/meters/", "/v1/vehicles/", "/v1/analytics/performance/"])
def test_hostile_ids_in_paths_are_404(client, bad, prefix):
    problem(client.get(prefix + path_id(bad)), 404)


@pytest.mark.parametrize(
    "device_id",
    [
        pytest.param("m-\U0001f50b", id="emoji"),
        pytest.param("m-\u00e9t\u00e9-\u6771\u4eac", id="accents and CJK"),
        pytest.param("m-" + "\U0001f50b" * 62, id="64 characters of 4 UTF-8 bytes"),
        pytest.param("x'OR'1'='1", id="SQL without spaces"),
        pytest.param("site/7", id="slash"),
    ],
)
def test_hostile_looking_but_valid_ids_are_stored_and_read_back_literally(client, seeded, device_id):
    """Printable ids without white space are ids, whatever they look like: stored as sent, found again by a
    literal lookup, never interpreted."""
    resp = client.post(INGEST, json=meter_reading(device_id))
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["stored"] == 1

    listed = client.get(f"/v1/meters?{urlencode({'idPrefix': device_id})}")
    assert [m["meterId"] for m in listed.get_json()] == [device_id]
    if "/" not in device_id:  # a slash cannot be part of one path segment, even as %2F
        status = client.get("/v1/meters/" + path_id(device_id))
        assert status.status_code == 200, status.get_json()
        assert status.get_json()["meterId"] == device_id
    assert _counts(seeded)["meters_current"] == 2


# --- SQL fragments in paths and queries ----------------------------------------------------------------------

SQL = [
    "' OR 1=1 --",
    "'; DROP TABLE meters_current; --",
    "1' OR '1'='1",
    "m-1' UNION SELECT key_hash FROM api_keys --",
    "m-1; DELETE FROM meter_readings",
]


@pytest.mark.parametrize("fragment", SQL)
@pytest.mark.parametrize("prefix", ["/v1/meters/", "/v1/vehicles/", "/v1/analytics/performance/"])
def test_hostile_sql_in_paths_is_404(client, fragment, prefix):
    problem(client.get(prefix + path_id(fragment)), 404)


@pytest.mark.parametrize("fragment", SQL)
@pytest.mark.parametrize(
    ("url", "param"),
    [
        ("/v1/meters", "idPrefix"),
        ("/v1/vehicles", "socBelow"),
        ("/v1/mappings", "at"),
        ("/v1/analytics/fleet", "sort"),
        ("/v1/analytics/fleet", "startDate"),
        ("/v1/analytics/performance/v-1", "endDate"),
        ("/v1/alerts", "kind"),
        ("/v1/alerts", "status"),
        ("/v1/meters", "page"),
        ("/v1/meters", "page_size"),
    ],
)
def test_hostile_sql_in_query_parameters_is_422_naming_the_parameter(client, fragment, url, param):
    problem(client.get(f"{url}?{urlencode({param: fragment})}"), 422, "query", param)


@pytest.mark.parametrize("prefix", ["%", "_", "m%", "\\", "m-1'--"])
def test_hostile_like_wildcards_in_id_prefix_are_literal(client, prefix):
    """idPrefix is a literal prefix: '%' and '_' match only themselves (the seeded m-1 starts with neither)."""
    resp = client.get(f"/v1/meters?{urlencode({'idPrefix': prefix})}")
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == []


# --- numbers -------------------------------------------------------------------------------------------------

NUMBER_TOKENS = [
    ("1e309", "1e309"),
    ("-1e309", "-1e309"),
    ("NaN", "NaN"),
    ("Infinity", "Infinity"),
    ("-Infinity", "-Infinity"),
    ("10**400", "1" + "0" * 400),
    ("-10**400", "-1" + "0" * 400),
    ("true", "true"),
    ("false", "false"),
    ("null", "null"),
    ("string", '"0.5"'),
    ("array", "[0.5]"),
]


def _reading_with(kind: str, field: str, token: str) -> str:
    item = meter_reading() if kind == "METER" else vehicle_reading()
    item["payload"][field] = "__TOKEN__"
    return json.dumps(item).replace('"__TOKEN__"', token)


@pytest.mark.parametrize(("name", "token"), NUMBER_TOKENS, ids=[n for n, _ in NUMBER_TOKENS])
@pytest.mark.parametrize(
    ("kind", "field"),
    [("METER", "kwhConsumedAc"), ("METER", "voltage"), ("VEHICLE", "soc"), ("VEHICLE", "batteryTemp")],
)
def test_hostile_numbers_in_readings_are_422_naming_the_field(client, seeded, name, token, kind, field):
    before = _counts(seeded)

    problem(post_raw(client, INGEST, _reading_with(kind, field, token)), 422, "json", "payload", field)

    assert _counts(seeded) == before


def test_hostile_integer_beyond_the_parser_limit_is_400(client, seeded):
    """10**5000 is more digits than Python turns into an int (4300): the body cannot be read, nothing stored."""
    before = _counts(seeded)
    problem(post_raw(client, INGEST, _reading_with("METER", "voltage", "1" + "0" * 5000)), 400)
    assert _counts(seeded) == before


@pytest.mark.parametrize(("name", "token"), NUMBER_TOKENS[:8], ids=[n for n, _ in NUMBER_TOKENS[:8]])
def test_hostile_numbers_in_mapping_bodies_are_422_naming_the_field(client, seeded, name, token):
    before = _counts(seeded)
    body = json.dumps({"vehicleId": "v-1", "meterId": "m-2", "validFrom": "__T__"}).replace('"__T__"', token)

    problem(post_raw(client, MAPPINGS, body), 422, "json", "validFrom")

    assert _counts(seeded) == before


QUERY_NUMBERS = ["1e309", "-1e309", "NaN", "Infinity", "-Infinity", "1" + "0" * 400, "true", "0x10", "", "5\x00"]


@pytest.mark.parametrize("value", QUERY_NUMBERS, ids=[v if len(v) < 10 else "10**400" for v in QUERY_NUMBERS])
@pytest.mark.parametrize(
    ("url", "param"),
    [
        ("/v1/meters", "silentForMinutes"),
        ("/v1/vehicles", "socBelow"),
        ("/v1/vehicles", "page"),
        ("/v1/alerts", "page_size"),
        ("/v1/analytics/fleet", "page"),
    ],
)
def test_hostile_numbers_in_query_parameters_are_422_naming_the_parameter(client, value, url, param):
    problem(client.get(f"{url}?{urlencode({param: value})}"), 422, "query", param)


@pytest.mark.parametrize("url", ["/v1/meters", "/v1/vehicles", "/v1/mappings", "/v1/analytics/fleet", "/v1/alerts"])
@pytest.mark.parametrize("page", ["92233720368547760", str(2**63), "1000000001"])
def test_hostile_page_numbers_past_the_bound_are_422_not_a_database_error(client, url, page):
    """A page whose OFFSET overflowed PostgreSQL's bigint was a 500 (found by the fuzzer)."""
    problem(client.get(f"{url}?page={page}"), 422, "query", "page")


@pytest.mark.parametrize("url", ["/v1/meters", "/v1/vehicles", "/v1/mappings", "/v1/analytics/fleet", "/v1/alerts"])
def test_hostile_last_allowed_page_is_an_empty_page(client, url):
    resp = client.get(f"{url}?page=1000000000&page_size=1000")
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == []


@pytest.mark.parametrize(
    ("url", "param", "value"),
    [
        ("/v1/vehicles", "isCharging", "maybe"),
        ("/v1/vehicles", "isCharging", "2"),
        ("/v1/analytics/fleet", "belowThreshold", "yes please"),
        ("/v1/analytics/fleet", "startDate", "2026-02-30T00:00:00+00:00"),
        ("/v1/analytics/fleet", "startDate", "2026-01-01T00:00:00+24:00"),
        ("/v1/analytics/fleet", "startDate", "+275760-09-13T00:00:00Z"),
        ("/v1/analytics/fleet", "endDate", "0000-01-01T00:00:00+00:00"),
        ("/v1/analytics/performance/v-1", "startDate", "2026-01-01T00:00:00"),  # no offset
        ("/v1/analytics/performance/v-1", "startDate", "2026-01-01T00:00:00+00:00\x00"),
        ("/v1/analytics/performance/v-1", "endDate", "2026-01-01T00:00:00\x00+05:00"),
        ("/v1/mappings", "at", "\U0001f50b"),
    ],
)
def test_hostile_dates_and_booleans_in_query_parameters_are_422(client, url, param, value):
    problem(client.get(f"{url}?{urlencode({param: value})}"), 422, "query", param)


@pytest.mark.parametrize(
    "timestamp",
    [
        (NOW - timedelta(minutes=1)).isoformat().replace("+00:00", "\x00+00:00"),
        (NOW - timedelta(minutes=1)).isoformat() + "\x00",
        (NOW - timedelta(minutes=1)).isoformat() + "\n",
        "9999-12-31T23:59:59+00:00",
        "0001-01-01T00:00:00+00:00",
        "+275760-09-13T00:00:00Z",
        "2026-11-26T23:00:00+99:00",
        "' OR 1=1 --",
        "",
    ],
    ids=[
        "NUL before offset",
        "NUL after",
        "newline",
        "year 9999",
        "year 1",
        "year 275760",
        "offset +99",
        "SQL",
        "empty",
    ],
)
def test_hostile_timestamps_in_readings_are_422_naming_the_field(client, seeded, timestamp):
    before = _counts(seeded)
    problem(client.post(INGEST, json=meter_reading(timestamp=timestamp)), 422, "json", "payload", "timestamp")
    assert _counts(seeded) == before


# --- content types, duplicate keys, invalid UTF-8 ------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml", ""],
)
@pytest.mark.parametrize("url", [INGEST, MAPPINGS])
def test_hostile_wrong_content_type_is_415(client, seeded, url, content_type):
    before = _counts(seeded)
    body = json.dumps(meter_reading() if url == INGEST else {"vehicleId": "v-1", "meterId": "m-2"})

    problem(post_raw(client, url, body, content_type), 415)

    assert _counts(seeded) == before


_PAYLOAD = json.dumps(meter_reading()["payload"])
DUPLICATES = [
    (INGEST, '{"type": "METER", "type": "VEHICLE", "payload": ' + _PAYLOAD + "}", "'type'"),
    (INGEST, '{"type": "METER", "payload": {"meterId": "m-evil", ' + _PAYLOAD[1:] + "}", "'meterId'"),
    (INGEST, "[" + json.dumps(meter_reading()) + ', {"type": "METER", "payload": {}, "payload": {}}]', "'payload'"),
    (MAPPINGS, '{"vehicleId": "v-1", "meterId": "m-2", "meterId": "m-3"}', "'meterId'"),
]


@pytest.mark.parametrize(("url", "body", "key"), DUPLICATES, ids=["envelope", "payload", "batch item", "mapping"])
def test_hostile_duplicate_json_keys_are_400_naming_the_key(client, seeded, url, body, key):
    """A duplicated key has no meaning every parser agrees on (first or last wins): refused, never guessed."""
    before = _counts(seeded)

    detail = problem(post_raw(client, url, body), 400)["detail"]

    assert f"duplicate key {key}" in detail
    assert _counts(seeded) == before


INVALID_UTF8 = [
    b'{"type": "METER", "payload": {"meterId": "m-\xff\xfe", "kwhConsumedAc": 0.5}}',
    b'{"vehicleId": "v-\xc3\x28", "meterId": "m-1"}',
    b"\xef\xbb\xbf\xff",
    b'{"vehicleId": "\xed\xa0\x80"}',  # an encoded UTF-16 surrogate: not UTF-8
]


@pytest.mark.parametrize("body", INVALID_UTF8, ids=["in a string", "truncated sequence", "after a BOM", "surrogate"])
@pytest.mark.parametrize("url", [INGEST, MAPPINGS])
def test_hostile_invalid_utf8_is_400(client, seeded, url, body):
    before = _counts(seeded)
    problem(post_raw(client, url, body), 400)
    assert _counts(seeded) == before


@pytest.mark.parametrize(
    "body",
    ["", "   ", "{", '{"type": "METER"', "[1,]", "{'type': 'METER'}", "\x00", "nul", '"\\ud800"x'],
)
def test_hostile_malformed_json_is_400_at_ingest(client, seeded, body):
    before = _counts(seeded)
    problem(post_raw(client, INGEST, body), 400)
    assert _counts(seeded) == before


@pytest.mark.parametrize("body", ["{", '{"vehicleId": "v-1",', "[1,]", "\x00", "nul"])
def test_hostile_malformed_json_is_400_at_mappings(client, seeded, body):
    before = _counts(seeded)
    problem(post_raw(client, MAPPINGS, body), 400, "json")
    assert _counts(seeded) == before


@pytest.mark.parametrize(
    "url",
    [
        "/v1/meters?idPrefix=%FF%FE",
        "/v1/mappings?vehicleId=%C3%28",
        "/v1/meters/%FF",
        "/v1/analytics/performance/%ED%A0%80",
    ],
)
def test_hostile_invalid_utf8_in_urls_is_never_a_5xx(client, url):
    """Werkzeug decodes invalid percent-encoded UTF-8 with replacement characters: an id nobody has."""
    resp = client.get(url)
    if resp.status_code == 200:
        assert resp.get_json() == []
    else:
        problem(resp, 404)


# --- headers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["k" * 10_000, "' OR 1=1 --", "fk_\u00e9\u00e8", "", "fk_" + "\x7f" * 10],
    ids=["10k characters", "SQL", "latin-1", "empty", "DEL"],
)
@pytest.mark.parametrize(("method", "url"), [("GET", "/v1/meters"), ("POST", INGEST), ("POST", MAPPINGS)])
def test_hostile_api_keys_are_401(make_client, seeded, key, method, url):
    before = _counts(seeded)
    client = make_client(role=None)

    resp = client.open(url, method=method, headers={API_KEY_HEADER: key}, json=meter_reading())

    problem(resp, 401)
    assert resp.headers["WWW-Authenticate"] == "ApiKey"
    assert _counts(seeded) == before


# --- the public endpoints: health, readiness, metrics, docs --------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/health?x=' OR 1=1 --",
        "/ready?%00=%00",
        "/metrics?name[]=fleet_readings_stored_total&name[]=%FF",
        "/openapi.json?x=" + "%F0%9F%94%8B" * 100,
    ],
)
def test_hostile_query_strings_on_public_endpoints_are_ignored(client, url):
    resp = client.get(url)
    assert resp.status_code == 200, resp.get_data()[:300]


@pytest.mark.parametrize(
    "path",
    [
        "/docs/assets/%00",
        "/docs/assets/..%2F..%2Fpyproject.toml",
        "/docs/assets/%2e%2e/%2e%2e/api/__init__.py",
        "/docs/assets/" + "a" * 5000,
        "/docs/assets/%FF",
        "/docs/assets/swagger-ui.css%00.js",
    ],
)
def test_hostile_docs_asset_paths_are_404(client, path):
    problem(client.get(path), 404)
