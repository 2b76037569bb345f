"""Process logging for every platform process (API, CLI, jobs): JSON lines, each carrying the request id when
there is one, with secrets redacted. Configured once per process with `configure_logging`.

- One dictConfig (`logging_config`): a handler with a JSON formatter (python-json-logger) and two filters,
  `RequestIdFilter` (adds `request_id`, None outside a request) and `RedactSecretsFilter` (backstop: API keys and
  passwords never reach the output, whatever a log call passed).
- The API and gunicorn log to the process's stdout (12-factor). The `fleet` CLI logs to stderr: its stdout is
  the command's output (`--json` documents, a key from `fleet keys create`).
- What is never logged: request headers (so neither `X-API-Key` nor cookies), API keys (`fk_...`: only the
  display prefix survives redaction) and database passwords (URLs are logged with
  `URL.render_as_string(hide_password=True)`; the filter masks `scheme://user:password@` and `password=`).

The request id itself is bound by the API (api/logging_setup.py); this module imports no web framework.
"""

from __future__ import annotations

import contextvars
import logging
import logging.config
import re
import threading
from typing import Any, Literal

from pythonjsonlogger.json import JsonFormatter

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


#: Where a process's log lines go: the process's own stdout or stderr (file descriptors 1 and 2), whatever
#: sys.stdout is later swapped for: logs are not a command's output (click's CliRunner, redirect_stdout).
LogStream = Literal["stdout", "stderr"]


def logging_config(level: str, stream: LogStream = "stdout") -> dict[str, Any]:
    """The dictConfig of every platform process: JSON lines on `stream` at `level` (gunicorn's loggers included)."""
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
            # Filters run in order: the request id is added first so that it is redacted too.
            "stdout": {
                "class": "logging.StreamHandler",
                "stream": f"ext://sys.__{stream}__",
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


def configure_logging(level: str, *, stream: LogStream = "stdout", force: bool = False) -> bool:
    """Apply `logging_config(level, stream)` once per process (again with `force`); whether it was applied now.

    Forked gunicorn workers inherit the master's configuration (and this flag), so `create_app()` leaves it."""
    global _configured
    with _configure_lock:
        if _configured and not force:
            return False
        logging.config.dictConfig(logging_config(level, stream))
        logging.captureWarnings(True)
        _configured = True
        return True
