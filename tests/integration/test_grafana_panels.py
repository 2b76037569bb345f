"""Grafana's provisioning (docker/grafana/) and every panel's SQL, run on each engine as Grafana would run it.

Grafana cannot run here, so the tests do what it does: read the provisioning files, expand each panel's macros
and template variables exactly as Grafana does (tests/support/grafana.py), and run the result in the role
Grafana logs in with. On the native engines that is a real LOGIN role made by the command compose's
`grafana-login` service runs (`fleet analyst grant-login grafana ...`); the embedded engine has no logins, so
there it is `SET LOCAL ROLE fleet_analyst` (tests/integration/test_analyst_role.py says why that is all it can
be).

The numbers are checked twice: against the HTTP API (GET /v1/analytics/fleet, /v1/analytics/performance/<id>,
/v1/alerts) and, where they are readings, against sums computed here in plain Python from the readings the test
posted (tests/support/fleet.py), never from the platform's SQL. On Community the first half of the window is
materialised and the second half answered by real-time aggregation; on Apache the rollups are plain views.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy.engine import Engine

from cli import main
from config import Settings
from db import alerts as db_alerts
from db import roles
from db.schema import ALERT_KINDS
from jobs.alerts import scan_parameters
from tests.conftest import is_community
from tests.support.cli import cli_env
from tests.support.fleet import FleetData, floor_hour, iso, post_all, post_mappings, refresh_like_policy
from tests.support.grafana import (
    COMPOSE,
    DASHBOARD,
    DASHBOARD_PROVIDERS,
    DATASOURCES,
    MacroError,
    Query,
    expand,
    load_dashboard,
    load_yaml,
    panels,
    queries,
    rfc3339nano,
)

#: Admin may ingest, map and read.
pytestmark = pytest.mark.app(role="admin", FLEET_RATE_LIMIT="off")

HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
NOW = datetime.now(UTC).replace(microsecond=0)
#: The API's window [START, END): six whole hours, ended well before now.
START = floor_hour(NOW) - 9 * HOUR
END = START + 6 * HOUR
# Grafana's $__timeFilter is BETWEEN, inclusive at both ends; the API's window excludes its end. A bucket is the
# start of its hour, so the range START .. END - 1 s selects the buckets START .. END - 1 h: exactly the API's
# six hours. To = END would take in the hour starting at END too, where scenario() puts readings to catch that.
TIME_FROM, TIME_TO = START, END - timedelta(seconds=1)
REMAP_AT = START + 3 * HOUR + 30 * MINUTE  # mid-hour: that hour's AC is still the first meter's
MATERIALISED_UNTIL = START + 3 * HOUR  # Community: hours before it materialised, the rest real-time
#: Two alert scans after the last readings (END + 1 h): the second after a silent meter reported again.
SCAN_1 = END + HOUR + 10 * MINUTE
SCAN_2 = SCAN_1 + 5 * MINUTE
SILENT_MINUTES = 30
EFFICIENCY_THRESHOLD = 0.85

#: Each query's columns, by panel title: the names the panels' field overrides and a reader rely on.
COLUMNS = {
    "Fleet efficiency": ["efficiency"],
    "Fleet efficiency per hour": ["time", "efficiency"],
    "Vehicles, worst efficiency first": [
        "vehicle_id",
        "ac_kwh",
        "dc_kwh",
        "efficiency",
        "meter_readings",
        "vehicle_readings",
    ],
    "AC and DC per hour: $vehicle": ["time", "ac_kwh", "dc_kwh"],
    "Open alerts by kind": ["kind", "open_alerts"],
    "Open alerts": ["opened_at", "last_seen_at", "kind", "device_type", "device_id", "details"],
    "Ingest rate: readings per minute, hourly": ["time", "meter_readings_per_minute", "vehicle_readings_per_minute"],
    "variable vehicle": ["vehicle_id"],
}


# --- the provisioning files ----------------------------------------------------------------------------------


def _datasource() -> dict[str, Any]:
    (datasource,) = load_yaml(DATASOURCES)["datasources"]
    return dict(datasource)


def _compose_services() -> dict[str, Any]:
    services: dict[str, Any] = load_yaml(COMPOSE)["services"]
    return services


def test_datasource_is_the_compose_database_read_by_an_analyst_login():
    datasource = _datasource()
    services = _compose_services()
    assert datasource["type"] == "grafana-postgresql-datasource"
    assert datasource["uid"] and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", datasource["uid"])
    json_data = datasource["jsonData"]
    assert (json_data["timescaledb"], json_data["postgresVersion"]) == (True, 1500)
    # The compose service `db`, its database, over compose's private network (no TLS there: docs/SECURITY.md).
    host, port = datasource["url"].split(":")
    assert host in services and services[host]["image"].startswith("timescale/timescaledb:")
    assert port == "5432"
    assert json_data["database"] == services[host]["environment"]["POSTGRES_DB"] == "fleet"
    assert json_data["sslmode"] == "disable"
    # The user is the analyst login compose's one-shot service creates, with a name grant-login accepts.
    user = datasource["user"]
    assert roles.validate_role_name(user) == user
    login = services["grafana-login"]["command"]
    assert login[:4] == ["fleet", "analyst", "grant-login", user]
    assert json_data["maxOpenConns"] <= int(login[login.index("--connection-limit") + 1])
    # The password is a reference to Grafana's environment, which compose fills from the same variable the login
    # was given; nothing secret is written in the file.
    password = datasource["secureJsonData"]["password"]
    variable = re.fullmatch(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", password)
    assert variable, "the data source's password must be an environment reference"
    grafana_env = services["grafana"]["environment"]
    assert grafana_env[variable.group(1)] == services["grafana-login"]["environment"]["FLEET_ANALYST_PASSWORD"]
    assert "password" not in datasource and "password" not in json_data


def test_dashboard_provider_reads_the_directory_compose_mounts():
    (provider,) = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert provider["type"] == "file"
    mounts = dict(v.split(":")[:2] for v in _compose_services()["grafana"]["volumes"])
    source = next(src for src, target in mounts.items() if target == provider["options"]["path"])
    assert (COMPOSE.parent / source).resolve() == DASHBOARD.parent
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


def test_every_panel_is_raw_sql_on_the_provisioned_datasource_with_known_macros():
    datasource = _datasource()
    dashboard = load_dashboard()
    found = queries(dashboard)
    assert {q.title for q in found} == set(COLUMNS)  # a new panel gets its columns checked too
    assert all(p.get("targets") for p in panels(dashboard)), "a panel without a query"
    for query in found:
        assert query.raw and query.sql.strip(), query.title
        assert query.format in ("table", "time_series"), query.title
        for reference in query.datasources:
            assert reference == {"type": datasource["type"], "uid": datasource["uid"]}, query.title
        # Expands with nothing left over: only known macros, and no variable but $vehicle.
        expand(query.sql, TIME_FROM, TIME_TO, {"vehicle": "v"}, timescaledb=True)


def test_macros_expand_as_grafana_expands_them():
    time_from = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    time_to = datetime(2026, 3, 1, 15, 59, 59, 250000, tzinfo=UTC)
    sql = "SELECT $__timeGroupAlias(bucket, 1h) FROM t WHERE $__timeFilter(bucket) AND x < $__timeTo()"
    assert expand(sql, time_from, time_to, {}, timescaledb=True) == (
        "SELECT time_bucket('3600.000s',bucket) AS \"time\" FROM t"
        " WHERE bucket BETWEEN '2026-03-01T10:00:00Z' AND '2026-03-01T15:59:59.25Z' AND x < '2026-03-01T15:59:59.25Z'"
    )
    assert expand("$__timeGroup(b, '5m')", time_from, time_to, {}, timescaledb=False) == (
        "floor(extract(epoch from b)/300)*300"
    )
    assert rfc3339nano(datetime(2026, 3, 1, 10, 0, tzinfo=UTC) + timedelta(hours=1, microseconds=1)) == (
        "2026-03-01T11:00:00.000001Z"
    )
    # A single-valued variable goes in unquoted with its quotes doubled: the SQL writes '$vehicle'.
    assert expand("id = '$vehicle' OR id = '${vehicle}'", time_from, time_to, {"vehicle": "o'k"}, timescaledb=True) == (
        "id = 'o''k' OR id = 'o''k'"
    )
    for unknown in ("$__unixEpochFilter(t)", "$__timeEpoch(t)", "$__interval", "$region", "$__fancy(t)"):
        with pytest.raises(MacroError):
            expand(f"SELECT 1 WHERE {unknown}", time_from, time_to, {"vehicle": "v"}, timescaledb=True)


# --- the data ------------------------------------------------------------------------------------------------


def scenario() -> FleetData:
    """g-A at 93 %, g-B at 70 % (a low-efficiency alert), g-C re-mapped from g-MC to g-MC2 mid-hour, g-D never
    mapped (DC, no AC), g-E mapped to a reporting meter but silent (AC, no DC), g-F reporting only outside the
    window; every device of those reports every 2 minutes from an hour before START to an hour after END. Meters
    g-quiet-M and g-back-M report in the first hour only: both silent at the first scan."""
    rng = random.Random(29)
    d = FleetData()
    for vehicle, meter in (("g-A", "g-MA"), ("g-B", "g-MB"), ("g-C", "g-MC"), ("g-E", "g-ME"), ("g-F", "g-MF")):
        d.map(vehicle, meter, START - 2 * HOUR)
    d.map("g-C", "g-MC2", REMAP_AT)
    t = START - HOUR
    while t < END + HOUR:
        for vehicle, meter, efficiency in (("g-A", "g-MA", 0.93), ("g-B", "g-MB", 0.70), ("g-C", "g-MC", 0.88)):
            ac = round(rng.uniform(0.1, 0.2), 4)
            d.meter(meter, t, ac)
            if vehicle == "g-C":
                d.meter("g-MC2", t, round(ac * 1.02, 4))  # the same charger's load, seen by another meter
            d.vehicle(vehicle, t, round(ac * efficiency, 4), round(rng.uniform(20, 30), 1))
        d.vehicle("g-D", t, round(rng.uniform(0.05, 0.1), 4), 25.0)
        d.meter("g-ME", t, round(rng.uniform(0.01, 0.05), 4))
        if not START <= t < END:
            d.meter("g-MF", t, 0.1)
            d.vehicle("g-F", t, 0.09, 25.0)
        if START <= t < START + HOUR:
            d.meter("g-quiet-M", t, 0.02)
            d.meter("g-back-M", t, 0.02)
        t += 2 * MINUTE
    return d


def _scan(eng: Engine, now: datetime) -> None:
    """An alert scan at `now` (as tests/integration/test_alerts.py runs them), over whole hours."""
    params = {
        **scan_parameters(Settings.from_env({})),
        "window": 6 * HOUR,
        "correlation_window": 6 * HOUR,
        "min_readings": 30,
        "min_ac_kwh": 1.0,
        "efficiency_threshold": EFFICIENCY_THRESHOLD,
        "silent_minutes": SILENT_MINUTES,
    }
    with eng.begin() as conn:
        db_alerts.scan(conn, now=now, **params)


@pytest.fixture
def loaded(client: FlaskClient, clean_db: Engine, engine_kind: str) -> FleetData:
    """The scenario posted through the API (the first 300 items twice: retries), the rollups made current, and
    two alert scans: g-back-M's alert is resolved by a reading between them, g-quiet-M's stays open."""
    data = scenario()
    post_mappings(client, data)
    post_all(client, data)
    post_all(client, data, data.posted[:300])
    _scan(clean_db, SCAN_1)
    posted = len(data.posted)
    data.meter("g-back-M", SCAN_1 + 2 * MINUTE, 0.02)
    post_all(client, data, data.posted[posted:])
    _scan(clean_db, SCAN_2)
    if is_community(engine_kind):
        refresh_like_policy(clean_db, MATERIALISED_UNTIL)
    return data


# --- running the panels as Grafana --------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    columns: list[str]
    rows: list[tuple[Any, ...]]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


Run = Callable[[str], Result]
GRAFANA_PASSWORD = "grafana-test-passw0rd"


@pytest.fixture
def as_grafana(
    clean_db: Engine, engine_kind: str, runner: CliRunner
) -> Iterator[Callable[[], AbstractContextManager[Run]]]:
    """`with as_grafana() as run:` runs SQL in the role Grafana reads with. Native: the login of the data source,
    made by the command compose's grafana-login service runs, connected as (the test cluster trusts local
    logins, so no password is checked here; test_analyst_role.py checks passwords). Embedded: SET LOCAL ROLE
    fleet_analyst. Opened only once the API calls are done: the embedded engine serves one connection at a time."""
    login = _datasource()["user"]
    env = cli_env(clean_db, FLEET_ANALYST_PASSWORD=GRAFANA_PASSWORD)
    if engine_kind != "embedded":
        created = runner.invoke(main, _compose_services()["grafana-login"]["command"][1:], env=env)
        assert created.exit_code == 0, created.output

    @contextmanager
    def session() -> Iterator[Run]:
        if engine_kind == "embedded":
            with clean_db.connect() as conn:
                conn.execute(sa.text(f"SET LOCAL ROLE {roles.ANALYST_ROLE}"))

                def run_embedded(sql: str) -> Result:
                    # Grafana sends the expanded SQL as it is, so it is run as it is (no bind parameters).
                    result = conn.exec_driver_sql(sql)
                    return Result(list(result.keys()), [tuple(r) for r in result])

                yield run_embedded
                conn.rollback()
            return
        url = clean_db.url
        with psycopg.connect(
            host=url.host, port=url.port, dbname=url.database, user=login, password=GRAFANA_PASSWORD
        ) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (login,)

            def run_login(sql: str) -> Result:
                cursor = conn.execute(sql)
                columns = [c.name for c in cursor.description or []]
                return Result(columns, [tuple(r) for r in cursor.fetchall()])

            yield run_login
            conn.rollback()

    yield session
    if engine_kind != "embedded":
        dropped = runner.invoke(main, ["analyst", "revoke-login", login], env=env)
        assert dropped.exit_code == 0, dropped.output


def _queries_by_title() -> dict[str, Query]:
    return {q.title: q for q in queries(load_dashboard())}


def _run_all(run: Run, variables: dict[str, str]) -> dict[str, Result]:
    """Every query of the dashboard over [TIME_FROM, TIME_TO], by title."""
    timescaledb = _datasource()["jsonData"]["timescaledb"]
    return {
        title: run(expand(q.sql, TIME_FROM, TIME_TO, variables, timescaledb=timescaledb))
        for title, q in _queries_by_title().items()
    }


def _number(value: Any) -> float | None:
    # Grafana turns numeric and bigint columns into floats; so do the comparisons.
    return None if value is None else float(value)


def approx(value: float | None) -> Any:
    """Equal within the API's rounding (6 decimals); None only equals None."""
    return None if value is None else pytest.approx(value, abs=1e-6)


# --- the API's answers ---------------------------------------------------------------------------------------


def _all_pages(client: FlaskClient, url: str) -> list[dict[str, Any]]:
    """Every item of a paged listing, 2 a page (several pages), checked against its X-Pagination total."""
    items: list[dict[str, Any]] = []
    page = 1
    while True:
        resp = client.get(f"{url}&page={page}&page_size=2")
        assert resp.status_code == 200, resp.get_json()
        got = resp.get_json()
        items.extend(got)
        if not got:
            break
        page += 1
    assert len(items) == json.loads(resp.headers["X-Pagination"])["total"]
    return items


def _api_window() -> str:
    return f"startDate={iso(START)}&endDate={iso(END)}"


# --- the panels, as the analyst, on every engine -------------------------------------------------------------


def test_every_panel_runs_as_the_analyst_and_returns_its_columns(loaded, as_grafana):
    with as_grafana() as run:
        # Privileges are checked for current_user: fleet_analyst itself (embedded) or a login in it (native).
        who = run(
            f"SELECT pg_has_role(current_user, '{roles.ANALYST_ROLE}', 'MEMBER'), rolsuper,"
            " has_table_privilege('api_keys', 'SELECT'), has_table_privilege('meter_readings', 'SELECT')"
            " FROM pg_roles WHERE rolname = current_user"
        )
        vehicles = run(expand(_queries_by_title()["variable vehicle"].sql, TIME_FROM, TIME_TO, {}, timescaledb=True))
        results = _run_all(run, {"vehicle": vehicles.rows[0][0]})
    # An analyst, not a superuser: it cannot read API keys or raw history, whatever a dashboard editor types.
    assert who.rows == [(True, False, False, False)]
    by_title = _queries_by_title()
    for title, result in results.items():
        assert result.columns == COLUMNS[title], title
        assert result.rows, f"{title}: no rows for the test's data"
        if by_title[title].format == "time_series":
            times = [row[0] for row in result.rows]
            assert all(isinstance(t, datetime) and t.tzinfo is not None for t in times), title
            assert times == sorted(set(times)), f"{title}: a time series must be in time order, one row a time"
            assert all(START <= t < END for t in times), f"{title}: a time outside the API's window"
            for row in result.rows:
                assert all(v is None or isinstance(v, int | float | Decimal) for v in row[1:]), (title, row)


def test_efficiency_and_vehicle_panels_match_the_api_and_the_readings(client, loaded, as_grafana):
    expected = loaded.expected_fleet(START, END)
    listed = _all_pages(client, f"/v1/analytics/fleet?{_api_window()}&sort=efficiency")
    reports = {}
    for vehicle_id in expected:
        resp = client.get(f"/v1/analytics/performance/{vehicle_id}?{_api_window()}")
        assert resp.status_code == 200, resp.get_json()
        reports[vehicle_id] = resp.get_json()
    with as_grafana() as run:
        vehicle_list = run(
            expand(_queries_by_title()["variable vehicle"].sql, TIME_FROM, TIME_TO, {}, timescaledb=True)
        )
        per_vehicle = {v: _run_all(run, {"vehicle": v}) for v in sorted(expected)}
    results = per_vehicle["g-A"]  # the panels without $vehicle answer the same for any vehicle

    # The scenario is what it claims: g-F reported only outside the window; g-D has no AC, g-E no DC.
    assert set(expected) == {"g-A", "g-B", "g-C", "g-D", "g-E"}
    assert expected["g-D"]["ac"] is None and expected["g-E"]["dc"] is None

    # The vehicle variable lists exactly the vehicles the API lists.
    assert [r[0] for r in vehicle_list.rows] == sorted(expected) == sorted(v["vehicleId"] for v in listed)

    # The table: each vehicle's totals and efficiency, worst first and unknown last, as the API sorts them.
    def efficiency(e: dict[str, Any]) -> float | None:
        return e["dc"] / e["ac"] if e["ac"] and e["dc"] is not None else None

    worst_first = sorted(expected, key=lambda v: (efficiency(expected[v]) is None, efficiency(expected[v]) or 0, v))
    table = results["Vehicles, worst efficiency first"].dicts()
    assert [r["vehicle_id"] for r in table] == worst_first == [v["vehicleId"] for v in listed]
    for row, api in zip(table, listed, strict=True):
        e = expected[row["vehicle_id"]]
        assert _number(row["ac_kwh"]) == approx(e["ac"]) == api["totalAcConsumed"], row
        assert _number(row["dc_kwh"]) == approx(e["dc"]) == api["totalDcDelivered"], row
        assert _number(row["efficiency"]) == approx(efficiency(e)) == api["efficiencyRatio"], row
        assert row["meter_readings"] == e["meter_readings"] == api["meterReadings"], row
        assert row["vehicle_readings"] == e["vehicle_readings"] == api["vehicleReadings"], row

    # Fleet efficiency over the range: every vehicle's DC over every vehicle's AC, as the API's totals add up.
    fleet_ac = sum(e["ac"] for e in expected.values() if e["ac"] is not None)
    fleet_dc = sum(e["dc"] for e in expected.values() if e["dc"] is not None)
    api_ac = sum(v["totalAcConsumed"] for v in listed if v["totalAcConsumed"] is not None)
    api_dc = sum(v["totalDcDelivered"] for v in listed if v["totalDcDelivered"] is not None)
    (stat,) = results["Fleet efficiency"].rows
    assert _number(stat[0]) == approx(fleet_dc / fleet_ac) == approx(api_dc / api_ac)

    # Fleet efficiency per hour: the hourly sums over every vehicle, from the readings and from the API's reports.
    hours = [START + i * HOUR for i in range(6)]
    hourly = {row[0]: _number(row[1]) for row in results["Fleet efficiency per hour"].rows}
    assert list(hourly) == hours
    for i, hour in enumerate(hours):
        perf = [loaded.expected_performance(v, START, END)["hours"][i] for v in expected]
        api_hours = [r["hourlyBreakdown"][i] for r in reports.values()]
        assert {h["hour"] for h in perf} == {hour} and {h["hour"] for h in api_hours} == {hour.isoformat()}
        ac = sum(h["ac"] for h in perf if h["ac"] is not None)
        dc = sum(h["dc"] for h in perf if h["dc"] is not None)
        api_ac = sum(h["acConsumed"] for h in api_hours if h["acConsumed"] is not None)
        api_dc = sum(h["dcDelivered"] for h in api_hours if h["dcDelivered"] is not None)
        assert hourly[hour] == approx(dc / ac) == approx(api_dc / api_ac), hour

    # AC and DC per hour of each vehicle ($vehicle): the hours a side reported, as the performance report has them.
    for vehicle_id, report in reports.items():
        series = per_vehicle[vehicle_id]["AC and DC per hour: $vehicle"].dicts()
        reported = [h for h in report["hourlyBreakdown"] if h["acConsumed"] is not None or h["dcDelivered"] is not None]
        exp_hours = loaded.expected_performance(vehicle_id, START, END)["hours"]
        exp_reported = [h for h in exp_hours if h["ac"] is not None or h["dc"] is not None]
        assert [r["time"].isoformat() for r in series] == [h["hour"] for h in reported], vehicle_id
        assert [r["time"] for r in series] == [h["hour"] for h in exp_reported], vehicle_id
        for row, api, exp in zip(series, reported, exp_reported, strict=True):
            assert _number(row["ac_kwh"]) == approx(exp["ac"]) == api["acConsumed"], (vehicle_id, row)
            assert _number(row["dc_kwh"]) == approx(exp["dc"]) == api["dcDelivered"], (vehicle_id, row)


def test_alert_panels_match_the_api(client, loaded, as_grafana):
    open_by_kind = {}
    for kind in ALERT_KINDS:
        resp = client.get(f"/v1/alerts?status=open&kind={kind}")
        assert resp.status_code == 200, resp.get_json()
        open_by_kind[kind] = json.loads(resp.headers["X-Pagination"])["total"]
    open_alerts = _all_pages(client, "/v1/alerts?status=open")
    resolved = _all_pages(client, "/v1/alerts?status=resolved")
    with as_grafana() as run:
        results = _run_all(run, {"vehicle": "g-A"})

    # The scenario is what it claims: a low-efficiency alert, a silent meter still open, one resolved since.
    opened = {(a["kind"], a["deviceId"]) for a in open_alerts}
    assert {("low_efficiency", "g-B"), ("silent_device", "g-quiet-M")} <= opened
    assert ("silent_device", "g-back-M") not in opened
    assert ("silent_device", "g-back-M") in {(a["kind"], a["deviceId"]) for a in resolved}

    by_kind = {row[0]: row[1] for row in results["Open alerts by kind"].rows}
    assert by_kind == {kind: n for kind, n in open_by_kind.items() if n}
    assert sum(by_kind.values()) == len(open_alerts)

    table = results["Open alerts"].dicts()
    assert [(r["kind"], r["device_type"], r["device_id"]) for r in table] == [
        (a["kind"], a["deviceType"], a["deviceId"])
        for a in open_alerts  # both newest first
    ]
    for row, api in zip(table, open_alerts, strict=True):
        assert row["opened_at"] == datetime.fromisoformat(api["openedAt"]), row
        assert row["last_seen_at"] == datetime.fromisoformat(api["lastSeenAt"]), row
        assert json.loads(row["details"]) == api["details"], row


def test_ingest_rate_panel_counts_the_readings_sent(loaded, as_grafana):
    with as_grafana() as run:
        results = _run_all(run, {"vehicle": "g-A"})
    hours = [START + i * HOUR for i in range(6)]
    # What was sent, once each (the retried items were stored once): readings per minute over each hour.
    meters = {h: sum(1 for _, t in loaded.meters if floor_hour(t) == h) for h in hours}
    vehicles = {h: sum(1 for _, t in loaded.vehicles if floor_hour(t) == h) for h in hours}
    assert all(meters.values()) and all(vehicles.values())
    rate = results["Ingest rate: readings per minute, hourly"].dicts()
    assert [r["time"] for r in rate] == hours
    for row in rate:
        hour = row["time"]
        assert _number(row["meter_readings_per_minute"]) == pytest.approx(meters[hour] / 60, abs=1e-9), hour
        assert _number(row["vehicle_readings_per_minute"]) == pytest.approx(vehicles[hour] / 60, abs=1e-9), hour
