"""The environment a `fleet` command runs in, for click's CliRunner (the `runner` fixture)."""

from __future__ import annotations

from sqlalchemy.engine import Engine


def cli_env(eng: Engine, **extra: str) -> dict[str, str]:
    """DATABASE_URL pointing at `eng`'s database (password included), plus `extra` settings."""
    return {"DATABASE_URL": eng.url.render_as_string(hide_password=False), **extra}
