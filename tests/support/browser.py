"""Headless Chromium for the browser tests (tests/browser/): Debian's /usr/bin/chromium driven by Playwright, never a
browser Playwright downloads (`playwright install` is not run anywhere; scripts/test.sh installs Chromium with apt).

- `launch`: the browser, with switches that keep Chromium itself from calling home (no component updates,
  translation, sync...), so every request a page makes is the page's own;
- `Watch`: what a browser context did: console errors, uncaught page errors, every request's URL;
  `assert_clean` says none of them is an error and every request went to the app;
- `Shots`: a PNG of every page a test visits, in `artifacts_dir()` (var/test-artifacts/ui/, or FLEET_TEST_ARTIFACTS);
- the operator UI's number formats and `data-value` encoding (its contract), `api_query` (the API query that
  answers a UI URL), and helpers that sign in, click through and read tables;
- `UiFleet`: the browser tests' server and data set, loaded through the HTTP API (`load_fleet`).

Data set (times relative to `recent_end`, the start of the hour before the current one):
- recent window, the 3 hours before `recent_end` (inside the UI's and the API's default 24 h window):
  RECENT_VEHICLES, each on its own meter, with different energies and efficiencies (one below the 0.85 threshold);
- old window, 27 to 25 hours before it (outside the default window): a vehicle whose id is markup (HTML_ID) on its
  own meter, and a vehicle mapped to no meter (NO_METER_ID: its AC is null).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Locator, Page, Playwright, Request, Response
from sqlalchemy.engine import Engine

from config import Settings
from jobs.alerts import scan_alerts
from tests.integration.gunicorn_server import http
from tests.support.fleet import HOUR, FleetData, iso, refresh_like_policy

ROOT = Path(__file__).resolve().parents[2]
#: Debian's package `chromium` (with `chromium-driver`, in case Selenium is ever needed).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",  # root in CI containers; the pages under test are the app's own
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
    "--disable-component-update",
    "--disable-sync",
)
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
#: CSP sources that load nothing from another origin.
LOCAL_CSP_SOURCES = frozenset({"'self'", "'none'", "data:"})
#: Where the README's screenshots go when FLEET_UPDATE_README_SCREENSHOT=1.
README_IMAGES = ROOT / "docs" / "images"
#: Chromium's console line for a document or resource answered with an HTTP error status.
_HTTP_ERROR_LINE = re.compile(r"Failed to load resource: the server responded with a status of (\d{3})")
#: URL schemes that never reach a network.
_LOCAL_SCHEMES = frozenset({"data", "blob", "about"})


def launch(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless."""
    if not CHROMIUM.exists():
        pytest.fail("Chromium is required for the browser tests: scripts/test.sh installs it (apt: chromium)")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS))


def artifacts_dir() -> Path:
    """Where screenshots go: FLEET_TEST_ARTIFACTS, or var/test-artifacts/ui/ (git-ignored)."""
    path = Path(os.environ.get("FLEET_TEST_ARTIFACTS") or ROOT / "var" / "test-artifacts" / "ui")
    path.mkdir(parents=True, exist_ok=True)
    return path


def update_readme_screenshots() -> bool:
    return os.environ.get("FLEET_UPDATE_README_SCREENSHOT") == "1"


@dataclass
class Watch:
    """Everything one browser context did that a test must account for. Attach it before the first page opens."""

    origin: str  # the app's scheme://host:port
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    #: Documents a test asks for knowing they answer an HTTP error (a 401 sign-in, a 404 page): Chromium logs a
    #: console error for those, which is the status the test asserts, not a fault of the page.
    expected_error_documents: dict[str, set[int]] = field(default_factory=dict)

    def attach(self, context: BrowserContext) -> None:
        context.on("console", self._on_console)
        context.on("weberror", lambda error: self.page_errors.append(str(error.error)))
        context.on("request", lambda request: self.requests.append(request.url))
        context.on("requestfailed", self._on_failed)

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        status = _HTTP_ERROR_LINE.match(message.text)
        where = message.location.get("url", "")
        if status and int(status.group(1)) in self.expected_error_documents.get(where, ()):
            return
        self.console_errors.append(f"{message.text} (at {where}:{message.location.get('lineNumber')})")

    def _on_failed(self, request: Request) -> None:
        self.failed_requests.append(f"{request.method} {request.url}: {request.failure}")

    def expect_error_status(self, url: str, *statuses: int) -> None:
        """`url` (absolute) is known to answer one of `statuses`: its console line is not a page error."""
        self.expected_error_documents.setdefault(url, set()).update(statuses)

    def off_app(self) -> list[str]:
        """Requests that went anywhere but the app (data:, blob: and about: URLs never leave the browser)."""
        app = urlsplit(self.origin)
        return [
            url
            for url in self.requests
            if urlsplit(url).scheme not in _LOCAL_SCHEMES
            and (urlsplit(url).scheme, urlsplit(url).netloc) != (app.scheme, app.netloc)
        ]

    def assert_clean(self) -> None:
        assert self.console_errors == [], "console errors"
        assert self.page_errors == [], "uncaught errors in the page"
        assert self.off_app() == [], f"requests that left the app ({self.origin})"
        assert self.failed_requests == [], "requests that failed"
        assert self.requests, "no request seen: is the watch attached?"


class Shots:
    """A numbered PNG of every page a test visits, named after the test."""

    def __init__(self, test_name: str) -> None:
        self.prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
        self.count = 0
        self.saved: list[Path] = []

    def take(self, page: Page, label: str = "") -> Path:
        self.count += 1
        where = label or urlsplit(page.url).path
        path = artifacts_dir() / f"{self.prefix}-{self.count:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', where)}.png"
        page.screenshot(path=str(path), full_page=True)
        self.saved.append(path)
        return path


def visit(page: Page, url: str, shots: Shots, label: str = "") -> Response:
    """Load `url` in `page` (every script and style sheet done), screenshot it, return the document's response
    (the last one of a redirect chain)."""
    response = page.goto(url, wait_until="load")
    assert response is not None, url
    shots.take(page, label)
    return response


def assert_csp_allows_only_self(policy: str) -> None:
    """Every directive of a Content-Security-Policy names only 'self' (or 'none', or data: URLs, which are no
    request), and no script or style runs inline."""
    directives = {}
    for directive in policy.split(";"):
        name, *sources = directive.split() or [""]
        if name:
            directives[name] = sources
    assert directives.get("default-src") == ["'self'"], policy
    for name, sources in directives.items():
        assert set(sources) <= LOCAL_CSP_SOURCES, (name, sources)


def redirect_statuses(response: Response) -> list[int]:
    """The statuses of the redirects that led to `response`, first first."""
    statuses = []
    request = response.request.redirected_from
    while request is not None:
        redirect = request.response()
        assert redirect is not None
        statuses.append(redirect.status)
        request = request.redirected_from
    return statuses[::-1]


# --- the operator UI's contract: how it shows the API's numbers -------------------------------------------

NULL_TEXT = "—"


def kwh_text(value: float | None) -> str:
    return NULL_TEXT if value is None else f"{value:.3f}"


def percent_text(ratio: float | None) -> str:
    return NULL_TEXT if ratio is None else f"{ratio * 100:.1f} %"


def normalise(text: str) -> str:
    return " ".join(text.replace("\u00a0", " ").replace("\u202f", " ").split())


def assert_kwh_shown(shown: str, value: float | None, where: str) -> None:
    """kWh with 3 decimals (a trailing unit is allowed), or the null sign."""
    text, expected = normalise(shown), kwh_text(value)
    allowed = (expected,) if value is None else (expected, f"{expected} kWh")
    assert text in allowed, (where, shown, value)


def assert_percent_shown(shown: str, ratio: float | None, where: str) -> None:
    assert normalise(shown) == percent_text(ratio), (where, shown, ratio)


def assert_data_value(data_value: str | None, value: Any, where: str) -> None:
    """`data-value` holds the API's JSON value exactly: numbers and booleans as JSON writes them, strings as they
    are, the empty string for null."""
    assert data_value is not None, f"{where}: no data-value attribute"
    if value is None:
        assert data_value == "", (where, data_value)
    elif isinstance(value, bool):
        assert data_value == json.dumps(value), (where, data_value, value)
    elif isinstance(value, str):
        assert data_value == value, (where, data_value, value)
    else:
        try:
            parsed = json.loads(data_value)
        except ValueError:
            pytest.fail(f"{where}: data-value {data_value!r} is not the JSON number {value!r}")
        assert not isinstance(parsed, bool) and parsed == value, (where, data_value, value)


def api_query(ui_url: str, *, page_size_default: int | None = 50, keep: Iterable[str] | None = None) -> str:
    """The query string the API takes for the UI page at `ui_url`: empty parameters dropped (the API's defaults
    apply), `pageSize` as the API's `page_size` (`page_size_default` when absent; None: not paged), only the
    parameters in `keep` when given."""
    params = [
        ("page_size" if k == "pageSize" else k, v)
        for k, v in parse_qsl(urlsplit(ui_url).query, keep_blank_values=True)
        if v != "" and (keep is None or k in keep)
    ]
    if page_size_default is not None and not any(k == "page_size" for k, _ in params):
        params.append(("page_size", str(page_size_default)))
    return urlencode(params)


# --- driving the operator UI --------------------------------------------------------------------------------


def click_to(page: Page, target: Locator, shots: Shots, label: str = "") -> Response:
    """Click a link or submit button that loads another page; screenshot it; return the document's response."""
    with page.expect_navigation(wait_until="load") as navigation:
        target.click()
    response = navigation.value
    assert response is not None
    shots.take(page, label)
    return response


def sign_in(page: Page, key: str, shots: Shots, path: str = "/ui/login") -> Response:
    """Sign in on the sign-in page at `path` (already open when `page` shows it) with `key`."""
    if urlsplit(page.url).path != "/ui/login":
        visit(page, path, shots)
    page.fill("input[name=key]", key)
    return click_to(page, page.locator("form:has(input[name=key]) button[type=submit]"), shots)


#: Reads a table's rows in one round trip: each row's id attribute, its first link, and its `td[data-col]` cells.
ROWS_JS = """([table, idAttr]) => [...document.querySelectorAll(`${table} tbody tr[${idAttr}]`)].map(tr => {
  const a = tr.querySelector('a');
  const cells = {};
  for (const td of tr.querySelectorAll('td[data-col]')) {
    cells[td.dataset.col] = {value: td.getAttribute('data-value'), text: td.textContent};
  }
  return {id: tr.getAttribute(idAttr), text: tr.textContent,
          link: a && {text: a.textContent, href: a.getAttribute('href')}, cells};
})"""


def table_rows(page: Page, table: str, id_attr: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = page.evaluate(ROWS_JS, [table, id_attr])
    return rows


#: Whether the document scrolls sideways, and how a table's nearest scrolling container holds it.
LAYOUT_JS = """(table) => {
  const t = document.querySelector(table);
  let box = t && t.parentElement;
  while (box && !['auto', 'scroll'].includes(getComputedStyle(box).overflowX)) box = box.parentElement;
  const out = {viewport: window.innerWidth, document: document.documentElement.scrollWidth,
               body: document.body.scrollWidth, table: t && t.getBoundingClientRect().width, box: null};
  if (box) {
    box.scrollLeft = 40;
    out.box = {client: box.clientWidth, scroll: box.scrollWidth, right: box.getBoundingClientRect().right,
               scrolledBy: box.scrollLeft};
    box.scrollLeft = 0;
  }
  return out;
}"""


def assert_fits_phone(page: Page, table: str | None = None) -> None:
    """No sideways scroll of the document; `table` is in a container that scrolls sideways when it is wider."""
    layout = page.evaluate(LAYOUT_JS, table or "no-such-element")
    where = f"{urlsplit(page.url).path}: {layout}"
    assert layout["document"] <= layout["viewport"] and layout["body"] <= layout["viewport"], where
    if table is None:
        return
    assert layout["table"] is not None and layout["box"] is not None, where
    box = layout["box"]
    assert box["right"] <= layout["viewport"] + 0.5, where
    if box["scroll"] > box["client"]:
        assert box["scrolledBy"] > 0, where


@dataclass
class Browsing:
    """A browser context and its watch."""

    context: BrowserContext
    watch: Watch


def watched_context(browser: Browser, origin: str, **options: Any) -> Browsing:
    """A new context (no cookies) on the app at `origin`, watched from its first request."""
    context = browser.new_context(base_url=origin, **{"viewport": DESKTOP, **options})
    watch = Watch(origin)
    watch.attach(context)
    return Browsing(context, watch)


# --- the data set -------------------------------------------------------------------------------------------

#: (vehicle, meter, AC kWh per minute, efficiency): sorting by each column gives a different order.
RECENT_VEHICLES = (
    ("EV-1001", "MTR-1001", 0.20, 0.95),
    ("EV-1002", "MTR-1002", 0.27, 0.88),
    ("EV-1003", "MTR-1003", 0.15, 0.78),
    ("EV-1004", "MTR-1004", 0.25, 0.91),
    ("EV-1005", "MTR-1005", 0.26, 0.86),
)
#: Markup, an entity's start and both quotes; no '/' (it could not be one /ui/vehicles/<id> path segment).
HTML_ID = "<b>EV&\"'"
HTML_METER = "MTR-2001"
NO_METER_ID = "EV-2002"
#: The vehicles' clocks run this far ahead of their meters' (the correlation block is not all zeros).
VEHICLE_CLOCK_AHEAD = timedelta(seconds=2)


@dataclass(frozen=True)
class UiFleet:
    """The running server, its keys, and what was loaded into it."""

    url: str
    read_key: str
    admin_key: str
    device_key: str
    data: FleetData
    recent: tuple[datetime, datetime]  # [start, end) of the recent readings, on the hour
    old: tuple[datetime, datetime]  # [start, end) of the old window's readings

    def api(self, path: str, query: str | dict[str, str] = "") -> tuple[Any, dict[str, str]]:
        """GET the API with the read key, as a dashboard would: (JSON body, headers); asserts a 200."""
        qs = query if isinstance(query, str) else urlencode(query)
        reply = http(f"{self.url}{path}{'?' + qs if qs else ''}", key=self.read_key)
        assert reply.status == 200, (path, qs, reply.status, reply.body[:500])
        return reply.json(), reply.headers

    @staticmethod
    def window_query(window: tuple[datetime, datetime]) -> str:
        return urlencode({"startDate": iso(window[0]), "endDate": iso(window[1])})


def fleet_scenario(recent_end: datetime) -> FleetData:
    rng = random.Random(20261203)
    d = FleetData()
    mapped_from = recent_end - timedelta(hours=30)
    for vehicle, meter, ac, efficiency in RECENT_VEHICLES:
        d.map(vehicle, meter, mapped_from)
        _charge(d, rng, vehicle, meter, (recent_end - 3 * HOUR, recent_end), ac, efficiency)
    d.map(HTML_ID, HTML_METER, mapped_from)
    old = (recent_end - 27 * HOUR, recent_end - 25 * HOUR)
    _charge(d, rng, HTML_ID, HTML_METER, old, 0.22, 0.90)
    _charge(d, rng, NO_METER_ID, None, old, 0.18, 0.90)
    return d


def _charge(
    d: FleetData,
    rng: random.Random,
    vehicle: str,
    meter: str | None,
    window: tuple[datetime, datetime],
    ac: float,
    efficiency: float,
) -> None:
    """A reading a minute from each side, the battery filling up; the newest says the vehicle is charging."""
    t, soc = window[0], 20.0
    while t < window[1]:
        kwh_ac = round(ac * rng.uniform(0.9, 1.1), 4)
        if meter is not None:
            d.meter(meter, t, kwh_ac, voltage=round(rng.uniform(228, 235), 1))
        soc = min(100.0, soc + 0.35)
        temp = round(rng.uniform(24, 36), 1)
        d.vehicle(vehicle, t + VEHICLE_CLOCK_AHEAD, round(kwh_ac * efficiency * rng.uniform(0.99, 1.01), 4), temp, soc)
        t += timedelta(minutes=1)
    d.posted[-1]["payload"]["isCharging"] = True


def load_fleet(fleet: UiFleet, engine: Engine) -> None:
    """Post the mappings (admin key) and readings (device key) through the API; make the rollups current as the
    refresh policies would (up to the end of the recent readings); run one alert scan, as the scheduler would."""
    for vehicle, meter, valid_from in fleet.data.mappings:
        body = {"vehicleId": vehicle, "meterId": meter, "validFrom": iso(valid_from)}
        reply = http(fleet.url + "/v1/mappings", body, key=fleet.admin_key)
        assert reply.status == 201, reply.body
    items = fleet.data.posted
    for i in range(0, len(items), 1000):
        reply = http(fleet.url + "/v1/telemetry/ingest", items[i : i + 1000], key=fleet.device_key)
        assert reply.status == 200, reply.body
        assert reply.json()["stored"] == len(items[i : i + 1000])
    refresh_like_policy(engine, fleet.recent[1])
    scan_alerts(engine, Settings.from_env({}))
