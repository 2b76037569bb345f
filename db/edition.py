"""Which TimescaleDB edition the database runs, and which Community-only objects exist.

The edition is read from the server (`timescaledb.license`), never configured: the Community edition
('timescale') gets continuous aggregates, compression and policies; the Apache edition ('apache') gets
hypertables only, and the platform reads the hypertables directly instead.

Every runtime edition check comes from here: `describe` for a report, `is_community` for a round trip of its own,
and `COMMUNITY_SQL` for statements that check the edition inline instead (the ingest statements, the analytics
probe, re-maps, the alert scan), so that the check costs no extra round trip on their path. Migrations import no
app code (db/migrations/README.md) and keep their own copies of the expression.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

COMMUNITY_LICENSE = "timescale"

#: The server's edition as a SQL expression: 'timescale' (Community) or 'apache'.
LICENSE_SQL = "current_setting('timescaledb.license')"
#: A SQL boolean expression, true on the Community edition: a fragment for statements that check the edition
#: inline. Built from the two constants above, never from input.
COMMUNITY_SQL = LICENSE_SQL + " = '" + COMMUNITY_LICENSE + "'"

_IS_COMMUNITY = sa.text("SELECT " + COMMUNITY_SQL)
_SERVER_INFO = sa.text(
    "SELECT " + LICENSE_SQL + " AS license,"
    " (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb') AS timescaledb_version,"
    " current_setting('server_version') AS server_version,"
    " version() ILIKE '%emscripten%' AS embedded"
)
_CONTINUOUS_AGGREGATES = sa.text(
    "SELECT view_name FROM timescaledb_information.continuous_aggregates ORDER BY view_name"
)
_COMPRESSED_HYPERTABLES = sa.text(
    "SELECT hypertable_name FROM timescaledb_information.hypertables WHERE compression_enabled ORDER BY hypertable_name"
)
_POLICY_JOBS = sa.text(
    "SELECT proc_name, hypertable_name FROM timescaledb_information.jobs"
    " WHERE proc_name LIKE 'policy\\_%' AND hypertable_name IS NOT NULL ORDER BY job_id"
)


@dataclass(frozen=True)
class EditionInfo:
    """What the server is and which Community-only objects the schema has on it."""

    license: str
    timescaledb_version: str | None
    server_version: str
    embedded: bool
    continuous_aggregates: tuple[str, ...]
    compressed_hypertables: tuple[str, ...]
    policies: tuple[tuple[str, str], ...]

    @property
    def community(self) -> bool:
        """True on the Community (TSL) edition: continuous aggregates, compression and policies exist."""
        return self.license == COMMUNITY_LICENSE


def is_community(conn: Connection) -> bool:
    """True on the Community edition (one round trip; `describe` also lists the Community objects)."""
    return bool(conn.execute(_IS_COMMUNITY).scalar_one())


def describe(conn: Connection) -> EditionInfo:
    """The edition and the Community objects present; on Apache the Community tuples are empty."""
    server = conn.execute(_SERVER_INFO).mappings().one()
    caggs: tuple[str, ...] = ()
    compressed: tuple[str, ...] = ()
    policies: tuple[tuple[str, str], ...] = ()
    if server["license"] == COMMUNITY_LICENSE:
        caggs = tuple(conn.execute(_CONTINUOUS_AGGREGATES).scalars())
        compressed = tuple(conn.execute(_COMPRESSED_HYPERTABLES).scalars())
        policies = tuple((r.proc_name, r.hypertable_name) for r in conn.execute(_POLICY_JOBS))
    return EditionInfo(
        license=server["license"],
        timescaledb_version=server["timescaledb_version"],
        server_version=server["server_version"],
        embedded=server["embedded"],
        continuous_aggregates=caggs,
        compressed_hypertables=compressed,
        policies=policies,
    )
