"""Every error the API returns is an RFC 9457 problem document (application/problem+json).

One place maps exceptions to problems: HTTP errors raised by views or by webargs validation (422 with the
field errors), domain errors from db/, and database outages (503, so clients retry instead of giving up).
"""

from __future__ import annotations

import logging
from typing import Any

import marshmallow as ma
from flask import Flask
from flask_smorest import Api
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException, ServiceUnavailable

from db import errors

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
#: Seconds a client should wait before retrying after a 503.
RETRY_AFTER_S = 5


class ProblemSchema(ma.Schema):
    """Shape of every error response (documentation only: ProblemApi builds the body)."""

    type = ma.fields.String(metadata={"description": "URI of the problem type; about:blank for plain HTTP errors"})
    title = ma.fields.String(metadata={"description": "HTTP reason phrase"})
    status = ma.fields.Integer()
    detail = ma.fields.String(metadata={"description": "What went wrong, for a human"})
    errors = ma.fields.Dict(
        metadata={"description": "Field errors: location -> field -> messages (batch bodies: item index -> field)"}
    )


class ProblemApi(Api):
    """flask-smorest Api whose error responses are problem documents."""

    ERROR_SCHEMA = ProblemSchema

    def handle_http_exception(self, error: HTTPException) -> Any:
        payload, code, headers = self._payload(error)
        return payload, code, headers

    def _payload(self, error: HTTPException) -> tuple[dict[str, Any], int, dict[str, str]]:
        code = error.code or 500
        data = getattr(error, "data", None) or {}
        body: dict[str, Any] = {
            "type": "about:blank",
            "title": error.name,
            "status": code,
            "detail": data.get("message") or error.description,
        }
        errors_ = data.get("errors") or data.get("messages")
        if errors_:
            body["errors"] = errors_
        # webargs passes headers=None when a validation error carries no headers.
        headers = {"Content-Type": PROBLEM_JSON, **(data.get("headers") or {})}
        if code >= 500 and code != 503:
            logger.error("unhandled error", exc_info=getattr(error, "original_exception", None))
        return body, code, headers


def init_app(app: Flask) -> None:
    """Map domain errors and database outages to problems."""

    def not_found(exc: errors.NotFound) -> Any:
        return _problem(404, "Not Found", str(exc))

    def conflict(exc: errors.Conflict) -> Any:
        return _problem(409, "Conflict", str(exc))

    def database_unavailable(exc: Exception) -> Any:
        # Connection refused, pool exhausted, server restarting: nothing was stored; retrying is safe
        # (ingest is idempotent).
        logger.warning("database unavailable: %s", type(getattr(exc, "orig", None) or exc).__name__)
        return _problem(
            ServiceUnavailable.code,
            "Service Unavailable",
            "the database is unavailable; nothing was stored, retry later",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    app.register_error_handler(errors.NotFound, not_found)
    app.register_error_handler(errors.Conflict, conflict)
    app.register_error_handler(OperationalError, database_unavailable)
    app.register_error_handler(PoolTimeoutError, database_unavailable)

    def disconnect(exc: DBAPIError) -> Any:
        if exc.connection_invalidated:
            return database_unavailable(exc)
        raise exc

    app.register_error_handler(DBAPIError, disconnect)


def _problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> Any:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return body, status, {"Content-Type": PROBLEM_JSON, **(headers or {})}
