"""Fixtures of the browser tests: Debian's headless Chromium (tests/support/browser.py) against a real gunicorn
(`fleet serve`) on the native engine's migrated test database.

One server and one data set per module (`ui_fleet`, described in tests/support/browser.py), loaded the way
devices and admins do it, through the HTTP API; the rollups are made current as the refresh policies would, and
one alert scan runs. The pages only read, so a module's tests share it; the tables are emptied after the module.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright
from sqlalchemy.engine import Engine

from tests.conftest import truncate_all
from tests.integration.gunicorn_server import gunicorn
from tests.support.api import device_key, new_key
from tests.support.browser import Browsing, Shots, UiFleet, fleet_scenario, launch, load_fleet, watched_context
from tests.support.fleet import HOUR, floor_hour


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    chromium = launch(playwright)
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def ui_fleet(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiFleet]:
    """A real gunicorn on the test database, with the data set loaded through its API."""
    truncate_all(engine)
    env = {
        "DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "FLEET_DB_POOL_SIZE": "4",
        "FLEET_RATE_LIMIT": "off",
    }
    recent_end = floor_hour(datetime.now(UTC)) - HOUR
    try:
        with gunicorn(env, tmp_path_factory.mktemp("ui-gunicorn") / "gunicorn.log", workers=2, threads=2) as server:
            fleet = UiFleet(
                url=server.url,
                read_key=new_key(engine, "read", name="ui-read"),
                admin_key=new_key(engine, "admin", name="ui-admin"),
                device_key=device_key(engine),
                data=fleet_scenario(recent_end),
                recent=(recent_end - 3 * HOUR, recent_end),
                old=(recent_end - 27 * HOUR, recent_end - 25 * HOUR),
            )
            load_fleet(fleet, engine)
            yield fleet
    finally:
        truncate_all(engine)


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Shots:
    """Screenshots of the test's pages, named after it."""
    return Shots(request.node.name)


@pytest.fixture
def browsing(browser: Browser, ui_fleet: UiFleet) -> Iterator[Browsing]:
    """A fresh browser context (no cookies) at desktop size, watched from its first request."""
    browsing = watched_context(browser, ui_fleet.url)
    yield browsing
    browsing.context.close()
