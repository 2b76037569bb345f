"""Alembic environment for the fleet schema (online mode only: TimescaleDB DDL needs a live server).

The connection comes from the caller (`fleet db upgrade` and the tests pass `config.attributes["connection"]`)
or is opened from `sqlalchemy.url` / DATABASE_URL. Only one migrator runs at a time: an advisory lock is held
for the whole run. Each revision runs in its own transaction, with short lock and statement timeouts so a
migration waiting behind live traffic fails fast instead of stalling ingest.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import SchemaItem

from db.schema import metadata

config = context.config
target_metadata = metadata

# hashtext('fleet-alembic'), spelled out so the lock id is visible to operators in pg_locks.
_LOCK_SQL = sa.text("SELECT pg_advisory_lock(hashtext('fleet-alembic'))")
_UNLOCK_SQL = sa.text("SELECT pg_advisory_unlock(hashtext('fleet-alembic'))")


def _include_object(
    obj: SchemaItem, name: str | None, type_: str, reflected: bool, compare_to: SchemaItem | None
) -> bool:
    # TimescaleDB's own objects (chunks, materialization tables) live in its schemas; continuous aggregates
    # and the joined view are views, which autogenerate does not compare. Nothing else needs filtering.
    return not (type_ == "table" and reflected and compare_to is None and (name or "").startswith("_"))


def _run(connection: Connection) -> None:
    connection.execute(sa.text("SET lock_timeout = '4s'"))
    connection.execute(_LOCK_SQL)
    connection.commit()
    try:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            transaction_per_migration=True,
            include_object=_include_object,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    finally:
        connection.rollback()
        connection.execute(_UNLOCK_SQL)
        connection.commit()


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("no database URL: set DATABASE_URL or use `fleet db upgrade`")
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix) :]
    return url


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = sa.create_engine(_url(), poolclass=NullPool, connect_args={"connect_timeout": 60})
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: TimescaleDB DDL needs a live server")
run_migrations_online()
