"""What every `fleet` command group shares: settings read on use, a per-unit-of-work engine, output."""

from __future__ import annotations

import json
from typing import Any

import click
from sqlalchemy.engine import Engine

import db
from api.config import ConfigError, Settings


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


def emit(as_json: bool, data: Any, human: str) -> None:
    """Print `data` as JSON (times as ISO 8601) with --json, else the human text."""
    click.echo(json.dumps(data, default=_json_default, indent=2) if as_json else human)


def _json_default(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
