"""Engines without a database: TLS settings in DATABASE_URL reach libpq unchanged, and DATABASE_READ_URL gives the
app a second, read-only engine for its read endpoints."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import conninfo
from sqlalchemy import event

import db
from api import create_app
from config import ConfigError, Settings

TLS_QUERY = {
    "sslmode": "verify-full",
    "sslrootcert": "/etc/fleet/tls/ca.pem",
    "sslcert": "/etc/fleet/tls/client.crt",
    "sslkey": "/etc/fleet/tls/client.key",
    "sslcrl": "/etc/fleet/tls/ca.crl",
    "target_session_attrs": "read-write",
}
TLS_URL = "postgresql://fleet:s3cret@db.internal:6432/fleet?" + "&".join(f"{k}={v}" for k, v in TLS_QUERY.items())


class _Captured(Exception):
    """Raised instead of connecting, once the DBAPI connect arguments are known."""


def dbapi_connect_args(engine: Any) -> dict[str, Any]:
    """The keyword arguments the engine passes to psycopg.connect(), captured without connecting (and without
    resolving any host name): the dialect's connect() of this engine is replaced, whatever calls it."""
    captured: dict[str, Any] = {}

    def capture(*cargs: Any, **cparams: Any) -> None:
        captured.update(cparams)
        raise _Captured

    engine.dialect.connect = capture
    with pytest.raises(_Captured):
        engine.connect()
    return captured


def test_tls_parameters_in_database_url_reach_libpq_unchanged():
    settings = Settings.from_env({"DATABASE_URL": TLS_URL})
    engine = db.make_engine(settings.database_url)
    args = dbapi_connect_args(engine)
    assert {k: args[k] for k in TLS_QUERY} == TLS_QUERY
    assert (args["host"], args["port"], args["dbname"], args["user"]) == ("db.internal", 6432, "fleet", "fleet")
    assert args["connect_timeout"] > 0 and args["application_name"] == "fleet"
    # What psycopg hands to libpq: the same parameters, nothing dropped or rewritten.
    # (`context` is psycopg's adapters map, a Python-side argument.)
    sent = conninfo.conninfo_to_dict(conninfo.make_conninfo(**{k: v for k, v in args.items() if k != "context"}))
    assert {k: sent[k] for k in TLS_QUERY} == TLS_QUERY
    assert engine.url.query == TLS_QUERY


@pytest.mark.parametrize("pool_size", [0, 5])
def test_tls_parameters_reach_libpq_with_and_without_a_pool(pool_size):
    args = dbapi_connect_args(
        db.make_engine(TLS_URL.replace("postgresql://", "postgresql+psycopg://"), pool_size=pool_size)
    )
    assert args["sslmode"] == "verify-full" and args["sslrootcert"] == TLS_QUERY["sslrootcert"]


def test_database_read_url_is_optional_and_validated():
    assert Settings.from_env({}).database_read_url is None
    read = Settings.from_env({"DATABASE_READ_URL": "postgres://r@replica.internal/fleet?sslmode=verify-full"})
    assert read.database_read_url == "postgresql+psycopg://r@replica.internal/fleet?sslmode=verify-full"
    with pytest.raises(ConfigError, match="DATABASE_READ_URL"):
        Settings.from_env({"DATABASE_READ_URL": "mysql://replica/fleet"})


def test_without_read_url_reads_use_the_primary_engine():
    app = create_app(Settings.from_env({"DATABASE_URL": "postgresql://u@127.0.0.1:1/fleet", "FLEET_RATE_LIMIT": "off"}))
    assert app.extensions["fleet.db_read"] is app.extensions["fleet.db"]


def test_read_url_gives_a_second_read_only_engine_with_its_own_tls_settings():
    env = {
        "DATABASE_URL": TLS_URL,
        "DATABASE_READ_URL": TLS_URL.replace("db.internal", "replica.internal").replace("read-write", "any"),
        "FLEET_DB_POOL_SIZE": "3",
        "FLEET_RATE_LIMIT": "off",
    }
    app = create_app(Settings.from_env(env))
    primary, replica = app.extensions["fleet.db"], app.extensions["fleet.db_read"]
    assert replica is not primary
    assert (primary.url.host, replica.url.host) == ("db.internal", "replica.internal")
    assert replica.pool.size() == 3
    assert dbapi_connect_args(replica)["sslmode"] == "verify-full"
    # Every session the read engine opens is made read-only; the primary's are not.
    assert event.contains(replica, "connect", db._set_read_only)
    assert not event.contains(primary, "connect", db._set_read_only)


def test_read_only_engine_sets_each_new_session_read_only():
    executed = []

    class Cursor:
        def __enter__(self) -> Cursor:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def execute(self, statement: str) -> None:
            executed.append(statement)

    class Connection:
        def cursor(self) -> Cursor:
            return Cursor()

        def commit(self) -> None:
            executed.append("COMMIT")

    db._set_read_only(Connection(), None)
    assert executed == ["SET default_transaction_read_only = on", "COMMIT"]
