"""Signing in to the operator page, and what protects it.

- Sign-in: a form takes a read or admin API key once (POST, never in a URL); the browser then holds only a random
  session token, in an HttpOnly, SameSite=Strict cookie scoped to /ui (Secure over HTTPS). The database holds its
  hash (db/ui_sessions.py), so every API process sees the same sessions and revoking the key signs the browser out.
- CSRF: every POST carries a token that a cross-site page cannot read. The sign-in form's is a double-submit
  cookie (no session exists yet); after sign-in it is the session's own token. A POST whose Origin or
  Sec-Fetch-Site names another site is refused before that.
- Pages are never cached, framed, or allowed to load anything from another origin (Content-Security-Policy).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Response, abort, current_app, g, redirect, request, url_for

import db
from db import ui_sessions
from db.ui_sessions import UiSession

SESSION_COOKIE = "fleet_ui_session"
LOGIN_CSRF_COOKIE = "fleet_ui_login_csrf"
COOKIE_PATH = "/ui"
#: Roles that may sign in: the page only reads.
ROLES = ("read", "admin")
#: Only 'self': a script, style or request to another origin is refused by the browser (and shows as an error).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
    " frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)

F = TypeVar("F", bound=Callable[..., Any])


def _primary() -> Any:
    # Sessions are written at sign-in: read them where they are written (a replica may lag behind).
    return current_app.extensions["fleet.db"]


def current_session() -> UiSession | None:
    """The signed-in session of this request (looked up once per request), or None."""
    if "ui_session" not in g:
        token = request.cookies.get(SESSION_COOKIE, "")
        if not token:
            g.ui_session = None
        else:
            with db.transaction(_primary()) as conn:
                g.ui_session = ui_sessions.find_session(conn, token)
    return g.ui_session


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of this page only (never another site: no open redirect)."""
    fallback = url_for("ui.fleet")
    if not target:
        return fallback
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith(COOKIE_PATH + "/") or "\\" in target:
        return fallback
    return target


def signed_in(view: F) -> F:
    """Decorator: the page needs a signed-in session; without one, 303 to the sign-in page, coming back here."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current_session() is None:
            here = request.full_path if request.query_string else request.path
            return redirect(url_for("ui.login", next=here), code=303)
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps the view's signature, which F is


def check_same_origin() -> None:
    """Refuse a POST that a browser says came from another site (defence in depth beside the CSRF token)."""
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        abort(403, description="this form was sent from another site")
    origin = request.headers.get("Origin")
    if origin and origin != "null" and origin.rstrip("/") != request.host_url.rstrip("/"):
        abort(403, description="this form was sent from another site")


def check_csrf(expected: str | None) -> None:
    """400 unless the form's csrf_token is `expected` (compared in constant time)."""
    sent = request.form.get("csrf_token", "")
    if not expected or not sent or not secrets.compare_digest(sent, expected):
        abort(400, description="the form has expired or did not come from this page: reload it and try again")


def login_csrf_token() -> str:
    """The sign-in form's CSRF token: the one in the browser's cookie, or a new one (set by `set_login_csrf`)."""
    token = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not token or len(token) > 128:
        token = ui_sessions.new_token()
    g.ui_login_csrf = token
    return token


def set_login_csrf(response: Response) -> Response:
    """Give the browser the sign-in form's CSRF cookie (HttpOnly: the form carries the copy)."""
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        g.ui_login_csrf,
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        secure=request.is_secure,
    )
    return response


def start(response: Response, key_id: int, hours: int) -> Response:
    """Sign the browser in as the key `key_id`: store a session and set its cookie on `response`."""
    with db.transaction(_primary()) as conn:
        token, _csrf = ui_sessions.start_session(conn, key_id, timedelta(hours=hours))
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=hours * 3600,
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        secure=request.is_secure,
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=COOKIE_PATH)
    return response


def end(response: Response) -> Response:
    """Sign out: delete the session and its cookie."""
    token = request.cookies.get(SESSION_COOKIE, "")
    if token:
        with db.transaction(_primary()) as conn:
            ui_sessions.end_session(conn, token)
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="Strict")
    return response


def protect(response: Response) -> Response:
    """Headers of every /ui/ response: no caching of fleet data, no framing, nothing from another origin."""
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    if response.mimetype == "text/html":
        response.headers["Cache-Control"] = "no-store"
    return response
