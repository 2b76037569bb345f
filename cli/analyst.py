"""`fleet analyst grant-login|revoke-login|list`: database logins for analysts (members of `fleet_analyst`).

Registered on the main group in cli/__init__.py. The password is never a command-line argument (other users see
arguments in `ps`): it comes from FLEET_ANALYST_PASSWORD, or from stdin (one line; a hidden, confirmed prompt on
a terminal), and is never echoed, printed or logged. Exit codes: 0 done; 1 database error or a refused role
or password; 2 bad usage.

The embedded engine is refused: every connection to it is superuser `postgres` whatever user it names, so a
login there would only pretend to restrict anyone (docs/SECURITY.md).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import click
from sqlalchemy.engine import Connection

from cli.support import emit, load_settings, transaction
from db import edition, roles

#: Environment variable a password may come from (scripts, secret stores); else stdin.
PASSWORD_ENV = "FLEET_ANALYST_PASSWORD"


@click.group("analyst")
def analyst_group() -> None:
    """Database logins for analysts: read-only SQL on the rollups (role fleet_analyst, docs/SECURITY.md)."""


@contextmanager
def _transaction(action: str) -> Iterator[Connection]:
    with transaction(load_settings(), action) as conn:
        yield conn


def _refuse_embedded(conn: Connection) -> None:
    if edition.describe(conn).embedded:
        raise click.ClickException(
            "the embedded engine has no logins (every connection is superuser postgres, whatever user it names):"
            " an analyst login there would restrict nothing. Use a PostgreSQL server (docs/SECURITY.md)."
        )


def _read_password() -> str:
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env:
        return from_env
    if sys.stdin.isatty():
        return click.prompt("password", hide_input=True, confirmation_prompt=True, err=True)
    line = sys.stdin.readline()
    if not line:
        raise click.UsageError(f"no password: set {PASSWORD_ENV} or pass it on stdin (one line)")
    return line.rstrip("\r\n")


def _login_data(login: roles.AnalystLogin) -> dict[str, Any]:
    return asdict(login)


def _login_line(login: roles.AnalystLogin) -> str:
    limit = "no limit" if login.connection_limit < 0 else f"{login.connection_limit} connections"
    timeout = f"statement_timeout {login.statement_timeout}" if login.statement_timeout else "no statement_timeout"
    state = "login" if login.can_login else "NOLOGIN"
    return f"{login.name:<32}  {state:<7}  {limit:<16}  {timeout}"


@analyst_group.command("grant-login")
@click.argument("name")
@click.option(
    "--connection-limit", type=click.IntRange(1, 10_000), default=5, show_default=True, help="Sessions at once."
)
@click.option(
    "--statement-timeout",
    type=click.IntRange(min=0),
    default=300,
    show_default=True,
    help="Seconds a statement of this login may run; 0: the server's default.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (never the password).")
def grant_login(name: str, connection_limit: int, statement_timeout: int, as_json: bool) -> None:
    """Create LOGIN role NAME, a member of fleet_analyst, or set a new password for that analyst login.

    The password comes from FLEET_ANALYST_PASSWORD or stdin (at least 12 characters); only its SCRAM-SHA-256
    verifier, computed here, is sent to the server."""
    try:
        roles.validate_role_name(name)
    except roles.RoleError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    password = _read_password()
    with _transaction("create the login") as conn:
        _refuse_embedded(conn)
        login, created = roles.grant_login(
            conn, name, password, connection_limit=connection_limit, statement_timeout_seconds=statement_timeout
        )
    verb = "created" if created else "updated (new password and limits)"
    emit(as_json, {**_login_data(login), "created": created}, f"{verb} analyst login {login.name}")


@analyst_group.command("revoke-login")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def revoke_login(name: str, as_json: bool) -> None:
    """Drop analyst login NAME and end its open sessions."""
    with _transaction("drop the login") as conn:
        _refuse_embedded(conn)
        oid = roles.revoke_login(conn, name)
    with _transaction("end the login's sessions") as conn:
        ended = roles.terminate_sessions(conn, oid)
    emit(as_json, {"name": name, "dropped": True, "sessions_ended": ended}, f"dropped {name}; {ended} session(s) ended")


@analyst_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_logins(as_json: bool) -> None:
    """List the members of fleet_analyst with their limits (never a password)."""
    with _transaction("list the logins") as conn:
        if not roles.group_exists(conn):
            raise click.ClickException(f"role {roles.ANALYST_ROLE} does not exist: run `fleet db upgrade`")
        found = roles.list_logins(conn)
    human = "\n".join(map(_login_line, found)) if found else f"no members of {roles.ANALYST_ROLE}"
    emit(as_json, {"group": roles.ANALYST_ROLE, "logins": [_login_data(x) for x in found]}, human)
