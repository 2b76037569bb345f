"""The operator page's fleet overview next to the JSON endpoint it mirrors: is GET /ui/fleet usable at 10,000
vehicles, and what does the HTML page cost beside GET /v1/analytics/fleet?

Run from the repository root (loopback only; a throw-away native cluster is started and removed):

    .venv/bin/python -m tests.load.bench_ui [--devices 10000] [--minutes 180] [--seconds 20] [--connections 8]
                                            [--rounds 2] [--warmup 3] [--timeout 1800] [--json out.json]

Setup
-----
- A throw-away PostgreSQL 15 + TimescaleDB cluster, Community edition (tests/load/native_cluster.py: fsync on),
  with bench_analytics' server settings (BENCH_SETTINGS).
- Data (tests/load/fleet_day.py `load_fleet_day`): --devices meters + --devices vehicles, one reading a minute, for
  the --minutes minutes that end at the start of the current hour (UTC), so the window is whole, closed hours;
  binary COPY, then VACUUM (ANALYZE) and CHECKPOINT. Every continuous aggregate is then refreshed over the window
  (from an hour before it: clock offsets put a few readings seconds before its start), as bench_analytics does
  after its hour-by-hour refreshes, and VACUUM (ANALYZE) again: the fleet view reads materialised hours only.
- A read key (db.keys.create_key); `fleet serve` under gunicorn (benchlib.gunicorn_server, --workers x --threads,
  default 2 x 4, FLEET_RATE_LIMIT=off, the access log on as in production).
- Sign-in as a browser does it, with http.client: GET /ui/login (the `fleet_ui_login_csrf` cookie and the form's
  hidden csrf_token), POST /ui/login (key, csrf_token, next) -> 303 with `fleet_ui_session=<token>`.

Both requests name the loaded window explicitly (startDate/endDate), so both read the same hours:
- API (the baseline): GET /v1/analytics/fleet?sort=efficiency&page_size=50&startDate=..&endDate=.. (X-API-Key);
- page: GET /ui/fleet?sort=efficiency&pageSize=50&startDate=..&endDate=.. (Cookie: fleet_ui_session=..).

Check first: the page's `tbody tr[data-vehicle-id]` ids, in order, and each row's `td[data-col=efficiencyRatio]`
data-value equal the API's first page (the JSON's vehicleId and efficiencyRatio, as the page's data_value filter
writes it), and the page's vehicle total equals the API's X-Pagination total; the same for the last page. The HTML
is parsed with html.parser. A mismatch: nothing is measured, the exit status is 1.

What is measured, API and page alternating:
1. sequential, one keep-alive connection each (http.client, timed from sending the request to having read the
   whole body): the request 50 times (--sequential), API then page, right after the check (a fresh server: psycopg
   prepares a statement at its 5th execution on a connection, so the first 5 requests are set beside the rest) and
   again after the wrk runs (warm);
2. wrk (Debian's package, -t2, --connections keep-alive connections, -H with the key or the cookie, a Lua script
   that counts status codes and reports p50/p95/p99 with tests/load/wrk/design_common.lua): an unmeasured --warmup
   run of each, then --rounds rounds of API, page (ABAB), each --seconds. Per run: requests/s, p50/p99 latency,
   non-2xx responses, the CPU seconds of the whole gunicorn process tree (master, workers) and of the PostgreSQL
   cluster (postmaster, backends, reaped children) per request (benchlib.TreeCpu), the app's own time per request
   (the access log's duration_ms, benchlib.Server.handler_latency), and the CPU used by processes outside this
   benchmark (benchlib.CpuWatch: the machine is shared, a large figure means disturbed numbers);
3. the last page (page = X-Pagination total_pages): one request each, on the sequential connections;
4. where the page's time goes: the app in this process (api.create_app on the same database, Flask's test
   client, no gunicorn), --profile requests of each, alternating, with the service call
   (api.analytics.service.fleet_performance), the session lookup (db.ui_sessions.find_session) and
   render_template timed by wrapping them (nothing in api/ is changed).

Every figure is printed beside the API's from the same run; the HTML's size beside the JSON's.

Everything is bounded (--timeout, wrk by its duration plus a margin, per-request timeouts); every process started
(loader processes, gunicorn, wrk, the cluster) is stopped by PID on exit, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import db
from db import keys
from tests.load import rollups
from tests.load.bench_analytics import BENCH_SETTINGS, TARGETS_MS, HttpClient, engine_info, postmaster_pid
from tests.load.bench_design import WRK, WRK_DIR, WRK_THREADS, WRK_TIMEOUT_S, Client, run_clients
from tests.load.benchlib import (
    CpuWatch,
    Server,
    TreeCpu,
    cpu_line,
    gunicorn_server,
    log,
    machine_info,
    run_benchmark,
    summarize,
)
from tests.load.fleet_day import load_fleet_day
from tests.load.native_cluster import native_cluster, require_native_engine

SESSION_COOKIE = "fleet_ui_session"  # api/ui/session.py
LOGIN_CSRF_COOKIE = "fleet_ui_login_csrf"
PAGE_SIZE = 50
SORT = "efficiency"
TARGETS = ("api", "page")
LABELS = {"api": "API (baseline)", "page": "page"}
#: wrk script: every request is wrk's own (path and -H headers from the command line); status codes counted and
#: the summary reported by the shared done() of tests/load/wrk/design_common.lua (bench_design's format).
WRK_SCRIPT = """
local common = dofile(%s)
local COUNTERS = { "sent", "responses", "ok", "limited", "other" }
setup = common.setup
done = common.done(COUNTERS)
function init(args)
   common.reset(COUNTERS)
end
function request()
   sent = sent + 1
   return wrk.request()
end
function response(status)
   common.count(status)
end
"""


# --- the page and the API ------------------------------------------------------------------------------------


class PageParser(HTMLParser):
    """The hidden inputs of a page's forms, and the fleet table's rows: (data-vehicle-id, the efficiencyRatio
    cell's data-value) of each `tbody tr[data-vehicle-id]`, in order; the `data-testid=total` text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.inputs: dict[str, str] = {}
        self.rows: list[list[str | None]] = []
        self.total = ""
        self._in_tbody = False
        self._row: list[str | None] | None = None
        self._in_total = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "input" and a.get("name"):
            self.inputs[str(a["name"])] = a.get("value") or ""
        elif tag == "tbody":
            self._in_tbody = True
        elif tag == "tr" and self._in_tbody:
            self._row = [a["data-vehicle-id"], None] if "data-vehicle-id" in a else None
            if self._row is not None:
                self.rows.append(self._row)
        elif tag == "td" and self._row is not None and a.get("data-col") == "efficiencyRatio":
            self._row[1] = a.get("data-value") or ""
        elif a.get("data-testid") == "total":
            self._in_total = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_tbody, self._row = False, None
        elif tag == "tr":
            self._row = None
        self._in_total = False

    def handle_data(self, data: str) -> None:
        if self._in_total:
            self.total += data.strip()


def parse_page(html: bytes) -> PageParser:
    parser = PageParser()
    parser.feed(html.decode("utf-8"))
    parser.close()
    return parser


def data_value(value: Any) -> str:
    """A JSON value as the page's data_value filter writes it (api/ui/views.py): '' for null, json.dumps else."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def compare(api_body: bytes, api_total: int, html: bytes, what: str) -> list[str]:
    """The page's rows (ids in order, efficiencyRatio data-value) and total against the API's; problems found."""
    want = [(v["vehicleId"], data_value(v["efficiencyRatio"])) for v in json.loads(api_body)]
    page = parse_page(html)
    got = [(str(vid), value) for vid, value in page.rows]
    problems = []
    if len(got) != len(want):
        problems.append(f"{what}: the page has {len(got)} rows, the API {len(want)}")
    for k, (g, w) in enumerate(zip(got, want, strict=False)):
        if g != w:
            problems.append(f"{what}: row {k + 1}: page {g} != API {w}")
            break
    if page.total.replace(",", "") != str(api_total):
        problems.append(f"{what}: the page says {page.total!r} vehicles, the API's X-Pagination total {api_total}")
    return problems


def _cookie(resp: http.client.HTTPResponse, name: str) -> str | None:
    for header in resp.headers.get_all("Set-Cookie") or []:
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        if name in jar and jar[name].value:
            return jar[name].value
    return None


def sign_in(port: int, key: str, next_path: str) -> str:
    """Sign in to /ui/ as a browser does; the session cookie's token."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/ui/login?" + urlencode({"next": next_path}))
        resp = conn.getresponse()
        body = resp.read()
        csrf_cookie = _cookie(resp, LOGIN_CSRF_COOKIE)
        form_token = parse_page(body).inputs.get("csrf_token")
        if resp.status != 200 or not csrf_cookie or not form_token:
            raise RuntimeError(
                f"GET /ui/login: HTTP {resp.status}, csrf cookie {bool(csrf_cookie)}, form token"
                f" {bool(form_token)}: {body[:300]!r}"
            )
        form = urlencode({"key": key, "csrf_token": form_token, "next": next_path})
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"{LOGIN_CSRF_COOKIE}={csrf_cookie}",
        }
        conn.request("POST", "/ui/login", body=form, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        token = _cookie(resp, SESSION_COOKIE)
        if resp.status != 303 or not token:
            raise RuntimeError(f"POST /ui/login: HTTP {resp.status}, session cookie {bool(token)}: {body[:300]!r}")
        return token
    finally:
        conn.close()


def fetch(client: HttpClient, path: str) -> tuple[bytes, float]:
    """GET on a keep-alive client: body and seconds; raises unless 200."""
    status, body, elapsed = client.get(path)
    if status != 200:
        raise RuntimeError(f"GET {path}: HTTP {status}: {body[:300]!r}")
    return body, elapsed


def api_total(port: int, key: str, path: str) -> tuple[bytes, dict[str, Any]]:
    """One API request on its own connection: body and the X-Pagination header (total, total_pages)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers={"X-API-Key": key, "Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {resp.status}: {body[:300]!r}")
        return body, json.loads(resp.headers.get("X-Pagination") or "{}")
    finally:
        conn.close()


# --- measurements --------------------------------------------------------------------------------------------


def sequential(client: HttpClient, path: str, n: int) -> dict[str, Any]:
    """`path` n times, one after another, on one keep-alive connection: ms, and the first 5 beside the rest."""
    seconds = []
    body = b""
    for _ in range(n):
        status, body, elapsed = client.get(path)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}: {body[:300]!r}")
        seconds.append(elapsed)
    return {
        "all": summarize(seconds),
        "first5": summarize(seconds[:5]),
        "rest": summarize(seconds[5:]),
        "bytes": len(body),
        "ms": [round(s * 1000, 2) for s in seconds],
    }


def wrk_run(
    server: Server,
    postmaster: int,
    target: str,
    path: str,
    header: str,
    seconds: int,
    args: argparse.Namespace,
    tmp: Path,
    label: str,
) -> dict[str, Any]:
    """One wrk run: rate, latency, errors, CPU per request of the gunicorn tree and the cluster, the app's own time
    per request (access log), and the CPU of processes outside this benchmark."""
    script = tmp / "bench_ui.lua"
    if not script.exists():
        script.write_text(WRK_SCRIPT % json.dumps(str(WRK_DIR / "design_common.lua")))
    command = [str(WRK), f"-t{WRK_THREADS}", f"-c{args.connections}", f"-d{seconds}s"]
    command += ["--timeout", f"{WRK_TIMEOUT_S}s", "-s", str(script), "-H", header, server.url + path]
    tree = TreeCpu({"gunicorn": server.pid, "postgres": postmaster}, interval=1.0)
    watch = CpuWatch(roots=[server.pid, postmaster])
    watch.start()
    tree.start()
    t0 = time.time()
    [result] = run_clients([Client(target, "wrk", args.connections, command)], seconds, tmp, label)
    t1 = time.time()
    trees, cpu = tree.stop(), watch.stop()
    requests = result.get("requests") or 0
    result["cpu_s"] = trees
    result["cpu_ms_per_request"] = {k: 1000 * v / requests if requests else None for k, v in trees.items()}
    result["machine"] = cpu
    prefix = "/v1/analytics/fleet" if target == "api" else "/ui/fleet"
    handler = server.handler_latency(t0, t1 + 1, lambda m, p: "x" if p.startswith(prefix) else None)
    result["handler"] = handler.get("x")
    if "rate" in result:
        per = result["cpu_ms_per_request"]
        log(
            f"{label}: {result['rate']:,.1f} req/s, p50 {result['p50']:.1f} ms, p99 {result['p99']:.1f} ms,"
            f" non-2xx {result['non_2xx']}, socket errors {result['socket_errors']}; CPU ms/request gunicorn"
            f" {per.get('gunicorn') or 0:.2f}, PostgreSQL {per.get('postgres') or 0:.2f}; {cpu_line(cpu)}"
        )
    else:
        log(f"{label}: wrk failed: {result.get('error')}")
    return result


@contextmanager
def _timed(module: Any, name: str, into: list[float]) -> Iterator[None]:
    """Wrap module.name so each call's seconds go to `into`; restored on the way out."""
    original = getattr(module, name)

    def wrapper(*a: Any, **kw: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*a, **kw)
        finally:
            into.append(time.perf_counter() - started)

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, original)


def breakdown(url: str, key: str, paths: dict[str, str], n: int) -> dict[str, Any]:
    """Where a request's time goes, in this process (the real app on the same database, Flask's test client):
    per target the request's total, the service call, the session lookup and render_template, in ms."""
    from api import create_app
    from api.analytics import service as analytics_service
    from api.ui import views
    from config import Settings
    from db import ui_sessions

    env = {**os.environ, "DATABASE_URL": url, "FLEET_RATE_LIMIT": "off", "FLEET_LOG_LEVEL": "WARNING"}
    app = create_app(Settings.from_env(env))
    try:
        client = app.test_client()
        form = client.get("/ui/login?next=/ui/fleet")
        token = parse_page(form.data).inputs["csrf_token"]
        resp = client.post("/ui/login", data={"key": key, "csrf_token": token, "next": "/ui/fleet"})
        if resp.status_code != 303:
            raise RuntimeError(f"in-process sign-in: HTTP {resp.status_code}")
        headers = {"api": {"X-API-Key": key}, "page": {}}
        for _ in range(5):  # warm: connections, statement preparation, template compilation
            for target in TARGETS:
                client.get(paths[target], headers=headers[target])
        out: dict[str, Any] = {}
        parts: dict[str, dict[str, list[float]]] = {t: {} for t in TARGETS}
        for k in range(n):
            for target in TARGETS if k % 2 == 0 else TARGETS[::-1]:
                p = parts[target]
                with (
                    _timed(analytics_service, "fleet_performance", p.setdefault("service", [])),
                    _timed(ui_sessions, "find_session", p.setdefault("session lookup", [])),
                    _timed(views, "render_template", p.setdefault("render_template", [])),
                ):
                    started = time.perf_counter()
                    resp = client.get(paths[target], headers=headers[target])
                    p.setdefault("total", []).append(time.perf_counter() - started)
                if resp.status_code != 200:
                    raise RuntimeError(f"in-process {target}: HTTP {resp.status_code}")
        for target in TARGETS:
            p = {name: values for name, values in parts[target].items() if values}
            mean = {name: 1000 * sum(values) / n for name, values in p.items()}  # ms per request
            mean["rest"] = mean["total"] - sum(v for name, v in mean.items() if name != "total")
            out[target] = {"mean_ms": mean, "p50_ms": {name: summarize(v)["p50"] for name, v in p.items()}}
        return out
    finally:
        for name in ("fleet.db", "fleet.db_read"):
            app.extensions[name].dispose()


# --- the run -------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not WRK.exists():
        raise SystemExit(f"{WRK} is needed: apt-get install -y wrk")
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(minutes=args.minutes)
    window = {"startDate": start.isoformat(), "endDate": end.isoformat()}
    report: dict[str, Any] = {
        "parameters": {**vars(args), "json": str(args.json)},
        "machine": machine_info(),
        "window": window,
        "mismatches": [],
        "problems": [],
    }

    def api_path(page: int | None = None) -> str:
        return "/v1/analytics/fleet?" + urlencode(
            {"sort": SORT, "page_size": PAGE_SIZE, **({"page": page} if page else {}), **window}
        )

    def page_path(page: int | None = None) -> str:
        return "/ui/fleet?" + urlencode(
            {"sort": SORT, "pageSize": PAGE_SIZE, **({"page": page} if page else {}), **window}
        )

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fleet-bench-ui-")))
        log(
            "starting a throw-away native Community cluster (fsync on, bench_analytics' settings: "
            + ", ".join(f"{k}={v}" for k, v in BENCH_SETTINGS.items())
            + ")"
        )
        url = stack.enter_context(native_cluster("fleet_bench", settings=BENCH_SETTINGS))
        engine = db.make_engine(url, pool_size=2, connect_timeout=30)
        stack.callback(engine.dispose)
        with engine.connect() as conn:
            report["engine"] = engine_info(conn)
        pm = postmaster_pid(report["engine"].pop("backend_pid"))
        if pm is None:
            raise RuntimeError("the cluster's postmaster was not found in /proc")
        e = report["engine"]
        log(f"cluster up: PostgreSQL {e['server_version']}, TimescaleDB {e['timescaledb']} ({e['license']})")

        cpu = CpuWatch(roots=[pm])
        cpu.start()
        stats = load_fleet_day(
            url,
            meters=args.devices,
            vehicles=args.devices,
            day_start=start,
            minutes=args.minutes,
            seed=args.seed,
            timeout=args.timeout,
            log=log,
        )
        t0 = time.perf_counter()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as admin:
            caggs = list(rollups.continuous_aggregates(admin))
            for cagg in caggs:
                rollups.refresh(admin, cagg, start - timedelta(hours=1), end)
            admin.exec_driver_sql("VACUUM (ANALYZE)")
        report["load"] = {
            "rows": stats.history_rows,
            "copy_seconds": stats.copy_seconds,
            "rows_per_second": stats.copy_rows_per_second,
            "total_seconds": stats.total_seconds,
            "aggregates": caggs,
            "refresh_seconds": time.perf_counter() - t0,
            "cpu": cpu.stop(),
        }
        log(f"aggregates {', '.join(caggs)} refreshed over the window in {report['load']['refresh_seconds']:.1f} s")

        with engine.begin() as conn:
            key = keys.create_key(conn, "bench-ui", "read", None)[1]
        server = stack.enter_context(
            gunicorn_server(
                url,
                workers=args.workers,
                threads=args.threads,
                log_path=tmp / "gunicorn.log",
                env={"FLEET_RATE_LIMIT": "off"},
            )
        )
        token = sign_in(server.port, key, page_path())
        log("signed in to /ui/ (fleet_ui_session cookie)")

        # The check: the page shows the API's rows, first and last page.
        first_api, pagination = api_total(server.port, key, api_path())
        total, pages = int(pagination["total"]), int(pagination["total_pages"])
        report["total"], report["pages"] = total, pages
        api = HttpClient(server.port, key)
        page = HttpClient(server.port, key)
        page.headers = {"Cookie": f"{SESSION_COOKIE}={token}", "Accept": "text/html"}
        stack.callback(api.close)
        stack.callback(page.close)
        first_html = fetch(page, page_path())[0]
        last_api, _ = api_total(server.port, key, api_path(pages))
        last_html = fetch(page, page_path(pages))[0]
        report["mismatches"] += compare(first_api, total, first_html, "first page")
        report["mismatches"] += compare(last_api, total, last_html, f"page {pages}")
        report["sizes"] = {"api": len(first_api), "page": len(first_html)}
        report["rows_checked"] = len(json.loads(first_api)) + len(json.loads(last_api))
        if report["mismatches"]:
            log(f"the page and the API disagree: {report['mismatches'][0]}; nothing measured")
            return report
        log(
            f"page and API agree on {report['rows_checked']} rows (first page and page {pages} of {pages});"
            f" {total:,} vehicles"
        )

        clients = {"api": api, "page": page}
        paths = {"api": api_path(), "page": page_path()}
        seq: dict[str, dict[str, Any]] = {"fresh": {}, "warm": {}}
        api.close()  # a new keep-alive connection for the series (the check used others)
        page.close()
        for target in TARGETS:
            seq["fresh"][target] = sequential(clients[target], paths[target], args.sequential)
        log("sequential, fresh: p50 " + ", ".join(f"{t} {seq['fresh'][t]['all']['p50']:.1f} ms" for t in TARGETS))

        headers = {"api": f"X-API-Key: {key}", "page": f"Cookie: {SESSION_COOKIE}={token}"}
        for target in TARGETS:
            wrk_run(server, pm, target, paths[target], headers[target], args.warmup, args, tmp, f"warmup-{target}")
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
        for r in range(1, args.rounds + 1):
            for target in TARGETS:
                res = wrk_run(
                    server, pm, target, paths[target], headers[target], args.seconds, args, tmp, f"{target}-{r}"
                )
                runs[target].append(res)
                if "error" in res or res.get("non_2xx") or res.get("socket_errors"):
                    report["problems"].append(
                        f"wrk {target}-{r}: {res.get('error') or ''} non-2xx {res.get('non_2xx')},"
                        f" socket errors {res.get('socket_errors')}"
                    )
        report["wrk"] = runs

        for target in TARGETS:
            seq["warm"][target] = sequential(clients[target], paths[target], args.sequential)
        report["sequential"] = seq
        deep = {"api": api_path(pages), "page": page_path(pages)}
        report["deep"] = {}
        for target in TARGETS:
            body, elapsed = fetch(clients[target], deep[target])
            report["deep"][target] = {"ms": elapsed * 1000, "bytes": len(body)}
        report["server_log"] = server.log_counts()

        if args.profile:
            log(f"in-process breakdown: {args.profile} requests of each")
            report["breakdown"] = breakdown(url, key, paths, args.profile)
        log("measurements done; stopping gunicorn and the cluster")
    report["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return report


# --- report --------------------------------------------------------------------------------------------------


def _mean(runs: Sequence[dict[str, Any]], get: Callable[[dict[str, Any]], float | None]) -> float | None:
    values = [v for v in (get(r) for r in runs) if v is not None]
    return sum(values) / len(values) if values else None


def _n(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render_report(report: dict[str, Any]) -> str:
    p, m, e = report["parameters"], report["machine"], report.get("engine", {})
    out = [
        "",
        "=" * 100,
        "operator page vs the JSON endpoint it mirrors (tests/load/bench_ui.py)",
        f"machine: {m['cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB RAM, load average at start"
        f" {m['loadavg']}, at end {m.get('loadavg_at_end', '-')}",
        f"engine: PostgreSQL {e.get('server_version')}, TimescaleDB {e.get('timescaledb')} ({e.get('license')}),"
        " fsync on",
        f"data: {p['devices']:,} meters + {p['devices']:,} vehicles x {p['minutes']} min, window"
        f" [{report['window']['startDate']}, {report['window']['endDate']}) (ends at the start of this hour)",
    ]
    load = report.get("load")
    if load:
        out.append(
            f"load: {load['rows']:,} rows in {load['copy_seconds']:.1f} s ({load['rows_per_second']:,.0f} rows/s),"
            f" {load['total_seconds']:.1f} s with VACUUM and CHECKPOINT; aggregates refreshed in"
            f" {load['refresh_seconds']:.1f} s; {cpu_line(load['cpu'])}"
        )
    out.append(
        f"requests (API = baseline): GET /v1/analytics/fleet?sort={SORT}&page_size={PAGE_SIZE} vs GET"
        f" /ui/fleet?sort={SORT}&pageSize={PAGE_SIZE}, both with the window's startDate/endDate; gunicorn"
        f" {p['workers']} workers x {p['threads']} threads, FLEET_RATE_LIMIT=off"
    )
    if "rows_checked" in report:
        verdict = "DISAGREE" if report["mismatches"] else "agree"
        out.append(
            f"check: page and API {verdict} on {report['rows_checked']} rows (ids in order, efficiencyRatio"
            f" data-value) of the first page and page {report['pages']} (the last); total {report['total']:,}"
        )
    if "wrk" not in report:
        out += [f"MISMATCH {x}" for x in report["mismatches"]]
        out.append("=" * 100)
        return "\n".join(out)

    s = report["sizes"]
    out.append(
        f"response size, first page of {PAGE_SIZE}: JSON {s['api']:,} bytes, HTML {s['page']:,} bytes"
        f" ({s['page'] / s['api']:.2f}x)"
    )

    runs = report["wrk"]
    rounds = len(runs["api"])
    out += ["", f"wrk -t{WRK_THREADS} -c{p['connections']}, {p['seconds']} s each, {rounds} rounds alternating (ABAB):"]
    head = "".join(f"{f'{t} r{r + 1}':>12}" for t in TARGETS for r in range(rounds))
    out.append(f"{'':<40}{head}{'page/API':>11}")
    rows: list[tuple[str, Callable[[dict[str, Any]], float | None], int]] = [
        ("requests/s", lambda r: r.get("rate"), 1),
        ("latency p50 ms", lambda r: r.get("p50"), 1),
        ("latency p99 ms", lambda r: r.get("p99"), 1),
        ("gunicorn tree CPU ms/request", lambda r: r["cpu_ms_per_request"].get("gunicorn"), 2),
        ("PostgreSQL CPU ms/request", lambda r: r["cpu_ms_per_request"].get("postgres"), 2),
        ("app time/request p50 ms (access log)", lambda r: (r.get("handler") or {}).get("p50"), 1),
        ("app time/request p99 ms (access log)", lambda r: (r.get("handler") or {}).get("p99"), 1),
        ("non-2xx + socket errors", lambda r: (r.get("non_2xx") or 0) + (r.get("socket_errors") or 0), 0),
        ("other processes' CPU, % of all cores", lambda r: r["machine"]["others_pct"], 0),
    ]
    for name, get, digits in rows:
        cells = "".join(f"{_n(get(r), digits):>12}" for t in TARGETS for r in runs[t])
        a, b = _mean(runs["api"], get), _mean(runs["page"], get)
        ratio = f"{b / a:.2f}x" if a and b is not None and "errors" not in name and "other" not in name else ""
        out.append(f"{name:<40}{cells}{ratio:>11}")
    for t in TARGETS:
        for k, r in enumerate(runs[t]):
            out.append(f"  {t} r{k + 1}: {cpu_line(r['machine'])}")

    seq = report["sequential"]
    out += ["", f"sequential, one keep-alive connection, {p['sequential']} requests each (ms):"]
    for phase, text in (("fresh", "right after sign-in and the check"), ("warm", "after the wrk runs")):
        out.append(f"  {phase} ({text}):")
        for t in TARGETS:
            x = seq[phase][t]
            a, f, rest = x["all"], x["first5"], x["rest"]
            out.append(
                f"    {LABELS[t]:<15} p50 {a['p50']:7.2f}  p95 {a['p95']:7.2f}  max {a['max']:7.2f} | first 5:"
                f" p50 {f['p50']:7.2f} max {f['max']:7.2f}; 6-{a['n']}: p50 {rest['p50']:7.2f} max {rest['max']:7.2f}"
            )
        ap, pp = seq[phase]["api"]["all"], seq[phase]["page"]["all"]
        out.append(f"    page/API: p50 {pp['p50'] / ap['p50']:.2f}x, p95 {pp['p95'] / ap['p95']:.2f}x")
    target = TARGETS_MS["fleet"]
    verdicts = []
    for phase in seq:
        for t in TARGETS:
            p95 = seq[phase][t]["all"]["p95"]
            verdicts.append(f"{phase} {t} {p95:.1f} ms {'met' if p95 < target else 'MISSED'}")
    out.append(f"  fleet view target of DESIGN.md, p95 < {target:g} ms one request at a time: {'; '.join(verdicts)}")
    d = report["deep"]
    out.append(
        f"last page (page {report['pages']}), one request each: API {d['api']['ms']:.1f} ms ({d['api']['bytes']:,}"
        f" bytes), page {d['page']['ms']:.1f} ms ({d['page']['bytes']:,} bytes); page/API"
        f" {d['page']['ms'] / d['api']['ms']:.2f}x"
    )
    b = report.get("breakdown")
    if b:
        out += ["", f"where the time goes (this process, Flask test client, {p['profile']} requests each; mean ms):"]
        names = ["total", "session lookup", "service", "render_template", "rest"]
        out.append(f"  {'':<15}" + "".join(f"{n:>17}" for n in names))
        for t in TARGETS:
            mean = b[t]["mean_ms"]
            out.append(f"  {LABELS[t]:<15}" + "".join(f"{_n(mean.get(n), 2):>17}" for n in names))
        out.append(
            "  rest = routing, key check (API) or session decorator, argument parsing, schema dump, JSON encoding (API)"
        )
    log_counts = report.get("server_log", {})
    out.append(
        f"gunicorn log: {log_counts.get('worker_boots')} worker boots, {log_counts.get('worker_timeouts')} timeouts,"
        f" {log_counts.get('tracebacks')} tracebacks, {log_counts.get('status_5xx')} 5xx"
    )
    out.append(
        "noise: the machine is shared (others run tests on it); 'other processes' above is CPU outside this"
        " benchmark's processes, gunicorn and the cluster during each run"
    )
    out += [f"PROBLEM {x}" for x in report["problems"]]
    out.append("checks: all passed" if not report["problems"] else f"checks: {len(report['problems'])} problems")
    out.append("=" * 100)
    return "\n".join(out)


# --- main ----------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tests.load.bench_ui", description=__doc__.splitlines()[0] if __doc__ else None
    )
    p.add_argument("--devices", type=int, default=10_000, help="meters, and as many vehicles (default 10000)")
    p.add_argument("--minutes", type=int, default=180, help="minutes loaded, ending at this hour (default 180)")
    p.add_argument("--seconds", type=int, default=20, help="seconds of each measured wrk run (default 20)")
    p.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of API, page (default 2: ABAB)")
    p.add_argument("--warmup", type=int, default=3, help="seconds of the unmeasured wrk run of each (default 3)")
    p.add_argument("--sequential", type=int, default=50, help="sequential requests per series (default 50)")
    p.add_argument("--profile", type=int, default=30, help="in-process requests of each (default 30; 0: skip)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    p.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker (default 4)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--timeout", type=int, default=1800, help="give up after this many seconds (default 1800)")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    args = p.parse_args(argv)
    if args.minutes < 60 or args.minutes % 60 or args.minutes > 1440:
        p.error("--minutes: a multiple of 60, from 60 to 1440 (whole hours: the fleet view reads hourly aggregates)")
    if min(args.devices, args.seconds, args.connections, args.rounds, args.warmup) < 1 or args.sequential < 6:
        p.error("--devices, --seconds, --connections, --rounds and --warmup must be >= 1, --sequential >= 6")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    require_native_engine()
    return run_benchmark(
        "bench_ui",
        args,
        run,
        render_report,
        "every process started was stopped and the cluster removed",
        passed=lambda r: not r["mismatches"] and not r["problems"],
    )


if __name__ == "__main__":
    sys.exit(main())
