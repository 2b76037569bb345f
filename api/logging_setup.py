"""Logging: JSON lines on stdout, each carrying the request id, with secrets redacted. Configured once per process.

- `configure_logging(level)` applies one dictConfig: a stdout handler with a JSON formatter (python-json-logger)
  and two filters, `RequestIdFilter` (adds `request_id`) and `RedactSecretsFilter` (backstop: API keys and
  passwords never reach the output, whatever a log call passed). gunicorn's master calls it through
  `GunicornLogger` (docker/gunicorn.conf.py) before any worker exists; `create_app()` calls it too, first thing:
  it does nothing under gunicorn and configures logging elsewhere (the Flask test client, `flask run`), so
  logging is always set up before the app exists (Flask's advice). Lines go to the process's stdout (fd 1).
- `init_app(app)` gives every request an id: a valid incoming `X-Request-ID` is kept, anything else is replaced
  by a fresh one. It is bound to the logging context (a contextvar, so it follows the request's thread) and
  returned in the response's `X-Request-ID`, from which `GunicornLogger` puts it on the access line.
- What is never logged: request headers (so neither `X-API-Key` nor cookies), API keys (`fk_...`: only the
  display prefix survives redaction) and database passwords (URLs are logged with
  `URL.render_as_string(hide_password=True)`; the filter masks `scheme://user:password@` and `password=`).
"""

from __future__ import annotations

import contextvars
import logging
import logging.config
import re
import threading
import uuid
from datetime import timedelta
from typing import Any

from flask import Flask, Response, g, request
from gunicorn import glogging
from pythonjsonlogger.json import JsonFormatter

from api.config import Settings

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
#: A WSGI environ key: when true, GunicornLogger writes no access line for the request (admission control's shed
#: answers, counted at /metrics and summed up in the log instead).
SKIP_ACCESS_LINE = "fleet.skip_access_line"
#: Incoming request ids are kept when they look like an id: 1-64 characters of this set (UUIDs, hex, base64,
#: ULIDs...). Anything else (spaces, quotes, control characters, long strings) could forge or bloat log lines
#: and is replaced by a fresh id.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._~:/+=-]{1,64}")

#: The request id of the request being served in this thread (None outside requests).
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("fleet_request_id", default=None)

# `fk_` + 43 characters is an API key (db/keys.py); the first 8 characters after the marker are its public
# display prefix, the rest is secret. 8+ further characters are treated as a key (a truncated or mistyped
# key is as secret as a right one); the display prefix alone (`fk_` + 8) is left as it is.
_API_KEY_RE = re.compile(r"fk_([A-Za-z0-9_-]{8})[A-Za-z0-9_-]{8,}")
# scheme://user:password@host -> scheme://user:***@host (database URLs, redis URLs).
_URL_PASSWORD_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)[^@/\s]+@")
# libpq/psycopg connection strings: password=secret.
_KV_PASSWORD_RE = re.compile(r"(\bpassword\s*=\s*)('[^']*'|[^\s'&]+)", re.IGNORECASE)

# Attributes every LogRecord has: anything else on a record was passed as `extra` (or set by a filter).
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_exception_formatter = logging.Formatter()

_configured = False
_configure_lock = threading.Lock()


def redact(text: str) -> str:
    """`text` with API keys (all but their display prefix) and URL/connection-string passwords masked."""
    if "fk_" in text:
        text = _API_KEY_RE.sub(r"fk_\1...[redacted]", text)
    if "@" in text:
        text = _URL_PASSWORD_RE.sub(r"\1***@", text)
    if "=" in text:
        text = _KV_PASSWORD_RE.sub(r"\1***", text)
    return text


def valid_request_id(value: str | None) -> bool:
    """Whether an incoming X-Request-ID is kept: short, printable, and nothing that looks like an API key."""
    if not value or _REQUEST_ID_RE.fullmatch(value) is None:
        return False
    return redact(value) == value


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record: the current request's, unless the call passed its own (access lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


class RedactSecretsFilter(logging.Filter):
    """Backstop against secrets in log output: redacts the message, its arguments, the traceback, the stack and
    every string passed as `extra`. The code logs no secret on purpose; this catches the accidents (an exception
    message quoting a URL, a key pasted in a query string)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a log call whose arguments do not fit its format: say so rather than raise
            message = f"{record.msg!r} % {record.args!r} (log arguments do not fit the format)"
        record.msg, record.args = redact(message), None
        if record.exc_info:
            # Pre-render the traceback redacted; formatters print exc_text when exc_info is gone.
            record.exc_text = _exception_formatter.formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name, value in list(record.__dict__.items()):
            if name not in _RECORD_ATTRS and isinstance(value, str):
                setattr(record, name, redact(value))
        return True


def logging_config(level: str) -> dict[str, Any]:
    """The dictConfig of every platform process: JSON lines on stdout at `level` (gunicorn's loggers included)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_id": {"()": RequestIdFilter},
            "redact": {"()": RedactSecretsFilter},
        },
        "formatters": {
            "json": {
                "()": JsonFormatter,
                "fmt": ["levelname", "name", "message", "process"],
                "rename_fields": {"levelname": "level", "name": "logger", "process": "pid"},
                "timestamp": "time",
            },
        },
        "handlers": {
            # The process's stdout (file descriptor 1), whatever sys.stdout is later swapped for: logs are not a
            # command's output (click's CliRunner, redirect_stdout). Filters run in order: the request id is
            # added first so that it is redacted too.
            "stdout": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.__stdout__",
                "formatter": "json",
                "filters": ["request_id", "redact"],
            },
        },
        "root": {"level": level, "handlers": ["stdout"]},
        "loggers": {
            # gunicorn's own loggers reach stdout through the root handler, as JSON like everything else.
            "gunicorn.error": {"level": "NOTSET", "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
        },
    }


def configure_logging(level: str, *, force: bool = False) -> bool:
    """Apply `logging_config(level)` once per process (again with `force`); returns whether it was applied now.

    Forked gunicorn workers inherit the master's configuration (and this flag), so `create_app()` leaves it."""
    global _configured
    with _configure_lock:
        if _configured and not force:
            return False
        logging.config.dictConfig(logging_config(level))
        logging.captureWarnings(True)
        _configured = True
        return True


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
