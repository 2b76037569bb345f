"""Sign-in sessions of the operator page: start one with an API key, find it by its cookie token, end it.

The browser holds a random token (in an HttpOnly cookie); the table holds only its SHA-256 hash, so a copy of the
table signs nobody in. A session is valid while it has not expired and its key is active: revoking a key signs
out every browser that signed in with it, at the next page they load. Each session has its own CSRF token, which
the page's forms send back (the cookie alone must never be enough to change anything).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from db.schema import api_keys, ui_sessions

_TOKEN_BYTES = 32
# token_urlsafe(32) is 43 characters: anything much longer is not a token of ours and is not looked up.
_MAX_TOKEN_LENGTH = 128


@dataclass(frozen=True)
class UiSession:
    """A signed-in browser: the key it signed in with (never the key itself) and its CSRF token."""

    key_id: int
    key_name: str
    key_prefix: str
    role: str
    csrf_token: str
    expires_at: datetime


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A random token for a cookie or a form (256 bits)."""
    return secrets.token_urlsafe(_TOKEN_BYTES)


def start_session(conn: Connection, key_id: int, lifetime: timedelta) -> tuple[str, str]:
    """Store a session for the key; returns (cookie token, CSRF token). Expired sessions are deleted on the way,
    so the table never holds more than the sessions of one lifetime."""
    conn.execute(sa.delete(ui_sessions).where(ui_sessions.c.expires_at <= sa.func.now()))
    token, csrf_token = new_token(), new_token()
    conn.execute(
        sa.insert(ui_sessions).values(
            token_hash=_hash(token),
            key_id=key_id,
            csrf_token=csrf_token,
            expires_at=sa.func.now() + lifetime,
        )
    )
    return token, csrf_token


def find_session(conn: Connection, token: str) -> UiSession | None:
    """The live session of this cookie token: not expired, its key not revoked. None otherwise."""
    if not token or len(token) > _MAX_TOKEN_LENGTH:
        return None
    row = conn.execute(
        sa.select(
            ui_sessions.c.key_id,
            api_keys.c.name.label("key_name"),
            api_keys.c.key_prefix,
            api_keys.c.role,
            ui_sessions.c.csrf_token,
            ui_sessions.c.expires_at,
        )
        .join(api_keys, api_keys.c.id == ui_sessions.c.key_id)
        .where(
            ui_sessions.c.token_hash == _hash(token),
            ui_sessions.c.expires_at > sa.func.now(),
            api_keys.c.revoked_at.is_(None),
        )
    ).one_or_none()
    return None if row is None else UiSession(**row._mapping)


def end_session(conn: Connection, token: str) -> None:
    """Sign out: delete the session of this cookie token (nothing happens for an unknown one)."""
    if token and len(token) <= _MAX_TOKEN_LENGTH:
        conn.execute(sa.delete(ui_sessions).where(ui_sessions.c.token_hash == _hash(token)))
