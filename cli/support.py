"""What every `fleet` command group shares: settings read on use, a per-unit-of-work engine, output, and the one
place where what a command's work raises becomes a click error (a message on stderr and exit code 1)."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

import db
from config import DECLARATIONS, VARIABLES, ConfigError, EnvVar, Settings
from db import errors, roles
from db.embedded.supervisor import EngineError

#: Failures a command reports by their own message: they already say what is wrong and what to do.
_SELF_EXPLAINING = (errors.NotFound, errors.Conflict, roles.RoleError, EngineError)


def load_settings() -> Settings:
    """The settings, or a click error naming the bad variable. Called on use, not at import, so
    `fleet --help` works with a broken environment."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None


def cli_engine(settings: Settings) -> Engine:
    """An engine without a pool: commands are short units of work, and an idle pooled connection would lock
    every other client out of the embedded engine (one connection at a time)."""
    return db.make_engine(settings.database_url, pool_size=0, connect_timeout=settings.db_connect_timeout)


@contextmanager
def click_errors(action: str) -> Iterator[None]:
    """Turn a failure of the work inside into a click error saying what could not be done and why."""
    try:
        yield
    except _SELF_EXPLAINING as exc:
        raise click.ClickException(str(exc)) from None
    except sa.exc.ProgrammingError as exc:  # e.g. a table missing: the schema is behind the code
        raise click.ClickException(
            f"cannot {action}: {exc.__cause__ or exc}\n(is the schema at head? `fleet db current`, `fleet db upgrade`)"
        ) from None
    except sa.exc.SQLAlchemyError as exc:  # refused connection, missing privilege, TimescaleDB refusing a policy
        raise click.ClickException(f"cannot {action}: {exc.__cause__ or exc}") from None


@contextmanager
def transaction(settings: Settings, action: str) -> Iterator[Connection]:
    """One transaction on a pool-less engine, its failures turned into click errors (see click_errors)."""
    engine = cli_engine(settings)
    try:
        with click_errors(action), db.transaction(engine) as conn:
            yield conn
    finally:
        engine.dispose()


@contextmanager
def on_stop_signals(handle: Callable[[int], None]) -> Iterator[None]:
    """Call `handle(signum)` on SIGINT and SIGTERM inside the block (the main thread only: Python delivers
    signals there), and restore the previous handlers after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        sig: signal.signal(sig, lambda signum, _frame: handle(signum)) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _SettingValue(click.ParamType[Any]):
    """An option's value, parsed and checked by its setting's own parser (config/): one rule for both."""

    def __init__(self, var: EnvVar[Any]) -> None:
        self.var = var
        self.name = "value"  # the metavar: VALUE

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self.var.parse(value)
        except ValueError as exc:
            self.fail(f"{value!r}: {exc} (as {self.var.name})", param, ctx)


def setting_option(flag: str, field: str, help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A `--flag` that overrides Settings.<field> (passed as keyword `field`, None when not given), parsed as the
    setting is, with the setting's name and default in its help."""
    var = DECLARATIONS[field]
    return click.option(flag, field, type=_SettingValue(var), default=None, help=f"{help_text} {default_of(var.name)}.")


def default_of(name: str) -> str:
    """How a help text names a setting's default: '[default: NAME, value]', from its one declaration."""
    var = VARIABLES[name]
    return f"[default: {name}, {var.default_text or var.default}]"


def emit(as_json: bool, data: Any, human: str) -> None:
    """Print `data` as JSON (times as ISO 8601) with --json, else the human text."""
    click.echo(json.dumps(data, default=_json_default, indent=2) if as_json else human)


def _json_default(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
