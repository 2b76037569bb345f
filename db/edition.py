"""Which TimescaleDB edition the database runs, and which Community-only objects exist.

The edition is read from the server (`timescaledb.license`), never configured: the Community edition
('timescale') gets continuous aggregates, compression and policies; the Apache edition ('apache') gets
hypertables only, and the platform reads the hypertables directly instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

COMMUNITY_LICENSE = "timescale"

_SERVER_INFO = sa.text(
    """
    SELECT current_setting('timescaledb.license') AS license,
           (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb') AS timescaledb_version,
           current_setting('server_version') AS server_version,
           version() ILIKE '%emscripten%' AS embedded
    """
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
