"""The API's logging: request ids, and gunicorn's lines as JSON. The configuration itself, its filters and its
redaction are the platform's, in config/logs.py (the CLI and the jobs use them too).

- `configure_logging(level)` (config/logs.py) applies one dictConfig on stdout. gunicorn's master calls it through
  `GunicornLogger` (docker/gunicorn.conf.py) before any worker exists; `create_app()` calls it too, first thing:
  it does nothing under gunicorn and configures logging elsewhere (the Flask test client, `flask run`), so
  logging is always set up before the app exists (Flask's advice). Lines go to the process's stdout (fd 1).
- `init_app(app)` gives every request an id: a valid incoming `X-Request-ID` is kept, anything else is replaced
  by a fresh one. It is bound to the logging context (a contextvar, so it follows the request's thread) and
  returned in the response's `X-Request-ID`, from which `GunicornLogger` puts it on the access line.
- What is never logged: see config/logs.py.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

from flask import Flask, Response, g, request
from gunicorn import glogging

from config import Settings
from config.logs import (  # re-exported: the API's modules and tests name them here
    RedactSecretsFilter,
    RequestIdFilter,
    configure_logging,
    logging_config,
    redact,
    request_id_var,
    valid_request_id,
)

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
#: A WSGI environ key: when true, GunicornLogger writes no access line for the request (admission control's shed
#: answers, counted at /metrics and summed up in the log instead).
SKIP_ACCESS_LINE = "fleet.skip_access_line"

__all__ = [
    "REQUEST_ID_HEADER",
    "SKIP_ACCESS_LINE",
    "GunicornLogger",
    "RedactSecretsFilter",
    "RequestIdFilter",
    "configure_logging",
    "init_app",
    "logging_config",
    "redact",
    "request_id_var",
    "valid_request_id",
]


def _begin_request() -> None:
    incoming = request.headers.get(REQUEST_ID_HEADER)
    request_id = incoming if valid_request_id(incoming) else uuid.uuid4().hex
    g.request_id = request_id
    g.fleet_request_id_token = request_id_var.set(request_id)


def _add_request_id(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


def _end_request(_exc: BaseException | None) -> None:
    token = g.pop("fleet_request_id_token", None)
    if token is not None:
        # Same thread and context as _begin_request: a worker thread's next request starts without an id.
        request_id_var.reset(token)


def init_app(app: Flask) -> None:
    """Request ids on every request and response (before any other hook: a 429 or 401 gets one too); logs,
    with the password masked, which database this app uses."""
    app.before_request_funcs.setdefault(None, []).insert(0, _begin_request)
    app.after_request(_add_request_id)
    app.teardown_request(_end_request)
    engine = app.extensions["fleet.db"]
    logger.info(
        "API app created: database %s (%s)",
        engine.url.render_as_string(hide_password=True),
        type(engine.pool).__name__,
    )


class GunicornLogger(glogging.Logger):
    """gunicorn's logs as JSON lines through `configure_logging` (level FLEET_LOG_LEVEL).

    Access lines (when `accesslog` is set) are structured: client address, method, path, query, status, bytes,
    duration and the response's X-Request-ID. They never carry a request header (gunicorn's
    `access_log_format` can print any, `X-API-Key` included; this class ignores it)."""

    def setup(self, cfg: Any) -> None:
        self.cfg = cfg
        configure_logging(Settings.from_env().log_level)
        for log in (self.error_log, self.access_log):
            for handler in list(log.handlers):
                log.removeHandler(handler)
            log.propagate = True
        self.error_log.setLevel(logging.NOTSET)
        self.access_log.setLevel(logging.INFO)

    @property
    def access_log_enabled(self) -> bool:
        return self.cfg.accesslog is not None

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: timedelta) -> None:
        if not self.access_log_enabled or environ.get(SKIP_ACCESS_LINE):
            return
        # resp.status is "200 OK" (or None when the app never started a response).
        status_text = str(resp.status or "-").split(None, 1)[0]
        status = int(status_text) if status_text.isdigit() else None
        request_id = next((v for k, v in resp.headers if k.lower() == "x-request-id"), None)
        method = environ.get("REQUEST_METHOD", "-")
        path = environ.get("PATH_INFO", "")
        duration_ms = round(request_time.total_seconds() * 1000, 3)
        try:
            self.access_log.info(
                '"%s %s" %s %.1fms',
                method,
                path,
                status_text,
                duration_ms,
                extra={
                    "remote_addr": environ.get("REMOTE_ADDR", "-"),
                    "method": method,
                    "path": path,
                    "query": environ.get("QUERY_STRING", ""),
                    "status": status,
                    "bytes": getattr(resp, "sent", None),
                    "duration_ms": duration_ms,
                    "request_id": request_id,
                },
            )
        except Exception:
            self.error_log.exception("access log line failed")
