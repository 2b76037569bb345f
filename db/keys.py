"""API keys: create (the plaintext is returned once and never stored), list, revoke, and find a request's key.

Only the SHA-256 hash of a key is stored. Keys are `fk_` + 32 random bytes (`secrets.token_urlsafe`), so a
fast unsalted hash is the right tool: 256 bits cannot be guessed or looked up in a dictionary, and a slow
password KDF (bcrypt, argon2) would cost every ingest request milliseconds of CPU for no gain.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from db.errors import NotFound
from db.schema import API_KEY_NAME_MAX_LENGTH, API_KEY_ROLES, DEVICE_ID_MAX_LENGTH, api_keys

#: Every key starts with this, so a leaked key is recognisable (secret scanners, logs) as one of ours.
KEY_PREFIX = "fk_"
_TOKEN_BYTES = 32
#: Characters of the key kept in clear for display: the marker plus 8 characters of the token.
DISPLAY_PREFIX_LENGTH = len(KEY_PREFIX) + 8
# token_urlsafe(32) is 43 characters; anything much longer is not a key of ours and is not looked up.
_MAX_KEY_LENGTH = 128
_MAX_ID = 2**63 - 1  # bigint

_PUBLIC_COLUMNS = (
    api_keys.c.id,
    api_keys.c.name,
    api_keys.c.key_prefix,
    api_keys.c.role,
    api_keys.c.device_id,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
)


@dataclass(frozen=True)
class ApiKey:
    """An API key as the platform sees it: never its plaintext nor its hash."""

    id: int
    name: str
    key_prefix: str
    role: str
    device_id: str | None
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        """Not revoked."""
        return self.revoked_at is None


def hash_key(plaintext: str) -> str:
    """SHA-256 hex digest of a key, as stored in api_keys.key_hash."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def create_key(conn: Connection, name: str, role: str, device_id: str | None = None) -> tuple[ApiKey, str]:
    """Store a new key; returns it and its plaintext, which is shown once and cannot be recovered later."""
    name = name.strip()
    if not 1 <= len(name) <= API_KEY_NAME_MAX_LENGTH:
        raise ValueError(f"name must be 1 to {API_KEY_NAME_MAX_LENGTH} characters")
    if role not in API_KEY_ROLES:
        raise ValueError(f"role must be one of {', '.join(API_KEY_ROLES)}")
    if device_id is not None:
        if role != "device":
            raise ValueError("only a device key can be bound to a device id")
        if not 1 <= len(device_id) <= DEVICE_ID_MAX_LENGTH:
            raise ValueError(f"device id must be 1 to {DEVICE_ID_MAX_LENGTH} characters")
    plaintext = KEY_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)
    row = conn.execute(
        sa.insert(api_keys)
        .values(
            name=name,
            key_prefix=plaintext[:DISPLAY_PREFIX_LENGTH],
            key_hash=hash_key(plaintext),
            role=role,
            device_id=device_id,
        )
        .returning(*_PUBLIC_COLUMNS)
    ).one()
    return _to_key(row), plaintext


def list_keys(conn: Connection) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    rows = conn.execute(sa.select(*_PUBLIC_COLUMNS).order_by(api_keys.c.id))
    return [_to_key(row) for row in rows]


def revoke_key(conn: Connection, key_id: int) -> ApiKey:
    """Revoke a key (idempotent: a revoked key keeps its first revocation time); NotFound for an unknown id."""
    if not 1 <= key_id <= _MAX_ID:
        raise NotFound(f"API key {key_id} does not exist")
    row = conn.execute(
        sa.update(api_keys)
        .where(api_keys.c.id == key_id)
        .values(revoked_at=sa.func.coalesce(api_keys.c.revoked_at, sa.func.now()))
        .returning(*_PUBLIC_COLUMNS)
    ).one_or_none()
    if row is None:
        raise NotFound(f"API key {key_id} does not exist")
    return _to_key(row)


#: Built once: a device reporting once a minute misses every per-process key cache, so this runs with each of its
#: requests, and building the statement cost more client CPU than running it.
_ACTIVE_KEY_BY_HASH = sa.select(*_PUBLIC_COLUMNS, api_keys.c.key_hash).where(
    api_keys.c.key_hash == sa.bindparam("key_hash"), api_keys.c.revoked_at.is_(None)
)


def find_active_key(conn: Connection, plaintext: str) -> ApiKey | None:
    """The active (not revoked) key whose plaintext this is, or None."""
    if not plaintext.startswith(KEY_PREFIX) or len(plaintext) > _MAX_KEY_LENGTH:
        return None
    digest = hash_key(plaintext)
    row = conn.execute(_ACTIVE_KEY_BY_HASH, {"key_hash": digest}).one_or_none()
    # The indexed equality lookup already matched; the constant-time comparison keeps the final decision
    # free of timing differences anyway.
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return _to_key(row)


def _to_key(row: Row[*tuple[Any, ...]]) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        key_prefix=row.key_prefix,
        role=row.role,
        device_id=row.device_id,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )
