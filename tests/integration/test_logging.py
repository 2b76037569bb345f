"""JSON logs with request ids, and no secrets in them: the app through the Flask test client on both engines
(its stdout, file descriptor 1, captured with capfd), and a real gunicorn on the native engine (its log file:
gunicorn's lines, access lines and the app's)."""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime

import pytest
from flask import request
from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy.engine import make_url

from api import create_app
from api.logging_setup import REQUEST_ID_HEADER
from config import Settings
from tests.integration.gunicorn_server import gunicorn, http
from tests.support.api import device_key
from tests.support.builders import meter_reading

URL = "/v1/telemetry/ingest"
HEX_ID = re.compile(r"[0-9a-f]{32}")
READING = meter_reading("log-m", minutes_ago=2)

probe = Blueprint("log_probe", __name__, url_prefix="/test-log", description="Test-only: a view that fails")


@probe.route("/boom")
class Boom(MethodView):
    def get(self):
        """Fails with the caller's key in the exception message: a careless bug the redaction must catch."""
        raise RuntimeError(f"could not handle key {request.headers.get('X-API-Key')}")


def json_lines(text: str) -> list[dict]:
    """Every line of `text` as JSON: a line that is not JSON fails the test."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def rejected_lines(lines: list[dict], status: int) -> list[dict]:
    return [line for line in lines if line["logger"] == "api.metrics" and line.get("status") == status]


def test_request_id_from_the_client_is_echoed_and_logged(capfd, make_client):
    client = make_client("device")
    capfd.readouterr()
    resp = client.post(URL, json={"type": "METER", "payload": {}}, headers={REQUEST_ID_HEADER: "edge-7f3a.42:b"})
    assert resp.status_code == 422
    assert resp.headers[REQUEST_ID_HEADER] == "edge-7f3a.42:b"
    [line] = rejected_lines(json_lines(capfd.readouterr().out), 422)
    assert line["request_id"] == "edge-7f3a.42:b"
    assert line["level"] == "INFO" and line["reason"] == "validation" and line["endpoint"] == "ingest.Ingest"
    assert isinstance(line["pid"], int) and line["time"].startswith(str(datetime.now(UTC).year))


@pytest.mark.parametrize(
    "incoming",
    [None, "", "has spaces", "x" * 65, 'quote"d', "tab\there", "caf\u00e9", "fk_" + "A" * 43],
    ids=["missing", "empty", "spaces", "too long", "quote", "control character", "not ASCII", "looks like a key"],
)
def test_request_id_is_generated_when_missing_or_invalid(capfd, client, incoming):
    capfd.readouterr()
    headers = {} if incoming is None else {REQUEST_ID_HEADER: incoming}
    resp = client.post(URL, json=READING, headers=headers)
    assert resp.status_code == 401
    generated = resp.headers[REQUEST_ID_HEADER]
    assert HEX_ID.fullmatch(generated)
    [line] = rejected_lines(json_lines(capfd.readouterr().out), 401)
    assert line["request_id"] == generated


def test_each_request_gets_its_own_id(client):
    ids = {client.get("/health").headers[REQUEST_ID_HEADER] for _ in range(3)}
    assert len(ids) == 3


def test_app_logs_hold_no_api_key_and_no_database_password(database_url, engine_kind, clean_db, capfd):
    password = "pw-" + secrets.token_hex(8)
    url = make_url(database_url).set(password=password).render_as_string(hide_password=False)
    pool_size = "0" if engine_kind == "embedded" else "2"  # the embedded engine serves one connection at a time
    app = create_app(Settings.from_env({"DATABASE_URL": url, "FLEET_DB_POOL_SIZE": pool_size}))
    app.extensions["flask-smorest"]["apis"][""]["ext_obj"].register_blueprint(probe)
    key, wrong_key = device_key(clean_db), "fk_" + secrets.token_urlsafe(32)
    client = app.test_client()
    try:
        assert client.post(URL, json=READING, headers={"X-API-Key": key}).status_code == 200
        assert client.post(URL, json=READING, headers={"X-API-Key": wrong_key}).status_code == 401
        assert client.post(URL, json={"type": "METER", "payload": {}}, headers={"X-API-Key": key}).status_code == 422
        failed = client.get("/test-log/boom", headers={"X-API-Key": key})
        assert failed.status_code == 500
    finally:
        app.extensions["fleet.db"].dispose()
    out = capfd.readouterr().out
    lines = json_lines(out)

    assert key not in out and wrong_key not in out and password not in out
    # What is logged instead: the URL with its password masked, the keys' display prefixes at most.
    assert any("API app created" in line["message"] and ":***@" in line["message"] for line in lines)
    assert rejected_lines(lines, 401) and rejected_lines(lines, 422)
    failed_id = failed.headers["X-Request-ID"]
    crash = [line for line in lines if line.get("exc_info") and line.get("request_id") == failed_id]
    assert crash, "the 500 was not logged with its traceback and request id"
    assert all(f"{key[:11]}...[redacted]" in line["exc_info"] for line in crash)
    assert all("HTTP_X_API_KEY" not in line["message"] and "X-Api-Key" not in line["message"] for line in lines)


@pytest.mark.native
def test_gunicorn_logs_are_json_with_request_ids_and_no_secrets(clean_db, tmp_path):
    password = "pw-" + secrets.token_hex(8)
    env = {
        # The test cluster trusts local connections: the password is sent nowhere, but must not be logged.
        "DATABASE_URL": clean_db.url.set(password=password).render_as_string(hide_password=False),
        "FLEET_DB_POOL_SIZE": "2",
    }
    key, wrong_key = device_key(clean_db), "fk_" + secrets.token_urlsafe(32)
    with gunicorn(env, tmp_path / "gunicorn.log", workers=2, threads=2) as server:
        ok = http(server.url + URL, READING, key=key, headers={REQUEST_ID_HEADER: "client-rid-0001"})
        assert ok.status == 200 and ok.headers["x-request-id"] == "client-rid-0001"
        refused = http(server.url + URL, READING, key=wrong_key)
        assert refused.status == 401
        invalid = http(server.url + URL + "?source=gw-1", {"type": "METER", "payload": {}}, key=key)
        assert invalid.status == 422
        assert http(server.url + "/metrics").status == 200
    text = server.log.read_text()
    lines = json_lines(text)  # everything gunicorn and the app wrote is a JSON line

    assert key not in text and wrong_key not in text and password not in text
    assert any("API app created" in line["message"] and ":***@" in line["message"] for line in lines)
    access = {line["request_id"]: line for line in lines if line["logger"] == "gunicorn.access"}
    assert access["client-rid-0001"]["path"] == URL and access["client-rid-0001"]["status"] == 200
    refused_id, invalid_id = refused.headers["x-request-id"], invalid.headers["x-request-id"]
    assert HEX_ID.fullmatch(refused_id) and access[refused_id]["status"] == 401
    assert access[invalid_id]["status"] == 422 and access[invalid_id]["query"] == "source=gw-1"
    fields = {"time", "level", "pid", "remote_addr", "method", "duration_ms"}
    assert all(set(line) >= fields for line in access.values())
    # The app's own lines for those requests carry the same ids.
    assert [line["request_id"] for line in rejected_lines(lines, 401)] == [refused_id]
    assert [line["request_id"] for line in rejected_lines(lines, 422)] == [invalid_id]
