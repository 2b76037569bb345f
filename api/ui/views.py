"""Pages of the operator UI. Each view parses its query with the API's own schema (plus page and pageSize),
calls the API's service function, dumps the result with the API's response schema and renders it."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import marshmallow as ma
from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    make_response,
    redirect,
    render_template,
    request,
    send_from_directory,
    url_for,
)
from werkzeug.exceptions import HTTPException

from api import auth
from api.alerts import service as alerts_service
from api.alerts.schemas import AlertQueryArgsSchema, AlertSchema
from api.analytics import service as analytics_service
from api.analytics.schemas import (
    FLEET_SORT_KEYS,
    FleetQueryArgsSchema,
    FleetVehicleSchema,
    PerformanceSchema,
    WindowQueryArgsSchema,
)
from api.analytics.window import Window, floor_hour
from api.blueprint import MAX_PAGE
from api.devices import service as devices_service
from api.devices.schemas import (
    MAX_SILENT_MINUTES,
    MeterStatusSchema,
    VehicleStatusSchema,
)
from api.fields import device_id
from api.mappings import service as mappings_service
from api.mappings.schemas import MappingSchema
from api.read_routing import read_engine
from api.ui import session
from db.errors import NotFound
from db.schema import ALERT_KINDS

#: Chart.js as npm installed it (api/ui/package.json, pinned in its lock file; scripts/setup.sh runs npm ci).
CHART_JS_DIR = Path(__file__).parent / "node_modules" / "chart.js" / "dist"
CHART_JS_FILE = "chart.umd.min.js"
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
#: Most mappings of one vehicle the vehicle page lists (newest last); a vehicle is re-mapped a few times a year.
MAPPING_HISTORY_LIMIT = 100

blp = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates", static_folder="static")


class _Paged(ma.Schema):
    """Page and page size of a listing page; anything else a browser adds to the URL is ignored."""

    class Meta:
        unknown = ma.EXCLUDE

    page = ma.fields.Integer(load_default=1, validate=ma.validate.Range(1, MAX_PAGE))
    page_size = ma.fields.Integer(
        data_key="pageSize", load_default=PAGE_SIZE, validate=ma.validate.Range(1, MAX_PAGE_SIZE)
    )


class FleetPageArgs(FleetQueryArgsSchema, _Paged):
    pass


class VehiclePageArgs(WindowQueryArgsSchema):
    class Meta:
        unknown = ma.EXCLUDE


class AlertsPageArgs(AlertQueryArgsSchema, _Paged):
    pass


class SilentPageArgs(_Paged):
    type = ma.fields.String(load_default="vehicle", validate=ma.validate.OneOf(("vehicle", "meter")))
    minutes = ma.fields.Integer(load_default=None, validate=ma.validate.Range(1, MAX_SILENT_MINUTES))


class _FindVehicleArgs(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    id = device_id(required=True)


class BadQuery(Exception):
    """A page's query string did not parse: 400 with the fields and what is wrong with each."""

    def __init__(self, messages: dict[str, Any]) -> None:
        super().__init__(messages)
        self.messages = messages


def _args(schema: ma.Schema) -> dict[str, Any]:
    try:
        return schema.load(request.args)  # type: ignore[no-any-return]  # a dict for a schema without many=True
    except ma.ValidationError as exc:
        raise BadQuery(exc.normalized_messages()) from None  # type: ignore[arg-type]  # a dict: fields given


def _pages(total: int, page: int, page_size: int) -> dict[str, Any]:
    """Paging links: the current URL's query with another page number."""
    count = max(1, math.ceil(total / page_size))

    def link(number: int) -> str:
        query = {**request.args.to_dict(), "page": str(number)}
        return f"{request.path}?{urlencode(query)}"

    return {
        "page": page,
        "count": count,
        "total": total,
        "prev": link(page - 1) if page > 1 else None,
        "next": link(page + 1) if page < count else None,
    }


def _window_query(period: dict[str, str]) -> dict[str, str]:
    return {"startDate": period["start"], "endDate": period["end"]}


def _window_links(window: Window) -> dict[str, str]:
    """Links to this page over the windows next to this one, and over the last 24 h and 7 days (other query
    arguments kept, back to the first page)."""
    length = window.end - window.start

    def link(start: datetime | None, end: datetime | None) -> str:
        query = {k: v for k, v in request.args.items() if k not in ("startDate", "endDate", "page")}
        if start is not None and end is not None:
            query |= {"startDate": _utc(start), "endDate": _utc(end)}
        return f"{request.path}?{urlencode(query)}"

    now_end = floor_hour(datetime.now(UTC)) + timedelta(hours=1)
    return {
        "earlier": link(window.start - length, window.start),
        "later": link(window.end, window.end + length),
        "last 24 h": link(None, None),
        "last 7 days": link(now_end - timedelta(days=7), now_end),
    }


def _utc(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


@blp.route("/")
def index() -> Response:
    return redirect(url_for("ui.fleet"), code=302)  # type: ignore[return-value]  # werkzeug's Response is Flask's


@blp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """Sign-in form; POST checks the key and starts a session."""
    target = session.safe_next(request.values.get("next"))
    if session.current_session() is not None and request.method == "GET":
        return redirect(target, code=303)
    csrf_token = session.login_csrf_token()
    error, status = None, 200
    if request.method == "POST":
        session.check_same_origin()
        session.check_csrf(request.cookies.get(session.LOGIN_CSRF_COOKIE))
        key = auth.find_key(request.form.get("key", "").strip())
        if key is None:
            error, status = "That API key is unknown or revoked.", 401
        elif key.role not in session.ROLES:
            error, status = f"A {key.role} key cannot sign in here: use a read or admin key.", 403
        else:
            hours = current_app.extensions["fleet.settings"].ui_session_hours
            return session.start(redirect(target, code=303), key.id, hours)  # type: ignore[arg-type]
    page = make_response(render_template("ui/login.html", csrf_token=csrf_token, next=target, error=error), status)
    return session.set_login_csrf(page)


@blp.route("/logout", methods=["POST"])
def logout() -> Any:
    session.check_same_origin()
    current = session.current_session()
    if current is not None:
        session.check_csrf(current.csrf_token)
    return session.end(redirect(url_for("ui.login"), code=303))  # type: ignore[arg-type]


@blp.route("/fleet")
@session.signed_in
def fleet() -> str:
    """Every vehicle's AC and DC totals and efficiency over the window: sorted, filtered, paged in the database."""
    args = _args(FleetPageArgs())
    threshold = current_app.extensions["fleet.settings"].efficiency_alert_threshold
    window = args["window"]
    rows, total = analytics_service.fleet_performance(
        read_engine(),
        window,
        sort=args["sort"],
        below_threshold=args["below_threshold"],
        threshold=threshold,
        limit=args["page_size"],
        offset=(args["page"] - 1) * args["page_size"],
    )
    period = PerformanceSchema().dump({"period": {"start": window.start, "end": window.end}})["period"]

    def sort_link(key: str) -> str:
        # A header sorts by its column; clicking it again reverses the order.
        sort = f"-{key}" if args["sort"] == key else key
        query = {**request.args.to_dict(), "sort": sort, "page": "1"}
        return f"{request.path}?{urlencode(query)}"

    return render_template(
        "ui/fleet.html",
        vehicles=FleetVehicleSchema(many=True).dump(rows),
        pages=_pages(total, args["page"], args["page_size"]),
        sort=args["sort"],
        sort_links={key: sort_link(key) for key in FLEET_SORT_KEYS},
        below_threshold=args["below_threshold"],
        threshold=threshold,
        period=period,
        window_query=_window_query(period),
        # Each row links to its vehicle over the same window: the URL's fixed parts built once, not per row.
        vehicle_link=(url_for("ui.vehicle", vehicle_id="_").removesuffix("_"), urlencode(_window_query(period))),
        window_links=_window_links(window),
        page_size=args["page_size"],
    )


@blp.route("/vehicle")
@session.signed_in
def find_vehicle() -> Response:
    """The fleet page's search box: go to that vehicle's page."""
    vehicle_id = _args(_FindVehicleArgs())["id"]
    return redirect(url_for("ui.vehicle", vehicle_id=vehicle_id), code=303)  # type: ignore[return-value]


@blp.route("/vehicles/<vehicle_id>")
@session.signed_in
def vehicle(vehicle_id: str) -> Any:
    """One vehicle: hourly AC against DC with efficiency, battery temperature, correlation, status, mappings."""
    window = _args(VehiclePageArgs())["window"]
    engine = read_engine()
    try:
        report = PerformanceSchema().dump(analytics_service.vehicle_performance(engine, vehicle_id, window))
    except NotFound:
        return render_template("ui/not_found.html", what="vehicle", device_id=vehicle_id), 404
    try:
        status = VehicleStatusSchema().dump(devices_service.get_vehicle(engine, vehicle_id))
    except NotFound:
        status = None  # mapped, never reported
    mappings, _total = mappings_service.list_mappings(
        engine, {"vehicle_id": vehicle_id}, limit=MAPPING_HISTORY_LIMIT, offset=0
    )
    hours = report["hourlyBreakdown"]
    chart = {
        "hours": [h["hour"] for h in hours],
        "ac": [h["acConsumed"] for h in hours],
        "dc": [h["dcDelivered"] for h in hours],
        "efficiency": [h["efficiency"] for h in hours],
    }
    return render_template(
        "ui/vehicle.html",
        report=report,
        status=status,
        mappings=MappingSchema(many=True).dump(mappings),
        chart=chart,
        threshold=current_app.extensions["fleet.settings"].efficiency_alert_threshold,
        window_query=_window_query(report["period"]),
        window_links=_window_links(window),
    )


@blp.route("/alerts")
@session.signed_in
def alerts() -> str:
    """Alerts (open by default), newest first, with how many there are of each kind."""
    args = _args(AlertsPageArgs())
    engine = read_engine()
    rows, total = alerts_service.list_alerts(engine, args, args["page_size"], (args["page"] - 1) * args["page_size"])
    counts = {
        kind: alerts_service.list_alerts(engine, {"status": args["status"], "kind": kind}, 0, 0)[1]
        for kind in ALERT_KINDS
    }
    return render_template(
        "ui/alerts.html",
        alerts=AlertSchema(many=True).dump(rows),
        pages=_pages(total, args["page"], args["page_size"]),
        status=args["status"],
        kind=args.get("kind"),
        kinds=ALERT_KINDS,
        counts=counts,
    )


@blp.route("/silent")
@session.signed_in
def silent() -> str:
    """Meters or vehicles without a reading for `minutes` (default: the silent-device alert's threshold)."""
    args = _args(SilentPageArgs())
    minutes = args["minutes"] or current_app.extensions["fleet.settings"].silent_minutes
    offset = (args["page"] - 1) * args["page_size"]
    filters = {"silent_for_minutes": minutes}
    if args["type"] == "meter":
        rows, total = devices_service.list_meters(read_engine(), filters, args["page_size"], offset)
        devices = MeterStatusSchema(many=True).dump(rows)
    else:
        rows, total = devices_service.list_vehicles(read_engine(), filters, args["page_size"], offset)
        devices = VehicleStatusSchema(many=True).dump(rows)
    return render_template(
        "ui/silent.html",
        devices=devices,
        device_type=args["type"],
        minutes=minutes,
        pages=_pages(total, args["page"], args["page_size"]),
    )


@blp.route("/static/vendor/" + CHART_JS_FILE)
def chart_js() -> Response:
    """Chart.js, from the pinned npm package (no CDN)."""
    return send_from_directory(CHART_JS_DIR, CHART_JS_FILE, max_age=86400)


@blp.errorhandler(BadQuery)
def bad_query(exc: BadQuery) -> tuple[str, int]:
    return render_template("ui/error.html", status=400, title="Bad request", messages=exc.messages), 400


@blp.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> tuple[str, int]:
    status = exc.code or 500
    return render_template("ui/error.html", status=status, title=exc.name, messages={"": [exc.description]}), status


@blp.app_template_filter("data_value")
def data_value(value: Any) -> str:
    """A value as the API's JSON has it, for a data-value attribute ('' for null; strings as they are)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float) and math.isfinite(value):
        return repr(value)  # what json.dumps writes for a number, without its overhead (250 cells a page)
    return json.dumps(value)


@blp.app_template_filter("kwh")
def kwh(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


@blp.app_template_filter("percent")
def percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


@blp.app_template_filter("path_segment")
def path_segment(value: str) -> str:
    """A device id as one segment of a URL path (every reserved character escaped)."""
    return quote(value, safe="")


@blp.app_template_filter("utc_time")
def utc_time(value: str | None) -> str:
    """An API timestamp (ISO 8601, UTC) as people read it: '2026-12-03 19:59 UTC'."""
    if not value:
        return "—"
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


@blp.app_template_filter("number")
def number(value: float | None, decimals: int = 1) -> str:
    return "—" if value is None else f"{value:.{decimals}f}"


blp.after_request(session.protect)


def init_app(app: Flask) -> None:
    """Register the pages (a plain Flask blueprint: HTML pages are no API operations, and stay out of the
    OpenAPI document and its strict query parsing)."""
    app.register_blueprint(blp)


@blp.context_processor
def _template_globals() -> dict[str, Any]:
    return {"ui_session": session.current_session}
