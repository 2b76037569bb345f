"""Readiness: can this process serve traffic right now?"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

import db
from config.logs import redact
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
        reason = _why_unavailable(exc)
        logger.warning("readiness: database unavailable: %s", reason)
        return {
            "ready": False,
            "database": f"unavailable: {reason}",
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


def _why_unavailable(exc: SQLAlchemyError) -> str:
    """The driver's first line (refused, timed out, cancelled by statement_timeout, abandoned after its deadline),
    with any password masked."""
    cause = getattr(exc, "orig", None) or exc.__cause__ or exc
    first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return redact(f"{type(cause).__name__}: {first_line}")[:300]
