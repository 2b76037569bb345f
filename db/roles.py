"""Database logins for analysts: LOGIN roles that are members of the read-only group role `fleet_analyst`.

Migration 0006 creates the group role and grants it SELECT on the rollups, `vehicle_energy_1h` and the
mapping, migration 0009 SELECT on `alerts`, nothing else; a login gets its privileges only through membership,
so removing a person never touches the grants. Role names are checked against a strict pattern and always
quoted as identifiers (psycopg.sql.Identifier); DDL takes no bind parameters, so values are quoted as literals
(psycopg.sql.Literal).

Passwords never reach the server in clear: libpq computes the SCRAM-SHA-256 verifier on the client (as psql's
`\\password` does) and only the verifier is sent, so neither the server's statement log nor
pg_stat_activity ever holds the password. Nothing here logs a password or a verifier.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import psycopg
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine import Connection

from db.errors import NotFound

#: The NOLOGIN group role of migration 0006 (the same name is spelled out there: migrations import no app code).
ANALYST_ROLE = "fleet_analyst"
#: Lower-case letters, digits and underscores, starting with a letter, at most 63 bytes (PostgreSQL's limit):
#: a name that needs no quoting in psql or in a connection string.
ROLE_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
#: Names an analyst login may never take: the group itself and roles that exist in every cluster.
RESERVED_NAMES = frozenset({ANALYST_ROLE, "postgres", "public", "none", "current_user", "session_user"})
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024

_MEMBER_OF_GROUP = """
    EXISTS (SELECT FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
            WHERE m.member = r.oid AND g.rolname = :group)
"""
_ROLE = sa.text(
    f"""
    SELECT r.oid, r.rolname AS name, r.rolcanlogin AS can_login, r.rolconnlimit AS connection_limit,
           r.rolvaliduntil AS valid_until,
           (r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication OR r.rolbypassrls) AS powerful,
           {_MEMBER_OF_GROUP} AS analyst,
           (SELECT substr(c, length('statement_timeout=') + 1)
              FROM pg_db_role_setting s, unnest(s.setconfig) c
             WHERE s.setrole = r.oid AND s.setdatabase = 0 AND c LIKE 'statement\\_timeout=%') AS statement_timeout
    FROM pg_roles r
    WHERE r.rolname = :name
    """
)
_LOGINS = sa.text(
    """
    SELECT r.rolname AS name, r.rolcanlogin AS can_login, r.rolconnlimit AS connection_limit,
           r.rolvaliduntil AS valid_until,
           (SELECT substr(c, length('statement_timeout=') + 1)
              FROM pg_db_role_setting s, unnest(s.setconfig) c
             WHERE s.setrole = r.oid AND s.setdatabase = 0 AND c LIKE 'statement\\_timeout=%') AS statement_timeout
    FROM pg_auth_members m
    JOIN pg_roles g ON g.oid = m.roleid AND g.rolname = :group
    JOIN pg_roles r ON r.oid = m.member
    ORDER BY r.rolname
    """
)
_GROUP_EXISTS = sa.text("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = :group)")


class RoleError(ValueError):
    """A role name, password or existing role the platform will not use for an analyst login."""


@dataclass(frozen=True)
class AnalystLogin:
    """A member of the analyst group role, as `fleet analyst list` shows it (never its password)."""

    name: str
    can_login: bool
    connection_limit: int  # -1: no limit
    statement_timeout: str | None  # the role's own setting, e.g. '300s'; None: the server default
    valid_until: datetime | None


def validate_role_name(name: str) -> str:
    """`name` if it is a plain lower-case identifier an analyst login may take; RoleError otherwise."""
    if not ROLE_NAME_RE.fullmatch(name):
        raise RoleError("role name must be 1 to 63 lower-case letters, digits or underscores, starting with a letter")
    if name in RESERVED_NAMES or name.startswith("pg_"):
        raise RoleError(f"role name {name!r} is reserved")
    return name


def validate_password(password: str) -> None:
    """RoleError unless the password is long enough and has no control characters (a pasted newline)."""
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise RoleError(f"password must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in password):
        raise RoleError("password must not contain control characters")


def scram_verifier(conn: Connection, name: str, password: str) -> str:
    """The SCRAM-SHA-256 verifier of `password` for role `name`, computed by libpq on this side."""
    pgconn = _driver(conn).pgconn
    return pgconn.encrypt_password(password.encode("utf-8"), name.encode("utf-8"), b"scram-sha-256").decode("ascii")


def group_exists(conn: Connection) -> bool:
    """Whether migration 0006's group role exists in this cluster."""
    return bool(conn.execute(_GROUP_EXISTS, {"group": ANALYST_ROLE}).scalar_one())


def list_logins(conn: Connection) -> list[AnalystLogin]:
    """Every member of the analyst group role, by name."""
    return [AnalystLogin(**row) for row in conn.execute(_LOGINS, {"group": ANALYST_ROLE}).mappings()]


def grant_login(
    conn: Connection,
    name: str,
    password: str,
    *,
    connection_limit: int = 5,
    statement_timeout_seconds: int = 300,
) -> tuple[AnalystLogin, bool]:
    """Create LOGIN role `name` as a member of the analyst group, or give an existing analyst login a new
    password and limits; returns the login and whether it was created. RoleError for a bad name or password,
    for a role that exists but is not an analyst login, or when the group role is missing."""
    validate_role_name(name)
    validate_password(password)
    if not 1 <= connection_limit <= 10_000:
        raise RoleError("connection limit must be 1 to 10000")
    if statement_timeout_seconds < 0:
        raise RoleError("statement timeout must be >= 0 seconds")
    if not group_exists(conn):
        raise RoleError(f"role {ANALYST_ROLE} does not exist: run `fleet db upgrade` (migration 0006) first")
    existing = conn.execute(_ROLE, {"name": name, "group": ANALYST_ROLE}).mappings().one_or_none()
    if existing is not None and (not existing["analyst"] or existing["powerful"]):
        raise RoleError(f"role {name!r} exists and is not an analyst login: choose another name")

    role = sql.Identifier(name)
    verifier = sql.Literal(scram_verifier(conn, name, password))
    limit = sql.Literal(connection_limit)
    if existing is None:
        _execute(
            conn,
            sql.SQL(
                "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"
                " CONNECTION LIMIT {} PASSWORD {} IN ROLE {}"
            ).format(role, limit, verifier, sql.Identifier(ANALYST_ROLE)),
        )
    else:
        _execute(conn, sql.SQL("ALTER ROLE {} LOGIN CONNECTION LIMIT {} PASSWORD {}").format(role, limit, verifier))
    # CONNECT on this database even where a DBA revoked it from PUBLIC; the login still reads only what the
    # group role may read.
    database = conn.execute(sa.text("SELECT current_database()")).scalar_one()
    _execute(conn, sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), role))
    # A runaway analyst query must not hold a primary's resources for ever (a role setting applies to the role
    # that logs in, not through group membership, so it is set on each login).
    if statement_timeout_seconds:
        timeout = sql.Literal(f"{statement_timeout_seconds}s")
        _execute(conn, sql.SQL("ALTER ROLE {} SET statement_timeout = {}").format(role, timeout))
    else:
        _execute(conn, sql.SQL("ALTER ROLE {} RESET statement_timeout").format(role))
    login = conn.execute(_ROLE, {"name": name, "group": ANALYST_ROLE}).mappings().one()
    return _to_login(login), existing is None


def revoke_login(conn: Connection, name: str) -> int:
    """Drop analyst login `name`; returns its role oid, for `terminate_sessions` once this commits (sessions it
    has open keep running until then, with no privilege left). NotFound if no such role; RoleError if the role
    is not an analyst login."""
    validate_role_name(name)
    existing = conn.execute(_ROLE, {"name": name, "group": ANALYST_ROLE}).mappings().one_or_none()
    if existing is None:
        raise NotFound(f"role {name!r} does not exist")
    if not existing["analyst"] or existing["powerful"]:
        raise RoleError(f"role {name!r} is not an analyst login: not dropped")
    database = conn.execute(sa.text("SELECT current_database()")).scalar_one()
    role = sql.Identifier(name)
    _execute(conn, sql.SQL("REVOKE CONNECT ON DATABASE {} FROM {}").format(sql.Identifier(database), role))
    _execute(conn, sql.SQL("DROP ROLE {}").format(role))
    oid: int = existing["oid"]
    return oid


def terminate_sessions(conn: Connection, role_oid: int) -> int:
    """End the sessions still open under a dropped role (by its oid); returns how many were ended."""
    ended: int = conn.execute(
        sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usesysid = :oid"),
        {"oid": role_oid},
    ).scalar_one()
    return ended


def _driver(conn: Connection) -> psycopg.Connection[Any]:
    # Every engine is reached through psycopg 3 (postgresql+psycopg://); SQLAlchemy types the driver's
    # connection as any DBAPI connection, or None once the pooled connection is detached (never here).
    return cast("psycopg.Connection[Any]", conn.connection.driver_connection)


def _execute(conn: Connection, statement: sql.Composed) -> None:
    # Through the driver: the statement is composed by psycopg (identifiers and literals quoted by it), and
    # runs in the transaction the SQLAlchemy connection already has open.
    _driver(conn).execute(statement)


def _to_login(row: sa.RowMapping) -> AnalystLogin:
    return AnalystLogin(
        name=row["name"],
        can_login=row["can_login"],
        connection_limit=row["connection_limit"],
        statement_timeout=row["statement_timeout"],
        valid_until=row["valid_until"],
    )
