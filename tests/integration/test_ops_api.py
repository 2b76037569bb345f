"""/health and /ready through the Flask test client, on both engines."""

import db
from db import migrate
from tests.conftest import is_community
from tests.support.api import build_app


def test_ops_health_answers_without_the_database():
    app = build_app(db.make_engine("postgresql+psycopg://x@127.0.0.1:1/none"))
    resp = app.test_client().get("/health")
    assert resp.status_code == 200
    assert resp.get_json() == {"status": "ok"}


def test_ops_ready_reports_schema_and_edition(client, engine_kind):
    resp = client.get("/ready")
    body = resp.get_json()
    assert resp.status_code == 200, body
    assert body["ready"] is True
    assert body["schema_revision"] == body["schema_head"] == migrate.head_revision()
    assert body["edition"]["license"] == ("timescale" if is_community(engine_kind) else "apache")
    assert body["edition"]["embedded"] is (engine_kind == "embedded")


def test_ops_ready_is_503_when_database_unreachable():
    eng = db.make_engine("postgresql+psycopg://fleet@127.0.0.1:1/fleet", pool_size=0, connect_timeout=2)
    resp = build_app(eng).test_client().get("/ready")
    assert resp.status_code == 503
    assert resp.get_json()["database"].startswith("unavailable: OperationalError: ")  # and why
