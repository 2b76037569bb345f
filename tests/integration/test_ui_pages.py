"""The operator page (/ui/) without a browser, on every engine: sign-in, sessions, CSRF, escaping, bad queries,
and that a page shows the API's numbers. tests/browser/ drives it in headless Chromium."""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from markupsafe import escape

from tests.support.api import new_key
from tests.support.builders import NOW, meter_reading, vehicle_reading

pytestmark = pytest.mark.app(role=None, FLEET_RATE_LIMIT="off")

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
#: Ids are printable and space-free, so this is a valid vehicle id that would be markup if it were not escaped.
HTML_ID = "<b>EV&\"'"


def csrf_of(page: bytes) -> str:
    match = CSRF_RE.search(page.decode())
    assert match, "no csrf_token in the page"
    return match.group(1)


def sign_in(client: FlaskClient, key: str, next_path: str = "/ui/fleet"):
    form = client.get(f"/ui/login?next={next_path}")
    assert form.status_code == 200
    return client.post("/ui/login", data={"key": key, "csrf_token": csrf_of(form.data), "next": next_path})


@pytest.fixture
def read_key(clean_db) -> str:
    return new_key(clean_db, "read", name="operator")


@pytest.fixture
def signed_in(client: FlaskClient, read_key: str) -> FlaskClient:
    resp = sign_in(client, read_key)
    assert resp.status_code == 303, resp.data
    return client


def test_a_page_without_a_session_sends_the_browser_to_sign_in(client):
    resp = client.get("/ui/vehicles/ev-1?startDate=2026-01-01T00:00:00Z")
    assert resp.status_code == 303
    location = urlsplit(resp.headers["Location"])
    assert location.path == "/ui/login"
    assert parse_qs(location.query) == {"next": ["/ui/vehicles/ev-1?startDate=2026-01-01T00:00:00Z"]}
    assert client.get("/ui/").headers["Location"] == "/ui/fleet"


def test_sign_in_sets_an_http_only_strict_cookie_and_goes_where_the_visit_was_going(client, read_key, caplog):
    caplog.set_level(logging.DEBUG)
    resp = sign_in(client, read_key, "/ui/alerts?status=all")
    assert resp.status_code == 303
    assert resp.headers["Location"] == "/ui/alerts?status=all"
    cookie = next(c for c in resp.headers.getlist("Set-Cookie") if c.startswith("fleet_ui_session="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
    assert read_key not in cookie
    page = client.get("/ui/alerts?status=all")
    assert page.status_code == 200
    assert b'id="logout"' in page.data and b"operator" in page.data  # the key's name, never the key
    assert read_key.encode() not in page.data
    assert read_key not in caplog.text  # no log line holds the key


@pytest.mark.parametrize(
    ("role", "status", "words"),
    [(None, 401, b"unknown or revoked"), ("device", 403, b"device key cannot sign in")],
)
def test_a_wrong_or_device_key_cannot_sign_in(client, clean_db, role, status, words):
    key = "fk_not-a-key" if role is None else new_key(clean_db, role)
    resp = sign_in(client, key)
    assert resp.status_code == status
    assert b'class="error"' in resp.data and words in resp.data
    assert "fleet_ui_session=" not in " ".join(resp.headers.getlist("Set-Cookie"))
    with clean_db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM ui_sessions")).scalar_one() == 0


def test_sign_in_needs_the_forms_csrf_token_and_a_same_origin_post(client, read_key, clean_db):
    form = client.get("/ui/login")
    token = csrf_of(form.data)
    assert client.post("/ui/login", data={"key": read_key, "csrf_token": "forged"}).status_code == 400
    assert client.post("/ui/login", data={"key": read_key}).status_code == 400
    cross = client.post(
        "/ui/login", data={"key": read_key, "csrf_token": token}, headers={"Origin": "https://elsewhere.example"}
    )
    assert cross.status_code == 403
    with clean_db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM ui_sessions")).scalar_one() == 0
    assert client.post("/ui/login", data={"key": read_key, "csrf_token": token}).status_code == 303


@pytest.mark.parametrize("target", ["https://elsewhere.example/ui/fleet", "//elsewhere.example/ui/", "/v1/alerts"])
def test_after_sign_in_the_browser_never_leaves_the_page(client, read_key, target):
    resp = sign_in(client, read_key, target)
    assert resp.status_code == 303
    assert resp.headers["Location"] == "/ui/fleet"


def test_sign_out_needs_the_sessions_csrf_token_and_ends_the_session(signed_in, clean_db):
    page = signed_in.get("/ui/fleet")
    assert signed_in.post("/ui/logout", data={"csrf_token": "forged"}).status_code == 400
    assert signed_in.get("/ui/fleet").status_code == 200  # still signed in
    resp = signed_in.post("/ui/logout", data={"csrf_token": csrf_of(page.data)})
    assert resp.status_code == 303 and resp.headers["Location"] == "/ui/login"
    with clean_db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM ui_sessions")).scalar_one() == 0
    assert signed_in.get("/ui/fleet").status_code == 303


def test_revoking_the_key_signs_the_browser_out_and_sessions_expire(signed_in, clean_db):
    assert signed_in.get("/ui/silent").status_code == 200
    with clean_db.begin() as conn:
        conn.execute(sa.text("UPDATE api_keys SET revoked_at = now()"))
    assert signed_in.get("/ui/silent").status_code == 303
    with clean_db.begin() as conn:
        conn.execute(sa.text("UPDATE api_keys SET revoked_at = NULL"))
        conn.execute(sa.text("UPDATE ui_sessions SET created_at = now() - interval '2 days'"))
        conn.execute(sa.text("UPDATE ui_sessions SET expires_at = now() - interval '1 second'"))
    assert signed_in.get("/ui/silent").status_code == 303


def test_every_page_forbids_other_origins_and_caching(signed_in):
    for path in ("/ui/fleet", "/ui/alerts", "/ui/silent?type=meter", "/ui/login"):
        resp = signed_in.get(path)
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        if resp.status_code == 200:
            assert resp.headers["Cache-Control"] == "no-store"
    with signed_in.get("/ui/static/vendor/chart.umd.min.js") as chart:
        assert chart.status_code == 200 and chart.mimetype in ("text/javascript", "application/javascript")
        assert b"Chart" in chart.data[:2000]


def test_a_device_id_holding_html_is_shown_as_text(app, signed_in, clean_db):
    device = new_key(clean_db, "admin")
    ingest = app.test_client()
    ingest.environ_base["HTTP_X_API_KEY"] = device
    resp = ingest.post("/v1/telemetry/ingest", json=[vehicle_reading(HTML_ID, 5), meter_reading("m-<i>", 5)])
    assert resp.status_code == 200, resp.get_json()
    escaped = str(escape(HTML_ID)).encode()
    for path in ("/ui/fleet", "/ui/silent?minutes=1", "/ui/silent?type=meter&minutes=1"):
        page = signed_in.get(path)
        assert page.status_code == 200
        assert b"<b>EV" not in page.data and b"<i>" not in page.data
    assert escaped in signed_in.get("/ui/silent?minutes=1").data
    page = signed_in.get("/ui/vehicles/" + HTML_ID.replace("&", "%26").replace('"', "%22"))
    assert page.status_code == 200
    assert f'<h1 class="device-id">{escape(HTML_ID)}</h1>'.encode() in page.data
    assert b"<b>EV" not in page.data
    missing = signed_in.get("/ui/vehicles/%3Cscript%3Ex")
    assert missing.status_code == 404 and b"&lt;script&gt;x" in missing.data and b"<script>x" not in missing.data


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("/ui/fleet?sort=colour", b"sort"),
        ("/ui/fleet?pageSize=0", b"pageSize"),
        ("/ui/fleet?page=x", b"page"),
        ("/ui/fleet?startDate=2026-02-01T00:00:00Z&endDate=2026-01-01T00:00:00Z", b"startDate"),
        ("/ui/alerts?kind=colour", b"kind"),
        ("/ui/silent?type=toaster", b"type"),
        ("/ui/silent?minutes=-1", b"minutes"),
        ("/ui/vehicle?id=", b"id"),
    ],
)
def test_a_bad_query_is_a_400_page_naming_the_field(signed_in, query, field):
    resp = signed_in.get(query)
    assert resp.status_code == 400
    assert b"<code>" + field in resp.data


def test_the_vehicle_page_shows_the_apis_numbers(app, signed_in, clean_db):
    admin = app.test_client()
    admin.environ_base["HTTP_X_API_KEY"] = new_key(clean_db, "admin")
    hour = NOW.replace(minute=0, second=0) - timedelta(hours=2)
    start = (hour - timedelta(hours=1)).isoformat()
    assert (
        admin.post("/v1/mappings", json={"vehicleId": "ev-1", "meterId": "m-1", "validFrom": start}).status_code == 201
    )
    readings = [meter_reading("m-1", at=hour + timedelta(minutes=m), kwh=0.1 + m / 100) for m in range(0, 60, 7)]
    readings += [vehicle_reading("ev-1", at=hour + timedelta(minutes=m), kwh=0.09 + m / 200) for m in range(0, 60, 5)]
    assert admin.post("/v1/telemetry/ingest", json=readings).status_code == 200
    query = f"startDate={start.replace('+00:00', 'Z')}"
    api = admin.get(f"/v1/analytics/performance/ev-1?{query}").get_json()
    page = signed_in.get(f"/ui/vehicles/ev-1?{query}").data.decode()

    def shown(metric: str) -> str:
        match = re.search(rf'data-metric="{metric}" data-value="([^"]*)"', page)
        assert match, metric
        return match.group(1)

    assert shown("totalAcConsumed") == repr(api["energyMetrics"]["totalAcConsumed"])
    assert shown("totalDcDelivered") == repr(api["energyMetrics"]["totalDcDelivered"])
    assert shown("efficiencyRatio") == repr(api["energyMetrics"]["efficiencyRatio"])
    assert shown("maxTemperature") == repr(api["batteryMetrics"]["maxTemperature"])
    hours = re.findall(r'<tr data-hour="([^"]+)"', page)
    assert hours == [h["hour"] for h in api["hourlyBreakdown"]]
    assert re.findall(r'<tr data-meter-id="([^"]+)"', page) == ["m-1"]
    assert api["energyMetrics"]["totalAcConsumed"] == pytest.approx(sum(0.1 + m / 100 for m in range(0, 60, 7)))
