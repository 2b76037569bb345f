"""The HTTP API: `create_app()` builds the Flask application (served by gunicorn, see docker/gunicorn.conf.py)."""

from __future__ import annotations

from flask import Flask
from sqlalchemy.engine import Engine

import db
from api import (
    admission,
    alerts,
    analytics,
    auth,
    devices,
    docs,
    ingest,
    logging_setup,
    mappings,
    metrics,
    ops,
    problems,
    read_routing,
    request_bounds,
    ui,
)
from api.problems import ProblemApi
from config import Settings


def create_app(
    settings: Settings | None = None, engine: Engine | None = None, read_engine: Engine | None = None
) -> Flask:
    """Application factory; tests pass their own settings and engines.

    Two engines: "fleet.db" (the primary: writes, key lookups, mappings, readiness) and "fleet.db_read" (status,
    listings, analytics, alerts): a replica's when DATABASE_READ_URL is set, else the same engine. Reads take
    theirs from api.read_routing.read_engine(): the primary while the replica is down or lagging."""
    settings = settings or Settings.from_env()
    logging_setup.configure_logging(settings.log_level)  # once per process: gunicorn's master already did
    app = Flask(__name__)
    app.config.from_mapping(
        API_TITLE="Fleet telemetry",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
    )
    app.extensions["fleet.settings"] = settings
    by_class = request_bounds.bounds_by_class(settings)
    app.extensions["fleet.db"] = engine or db.make_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        pool_timeout=settings.db_pool_timeout,
        connect_timeout=settings.db_connect_timeout,
        statement_bounds=by_class["ingest"],
        deadline_grace_ms=settings.db_deadline_grace_ms,
    )
    if read_engine is None and settings.database_read_url:
        read_engine = db.make_engine(
            settings.database_read_url,
            pool_size=settings.db_pool_size,
            pool_timeout=settings.db_pool_timeout,
            connect_timeout=settings.db_connect_timeout,
            read_only=True,
            statement_bounds=by_class["status"],
            deadline_grace_ms=settings.db_deadline_grace_ms,
        )
    app.extensions["fleet.db_read"] = read_engine or app.extensions["fleet.db"]
    read_routing.init_app(
        app,
        read_routing.ReadRouter(
            app.extensions["fleet.db"],
            read_engine,
            max_lag_s=settings.read_replica_max_lag_s,
            fallback=settings.read_replica_fallback,
            check_every_s=settings.read_replica_check_s,
        ),
    )
    docs.configure(app)
    logging_setup.init_app(app)  # X-Request-ID on every request, response and log line
    request_bounds.init_app(app, settings)  # statement/lock timeouts and a deadline for each request's database work
    problems.init_app(app)
    api = ProblemApi(app)
    # Never rate limited: /health, /ready (no key) and /metrics (a key only if FLEET_METRICS asks for one).
    auth.init_app(app, api, settings, public=(ops.blp, metrics.blp))
    for blp in (ops.blp, ingest.blp, devices.blp, mappings.blp, analytics.blp, alerts.blp):
        api.register_blueprint(blp)
    ui.init_app(app)  # the operator page (/ui/): HTML over the same service functions, signed in with a read key
    metrics.init_app(app, api, settings)  # request timing, rejections, pool gauges; GET /metrics
    # Shed what queued too long, in WSGI middleware before Flask does any work; never /health, /ready, /metrics.
    # Last: it reads the routes of those blueprints from the URL map.
    admission.init_app(app, settings, ingest=ingest.blp, never_shed=(ops.blp, metrics.blp))
    return app
