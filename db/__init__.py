"""The data layer: engines, transactions and queries. Knows nothing of Flask or the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool


def make_engine(url: str, *, pool_size: int = 5, pool_timeout: float = 30.0, connect_timeout: int = 60) -> Engine:
    """An Engine for `url`; pool_size 0 connects per unit of work (what the one-slot embedded engine needs)."""
    connect_args = {"connect_timeout": connect_timeout, "application_name": "fleet"}
    if pool_size == 0:
        return sa.create_engine(url, poolclass=NullPool, connect_args=connect_args)
    return sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=pool_timeout,
        pool_pre_ping=True,
        connect_args=connect_args,
    )


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A connection inside one transaction: committed when the block ends, rolled back if it raises."""
    with engine.begin() as conn:
        yield conn
