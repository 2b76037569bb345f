"""Unknown query parameters are a 400 naming them (issue 16): a typo in a dashboard's filter must not return the
unfiltered fleet. Checked before the key and the database: an app on an unreachable database is enough."""

from __future__ import annotations

import pytest

from api import create_app
from config import Settings

UNREACHABLE = {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "FLEET_RATE_LIMIT": "off"}


@pytest.fixture(scope="module")
def client():
    return create_app(Settings.from_env(UNREACHABLE)).test_client()


def _operations(client) -> list[tuple[str, str, list[str]]]:
    """(method, path with its parameters filled, declared query parameter names) of every documented operation."""
    spec = client.get("/openapi.json").get_json()
    found = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in ("get", "post"):
                continue
            query = [p["name"] for p in op.get("parameters", []) + item.get("parameters", []) if p["in"] == "query"]
            found.append((method, path.replace("{vehicle_id}", "v-1").replace("{meter_id}", "m-1"), query))
    return found


def test_every_operation_refuses_an_unknown_query_parameter_by_name(client):
    # prometheus_client's name[] filters; probes' and devices' own parameters, which filter nothing
    lenient = ("/metrics", "/health", "/ready", "/v1/telemetry/ingest")
    operations = [op for op in _operations(client) if op[1] not in lenient]
    assert len(operations) >= 9  # every listing, status, analytics, alerts and mappings operation
    for method, path, _declared in operations:
        resp = client.open(f"{path}?belowTreshold=true&x=1", method=method.upper())
        assert resp.status_code == 400, (method, path, resp.status_code)
        body = resp.get_json()
        assert set(body["errors"]["query"]) == {"belowTreshold", "x"}, body
        assert "'belowTreshold'" in body["detail"] and "'x'" in body["detail"]


def test_declared_query_parameters_are_not_refused(client):
    # No key: the request gets as far as the auth check (401), past the query check.
    for method, path, declared in _operations(client):
        if not declared:
            continue
        query = "&".join(f"{name}=1" for name in declared)
        resp = client.open(f"{path}?{query}", method=method.upper())
        assert resp.status_code != 400 or "Unknown query parameter" not in resp.get_json()["detail"], (path, query)


def test_fleet_view_typo_is_refused_not_ignored(client):
    resp = client.get("/v1/analytics/fleet?belowTreshold=true")
    assert resp.status_code == 400
    assert "belowThreshold" in resp.get_json()["detail"]  # the answer lists what the operation does take


def test_ingest_and_probes_take_parameters_of_their_own(client):
    assert client.post("/v1/telemetry/ingest?source=gw-1", json={}).status_code == 401  # the key check, next
    assert client.get("/health?probe=lb").status_code == 200


def test_metrics_keeps_prometheus_name_filters(client):
    resp = client.get("/metrics?name[]=fleet_requests_shed_total")
    assert resp.status_code == 200


def test_options_and_head_are_not_refused_for_the_parameters_of_get(client):
    assert client.options("/v1/vehicles?idPrefix=v").status_code == 200  # Flask's own answer: the methods
    assert client.head("/v1/vehicles?idPrefix=v").status_code == 401  # past the query check, at the key check
    assert client.head("/v1/vehicles?idPrefx=v").status_code == 400
