"""A throw-away native PostgreSQL 15 + TimescaleDB cluster for benchmarks, outside pytest.

`native_cluster()` does what the `native_proc` fixture of tests/conftest.py does (pytest-postgresql's
PostgreSQLExecutor, `shared_preload_libraries=timescaledb`, a free loopback port, and when running as root a
directory owned by the `postgres` system user driven through tests/pg_ctl_as_postgres), then creates one
database, migrates it to head with Alembic, and yields its SQLAlchemy URL. On the way out, normal or not
(exception, Ctrl-C), the cluster is stopped and its directory removed.

Durable by default: pytest-postgresql always starts the server with `-F` (fsync off, what the test suite's
cluster wants), and BASE_SETTINGS' `fsync=on` comes later on the command line and turns it back on, so every figure
that claims stored readings is measured as production runs. `settings={"fsync": "off"}` measures without.

    with native_cluster("fleet_bench", settings={"shared_buffers": "1GB"}) as url:
        engine = db.make_engine(url)
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import port_for
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_postgresql.janitor import DatabaseJanitor

import db
from db.migrate import upgrade

logger = logging.getLogger(__name__)

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_LIB = Path("/usr/lib/postgresql/15/lib")
#: pg_ctl wrapper that runs the cluster as the `postgres` system user (PostgreSQL refuses to run as root).
PG_CTL_AS_POSTGRES = Path(__file__).resolve().parent.parent / "pg_ctl_as_postgres"
#: What every cluster gets; `settings` add to these or override them.
BASE_SETTINGS: Mapping[str, str] = {
    "shared_preload_libraries": "timescaledb",
    "fsync": "on",
    "timescaledb.telemetry_level": "off",
}
PROVISION_HINT = (
    "PostgreSQL 15 with TimescaleDB is required (pg_ctl in {bin}, timescaledb-*.so in {lib}):"
    " run `sudo bash scripts/provision-native.sh` first"
)
_SAFE_SETTING = re.compile(r"^[A-Za-z0-9_.]+$")
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.,:/+-]+$")


class ClusterError(RuntimeError):
    """The cluster could not be started or prepared; the message includes the end of its log."""


def require_native_engine() -> None:
    """Exit (SystemExit with a message) unless PostgreSQL 15 and the TimescaleDB library are installed."""
    if not (PG_BIN / "pg_ctl").exists() or not list(PG_LIB.glob("timescaledb-*.so")):
        raise SystemExit(PROVISION_HINT.format(bin=PG_BIN, lib=PG_LIB))


def postgres_options(settings: Mapping[str, object] | None = None) -> str:
    """`-c name=value` options for the postgres server: BASE_SETTINGS updated with `settings`.

    Values are passed through pg_ctl's command line, so only simple tokens are accepted (`256MB`, `off`,
    `0.9`, `timescaledb,pg_stat_statements`); anything with spaces or quotes is refused."""
    merged = {**BASE_SETTINGS, **{k: str(v) for k, v in (settings or {}).items()}}
    for name, value in merged.items():
        if not _SAFE_SETTING.match(name) or not _SAFE_VALUE.match(value):
            raise ValueError(f"unsupported postgres setting {name}={value!r}: use plain tokens without spaces")
    return " ".join(f"-c {name}={value}" for name, value in merged.items())


@contextmanager
def native_cluster(
    dbname: str = "fleet_bench",
    *,
    settings: Mapping[str, object] | None = None,
    migrate: bool = True,
    start_timeout: int = 120,
) -> Iterator[str]:
    """Start a throw-away PostgreSQL 15 + TimescaleDB cluster on a free 127.0.0.1 port and yield the
    `postgresql+psycopg://` URL of database `dbname` (migrated to head unless `migrate=False`).

    `settings` are extra server settings (`{"shared_buffers": "1GB", "max_wal_size": "4GB"}`). The cluster
    and its directory are removed when the block exits, however it exits."""
    require_native_engine()
    options = postgres_options(settings)
    base = Path(tempfile.mkdtemp(prefix="fleet-bench-pg-"))
    if os.geteuid() == 0:
        # As in tests/conftest.py: the cluster runs as `postgres`, in a directory that user owns.
        shutil.chown(base, "postgres", "postgres")
        pg_ctl = str(PG_CTL_AS_POSTGRES)
    else:
        pg_ctl = str(PG_BIN / "pg_ctl")
    proc = PostgreSQLExecutor(
        executable=pg_ctl,
        host="127.0.0.1",
        port=port_for.select_random(),
        datadir=str(base / "data"),
        unixsocketdir=str(base),
        logfile=str(base / "postgresql.log"),
        startparams="-w",
        dbname=dbname,
        timeout=start_timeout,
        postgres_options=options,
    )
    try:
        logger.info("native cluster: starting PostgreSQL on 127.0.0.1:%s (%s)", proc.port, base)
        try:
            proc.start()
        except Exception as exc:
            raise ClusterError(f"PostgreSQL did not start: {exc}\n{_log_tail(base)}") from exc
        DatabaseJanitor(user=proc.user, host=proc.host, port=proc.port, dbname=dbname).init()
        url = f"postgresql+psycopg://{proc.user}@{proc.host}:{proc.port}/{dbname}"
        if migrate:
            engine = db.make_engine(url, pool_size=0, connect_timeout=30)
            try:
                upgrade(engine)
            finally:
                engine.dispose()
        yield url
    finally:
        _stop(proc)
        shutil.rmtree(base, ignore_errors=True)
        logger.info("native cluster: stopped and removed %s", base)


def _stop(proc: PostgreSQLExecutor) -> None:
    """Stop the cluster if its server runs (fast shutdown; immediate if that fails). Never raises."""
    try:
        if not proc.running():
            return
        proc.stop()
    except Exception as exc:  # the directory is removed next: a server left behind must not survive it
        logger.warning("native cluster: fast stop failed (%s); stopping immediately", exc)
        subprocess.run(
            [proc.executable, "stop", "-D", proc.datadir, "-m", "immediate"],
            check=False,
            capture_output=True,
            timeout=60,
        )


def _log_tail(base: Path, lines: int = 30) -> str:
    try:
        text = (base / "postgresql.log").read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "server log (end):\n" + "\n".join(text.splitlines()[-lines:])
