"""`fleet`: the operator CLI. Each area is a subcommand group; configuration is read once, lazily."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from cli.alerts import alerts_group
from cli.analyst import analyst_group
from cli.demo import demo_group
from cli.ops import jobs_group, policies_group
from cli.simulate import simulate_command
from cli.support import cli_engine, click_errors, emit, load_settings, setting_option, transaction
from config import Settings
from config.logs import configure_logging
from db import edition, keys, migrate
from db.embedded import supervisor as embedded
from db.schema import API_KEY_ROLES


class _Context:
    """Settings parsed on first use, so `fleet --help` works with a broken environment."""

    def __init__(self) -> None:
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings


pass_ctx = click.make_pass_decorator(_Context, ensure=True)


@click.group()
@click.version_option(package_name="fleet-telemetry")
def main() -> None:
    """Operate the fleet telemetry platform."""
    # JSON lines like the API's (config/logs.py), on stderr: stdout is the command's output. Warnings and
    # errors only; `fleet jobs run` raises the jobs' loggers to FLEET_LOG_LEVEL.
    configure_logging("WARNING", stream="stderr")


# --- embedded engine ---------------------------------------------------------------------------------------


@main.group("engine")
def engine_group() -> None:
    """The embedded engine (PGlite + TimescaleDB Community) on loopback."""


def _engine_config(settings: Settings) -> embedded.EngineConfig:
    return embedded.EngineConfig(
        directory=settings.engine_dir,
        host=settings.engine_host,
        port=settings.engine_port,
        health_port=settings.engine_health_port,
        stall_seconds=settings.engine_stall_seconds,
    )


def _exports(url: str) -> str:
    # The embedded engine serves one connection at a time: a pool of 0 lets the API, the CLI and analysts
    # take turns instead of one idle pooled connection locking everyone else out.
    return f"export DATABASE_URL='{url}'\nexport FLEET_DB_POOL_SIZE=0"


@engine_group.command("start")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait until it answers SQL.")
@pass_ctx
def engine_start(ctx: _Context, as_json: bool, timeout: float) -> None:
    """Start the supervised engine (no-op if running) and print its DATABASE_URL."""
    cfg = _engine_config(ctx.settings)
    with click_errors("start the embedded engine"):
        st = embedded.start(cfg, timeout=timeout)
    emit(as_json, st.as_dict(), _exports(cfg.database_url.replace("postgresql+psycopg", "postgresql")))


@engine_group.command("stop")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def engine_stop(ctx: _Context, as_json: bool) -> None:
    """Stop the engine and its supervisor (data stays in FLEET_ENGINE_DIR)."""
    with click_errors("stop the embedded engine"):
        stopped = embedded.stop(_engine_config(ctx.settings))
    emit(as_json, {"stopped": stopped}, "stopped" if stopped else "not running")


@engine_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def engine_status(ctx: _Context, as_json: bool) -> None:
    """Show whether the engine runs, its pids, restarts and health. Exit code 3 when it is not running."""
    st = embedded.status(_engine_config(ctx.settings))
    if st.running:
        h = st.health or {}
        human = (
            f"running: supervisor {st.supervisor_pid}, node {st.node_pid}, restarts {st.restarts}\n"
            f"health: {'ok' if st.health else 'not answering'}; clients served {h.get('served', '?')},"
            f" queued {h.get('queued', '?')}\n{_exports(str(st.database_url).replace('+psycopg', ''))}"
        )
    else:
        human = "not running"
    emit(as_json, st.as_dict(), human)
    if not st.running:
        sys.exit(3)


# --- API ---------------------------------------------------------------------------------------------------

GUNICORN_CONF = Path(__file__).resolve().parent.parent / "docker" / "gunicorn.conf.py"


@main.command("serve")
@setting_option("--bind", "bind", "host:port")
@setting_option("--workers", "workers", "gunicorn worker processes")
@setting_option("--threads", "threads", "Threads per worker")
@pass_ctx
def serve(ctx: _Context, bind: str | None, workers: int | None, threads: int | None) -> None:
    """Serve the API with gunicorn (configuration in docker/gunicorn.conf.py)."""
    ctx.settings  # noqa: B018 - fail here, with the variable's name, rather than in every worker
    args = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF)]
    for flag, value in (("--bind", bind), ("--workers", workers), ("--threads", threads)):
        if value is not None:
            args += [flag, str(value)]
    os.execv(sys.executable, [*args, "api:create_app()"])


# --- schema ------------------------------------------------------------------------------------------------


@main.group("db")
def db_group() -> None:
    """Schema migrations (Alembic) and the database's edition."""


_schema_engine = cli_engine


@db_group.command("upgrade")
@click.argument("revision", default="head")
@pass_ctx
def db_upgrade(ctx: _Context, revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    migrate.upgrade(_schema_engine(ctx.settings), revision)


@db_group.command("downgrade")
@click.argument("revision")
@pass_ctx
def db_downgrade(ctx: _Context, revision: str) -> None:
    """Revert migrations down to REVISION ('base' removes the whole schema and its data)."""
    migrate.downgrade(_schema_engine(ctx.settings), revision)


@db_group.command("current")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def db_current(ctx: _Context, as_json: bool) -> None:
    """Show the schema revision, the head, and the TimescaleDB edition with its Community objects."""
    engine = _schema_engine(ctx.settings)
    with click_errors("read the database"), engine.connect() as conn:
        current = migrate.current_revision(conn)
        info = edition.describe(conn)
    head = migrate.head_revision()
    data = {"current": current, "head": head, "at_head": current == head, "edition": asdict(info)}
    human = (
        f"revision {current or '(none)'} (head {head}){'' if current == head else '  <- not at head'}\n"
        f"TimescaleDB {info.timescaledb_version} {info.license} edition"
        f"{' (embedded engine)' if info.embedded else ''} on PostgreSQL {info.server_version}\n"
        f"continuous aggregates: {', '.join(info.continuous_aggregates) or 'none (Apache: plain views over raw)'}"
    )
    emit(as_json, data, human)


@db_group.command("check")
@pass_ctx
def db_check(ctx: _Context) -> None:
    """Fail if the live schema differs from db/schema.py (drift check)."""
    migrate.check(_schema_engine(ctx.settings))


# --- API keys ----------------------------------------------------------------------------------------------


@main.group("keys")
def keys_group() -> None:
    """API keys: create (the key is printed once, then only its hash is kept), list, revoke."""


def _key_data(key: keys.ApiKey) -> dict[str, Any]:
    return {**asdict(key), "active": key.active}


def _key_line(key: keys.ApiKey) -> str:
    role = f"{key.role} ({key.device_id})" if key.device_id else key.role
    state = "active" if key.active else f"revoked {key.revoked_at:%Y-%m-%d %H:%M}"
    return f"{key.id:>5}  {key.key_prefix + '...':<14}  {role:<24}  {state:<24}  {key.name}"


@keys_group.command("create")
@click.option("--name", required=True, help="Who or what holds the key (a device, a dashboard, a person).")
@click.option("--role", required=True, type=click.Choice(API_KEY_ROLES), help="admin may do everything.")
@click.option("--device-id", default=None, help="Bind a device key to this one device id.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (includes the key).")
@pass_ctx
def keys_create(ctx: _Context, name: str, role: str, device_id: str | None, as_json: bool) -> None:
    """Create a key and print it, once: only its hash is stored, it cannot be shown again.

    Without --json the key alone goes to stdout (KEY=$(fleet keys create ...)) and the rest to stderr."""
    try:
        with transaction(ctx.settings, "use the database") as conn:
            key, plaintext = keys.create_key(conn, name, role, device_id)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        emit(True, {**_key_data(key), "key": plaintext}, "")
        return
    bound = f" bound to device {key.device_id}" if key.device_id else ""
    click.echo(f"created API key {key.id}: role {key.role}{bound}, name {key.name!r}", err=True)
    click.echo(plaintext)
    click.echo("store it now: it is not shown again", err=True)


@keys_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def keys_list(ctx: _Context, as_json: bool) -> None:
    """List keys (revoked ones too) with their display prefix; never the key or its hash."""
    with transaction(ctx.settings, "use the database") as conn:
        found = keys.list_keys(conn)
    header = f"{'id':>5}  {'prefix':<14}  {'role':<24}  {'state':<24}  name"
    human = "\n".join([header, *map(_key_line, found)]) if found else "no API keys"
    emit(as_json, {"keys": [_key_data(k) for k in found]}, human)


@keys_group.command("revoke")
@click.argument("key_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def keys_revoke(ctx: _Context, key_id: int, as_json: bool) -> None:
    """Revoke key KEY_ID. API processes stop accepting it within FLEET_KEY_CACHE_SECONDS."""
    with transaction(ctx.settings, "use the database") as conn:
        key = keys.revoke_key(conn, key_id)
    human = (
        f"revoked API key {key.id} ({key.key_prefix}..., {key.name}); API processes refuse it within"
        f" {ctx.settings.key_cache_seconds:g} s"
    )
    emit(as_json, _key_data(key), human)


main.add_command(alerts_group)
main.add_command(analyst_group)
main.add_command(demo_group)
main.add_command(simulate_command)

main.add_command(policies_group)
main.add_command(jobs_group)


if __name__ == "__main__":
    main()
