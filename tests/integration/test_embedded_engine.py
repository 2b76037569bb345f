"""The embedded engine's own server (db/embedded/server.mjs, supervised by supervisor.py there) on real PGlite.

Each test is one of the failures that make a stock PGlite socket server (@electric-sql/pglite-socket) unusable:
large messages, many messages per TCP chunk, a dead client's session leaking into the next one, client resets,
more than one client at a time, and a crash of Node itself.

The engine serves ONE connection at a time: a test never holds a connection while another client (a thread, a
subprocess, a raw socket) needs to get in. Every wait is bounded: connections have a connect timeout and a
watchdog that severs them if the engine stops answering, subprocesses and threads have timeouts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.pq import TransactionStatus

from db.embedded import supervisor as embedded
from tests.conftest import selected_engines

pytestmark = pytest.mark.skipif(
    "embedded" not in selected_engines(), reason="FLEET_TEST_ENGINES excludes the embedded engine"
)

CONNECT_TIMEOUT_S = 60  # the server's own queue timeout: a waiting client gets in or is refused by then
WATCHDOG_S = 120.0  # longest any single test connection may stay open
RAW_TIMEOUT_S = 30.0
PROTOCOL_3 = 196608


def dsn(cfg: embedded.EngineConfig) -> str:
    return cfg.database_url.replace("postgresql+psycopg://", "postgresql://", 1)


def _sever(conn: psycopg.Connection[Any]) -> None:
    """Shut the connection's socket down under libpq, so a call blocked on a silent engine returns an error."""
    with contextlib.suppress(OSError, psycopg.Error):
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


@contextlib.contextmanager
def connect(cfg: embedded.EngineConfig, budget: float = WATCHDOG_S, **kwargs: Any) -> Iterator[psycopg.Connection]:
    """An autocommit psycopg connection that is cut off (and the test failed) if it is still open after `budget`
    seconds: psycopg has no client-side query timeout and PGlite has no statement_timeout."""
    kwargs.setdefault("autocommit", True)
    conn = psycopg.connect(dsn(cfg), connect_timeout=CONNECT_TIMEOUT_S, **kwargs)
    lock = threading.Lock()
    state = {"done": False, "fired": False}

    def fire() -> None:
        with lock:
            if not state["done"]:
                state["fired"] = True
                _sever(conn)

    timer = threading.Timer(budget, fire)
    timer.daemon = True
    timer.start()
    try:
        yield conn
    except psycopg.OperationalError as exc:
        if state["fired"]:
            raise AssertionError(f"the embedded engine did not answer within {budget:.0f}s") from exc
        raise
    finally:
        with lock:  # the fd must not be shut down once closed: the number may already belong to another socket
            state["done"] = True
        timer.cancel()
        conn.close()


def node_pid(cfg: embedded.EngineConfig) -> int:
    pid = embedded.status(cfg).node_pid
    assert pid is not None, "the supervisor reports no Node process"
    return pid


def health(cfg: embedded.EngineConfig) -> dict[str, Any]:
    doc = embedded.health(cfg)
    assert doc is not None, "the engine's health endpoint does not answer"
    return doc


def assert_engine_answers(cfg: embedded.EngineConfig) -> None:
    with connect(cfg) as conn:
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)


@pytest.fixture
def scratch_table(embedded_engine: embedded.EngineConfig) -> Iterator[sql.Composed]:
    """A unique, not yet created table name in schema public (never a platform table); dropped afterwards."""
    name = sql.SQL("public.{}").format(sql.Identifier(f"emb_test_{uuid.uuid4().hex[:12]}"))
    yield name
    with connect(embedded_engine) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))


# 1. A message over 64 KiB arrives in several TCP chunks: the stock server feeds them to PGlite separately and the
# WASM instance dies.


def test_embedded_engine_runs_statements_over_one_megabyte(embedded_engine):
    pid = node_pid(embedded_engine)
    param = secrets.token_hex(1_000_000)  # 2 MB text parameter: one Bind message
    literal = secrets.token_hex(750_000)  # 1.5 MB literal: one simple-protocol Query message
    with connect(embedded_engine) as conn:
        echoed, length, digest = conn.execute(
            "SELECT t, length(t), md5(t) FROM (SELECT %s::text AS t) AS s", [param]
        ).fetchone()
        assert (length, digest) == (len(param), hashlib.md5(param.encode()).hexdigest())
        assert echoed == param  # and a 2 MB answer comes back whole
        literal_sql = f"SELECT length(t), md5(t) FROM (VALUES ('{literal}')) AS v(t)"
        assert len(literal_sql) > 1_500_000
        assert conn.execute(literal_sql).fetchone() == (len(literal), hashlib.md5(literal.encode()).hexdigest())
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert_engine_answers(embedded_engine)
    assert node_pid(embedded_engine) == pid, "Node was restarted: the instance died on a large message"


# 2. psycopg's executemany and pipeline mode send many protocol messages back to back, and TCP cuts them into chunks
# at arbitrary points: the stock server hands PGlite the chunks as they come (results go missing, the client hangs,
# or a message cut in two kills the instance).


def test_embedded_engine_executemany_delivers_every_row(embedded_engine):
    rows = [(i, f"row-{i}") for i in range(2000)]
    with connect(embedded_engine) as conn:
        conn.execute("CREATE TEMP TABLE emb_test_many (n int NOT NULL, label text NOT NULL)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO emb_test_many (n, label) VALUES (%s, %s)", rows)
        count, total, labels = conn.execute(
            "SELECT count(*), sum(n), count(DISTINCT label) FROM emb_test_many"
        ).fetchone()
    assert (count, total, labels) == (2000, sum(range(2000)), 2000)


def test_embedded_engine_pipeline_returns_every_result(embedded_engine):
    big = secrets.token_hex(150_000)  # a 300 KB Bind in the middle of the batch: it spans several TCP chunks
    with connect(embedded_engine) as conn:
        conn.execute("CREATE TEMP TABLE emb_test_pipe (n int PRIMARY KEY, label text NOT NULL)")
        with conn.pipeline():
            one = conn.execute("SELECT 1")
            echo = conn.execute("SELECT %s::text, %s::int", ["two", 2])
            inserted = [
                conn.execute("INSERT INTO emb_test_pipe VALUES (%s, %s) RETURNING n", [i, f"p{i}"]) for i in range(5)
            ]
            large = conn.execute("SELECT length(%s::text), md5(%s::text)", [big, big])
            series = conn.execute("SELECT count(*), sum(g) FROM generate_series(1, 1000) AS g")
            updated = conn.execute("UPDATE emb_test_pipe SET label = label || '!' WHERE n >= %s", [3])
            table = conn.execute("SELECT n, label FROM emb_test_pipe ORDER BY n")
        assert one.fetchall() == [(1,)]
        assert echo.fetchall() == [("two", 2)]
        assert [cur.fetchone() for cur in inserted] == [(i,) for i in range(5)]
        assert large.fetchall() == [(len(big), hashlib.md5(big.encode()).hexdigest())]
        assert series.fetchall() == [(1000, 500500)]
        assert updated.rowcount == 2
        assert table.fetchall() == [(0, "p0"), (1, "p1"), (2, "p2"), (3, "p3!"), (4, "p4!")]


# 3. A client killed in the middle of a transaction: with a shared backend session the next client inherits its
# transaction, settings, prepared statements, temp tables, locks, listens and cursors.

# Session state is set up BEFORE the transaction (in autocommit), so that a plain ROLLBACK cannot undo it: only a
# full session reset can. Then a transaction is left open with an uncommitted row. What the client saw before it
# died is printed, so the test knows the state really was there.
KILLED_CLIENT = r"""
import json, os, signal, sys
import psycopg

conn = psycopg.connect(sys.argv[1], autocommit=True, connect_timeout=60, prepare_threshold=None)
table = sys.argv[2]
conn.execute("SET work_mem = '7MB'")
conn.execute("SET enable_seqscan = off")
conn.execute("PREPARE leftover AS SELECT 1")
conn.execute("CREATE TEMP TABLE emb_test_leftover_tmp (x int)")
conn.execute("SELECT pg_advisory_lock(42)")
conn.execute("LISTEN emb_test_channel")
conn.execute("DECLARE emb_test_cursor CURSOR WITH HOLD FOR SELECT 1")
conn.execute("SET search_path TO pg_catalog")
conn.execute("BEGIN")
conn.execute(f"INSERT INTO {table} (n) VALUES (1)")
conn.execute("SET LOCAL statement_timeout = '1h'")
one = lambda q: conn.execute(q).fetchone()[0]
seen = {
    "work_mem": one("SHOW work_mem"),
    "search_path": one("SHOW search_path"),
    "enable_seqscan": one("SHOW enable_seqscan"),
    "prepared": one("SELECT count(*) FROM pg_prepared_statements"),
    "temp_tables": one("SELECT count(*) FROM pg_class WHERE relname = 'emb_test_leftover_tmp'"),
    "advisory_locks": one("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"),
    "channels": one("SELECT count(*) FROM pg_listening_channels()"),
    "cursors": one("SELECT count(*) FROM pg_cursors"),
    "rows": one(f"SELECT count(*) FROM {table}"),
    "in_transaction": conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS,
}
print("ready " + json.dumps(seen), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def session_state(conn: psycopg.Connection[Any], table: sql.Composable) -> dict[str, Any]:
    def one(query: sql.Composable | str) -> Any:
        return conn.execute(query).fetchone()[0]

    return {
        "work_mem": one("SHOW work_mem"),
        "search_path": one("SHOW search_path"),
        "enable_seqscan": one("SHOW enable_seqscan"),
        "prepared": one("SELECT count(*) FROM pg_prepared_statements"),
        "temp_tables": one("SELECT count(*) FROM pg_class WHERE relname = 'emb_test_leftover_tmp'"),
        "advisory_locks": one("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"),
        "channels": one("SELECT count(*) FROM pg_listening_channels()"),
        "cursors": one("SELECT count(*) FROM pg_cursors"),
        "rows": one(sql.SQL("SELECT count(*) FROM {}").format(table)),
        "in_transaction": conn.info.transaction_status != TransactionStatus.IDLE,
    }


def test_embedded_engine_resets_the_session_of_a_killed_client(embedded_engine, scratch_table):
    with connect(embedded_engine) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (n int NOT NULL)").format(scratch_table))
        default_work_mem = conn.execute("SHOW work_mem").fetchone()[0]
    assert default_work_mem != "7MB"
    table = scratch_table.as_string()
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_CLIENT, dsn(embedded_engine), table],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, f"the client did not die as planned: {proc.stdout}{proc.stderr}"
    assert proc.stdout.startswith("ready "), proc.stdout + proc.stderr
    before_death = json.loads(proc.stdout.removeprefix("ready "))
    assert before_death == {
        "work_mem": "7MB",
        "search_path": "pg_catalog",
        "enable_seqscan": "off",
        "prepared": 1,
        "temp_tables": 1,
        "advisory_locks": 1,
        "channels": 1,
        "cursors": 1,
        "rows": 1,
        "in_transaction": True,
    }

    with connect(embedded_engine, prepare_threshold=None) as conn:
        assert conn.info.transaction_status == TransactionStatus.IDLE
        # Not inside the dead client's transaction: the first statement has no transaction id yet, each
        # autocommit statement is the first of its own transaction, and two of them get different ids.
        assert conn.execute("SELECT pg_current_xact_id_if_assigned() IS NULL").fetchone() == (True,)
        assert conn.execute("SELECT now() = statement_timestamp()").fetchone() == (True,)
        first = conn.execute("SELECT txid_current()").fetchone()[0]
        second = conn.execute("SELECT txid_current()").fetchone()[0]
        assert second != first
        after = session_state(conn, scratch_table)
        work_mem_is_default = conn.execute(
            "SELECT setting = boot_val FROM pg_settings WHERE name = 'work_mem'"
        ).fetchone()[0]
        statement_timeout = conn.execute("SHOW statement_timeout").fetchone()[0]
    assert after == {
        "work_mem": default_work_mem,
        "search_path": '"$user", public',
        "enable_seqscan": "on",
        "prepared": 0,
        "temp_tables": 0,
        "advisory_locks": 0,
        "channels": 0,
        "cursors": 0,
        "rows": 0,
        "in_transaction": False,
    }
    assert work_mem_is_default
    assert statement_timeout == "0"


# 4. A client reset (RST) mid-message: the stock server gets an unhandled ECONNRESET and Node exits.


def _send_startup(sock: socket.socket) -> None:
    body = struct.pack("!i", PROTOCOL_3) + b"user\0postgres\0database\0postgres\0\0"
    sock.sendall(struct.pack("!i", len(body) + 4) + body)


def _read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise AssertionError("the engine closed the connection")
            data += chunk
        return data

    header = exactly(5)
    return header[:1], exactly(struct.unpack("!i", header[1:])[0] - 4)


def _log_in(sock: socket.socket) -> None:
    """Startup and (md5) password exchange, up to the first ReadyForQuery."""
    _send_startup(sock)
    while True:
        kind, body = _read_message(sock)
        if kind == b"R" and body[:4] == struct.pack("!i", 5):  # MD5 password: any password is accepted
            inner = hashlib.md5(b"postgrespostgres").hexdigest().encode()
            password = b"md5" + hashlib.md5(inner + body[4:8]).hexdigest().encode() + b"\0"
            sock.sendall(b"p" + struct.pack("!i", len(password) + 4) + password)
        elif kind == b"R" and body[:4] == struct.pack("!i", 3):  # cleartext password
            sock.sendall(b"p" + struct.pack("!i", 13) + b"postgres\0")
        elif kind == b"E":
            raise AssertionError(f"startup refused: {body!r}")
        elif kind == b"Z":
            return


def _query_message(query: str) -> bytes:
    body = query.encode() + b"\0"
    return b"Q" + struct.pack("!i", len(body) + 4) + body


def _partial_startup(sock: socket.socket) -> None:
    body = struct.pack("!i", PROTOCOL_3) + b"user\0postgres\0database\0postgres\0\0"
    sock.sendall(struct.pack("!i", len(body) + 4) + body[:10])


def _half_query(sock: socket.socket) -> None:
    _log_in(sock)
    message = _query_message("CREATE TABLE public.emb_test_half_query (n int)")
    sock.sendall(message[: len(message) // 2])


def _half_large_query(sock: socket.socket) -> None:
    _log_in(sock)
    message = _query_message(f"SELECT length('{'x' * 1_000_000}')")
    sock.sendall(message[:300_000])


def _extended_without_sync(sock: socket.socket) -> None:
    """Parse/Bind/Execute without Sync: a transaction is opened, then a statement fails, so the backend ignores
    every message until the next Sync (a session reset sent without one would be ignored too)."""
    _log_in(sock)
    messages = b""
    for query in ("BEGIN", "CREATE TABLE public.emb_test_half_query (n int)", "SELECT 1 / 0"):
        parse = b"\0" + query.encode() + b"\0" + struct.pack("!h", 0)
        bind = b"\0\0" + struct.pack("!hhh", 0, 0, 0)
        execute = b"\0" + struct.pack("!i", 0)
        for kind, body in ((b"P", parse), (b"B", bind), (b"E", execute)):
            messages += kind + struct.pack("!i", len(body) + 4) + body
    sock.sendall(messages)
    # The division's ErrorResponse proves the engine ran all of them before the client goes away. (NoticeResponses
    # are skipped: PGlite runs with client_min_messages = debug3 and reports every Parse and Bind.)
    replies: list[bytes] = []
    while not replies or replies[-1] != b"E":
        kind = _read_message(sock)[0]
        if kind != b"N":
            replies.append(kind)
    assert replies == [b"1", b"2", b"C", b"1", b"2", b"C", b"1", b"E"]  # 1 / 0 is folded, and fails, at Bind


def _reset_while_answered(sock: socket.socket) -> None:
    _log_in(sock)
    sock.sendall(_query_message("SELECT repeat('x', 4000000) FROM generate_series(1, 2)"))
    assert _read_message(sock)[0] == b"T"  # the answer is on its way: the reset hits the engine mid-write


@pytest.mark.parametrize(
    "misbehave",
    [_partial_startup, _half_query, _half_large_query, _extended_without_sync, _reset_while_answered],
    ids=["partial-startup", "half-query", "half-1mb-query", "extended-no-sync", "reset-before-reading-8mb-answer"],
)
def test_embedded_engine_survives_a_client_reset(embedded_engine, misbehave):
    pid = node_pid(embedded_engine)
    restarts = embedded.status(embedded_engine).restarts
    resets = health(embedded_engine)["resets"]
    sock = socket.create_connection((embedded_engine.host, embedded_engine.port), timeout=RAW_TIMEOUT_S)
    try:
        misbehave(sock)
    finally:
        # Linger 0: close() sends RST instead of FIN, i.e. ECONNRESET on the server side.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    with connect(embedded_engine) as conn:
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
        assert conn.execute("SELECT pg_current_xact_id_if_assigned() IS NULL").fetchone() == (True,)
        assert conn.execute("SELECT to_regclass('public.emb_test_half_query')").fetchone() == (None,)
    assert node_pid(embedded_engine) == pid, "a client reset took Node down"
    assert embedded.status(embedded_engine).restarts == restarts
    assert health(embedded_engine)["resets"] > resets, "the server did not reset the session after the reset client"


# 5. psycopg prepares a query after prepare_threshold executions, under names (_pg3_0, ...) that every connection
# reuses: with a shared backend the second connection hits "prepared statement already exists".


def test_embedded_engine_prepared_statements_do_not_leak_across_connections(embedded_engine):
    query = "SELECT %s::int * 2, %s::text"
    with connect(embedded_engine, prepare_threshold=5) as conn_a:
        results_a = [conn_a.execute(query, [i, f"a{i}"]).fetchone() for i in range(10)]
        prepared_a = conn_a.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE starts_with(name, '_pg3_')"
        ).fetchone()
    assert results_a == [(2 * i, f"a{i}") for i in range(10)]
    assert prepared_a[0] >= 1, "psycopg did not prepare the query: the test proves nothing"

    with connect(embedded_engine, prepare_threshold=5) as conn_b:
        assert conn_b.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
        results_b = [conn_b.execute(query, [i, f"b{i}"]).fetchone() for i in range(10)]
        prepared_b = conn_b.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE starts_with(name, '_pg3_')"
        ).fetchone()
    assert results_b == [(2 * i, f"b{i}") for i in range(10)]
    assert prepared_b[0] >= 1


# 6. One backend, so one client at a time: a second client waits in the server's queue until the first leaves.


def test_embedded_engine_serves_one_client_at_a_time(embedded_engine):
    outcome: dict[str, Any] = {}
    b_connected = threading.Event()

    def client_b() -> None:
        try:
            with connect(embedded_engine) as conn:
                outcome["connected_at"] = time.monotonic()
                b_connected.set()
                outcome["temp_tables"] = conn.execute(
                    "SELECT count(*) FROM pg_class WHERE relname = 'emb_test_client_a_tmp'"
                ).fetchone()[0]
        except BaseException as exc:
            outcome["error"] = exc

    with connect(embedded_engine) as conn_a:
        conn_a.execute("CREATE TEMP TABLE emb_test_client_a_tmp (n int)")
        thread_b = threading.Thread(target=client_b, daemon=True)
        thread_b.start()
        deadline = time.monotonic() + 20
        while health(embedded_engine)["queued"] < 1:  # B reached the server and waits in its queue
            assert time.monotonic() < deadline, "client B never reached the engine's queue"
            assert not b_connected.is_set(), "client B got a connection while client A holds it"
            time.sleep(0.05)
        time.sleep(1.0)
        assert not b_connected.is_set(), "client B got a connection while client A holds it"
        assert conn_a.execute("SELECT count(*) FROM emb_test_client_a_tmp").fetchone() == (0,)  # A still served
        a_closing_at = time.monotonic()
    thread_b.join(timeout=CONNECT_TIMEOUT_S + 30)
    assert not thread_b.is_alive(), "client B is still waiting after client A left"
    assert "error" not in outcome, f"client B failed: {outcome.get('error')!r}"
    assert outcome["connected_at"] >= a_closing_at
    assert outcome["temp_tables"] == 0  # and B got a clean session, not A's


# 7. Node dies (WASM trap, OOM, kill -9): the supervisor restarts it and committed data is still there.


def test_embedded_engine_restarts_after_node_is_killed_and_keeps_committed_rows(embedded_engine, scratch_table):
    with connect(embedded_engine) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (n int NOT NULL, label text NOT NULL)").format(scratch_table))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (7, 'committed before the crash')").format(scratch_table))
    before = embedded.status(embedded_engine)
    assert before.running and before.node_pid is not None

    os.kill(before.node_pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while embedded.status(embedded_engine).node_pid == before.node_pid:
        assert time.monotonic() < deadline, "the supervisor did not start a new Node process"
        time.sleep(0.1)
    embedded.wait_until_ready(embedded_engine, timeout=120)

    after = embedded.status(embedded_engine)
    assert after.running
    assert after.supervisor_pid == before.supervisor_pid
    assert after.node_pid not in (None, before.node_pid)
    assert after.restarts == before.restarts + 1
    assert health(embedded_engine)["pid"] == after.node_pid
    with connect(embedded_engine) as conn:
        rows = conn.execute(sql.SQL("SELECT n, label FROM {}").format(scratch_table)).fetchall()
    assert rows == [(7, "committed before the crash")]


def test_embedded_engine_cancel_request_is_refused_at_once_while_another_client_is_served(embedded_engine):
    # PGlite cannot cancel a query; a CancelRequest must not wait in the queue for the busy slot.
    with connect(embedded_engine) as holder:
        holder.execute("SELECT 1")
        with socket.create_connection((embedded_engine.host, embedded_engine.port), timeout=5) as sock:
            started = time.monotonic()
            sock.sendall(struct.pack("!iiii", 16, 80877102, 1234, 5678))
            assert sock.recv(1) == b""  # closed by the server
            assert time.monotonic() - started < 2.0


def test_embedded_engine_sessions_start_with_notice_level_messages(embedded_engine):
    # PGlite starts at client_min_messages=debug3: a DEBUG notice per Parse/Bind would slow every client.
    with connect(embedded_engine) as conn:
        assert conn.execute("SHOW client_min_messages").fetchone() == ("notice",)
