"""Pooled connections of `db.make_engine`: pinged only after sitting idle, planned for their parameters.

A connection whose server session ended (restart, failover, a firewall dropping idle flows) is simulated with
pg_terminate_backend on the native server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

import db

pytestmark = pytest.mark.native


def backend_pid(eng: Engine) -> int:
    with eng.connect() as conn:
        return conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()


def terminate(admin: Engine, pid: int) -> None:
    with admin.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid}).scalar_one()


@pytest.fixture
def one_connection(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[float], Engine]]:
    """Makes engines with one pooled connection and the given idle time before a ping; disposes of them."""
    made: list[Engine] = []

    def make(ping_after_idle_s: float) -> Engine:
        monkeypatch.setattr(db, "PING_AFTER_IDLE_S", ping_after_idle_s)
        made.append(db.make_engine(database_url, pool_size=1))
        return made[-1]

    yield make
    for eng in made:
        eng.dispose()


def test_an_idle_connection_whose_session_ended_is_replaced_before_use(
    engine: Engine, one_connection: Callable[[float], Engine]
) -> None:
    eng = one_connection(0.0)  # every connection counts as idle: pinged at each checkout
    first = backend_pid(eng)
    terminate(engine, first)
    assert backend_pid(eng) != first  # no error: the ping failed and the pool connected anew


def test_a_connection_in_steady_use_is_not_pinged_and_one_failure_renews_the_pool(
    engine: Engine, one_connection: Callable[[float], Engine]
) -> None:
    eng = one_connection(3600.0)
    pings: list[str] = []
    sa.event.listen(eng, "before_cursor_execute", lambda *a: pings.append(a[2]) if a[2] == "SELECT 1" else None)
    first = backend_pid(eng)
    assert backend_pid(eng) == first and not pings  # reused at once, without a round trip more
    terminate(engine, first)
    with pytest.raises(sa.exc.OperationalError) as failed:  # the cost: the first use after the session ended
        backend_pid(eng)
    assert failed.value.connection_invalidated  # the API answers it with 503 (api/problems.py)
    assert backend_pid(eng) != first


def test_connections_plan_each_statement_for_its_parameters(engine: Engine) -> None:
    with engine.connect() as conn:
        assert conn.execute(sa.text("SHOW plan_cache_mode")).scalar_one() == "force_custom_plan"


def test_options_in_the_url_are_kept(database_url: str) -> None:
    eng = db.make_engine(f"{database_url}?options=-c%20statement_timeout%3D4321", pool_size=1)
    try:
        with eng.connect() as conn:
            assert conn.execute(sa.text("SHOW statement_timeout")).scalar_one() == "4321ms"
            assert conn.execute(sa.text("SHOW plan_cache_mode")).scalar_one() == "force_custom_plan"
    finally:
        eng.dispose()
