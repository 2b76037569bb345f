"""API keys on requests: who is calling (header X-API-Key), may they do this, and how often.

- `require_role(*roles)` decorates MethodView methods: 401 (with `WWW-Authenticate: ApiKey`) for a missing,
  unknown or revoked key, 403 when the key's role is not allowed (admin may do everything). The key is then
  `flask.g.api_key`. `check_device_access(device_id)` refuses a device key bound to another device.
- Key lookups are cached per process for FLEET_KEY_CACHE_SECONDS, because every ingest request needs one:
  a revoked key keeps working for at most that long in a process that had just seen it.
- Rate limiting (Flask-Limiter) counts per key across all endpoints, per client address for requests without
  a valid key; /health, /ready and /metrics are exempt. A 429 is a problem document with Retry-After.

Keys are never logged: only their id, name or display prefix may appear in logs.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Iterable
from copy import deepcopy
from typing import Any, TypeVar

from flask import Flask, Response, current_app, g, request
from flask_limiter import ApplicationLimit, Limiter, RequestLimit
from flask_smorest import Api, abort
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from api import rate_limit_storage
from api.blueprint import Blueprint
from config import Settings
from db import keys
from db.keys import ApiKey
from db.schema import API_KEY_ROLES

API_KEY_HEADER = "X-API-Key"
#: Name of the security scheme in the OpenAPI document.
SECURITY_SCHEME = "ApiKeyAuth"
_CACHE_EXT = "fleet.key_cache"
_LIMITER_EXT = "fleet.limiter"
# Bounds the cache's memory when many different (mostly bogus) keys are presented.
_CACHE_MAX_ENTRIES = 10_000

F = TypeVar("F", bound=Callable[..., Any])


class KeyCache:
    """Key lookups by hash, remembered for `ttl` seconds (negative answers too, so a device stuck on a revoked
    key does not cost a query per request). Shared by the threads of one process."""

    def __init__(self, engine: Engine, ttl: float, max_entries: int = _CACHE_MAX_ENTRIES) -> None:
        self._engine = engine
        self._ttl = ttl
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, ApiKey | None]] = {}
        self._lock = threading.Lock()

    def lookup(self, plaintext: str) -> ApiKey | None:
        """The active key for this plaintext, or None."""
        if self._ttl <= 0:
            return self._load(plaintext)
        digest = keys.hash_key(plaintext)
        now = time.monotonic()
        entry = self._entries.get(digest)
        if entry is not None and entry[0] > now:
            return entry[1]
        key = self._load(plaintext)
        with self._lock:
            if len(self._entries) >= self._max_entries:
                self._entries = {d: e for d, e in self._entries.items() if e[0] > now}
                if len(self._entries) >= self._max_entries:
                    self._entries.clear()
            self._entries[digest] = (now + self._ttl, key)
        return key

    def clear(self) -> None:
        """Forget every lookup (tests; a revocation that must take effect at once in this process)."""
        with self._lock:
            self._entries.clear()

    def _load(self, plaintext: str) -> ApiKey | None:
        # One statement in autocommit mode: one round trip, no BEGIN and COMMIT (a device that reports once a
        # minute misses the cache at every request), and no ROLLBACK, at which psycopg would forget the
        # connection's prepared statements. Nothing is held across the request (the embedded engine has one slot).
        with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            return keys.find_active_key(conn, plaintext)


def _request_key() -> ApiKey | None:
    """The active key presented with this request, looked up once per request (the limiter asks first)."""
    if "fleet_key_lookup" not in g:
        plaintext = request.headers.get(API_KEY_HEADER)
        cache: KeyCache = current_app.extensions[_CACHE_EXT]
        g.fleet_key_lookup = cache.lookup(plaintext) if plaintext else None
    return g.fleet_key_lookup


def find_key(plaintext: str) -> ApiKey | None:
    """The active key with this plaintext, through the key cache (the operator page's sign-in), or None."""
    if not plaintext:
        return None
    cache: KeyCache = current_app.extensions[_CACHE_EXT]
    return cache.lookup(plaintext)


def require_role(*roles: str) -> Callable[[F], F]:
    """Decorator for view methods: the request needs an active key with one of `roles` (or admin)."""
    unknown = set(roles) - set(API_KEY_ROLES)
    if not roles or unknown:
        raise ValueError(f"roles must be among {API_KEY_ROLES}, got {roles}")
    allowed = frozenset(roles) | {"admin"}
    needed = " or ".join(r for r in API_KEY_ROLES if r in allowed)

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key = _request_key()
            if key is None:
                detail = (
                    "an active API key is required in the X-API-Key header"
                    if API_KEY_HEADER not in request.headers
                    else "the API key is unknown or revoked"
                )
                abort(401, message=detail, headers={"WWW-Authenticate": "ApiKey"})
            if key.role not in allowed:
                abort(403, message=f"this API key has role '{key.role}'; this needs {needed}")
            g.api_key = key
            return view(*args, **kwargs)

        # OpenAPI: the operation needs the key, and may answer 401/403/429 (flask-smorest reads _apidoc).
        apidoc = deepcopy(getattr(wrapper, "_apidoc", {}))
        manual = apidoc.setdefault("manual_doc", {})
        manual["security"] = [{SECURITY_SCHEME: []}]
        responses = manual.setdefault("responses", {})
        for code, name in ((401, "UNAUTHORIZED"), (403, "FORBIDDEN"), (429, "TOO_MANY_REQUESTS")):
            responses.setdefault(code, name)
        wrapper._apidoc = apidoc  # type: ignore[attr-defined]  # flask-smorest's attribute on view functions
        return wrapper  # type: ignore[return-value]  # functools.wraps keeps the view's signature, which F is

    return decorator


def check_device_access(device_id: str) -> None:
    """Abort 403 if the request's key is a device key bound to another device (call after require_role)."""
    key: ApiKey | None = g.get("api_key")
    if key is None:
        raise RuntimeError("check_device_access() needs a view decorated with require_role()")
    if key.role == "device" and key.device_id is not None and key.device_id != device_id:
        abort(403, message="this API key is bound to another device")


def _rate_limit_key() -> str:
    try:
        key = _request_key()
    except SQLAlchemyError:
        key = None  # database down: count by address; the view itself answers 503 when it needs the key
    # The key's random display prefix, not its row id: ids repeat across deployments sharing one limit storage.
    return f"key:{key.key_prefix}" if key is not None else f"addr:{request.remote_addr or 'unknown'}"


def _remember_reset(limit: RequestLimit) -> None:
    g.fleet_rate_limit_reset = limit.window.reset_time  # epoch seconds when the key's window ends


def _retry_after(response: Response) -> Response:
    # Flask-Limiter only sets Retry-After together with X-RateLimit-* headers on every response (one more
    # storage round trip per request); a 429 is all that needs it.
    reset_at = g.get("fleet_rate_limit_reset")
    if response.status_code == 429 and reset_at is not None and "Retry-After" not in response.headers:
        response.headers["Retry-After"] = str(max(1, math.ceil(reset_at - time.time())))
    return response


def init_app(app: Flask, api: Api, settings: Settings, public: Iterable[Blueprint] = ()) -> None:
    """Key cache, rate limiter and the OpenAPI security scheme; `public` blueprints need no key and no limit."""
    app.extensions[_CACHE_EXT] = KeyCache(app.extensions["fleet.db"], settings.key_cache_seconds)
    api.spec.components.security_scheme(SECURITY_SCHEME, {"type": "apiKey", "in": "header", "name": API_KEY_HEADER})

    limit = settings.rate_limit
    limiter = Limiter(
        _rate_limit_key,
        application_limits=[
            ApplicationLimit(limit, error_message=f"rate limit of {limit} per API key exceeded; retry later")
        ]
        if limit
        else [],
        # memory:// without a timer thread per 10 ms (api/rate_limit_storage.py); other backends as configured.
        storage_uri=rate_limit_storage.storage_uri(settings.rate_limit_storage_uri),
        strategy="fixed-window",
        key_prefix="fleet",
        on_breach=_remember_reset,
        # Rate-limit storage down (e.g. redis): log it and serve the request rather than fail every request.
        swallow_errors=True,
        enabled=limit is not None,
    )
    for blp in public:
        limiter.exempt(blp)
    app.after_request(_retry_after)
    limiter.init_app(app)
    app.extensions[_LIMITER_EXT] = limiter
