"""Readiness: can this process serve traffic right now?"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

import db
from db import edition, migrate

logger = logging.getLogger(__name__)


def readiness(engine: Engine) -> dict[str, Any]:
    """Database reachable, schema at head, and which TimescaleDB edition serves it."""
    head = migrate.head_revision()
    try:
        # Committed, not rolled back: psycopg forgets a connection's prepared statements at a ROLLBACK (DEALLOCATE ALL),
        # and load balancers poll /ready every few seconds on the pool the requests use.
        with db.transaction(engine) as conn:
            revision = migrate.current_revision(conn)
            info = edition.describe(conn)
    except SQLAlchemyError as exc:
        logger.warning("readiness: database unavailable: %s", type(exc.__cause__ or exc).__name__)
        return {
            "ready": False,
            "database": "unavailable",
            "schema_revision": None,
            "schema_head": head,
            "edition": None,
        }
    at_head = revision == head
    return {
        "ready": at_head,
        "database": "ok"
        if at_head
        else f"schema at {revision or 'no revision'}, expected {head}: run `fleet db upgrade`",
        "schema_revision": revision,
        "schema_head": head,
        "edition": asdict(info),
    }
