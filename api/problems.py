"""Every error the API returns is an RFC 9457 problem document (application/problem+json).

One place maps exceptions to problems: HTTP errors raised by views or by webargs validation (422 with the
field errors), domain errors from db/, and database outages (503, so clients retry instead of giving up).
"""

from __future__ import annotations

import http
import logging
from typing import Any

import marshmallow as ma
from flask import Flask
from flask_smorest import Api
from flask_smorest.pagination import PaginationMetadataSchema
from flask_smorest.utils import prepare_response
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import ClientDisconnected, HTTPException, ServiceUnavailable

from api.client_io import RequestReadTimeout
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
    """flask-smorest Api whose error responses are problem documents, and documented as such."""

    ERROR_SCHEMA = ProblemSchema

    def _register_responses(self) -> None:
        # flask-smorest documents its error responses (UNAUTHORIZED, NOT_FOUND..., DEFAULT_ERROR) as
        # application/json; they are served as application/problem+json.
        for status in http.HTTPStatus:
            response: dict[str, Any] = {"description": status.phrase}
            if not (100 <= status < 200) and status not in (204, 304):
                response["schema"] = self.ERROR_SCHEMA
            prepare_response(response, self.spec, PROBLEM_JSON)
            self.spec.components.response(status.name, response, lazy=True)
        response = {"description": "Default error response", "schema": self.ERROR_SCHEMA}
        prepare_response(response, self.spec, PROBLEM_JSON)
        self.spec.components.response(self.DEFAULT_ERROR_RESPONSE_NAME, response, lazy=True)

    def _register_pagination_header(self) -> None:
        # X-Pagination is a JSON object: OpenAPI 3 says so with `content`. flask-smorest's `schema` would mean
        # the `simple` style (total,3,total_pages,1), which is not what is sent.
        self.spec.components.header(
            "PAGINATION",
            {
                "description": "Pagination metadata, a JSON object",
                "content": {"application/json": {"schema": PaginationMetadataSchema}},
            },
            lazy=True,
        )

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
        # The exception's own headers first (405's Allow, required by RFC 9110), but never its text/html type;
        # webargs passes headers=None when a validation error carries no headers.
        own = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        headers = {**own, "Content-Type": PROBLEM_JSON, **(data.get("headers") or {})}
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
        # Connection refused or timed out, pool exhausted, server restarting. Usually nothing was stored, but a
        # connection lost while COMMIT was on its way leaves the outcome unknown, so the answer does not claim
        # it: the client retries, and ingest is idempotent (a reading already stored counts as a duplicate).
        logger.warning("database unavailable: %s", type(getattr(exc, "orig", None) or exc).__name__)
        return _problem(
            ServiceUnavailable.code,
            "Service Unavailable",
            "the database is unavailable; retry later (a retried reading is stored once)",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    def read_timeout(exc: RequestReadTimeout) -> Any:
        return _problem(408, "Request Timeout", f"{exc}: send the whole request in time", {"Connection": "close"})

    def body_cut_short(exc: ClientDisconnected) -> Any:
        # Werkzeug reads a body of known length through its LimitedStream, which turns any read error into
        # ClientDisconnected (400); the read bound's error is kept as its context.
        if isinstance(exc.__context__, RequestReadTimeout):
            return read_timeout(exc.__context__)
        return _problem(400, "Bad Request", str(exc.description))

    app.register_error_handler(RequestReadTimeout, read_timeout)
    app.register_error_handler(ClientDisconnected, body_cut_short)
    app.register_error_handler(errors.NotFound, not_found)
    app.register_error_handler(errors.Conflict, conflict)
    app.register_error_handler(OperationalError, database_unavailable)
    app.register_error_handler(PoolTimeoutError, database_unavailable)

    def disconnect(exc: DBAPIError) -> Any:
        if exc.connection_invalidated:
            return database_unavailable(exc)
        raise exc

    app.register_error_handler(DBAPIError, disconnect)


def problem_document(status: int, title: str, detail: str) -> dict[str, Any]:
    """The body of a plain problem (no field errors)."""
    return {"type": "about:blank", "title": title, "status": status, "detail": detail}


def _problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> Any:
    return problem_document(status, title, detail), status, {"Content-Type": PROBLEM_JSON, **(headers or {})}
