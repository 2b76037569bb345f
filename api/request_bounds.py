"""Which bounds each request's database work gets (db/deadlines.py): by request class, from the settings.

| class | endpoints | settings |
| --- | --- | --- |
| ingest | POST /v1/telemetry/ingest (and every API key lookup) | FLEET_INGEST_*_TIMEOUT_MS |
| status | device status and listings, /ready, /metrics | FLEET_STATUS_*_TIMEOUT_MS |
| analytics | analytics, alerts, the operator page (/ui/) | FLEET_ANALYTICS_*_TIMEOUT_MS |
| admin | mappings | FLEET_ADMIN_*_TIMEOUT_MS |

Ingest's bounds are the connections' own defaults (no round trip to set them); another class's are set in its
transaction (db.transaction). Past a bound plus FLEET_DB_DEADLINE_GRACE_MS, the connection is abandoned.
"""

from __future__ import annotations

from contextvars import Token

from flask import Flask, g, request

from config import Settings
from db.deadlines import StatementBounds, request_bounds

#: Request class of each blueprint; a request outside these (the docs page) does no database work.
CLASS_OF_BLUEPRINT = {
    "ingest": "ingest",
    "devices": "status",
    "ops": "status",
    "metrics": "status",
    "analytics": "analytics",
    "alerts": "analytics",
    "ui": "analytics",
    "mappings": "admin",
}


def bounds_by_class(settings: Settings) -> dict[str, StatementBounds]:
    """The statement and lock timeouts of each request class."""
    return {
        "ingest": StatementBounds(settings.ingest_statement_timeout_ms, settings.ingest_lock_timeout_ms),
        "status": StatementBounds(settings.status_statement_timeout_ms, settings.status_lock_timeout_ms),
        "analytics": StatementBounds(settings.analytics_statement_timeout_ms, settings.analytics_lock_timeout_ms),
        "admin": StatementBounds(settings.admin_statement_timeout_ms, settings.admin_lock_timeout_ms),
    }


def init_app(app: Flask, settings: Settings) -> None:
    """Bind each request's bounds before any other hook (the API key lookup of a 401 or 429 is bounded too)."""
    by_class = bounds_by_class(settings)

    def bind() -> None:
        request_class = CLASS_OF_BLUEPRINT.get(request.blueprint or "")
        bounds = by_class[request_class] if request_class else by_class["status"]
        token: Token[StatementBounds | None] = request_bounds.set(bounds)
        g.fleet_bounds_token = token

    def unbind(_exc: BaseException | None) -> None:
        token = g.pop("fleet_bounds_token", None)
        if token is not None:
            request_bounds.reset(token)

    app.before_request_funcs.setdefault(None, []).insert(0, bind)
    app.teardown_request(unbind)
