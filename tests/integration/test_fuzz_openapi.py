"""Fuzzing of every operation in the app's own OpenAPI document (schemathesis), on both engines.

The document is read from the app itself through the WSGI test interface (`/openapi.json`), so whatever
flask-smorest generates is what gets fuzzed: a new endpoint is covered the day it is registered.

Every generated request (valid and invalid ones, schemathesis' examples, coverage and fuzzing phases) goes
through the Flask test client to an app on the engine under test, with an admin key, and every answer must:
- never be a 5xx (`not_a_server_error`);
- have a documented status code, content type and headers, and a body matching the documented schema;
- reject data that breaks the schema with a 4xx and accept data that fits it (`negative_data_rejection`,
  `positive_data_acceptance`, with the statuses our contract allows: see CONFIG);
- and our own checks (OUR_CHECKS): the status is listed for the operation itself (not only through
  flask-smorest's catch-all `default`), every error is a problem document, X-Pagination is JSON.
The same operations without a key: 401 everywhere a key is needed, and nothing written.

Bounded and reproducible: a fixed seed, derandomized generation, no example database, at most MAX_EXAMPLES
fuzzing examples per operation (NO_KEY_EXAMPLES without a key) and DEADLINE per example; about 30 s per
engine here. The embedded engine's one connection is no obstacle: the test client makes one request at a time.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import hypothesis
import pytest
import schemathesis
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.engine import Engine

import db
from api import create_app
from api.auth import API_KEY_HEADER
from api.problems import PROBLEM_JSON
from config import Settings
from db import keys, readings
from db.schema import alerts, vehicle_meter_mapping

#: Fuzzing examples per operation (the examples and coverage phases add their own, bounded, cases).
MAX_EXAMPLES = 30
#: Without a key every protected operation answers 401 before reading anything: a sample is enough.
NO_KEY_EXAMPLES = 5
SEED = 20_260_707
#: Longest one example (request and checks) may take: a request this slow is a failure too. Generous, for the
#: embedded engine on a busy 2-core machine (examples take 5-100 ms there when it is idle).
DEADLINE = timedelta(seconds=5)
#: Hypothesis' own checks that would fail the run for the machine's speed rather than for the app: the app
#: and its seeded database are built once per operation, not per example (every example may see the previous
#: ones' writes, as a real server would), and generating data is slow on a loaded machine.
SUPPRESSED = [hypothesis.HealthCheck.function_scoped_fixture, hypothesis.HealthCheck.too_slow]

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "database": "none",
            # Query parameters the document does not name are ignored, not refused (cache busters, newer clients
            # against an older server); schemathesis would call accepting them a failure.
            "allow-extra-parameters": False,
        },
        "checks": {
            # Positive data may still be refused for reasons no schema can state: an unknown vehicle (404),
            # a re-map that would rewrite the past (409), a reading timestamp outside the accepted window (422).
            "positive_data_acceptance": {"expected-statuses": ["2xx", "404", "409", "422"]},
        },
    }
)


# The OpenAPI document does not depend on the database: it is read from an app whose engine never connects.
DOCUMENT_APP = create_app(Settings.from_env({}), engine=db.make_engine("postgresql+psycopg://x@127.0.0.1:1/none"))
schema = schemathesis.openapi.from_wsgi("/openapi.json", DOCUMENT_APP, config=CONFIG)

#: Tables a request can write to: a request without a key must change none of them.
WRITTEN_TABLES = ("meter_readings", "vehicle_readings", "meters_current", "vehicles_current", "vehicle_meter_mapping")

NOW = datetime.now(UTC).replace(microsecond=0)


def _seed(eng: Engine) -> None:
    """A meter, a vehicle mapped to it, a reading each and an alert: lookups and listings answer with real bodies."""
    with eng.begin() as conn:
        readings.insert_meter_readings(conn, [readings.MeterReading("m-1", NOW - timedelta(minutes=5), 0.25, 230.0)])
        readings.insert_vehicle_readings(
            conn, [readings.VehicleReading("v-1", NOW - timedelta(minutes=5), 50.0, 0.2, 30.0, True)]
        )
        conn.execute(
            vehicle_meter_mapping.insert(),
            {"vehicle_id": "v-1", "meter_id": "m-1", "valid_from": NOW - timedelta(days=1)},
        )
        conn.execute(
            alerts.insert(),
            {
                "kind": "silent_device",
                "device_type": "meter",
                "device_id": "m-1",
                "details": {"silentMinutes": 15, "lastRecordedAt": NOW.isoformat()},
            },
        )


@pytest.fixture
def fuzz_app(clean_db: Engine) -> tuple[Flask, str]:
    """An app on the engine under test (no rate limit: the fuzzer is one fast client), seeded, and an admin key."""
    settings = Settings.from_env({"FLEET_RATE_LIMIT": "off"})
    app = create_app(settings, engine=clean_db)
    _seed(clean_db)
    with clean_db.begin() as conn:
        admin_key = keys.create_key(conn, "fuzz-admin", "admin", None)[1]
    return app, admin_key


# --- checks of our own, beside schemathesis' -----------------------------------------------------------------


def _probe(response: schemathesis.Response, case: schemathesis.Case) -> bool:
    """A request of another method than the operation's: schemathesis' unsupported_method check (405 + Allow)."""
    return (response.request.method or "").upper() != case.operation.method.upper()


def status_code_explicitly_documented(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """The status is listed under the operation's responses: flask-smorest adds a `default` error response to
    every operation, which would make schemathesis' own check accept any status at all."""
    if _probe(response, case):
        return
    documented = set(case.operation.definition.raw["responses"]) - {"default"}
    if str(response.status_code) not in documented:
        raise AssertionError(
            f"{case.operation.label} answered {response.status_code}, not in its documented {sorted(documented)}"
        )


def errors_are_problem_documents(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Every 4xx/5xx is an RFC 9457 problem document whose status is the response's."""
    if response.status_code < 400 or (response.status_code == 503 and case.operation.path == "/ready"):
        return
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.startswith(PROBLEM_JSON), (response.status_code, content_type)
    body = json.loads(response.content)
    assert body["status"] == response.status_code, body
    assert body["title"] and body["type"], body


def pagination_header_is_json(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """X-Pagination is a JSON object of page numbers and counts (schemathesis does not read header `content`)."""
    raw = response.headers.get("x-pagination")
    if raw is None:
        return
    meta = json.loads(raw[0])
    assert isinstance(meta, dict) and meta, raw
    assert all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in meta.values()), meta
    assert meta["total"] >= 0, meta


OUR_CHECKS = [status_code_explicitly_documented, errors_are_problem_documents, pagination_header_is_json]


@schema.parametrize()
@hypothesis.settings(suppress_health_check=SUPPRESSED, deadline=DEADLINE)
def test_fuzz_every_operation_with_an_admin_key(case: schemathesis.Case, fuzz_app, engine_kind: str) -> None:
    """No 5xx, a documented status, content type, headers and body for anything an admin can send."""
    app, admin_key = fuzz_app
    response = case.call_and_validate(app=app, headers={API_KEY_HEADER: admin_key}, additional_checks=OUR_CHECKS)
    if response.request.headers.get(API_KEY_HEADER) == admin_key:  # some cases leave the key out on purpose
        assert response.status_code not in (401, 403), response.content  # an admin key opens every operation


@schema.parametrize()
@hypothesis.settings(suppress_health_check=SUPPRESSED, deadline=DEADLINE, max_examples=NO_KEY_EXAMPLES)
def test_fuzz_every_operation_without_a_key(case: schemathesis.Case, fuzz_app, engine_kind: str) -> None:
    """Without a key: 401 with WWW-Authenticate on every protected operation, whatever else is sent; the
    public ones answer as documented. Nothing is written."""
    app, _ = fuzz_app
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != API_KEY_HEADER.lower()}
    before = _row_counts(fuzz_app_engine(app))
    response = case.call_and_validate(app=app, additional_checks=OUR_CHECKS)
    method = case.method.upper()
    if method == "OPTIONS":  # answered by Flask itself, no key needed: what the path allows
        assert response.status_code == 200, response.content
        assert case.operation.method.upper() in response.headers["allow"][0], response.headers
    elif method not in (case.operation.method.upper(), "HEAD"):  # another method on the same path
        assert response.status_code == 405, response.content
        assert case.operation.method.upper() in response.headers["allow"][0], response.headers
    elif case.operation.definition.raw.get("security"):
        assert response.status_code == 401, (response.status_code, response.content)
        assert response.headers["www-authenticate"] == ["ApiKey"]
    else:
        assert response.status_code < 400 or response.status_code == 503, response.content
    assert _row_counts(fuzz_app_engine(app)) == before


def fuzz_app_engine(app: Flask) -> Engine:
    return app.extensions["fleet.db"]


def _row_counts(eng: Engine) -> dict[str, int]:
    with eng.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in WRITTEN_TABLES}


def test_fuzz_document_covers_every_route() -> None:
    """Every route of the app but the docs page, its assets, the document itself and the operator page (HTML for
    people, tested in test_ui_pages and tests/browser) is an operation of the document, so the tests above fuzz it."""
    routes = {
        (rule.rule, method)
        for rule in DOCUMENT_APP.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
        if not rule.rule.startswith(("/docs", "/openapi.json", "/static", "/ui/"))
    }
    documented = {
        (op.path.replace("{", "<").replace("}", ">"), op.method.upper())
        for op in (result.ok() for result in schema.get_all_operations())
    }
    assert routes == documented
    assert len(documented) >= 13


def _operation(method: str, path: str) -> schemathesis.APIOperation:
    return next(op for op in (r.ok() for r in schema.get_all_operations()) if (op.method, op.path) == (method, path))


#: Requests the fuzzer cannot be expected to guess (known ids, timestamps of the last minutes): each answers its
#: documented success status with a body that matches the document, so the 2xx schemas are checked with data.
KNOWN_GOOD = [
    ("get", "/v1/meters/{meter_id}", {"path_parameters": {"meter_id": "m-1"}}, 200),
    ("get", "/v1/vehicles/{vehicle_id}", {"path_parameters": {"vehicle_id": "v-1"}}, 200),
    ("get", "/v1/meters", {"query": {"idPrefix": "m-"}}, 200),
    ("get", "/v1/vehicles", {"query": {"isCharging": "true"}}, 200),
    ("get", "/v1/mappings", {"query": {"vehicleId": "v-1"}}, 200),
    ("get", "/v1/alerts", {"query": {"status": "all"}}, 200),
    ("get", "/v1/analytics/performance/{vehicle_id}", {"path_parameters": {"vehicle_id": "v-1"}}, 200),
    ("get", "/v1/analytics/fleet", {}, 200),
    (
        "post",
        "/v1/telemetry/ingest",
        {
            "body": [
                {
                    "type": "METER",
                    "payload": {"meterId": "m-1", "kwhConsumedAc": 0.5, "voltage": 231.0, "timestamp": "{now}"},
                },
                {
                    "type": "VEHICLE",
                    "payload": {
                        "vehicleId": "v-1",
                        "soc": 51.5,
                        "kwhDeliveredDc": 0.45,
                        "batteryTemp": 30.5,
                        "isCharging": True,
                        "timestamp": "{now}",
                    },
                },
            ]
        },
        200,
    ),
    ("post", "/v1/mappings", {"body": {"vehicleId": "v-2", "meterId": "m-1"}}, 201),
    ("post", "/v1/mappings", {"body": {"vehicleId": "v-1", "meterId": "m-1"}}, 200),
    ("get", "/ready", {}, 200),
    ("get", "/metrics", {}, 200),
]


@pytest.mark.parametrize(
    ("method", "path", "parts", "status"), KNOWN_GOOD, ids=[f"{m.upper()} {p} {s}" for m, p, _, s in KNOWN_GOOD]
)
def test_fuzz_known_good_requests_answer_as_documented(
    fuzz_app, engine_kind: str, method: str, path: str, parts: dict[str, Any], status: int
) -> None:
    """Requests the fuzzer cannot guess answer their documented 2xx, with bodies that match the document."""
    app, admin_key = fuzz_app
    parts = json.loads(json.dumps(parts).replace("{now}", datetime.now(UTC).isoformat()))
    case = _operation(method, path).Case(**parts)
    response = case.call_and_validate(app=app, headers={API_KEY_HEADER: admin_key}, additional_checks=OUR_CHECKS)
    assert response.status_code == status, response.content
    body = json.loads(response.content) if path != "/metrics" else None
    if isinstance(body, list):
        assert body, f"{path}: the seeded data should be listed"
