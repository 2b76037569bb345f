"""The operator web UI (api/ui/, under /ui/) in headless Chromium, served by a real gunicorn (conftest.py).

Every test watches its browser context from the first request: no console error, no uncaught error, no request
to anything but the app (`Watch.assert_clean`), and saves a PNG of each page it visits (var/test-artifacts/ui/).
The numbers a page shows are compared with the API's JSON for the same query, fetched with the read key: the
`data-value` attributes hold the JSON values, the text shows them formatted; the API's own answers are checked
against the readings the module sent (tests/support/fleet.py). With FLEET_UPDATE_README_SCREENSHOT=1 the fleet
overview and a vehicle page are also saved as the README's screenshots (docs/images/operator-fleet.png,
operator-vehicle.png; desktop, 1280x800):

    FLEET_UPDATE_README_SCREENSHOT=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/browser
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest
from playwright.sync_api import Page

from tests.support.browser import (
    HTML_ID,
    NO_METER_ID,
    PHONE,
    README_IMAGES,
    RECENT_VEHICLES,
    Shots,
    UiFleet,
    api_query,
    assert_csp_allows_only_self,
    assert_data_value,
    assert_fits_phone,
    assert_kwh_shown,
    assert_percent_shown,
    click_to,
    redirect_statuses,
    sign_in,
    table_rows,
    update_readme_screenshots,
    visit,
    watched_context,
)

pytestmark = pytest.mark.native

FLEET_COLUMNS = ("totalAcConsumed", "totalDcDelivered", "efficiencyRatio", "powerLoss", "belowThreshold")
KWH_COLUMNS = ("totalAcConsumed", "totalDcDelivered", "powerLoss")
SORT_KEYS = ("vehicleId", "totalAcConsumed", "totalDcDelivered", "efficiency", "powerLoss")
VEHICLE_METRICS = {
    "energyMetrics": ("totalAcConsumed", "totalDcDelivered", "efficiencyRatio", "powerLoss"),
    "batteryMetrics": ("avgTemperature", "maxTemperature", "minTemperature"),
    "correlation": ("matchRate", "typicalClockOffsetSeconds"),
}
STATUS_METRICS = ("soc", "batteryTemp", "isCharging", "recordedAt")


# --- helpers ------------------------------------------------------------------------------------------------


def signed_in_page(browsing, ui_fleet: UiFleet, shots: Shots, key: str | None = None) -> Page:
    page = browsing.context.new_page()
    response = sign_in(page, key or ui_fleet.read_key, shots)
    assert response.status == 200 and urlsplit(page.url).path == "/ui/fleet", page.url
    return page


def fleet_api(ui_fleet: UiFleet, ui_url: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The API's fleet rows and X-Pagination for the query of the UI's fleet page at `ui_url`."""
    body, headers = ui_fleet.api("/v1/analytics/fleet", api_query(ui_url))
    assert isinstance(body, list)
    return body, json.loads(headers["x-pagination"])


def assert_fleet_page_matches_api(page: Page, ui_fleet: UiFleet) -> list[dict[str, Any]]:
    """Rows, order, every number (data-value and text), links and paging of the fleet page equal the API's answer
    for the page's own query. Returns the API's rows."""
    expected, pagination = fleet_api(ui_fleet, page.url)
    rows = table_rows(page, "#fleet-table", "data-vehicle-id")
    assert [r["id"] for r in rows] == [v["vehicleId"] for v in expected], page.url
    for row, api_row in zip(rows, expected, strict=True):
        where = f"{page.url} {row['id']}"
        assert row["link"]["text"] == api_row["vehicleId"], where
        assert unquote(urlsplit(row["link"]["href"]).path) == f"/ui/vehicles/{api_row['vehicleId']}", where
        assert set(row["cells"]) >= set(FLEET_COLUMNS), where
        for col in FLEET_COLUMNS:
            assert_data_value(row["cells"][col]["value"], api_row[col], f"{where} {col}")
        for col in KWH_COLUMNS:
            assert_kwh_shown(row["cells"][col]["text"], api_row[col], f"{where} {col}")
        assert_percent_shown(row["cells"]["efficiencyRatio"]["text"], api_row["efficiencyRatio"], where)
    assert page.inner_text("[data-testid=total]").strip() == str(pagination["total"])
    page_info = f"Page {pagination['page']} of {max(1, pagination['total_pages'])}"
    assert page.inner_text("[data-testid=page-info]").strip() == page_info
    assert page.locator("a[rel=next]").count() == (1 if "next_page" in pagination else 0)
    assert page.locator("a[rel=prev]").count() == (1 if "previous_page" in pagination else 0)
    return expected


def assert_signed_in_chrome(page: Page) -> None:
    """The sign-out form and the navigation of every signed-in page."""
    assert page.locator("form#logout").count() == 1
    assert page.locator("form#logout input[name=csrf_token]").get_attribute("value")
    for path in ("/ui/fleet", "/ui/alerts", "/ui/silent"):
        assert page.locator(f'a[href="{path}"]').count() >= 1, path


def expected_fleet_numbers(ui_fleet: UiFleet, window: tuple) -> dict[str, dict[str, Any]]:
    """Per vehicle, what the readings sent add up to over `window` (tests/support/fleet.py)."""
    return ui_fleet.data.expected_fleet(*window)


def vehicle_path(vehicle_id: str, query: str = "") -> str:
    return f"/ui/vehicles/{quote(vehicle_id, safe='')}{'?' + query if query else ''}"


def save_readme_screenshot(page: Page, name: str) -> None:
    if update_readme_screenshots():
        README_IMAGES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(README_IMAGES / name))


# --- the Swagger docs page (the fixture's smoke check) ----------------------------------------------------


def test_docs_page_loads_in_chromium_with_no_error_and_no_request_leaving_the_app(browsing, ui_fleet, shots):
    # The docs page names no icon, so Chromium asks for /favicon.ico, which the app does not serve.
    browsing.watch.expect_error_status(f"{ui_fleet.url}/favicon.ico", 404)
    page = browsing.context.new_page()
    response = visit(page, "/docs", shots)
    assert response.status == 200
    page.wait_for_selector(".swagger-ui .info .title")
    page.wait_for_load_state("networkidle")
    shots.take(page, "docs-rendered")
    assert "Fleet telemetry" in page.inner_text(".swagger-ui .info .title")
    assert any(url.endswith("/openapi.json") for url in browsing.watch.requests)
    browsing.watch.assert_clean()


# --- signing in ---------------------------------------------------------------------------------------------


def test_a_visit_without_signing_in_lands_on_the_sign_in_page_and_then_on_the_page_asked_for(browsing, ui_fleet, shots):
    page = browsing.context.new_page()
    asked_for = "/ui/fleet?sort=-efficiency&pageSize=2"
    response = visit(page, asked_for, shots)
    assert redirect_statuses(response) == [303]
    landed = urlsplit(page.url)
    assert landed.path == "/ui/login" and parse_qs(landed.query)["next"] == [asked_for]
    assert page.get_attribute("input[name=key]", "type") == "password"
    assert page.get_attribute("input[name=csrf_token]", "type") == "hidden"
    assert page.get_attribute("input[name=csrf_token]", "value")
    assert page.locator("button[type=submit]").count() >= 1
    assert_csp_allows_only_self(response.headers["content-security-policy"])
    # Every page needs a session, and the sign-in page brings the visitor back.
    for path in ("/ui/fleet", "/ui/alerts?status=all", "/ui/silent?type=meter", vehicle_path(HTML_ID)):
        answer = browsing.context.request.get(path, max_redirects=0)
        assert answer.status == 303, path
        location = urlsplit(answer.headers["location"])
        (back_to,) = parse_qs(location.query)["next"]
        assert (location.path, unquote(back_to)) == ("/ui/login", unquote(path)), path

    # A wrong key: the form again, 401, and why; the key is nowhere to be seen.
    wrong = ui_fleet.read_key[:-4] + "xxxx"
    browsing.watch.expect_error_status(f"{ui_fleet.url}/ui/login", 401)
    page.fill("input[name=key]", wrong)
    response = click_to(page, page.locator("form:has(input[name=key]) button[type=submit]"), shots, "wrong-key")
    assert response.status == 401
    assert page.locator(".error").inner_text().strip()
    assert page.locator("input[name=key]").count() == 1
    assert wrong not in page.content()

    # The right key: back to the page asked for, sorted and paged as asked.
    page.fill("input[name=key]", ui_fleet.read_key)
    response = click_to(page, page.locator("form:has(input[name=key]) button[type=submit]"), shots, "signed-in")
    assert response.status == 200 and redirect_statuses(response) == [303]
    assert page.url == ui_fleet.url + asked_for
    assert_fleet_page_matches_api(page, ui_fleet)
    assert_signed_in_chrome(page)
    assert ui_fleet.read_key not in page.content()
    for key in (wrong, ui_fleet.read_key):
        assert not [url for url in browsing.watch.requests if key in unquote(url)], "a key in a URL"
    (cookie,) = [c for c in browsing.context.cookies() if c["name"] == "fleet_ui_session"]
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/ui")
    assert ui_fleet.read_key not in cookie["value"]

    # /ui/ is the fleet page.
    response = visit(page, "/ui/", shots, "ui-root")
    assert urlsplit(page.url).path == "/ui/fleet" and redirect_statuses(response)[0] in (301, 302, 303, 307, 308)

    # Signing out ends the session: the next visit lands on the sign-in page again.
    click_to(page, page.locator("form#logout button[type=submit]"), shots, "signed-out")
    assert urlsplit(page.url).path == "/ui/login"
    response = visit(page, "/ui/alerts", shots)
    assert urlsplit(page.url).path == "/ui/login" and parse_qs(urlsplit(page.url).query)["next"] == ["/ui/alerts"]
    browsing.watch.assert_clean()


def test_sign_in_needs_the_forms_csrf_token_and_a_key_that_may_read(browsing, ui_fleet, shots):
    page = browsing.context.new_page()
    visit(page, "/ui/login", shots)
    token = page.get_attribute("input[name=csrf_token]", "value")
    post = browsing.context.request.post
    assert post(f"{ui_fleet.url}/ui/login", form={"key": ui_fleet.read_key}, max_redirects=0).status == 400
    forged = {"key": ui_fleet.read_key, "csrf_token": "forged-" + (token or "")}
    assert post(f"{ui_fleet.url}/ui/login", form=forged, max_redirects=0).status == 400
    assert not [c for c in browsing.context.cookies() if c["name"] == "fleet_ui_session"]

    # A device key may not read: the form again, with why.
    browsing.watch.expect_error_status(f"{ui_fleet.url}/ui/login", 401, 403)
    page.fill("input[name=key]", ui_fleet.device_key)
    response = click_to(page, page.locator("form:has(input[name=key]) button[type=submit]"), shots, "device-key")
    assert response.status in (401, 403)
    assert page.locator(".error").inner_text().strip()
    assert ui_fleet.device_key not in page.content()

    # An admin key may.
    page.fill("input[name=key]", ui_fleet.admin_key)
    click_to(page, page.locator("form:has(input[name=key]) button[type=submit]"), shots, "admin-key")
    assert urlsplit(page.url).path == "/ui/fleet"
    assert_signed_in_chrome(page)
    browsing.watch.assert_clean()


# --- the fleet overview -------------------------------------------------------------------------------------


def test_fleet_page_shows_the_apis_numbers_for_the_default_window(browsing, ui_fleet, shots):
    page = signed_in_page(browsing, ui_fleet, shots)
    api_rows = assert_fleet_page_matches_api(page, ui_fleet)
    # The API's answer is what the readings sent add up to (the default window holds the recent ones).
    expected = expected_fleet_numbers(ui_fleet, ui_fleet.recent)
    assert {r["vehicleId"] for r in api_rows} == set(expected) == {v for v, *_ in RECENT_VEHICLES}
    for row in api_rows:
        e = expected[row["vehicleId"]]
        assert row["totalAcConsumed"] == pytest.approx(e["ac"], abs=1e-6)
        assert row["totalDcDelivered"] == pytest.approx(e["dc"], abs=1e-6)
        assert row["belowThreshold"] == (e["dc"] / e["ac"] < 0.85)
    assert sum(r["belowThreshold"] for r in api_rows) == 1  # the README's screenshot shows one
    save_readme_screenshot(page, "operator-fleet.png")
    browsing.watch.assert_clean()


def test_clicking_a_column_header_sorts_the_rows_as_the_api_does(browsing, ui_fleet, shots):
    page = signed_in_page(browsing, ui_fleet, shots)
    orders = set()
    for key in SORT_KEYS:
        for _ in ("first click", "second click"):
            click_to(page, page.locator(f"th a[data-sort={key}]"), shots, f"sort-{key}")
            sort = parse_qs(urlsplit(page.url).query)["sort"][0]
            assert sort.lstrip("-") == key, page.url
            orders.add((sort, tuple(r["vehicleId"] for r in assert_fleet_page_matches_api(page, ui_fleet))))
        assert {s for s, _ in orders if s.lstrip("-") == key} == {key, f"-{key}"}, "a second click reverses"
    assert len({o for _, o in orders}) > 2, "the data set sorts differently by different columns"
    browsing.watch.assert_clean()


def test_next_and_previous_pages_list_the_apis_pages(browsing, ui_fleet, shots):
    page = signed_in_page(browsing, ui_fleet, shots)
    visit(page, "/ui/fleet?sort=-totalDcDelivered&pageSize=2", shots)
    seen = [tuple(r["vehicleId"] for r in assert_fleet_page_matches_api(page, ui_fleet))]
    while page.locator("a[rel=next]").count():
        click_to(page, page.locator("a[rel=next]"), shots, "next")
        seen.append(tuple(r["vehicleId"] for r in assert_fleet_page_matches_api(page, ui_fleet)))
    assert len(seen) == 3 and [len(s) for s in seen] == [2, 2, 1]  # 5 vehicles, 2 a page
    click_to(page, page.locator("a[rel=prev]"), shots, "prev")
    assert tuple(r["vehicleId"] for r in assert_fleet_page_matches_api(page, ui_fleet)) == seen[1]
    all_at_once, _ = fleet_api(ui_fleet, "?sort=-totalDcDelivered")
    assert [v for s in seen for v in s] == [r["vehicleId"] for r in all_at_once]
    browsing.watch.assert_clean()


def test_below_threshold_filter_and_the_vehicle_search(browsing, ui_fleet, shots):
    page = signed_in_page(browsing, ui_fleet, shots)
    page.check("input[name=belowThreshold]")
    form = page.locator("form:has(input[name=belowThreshold])")
    click_to(page, form.locator("button[type=submit]"), shots, "below-threshold")
    assert parse_qs(urlsplit(page.url).query)["belowThreshold"] == ["true"]
    rows = assert_fleet_page_matches_api(page, ui_fleet)
    expected = expected_fleet_numbers(ui_fleet, ui_fleet.recent)
    assert [r["vehicleId"] for r in rows] == sorted(v for v, e in expected.items() if e["dc"] / e["ac"] < 0.85)

    vehicle_id = RECENT_VEHICLES[1][0]
    page.fill("form#find-vehicle input[name=id]", vehicle_id)
    click_to(page, page.locator("form#find-vehicle button[type=submit]"), shots, "find-vehicle")
    assert unquote(urlsplit(page.url).path) == f"/ui/vehicles/{vehicle_id}"
    assert page.inner_text("h1").strip() == vehicle_id
    browsing.watch.assert_clean()


# --- a vehicle ----------------------------------------------------------------------------------------------


def assert_vehicle_page_matches_api(page: Page, ui_fleet: UiFleet, vehicle_id: str) -> dict[str, Any]:
    """Summary, hourly table, status and mapping history of a vehicle page equal the API's answers for the
    page's own window. Returns the performance report."""
    query = api_query(page.url, page_size_default=None, keep=("startDate", "endDate"))
    report, _ = ui_fleet.api(f"/v1/analytics/performance/{quote(vehicle_id, safe='')}", query)
    status, _ = ui_fleet.api(f"/v1/vehicles/{quote(vehicle_id, safe='')}")
    mappings, _ = ui_fleet.api("/v1/mappings", {"vehicleId": vehicle_id, "page_size": "100"})
    assert isinstance(report, dict) and isinstance(status, dict) and isinstance(mappings, list)
    assert page.inner_text("h1").strip() == vehicle_id
    metrics = page.evaluate(
        "() => Object.fromEntries([...document.querySelectorAll('[data-metric]')]"
        ".map(e => [e.dataset.metric, {value: e.getAttribute('data-value'), text: e.textContent,"
        " status: !!e.closest('section#status')}]))"
    )
    for block, names in VEHICLE_METRICS.items():
        for name in names:
            assert name in metrics, f"no [data-metric={name}]"
            assert_data_value(metrics[name]["value"], report[block][name], f"{vehicle_id} {name}")
    energy = report["energyMetrics"]
    for name in ("totalAcConsumed", "totalDcDelivered", "powerLoss"):
        assert_kwh_shown(metrics[name]["text"], energy[name], f"{vehicle_id} {name}")
    assert_percent_shown(metrics["efficiencyRatio"]["text"], energy["efficiencyRatio"], vehicle_id)
    for name in STATUS_METRICS:
        assert name in metrics and metrics[name]["status"], f"no [data-metric={name}] in section#status"
        assert_data_value(metrics[name]["value"], status[name], f"{vehicle_id} status {name}")

    hours = table_rows(page, "#hourly-table", "data-hour")
    assert [h["id"] for h in hours] == [h["hour"] for h in report["hourlyBreakdown"]]
    for row, api_hour in zip(hours, report["hourlyBreakdown"], strict=True):
        where = f"{vehicle_id} {row['id']}"
        for col in ("acConsumed", "dcDelivered", "efficiency"):
            assert_data_value(row["cells"][col]["value"], api_hour[col], f"{where} {col}")
        assert_kwh_shown(row["cells"]["acConsumed"]["text"], api_hour["acConsumed"], where)
        assert_kwh_shown(row["cells"]["dcDelivered"]["text"], api_hour["dcDelivered"], where)
        assert_percent_shown(row["cells"]["efficiency"]["text"], api_hour["efficiency"], where)

    history = table_rows(page, "#mapping-history", "data-meter-id")
    assert [m["id"] for m in history] == [m["meterId"] for m in mappings]
    return report


def assert_chart_drawn(page: Page, ui_fleet: UiFleet, browsing) -> None:
    """Chart.js came from the app's /ui/static/ and drew on canvas#energy-chart."""
    assert any(urlsplit(u).path.startswith("/ui/static/") and "chart" in u.lower() for u in browsing.watch.requests), (
        "Chart.js not loaded from /ui/static/"
    )
    page.wait_for_function(
        """() => { const c = document.querySelector('canvas#energy-chart');
                   if (!c || !c.width || !c.height) return false;
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   for (let i = 3; i < d.length; i += 4) if (d[i]) return true;
                   return false; }""",
        timeout=5000,
    )


def test_vehicle_page_shows_the_apis_numbers_for_its_window(browsing, ui_fleet, shots):
    page = signed_in_page(browsing, ui_fleet, shots)
    below = next(r for r in fleet_api(ui_fleet, page.url)[0] if r["belowThreshold"])["vehicleId"]
    click_to(page, page.locator(f'#fleet-table tr[data-vehicle-id="{below}"] a'), shots, "vehicle-from-fleet")
    report = assert_vehicle_page_matches_api(page, ui_fleet, below)
    assert_chart_drawn(page, ui_fleet, browsing)

    # The same vehicle over the recent window given explicitly: the report is what its readings add up to.
    visit(page, vehicle_path(below, UiFleet.window_query(ui_fleet.recent)), shots, "vehicle-recent-window")
    report = assert_vehicle_page_matches_api(page, ui_fleet, below)
    expected = ui_fleet.data.expected_performance(below, *ui_fleet.recent)
    assert report["energyMetrics"]["totalAcConsumed"] == pytest.approx(expected["total_ac"], abs=1e-6)
    assert report["energyMetrics"]["totalDcDelivered"] == pytest.approx(expected["total_dc"], abs=1e-6)
    assert len(report["hourlyBreakdown"]) == 3
    assert_chart_drawn(page, ui_fleet, browsing)
    save_readme_screenshot(page, "operator-vehicle.png")

    # A vehicle no meter was ever mapped to: no AC in any hour, so no efficiency (shown as such); no mappings.
    visit(page, vehicle_path(NO_METER_ID, UiFleet.window_query(ui_fleet.old)), shots, "vehicle-no-meter")
    report = assert_vehicle_page_matches_api(page, ui_fleet, NO_METER_ID)
    expected = ui_fleet.data.expected_performance(NO_METER_ID, *ui_fleet.old)
    assert expected["efficiency"] is None and report["energyMetrics"]["efficiencyRatio"] is None
    assert all(h["acConsumed"] is None and h["dcDelivered"] for h in report["hourlyBreakdown"])
    assert page.locator("#mapping-history tr[data-meter-id]").count() == 0
    browsing.watch.assert_clean()


def test_an_unknown_vehicle_is_a_404_page(browsing, ui_fleet, shots):
    page = signed_in_page(browsing, ui_fleet, shots)
    browsing.watch.expect_error_status(f"{ui_fleet.url}/ui/vehicles/no-such-vehicle", 404)
    assert visit(page, vehicle_path("no-such-vehicle"), shots).status == 404
    assert "no-such-vehicle" in page.inner_text("main")
    browsing.watch.assert_clean()


# --- device ids are text ------------------------------------------------------------------------------------


def test_a_device_id_with_html_in_it_shows_as_text_everywhere(browsing, ui_fleet, shots):
    # Asked for before signing in: the sign-in page brings the visitor back to that vehicle.
    page = browsing.context.new_page()
    visit(page, vehicle_path(HTML_ID, UiFleet.window_query(ui_fleet.old)), shots, "html-id-signed-out")
    assert urlsplit(page.url).path == "/ui/login"
    sign_in(page, ui_fleet.read_key, shots)
    assert unquote(urlsplit(page.url).path) == f"/ui/vehicles/{HTML_ID}"
    assert page.inner_text("h1") == HTML_ID
    assert_vehicle_page_matches_api(page, ui_fleet, HTML_ID)

    visit(page, f"/ui/fleet?{UiFleet.window_query(ui_fleet.old)}", shots, "fleet-old-window")
    rows = assert_fleet_page_matches_api(page, ui_fleet)  # the vehicle with no meter: its nulls shown as such
    assert {r["vehicleId"] for r in rows} == {HTML_ID, NO_METER_ID}
    (no_meter,) = [r for r in rows if r["vehicleId"] == NO_METER_ID]
    assert no_meter["totalAcConsumed"] is None and no_meter["efficiencyRatio"] is None
    link = page.locator(f"#fleet-table tr[data-vehicle-id={json.dumps(HTML_ID)}] a")
    assert link.inner_text() == HTML_ID
    assert page.locator("b").count() == 0, "markup from a device id was rendered"

    click_to(page, link, shots, "html-id-vehicle")
    assert page.inner_text("h1") == HTML_ID
    assert page.locator("b").count() == 0
    assert HTML_ID in page.title()
    assert_vehicle_page_matches_api(page, ui_fleet, HTML_ID)

    # Found through the search box, and listed as an alert and as a silent vehicle.
    visit(page, "/ui/fleet", shots)
    page.fill("form#find-vehicle input[name=id]", HTML_ID)
    click_to(page, page.locator("form#find-vehicle button[type=submit]"), shots, "html-id-search")
    assert page.inner_text("h1") == HTML_ID
    for path, table, id_attr in (
        ("/ui/alerts?status=all&kind=silent_device", "#alerts-table", "data-alert-id"),
        ("/ui/silent?type=vehicle", "#silent-table", "data-device-id"),
    ):
        visit(page, path, shots)
        texts = [r["link"]["text"] for r in table_rows(page, table, id_attr) if r["link"]]
        assert HTML_ID in texts, path
        assert page.locator("b").count() == 0, path
    browsing.watch.assert_clean()


# --- alerts and silent devices ------------------------------------------------------------------------------


def test_alerts_page_lists_the_apis_alerts_and_counts_per_kind(browsing, ui_fleet, shots):
    page = signed_in_page(browsing, ui_fleet, shots)
    for query in ("status=all", "status=open&kind=low_efficiency", "status=all&kind=silent_device", "status=resolved"):
        visit(page, f"/ui/alerts?{query}", shots, f"alerts-{query}")
        expected, headers = ui_fleet.api("/v1/alerts", f"{query}&page_size=50")
        assert isinstance(expected, list)
        rows = table_rows(page, "#alerts-table", "data-alert-id")
        assert [r["id"] for r in rows] == [str(a["id"]) for a in expected], query
        total = json.loads(headers["x-pagination"])["total"]
        assert page.inner_text("[data-testid=page-info]").strip() == f"Page 1 of {max(1, -(-total // 50))}"
        status = parse_qs(query)["status"][0]
        for kind in ("low_efficiency", "correlation_lost", "silent_device"):
            _, kind_headers = ui_fleet.api("/v1/alerts", {"status": status, "kind": kind})
            shown = page.locator(f"[data-kind={kind}] [data-count]").inner_text().strip()
            assert shown == str(json.loads(kind_headers["x-pagination"])["total"]), (query, kind)
    # What the readings say: the vehicle below the threshold has a low-efficiency alert; every device is silent.
    visit(page, "/ui/alerts?status=open&kind=low_efficiency", shots)
    expected = expected_fleet_numbers(ui_fleet, ui_fleet.recent)
    low = sorted(v for v, e in expected.items() if e["dc"] / e["ac"] < 0.85)
    assert sorted(r["link"]["text"] for r in table_rows(page, "#alerts-table", "data-alert-id")) == low
    browsing.watch.assert_clean()


def test_silent_page_lists_the_apis_silent_devices(browsing, ui_fleet, shots):
    page = signed_in_page(browsing, ui_fleet, shots)
    vehicles = {v for v, _ in ui_fleet.data.vehicles}
    meters = {m for m, _ in ui_fleet.data.meters}
    for device_type, path, id_key, everyone in (
        ("vehicle", "/v1/vehicles", "vehicleId", vehicles),
        ("meter", "/v1/meters", "meterId", meters),
    ):
        visit(page, f"/ui/silent?type={device_type}&minutes=30", shots, f"silent-{device_type}")
        expected, _ = ui_fleet.api(path, {"silentForMinutes": "30", "page_size": "50"})
        assert isinstance(expected, list)
        rows = table_rows(page, "#silent-table", "data-device-id")
        assert [r["id"] for r in rows] == [d[id_key] for d in expected]
        assert {r["id"] for r in rows} == everyone  # the newest reading of each is over an hour old
    browsing.watch.assert_clean()


# --- phone width --------------------------------------------------------------------------------------------


def test_pages_are_usable_at_phone_width(browser, ui_fleet, shots):
    phone = watched_context(browser, ui_fleet.url, viewport=PHONE, is_mobile=True, has_touch=True)
    try:
        page = phone.context.new_page()
        visit(page, "/ui/login", shots, "phone-login")
        assert_fits_phone(page)
        sign_in(page, ui_fleet.read_key, shots)
        vehicle_id = RECENT_VEHICLES[0][0]
        for path, table in (
            ("/ui/fleet", "#fleet-table"),
            (vehicle_path(vehicle_id), "#mapping-history"),
            ("/ui/alerts?status=all", "#alerts-table"),
            ("/ui/silent", "#silent-table"),
        ):
            visit(page, path, shots, f"phone-{path}")
            assert_fits_phone(page, table)
        # The vehicle page's hourly numbers, opened.
        visit(page, vehicle_path(vehicle_id), shots, "phone-vehicle")
        page.click("#energy summary")
        shots.take(page, "phone-vehicle-hourly")
        assert_fits_phone(page, "#hourly-table")
        phone.watch.assert_clean()
    finally:
        phone.context.close()
