"""Plan stability: every statement a request runs keeps its plan and its speed however often one connection runs it.

Why: psycopg prepares a statement after its 5th execution on a connection, and PostgreSQL may then switch it to a
generic plan, one made without the parameters' values. For the 24 h analytics that plan scanned every meter's rows in
the window: calls 1-10 on a connection took 34-40 ms, calls 11 on 260-400 ms at 1,000 meters (../shared/ENGINES.md).
A benchmark that sends one request at a time on fresh connections never sees it; a busy API process does, on every
pooled connection. The engines of `db.make_engine` plan each execution for its parameters (`db.PLAN_CACHE_OPTION`).

How: a fleet day of PLAN_FLEET meters and vehicles is bulk-loaded (tests/load/fleet_day.py) into a database of its own
on each native engine, enough for a plan over every device's rows to cost several times one over a single device's.
On Community the aggregates and the correlation rollup are materialised, as the policies would have. Then the app,
on an engine with ONE pooled connection, serves each request path CALLS times (the analytics, status, listings,
alerts, mappings, ingest of single readings and of a batch, readiness), with other devices each time, so that every
statement runs on that one connection past psycopg's threshold and past PostgreSQL's 5 custom plans. Every statement
is timed from the driver (SQLAlchemy cursor events). It fails when
- a statement's later calls (median of the last WINDOW) take more than SLOWDOWN x its first calls' (median of the
  first WINDOW) plus SLACK_MS: the "no plan flip" target of DESIGN.md, per statement and per request;
- PostgreSQL used a generic plan for any statement with parameters prepared on the connection
  (pg_prepared_statements): the first calls, unprepared, were planned for their parameters' values, so a generic
  plan is a different plan.
The embedded engine is not run: it serves one unit of work per connection (pool size 0), so no statement reaches
psycopg's threshold there, and its WASM server takes minutes to load a dataset of this size.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy import event
from sqlalchemy.engine import Engine

import db
from db.migrate import upgrade
from jobs.correlation import refresh_correlation
from tests.conftest import hold_timescaledb_jobs, native_url, proc_of, selected_engines
from tests.load.fleet_day import load_fleet_day, meter_id, vehicle_id
from tests.support.api import build_client
from tests.support.builders import meter_reading, vehicle_reading

#: Meters and vehicles of the loaded day. At 300 the generic plan of the analytics' hourly sums took 2.5-3x its
#: custom plan here (40 ms against 110 ms a request), well past SLOWDOWN.
PLAN_FLEET = 300
#: Requests per path on the one connection: past psycopg's prepare threshold (5) and PostgreSQL's 5 custom plans.
CALLS = 24
WINDOW = 5
SLOWDOWN = 1.5
#: Absolute tolerance for statements of a millisecond or less, whose medians move with the machine's noise.
SLACK_MS = 3.0
NATIVE_KINDS = ("native", "native-apache")

DAY_START = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
DAY_END = DAY_START + timedelta(days=1)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "server_kind" in metafunc.fixturenames:
        metafunc.parametrize("server_kind", [k for k in selected_engines() if k in NATIVE_KINDS], scope="module")


@pytest.fixture(scope="module")
def loaded_url(server_kind: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated database of its own holding one fleet day, rollups materialised where the edition has them."""
    proc = proc_of(server_kind, request)
    dbname = "fleet_plans"
    with DatabaseJanitor(user=proc.user, host=proc.host, port=proc.port, dbname=dbname):
        url = native_url(proc, dbname)
        setup = db.make_engine(url, pool_size=0, connect_timeout=30)
        try:
            upgrade(setup)
            hold_timescaledb_jobs(setup)
            load_fleet_day(url, meters=PLAN_FLEET, vehicles=PLAN_FLEET, day_start=DAY_START, log=lambda _: None)
            with setup.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                if conn.execute(sa.text("SELECT current_setting('timescaledb.license') = 'timescale'")).scalar_one():
                    views = sa.text("SELECT view_name FROM timescaledb_information.continuous_aggregates")
                    for view in conn.execute(views).scalars().all():
                        conn.execute(
                            sa.text("CALL refresh_continuous_aggregate(:v, NULL, :end)"), {"v": view, "end": DAY_END}
                        )
                    refresh_correlation(setup, until=DAY_END, max_batches=10_000)
            yield url
        finally:
            setup.dispose()


class StatementTimes:
    """Driver-side seconds of every statement an engine runs, by statement text, in order."""

    def __init__(self, engine: Engine) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        conn.info["plan_test_started"] = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.seconds[statement].append(time.perf_counter() - conn.info.pop("plan_test_started"))


def departed(seconds: list[float]) -> str | None:
    """Why the later calls of `seconds` depart from the first calls, or None when they do not."""
    first_ms = statistics.median(seconds[:WINDOW]) * 1000
    later_ms = statistics.median(seconds[-WINDOW:]) * 1000
    if later_ms > SLOWDOWN * first_ms + SLACK_MS:
        return f"first {WINDOW} calls {first_ms:.1f} ms, last {WINDOW} {later_ms:.1f} ms (median)"
    return None


def request_paths(client: FlaskClient) -> dict[str, Callable[[int], Any]]:
    """Each request path of the API, called with the call number (a different device or reading each time)."""
    window = {"startDate": DAY_START.isoformat(), "endDate": DAY_END.isoformat()}
    last_hour = {"startDate": (DAY_END - timedelta(hours=1)).isoformat(), "endDate": DAY_END.isoformat()}
    now = datetime.now(UTC).replace(microsecond=0)

    def device(i: int) -> int:
        return 1 + (i * 37) % PLAN_FLEET  # spread over the fleet, never the same device twice in a row

    def meter(i: int, at: datetime) -> dict:
        return meter_reading(meter_id(device(i)), kwh=0.12, voltage=231.5, at=at)

    def vehicle(i: int, at: datetime) -> dict:
        return vehicle_reading(vehicle_id(device(i)), soc=55.5, kwh=0.11, temp=24.5, at=at)

    def batch(i: int) -> list[dict]:
        at = now - timedelta(minutes=30, seconds=i)
        return [meter(i * 5 + k, at) for k in range(5)] + [vehicle(i * 5 + k, at) for k in range(5)]

    return {
        "24 h analytics": lambda i: client.get(
            f"/v1/analytics/performance/{vehicle_id(device(i))}", query_string=window
        ),
        "fleet view, last hour": lambda i: client.get(
            "/v1/analytics/fleet", query_string={**last_hour, "sort": "efficiency", "page": 1 + i % 3}
        ),
        "vehicle status": lambda i: client.get(f"/v1/vehicles/{vehicle_id(device(i))}"),
        "meter status": lambda i: client.get(f"/v1/meters/{meter_id(device(i))}"),
        "vehicle listing": lambda i: client.get(
            "/v1/vehicles", query_string={"socBelow": 20 + i, "page": 1 + i % 3, "page_size": 50}
        ),
        "meter listing": lambda i: client.get(
            "/v1/meters", query_string={"idPrefix": f"meter-00{i % 3}", "silentForMinutes": 5 + i}
        ),
        "alerts": lambda i: client.get("/v1/alerts", query_string={"status": "all", "page": 1 + i % 2}),
        "mappings": lambda i: client.get("/v1/mappings", query_string={"vehicleId": vehicle_id(device(i))}),
        "ingest, one meter reading": lambda i: client.post(
            "/v1/telemetry/ingest", json=meter(i, now - timedelta(minutes=10, seconds=i))
        ),
        "ingest, one vehicle reading": lambda i: client.post(
            "/v1/telemetry/ingest", json=vehicle(i, now - timedelta(minutes=10, seconds=i))
        ),
        "ingest, a batch of 10": lambda i: client.post("/v1/telemetry/ingest", json=batch(i)),
        "readiness": lambda i: client.get("/ready"),
    }


def test_every_request_statement_keeps_its_plan_on_one_connection(loaded_url: str) -> None:
    engine = db.make_engine(loaded_url, pool_size=1)  # the app's engine, with one connection for everything
    try:
        times = StatementTimes(engine)
        client = build_client(engine, "admin", FLEET_RATE_LIMIT="off")  # admin may read and ingest
        request_seconds: dict[str, list[float]] = defaultdict(list)
        paths = request_paths(client)
        for i in range(CALLS):
            for name, call in paths.items():
                started = time.perf_counter()
                response = call(i)
                request_seconds[name].append(time.perf_counter() - started)
                assert response.status_code == 200, (name, i, response.get_json())
        with engine.connect() as conn:  # the same, only connection: its prepared statements
            prepared = conn.execute(
                sa.text(
                    "SELECT statement, generic_plans, cardinality(parameter_types) AS parameters"
                    " FROM pg_prepared_statements WHERE from_sql IS FALSE"
                )
            ).all()
    finally:
        engine.dispose()

    print(f"\n{len(times.seconds)} statements, {sum(map(len, times.seconds.values()))} executions on one connection")
    for name, seconds in request_seconds.items():
        first, later = (statistics.median(s) * 1000 for s in (seconds[:WINDOW], seconds[-WINDOW:]))
        print(f"  {name}: first {WINDOW} requests {first:.1f} ms, last {WINDOW} {later:.1f} ms (median)")

    slower_requests = {name: why for name, s in request_seconds.items() if (why := departed(s))}
    assert not slower_requests, f"requests got slower on one connection: {slower_requests}"
    repeated = {text: s for text, s in times.seconds.items() if len(s) >= CALLS}
    assert len(repeated) >= 10, f"too few statements ran {CALLS} times: {len(repeated)}"
    slower = {" ".join(text.split())[:160]: why for text, s in repeated.items() if (why := departed(s))}
    assert not slower, f"statements got slower on one connection: {slower}"
    assert len(prepared) >= 10, "psycopg prepared too few statements: the connection did not reach its threshold"
    # A statement without parameters has one plan whatever the mode: PostgreSQL always runs its generic plan.
    generic = {
        " ".join(row.statement.split())[:160]: row.generic_plans
        for row in prepared
        if row.parameters and row.generic_plans
    }
    assert not generic, f"generic plans used (statement: executions on a generic plan): {generic}"
