"""The HTTP API: `create_app()` builds the Flask application (served by gunicorn, see docker/gunicorn.conf.py)."""

from __future__ import annotations

from flask import Flask
from sqlalchemy.engine import Engine

import db
from api import analytics, auth, devices, docs, ingest, mappings, ops, problems
from api.config import Settings
from api.problems import ProblemApi


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> Flask:
    """Application factory; tests pass their own settings and engine."""
    settings = settings or Settings.from_env()
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
    app.extensions["fleet.db"] = engine or db.make_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        pool_timeout=settings.db_pool_timeout,
        connect_timeout=settings.db_connect_timeout,
    )
    docs.configure(app)
    problems.init_app(app)
    api = ProblemApi(app)
    auth.init_app(app, api, settings, public=(ops.blp,))  # /health, /ready: no key, no rate limit
    for blp in (ops.blp, ingest.blp, devices.blp, mappings.blp, analytics.blp):
        api.register_blueprint(blp)
    ingest.register_schemas(api.spec)
    return app
