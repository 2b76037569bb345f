"""db.deadlines.Deadlines: a connection whose unit of work outlives its deadline has its socket shut under the
thread waiting on it; one disarmed in time is left alone. A socket pair stands in for a database connection."""

from __future__ import annotations

import socket
import threading
import time
import types

from db.deadlines import Deadlines, StatementBounds


def _connection_on(sock: socket.socket) -> types.SimpleNamespace:
    return types.SimpleNamespace(pgconn=types.SimpleNamespace(socket=sock.fileno()))


def _blocked_reader(sock: socket.socket, timeout: float) -> dict:
    """A thread blocked reading `sock`, as psycopg waits for an answer; records what it got and when."""
    result: dict = {}

    def read() -> None:
        sock.settimeout(timeout)
        started = time.monotonic()
        try:
            result["data"] = sock.recv(1)
        except TimeoutError:
            result["data"] = "timeout"
        result["after"] = time.monotonic() - started

    thread = threading.Thread(target=read)
    thread.start()
    result["thread"] = thread
    return result


def test_deadline_shuts_the_socket_under_the_waiting_thread() -> None:
    deadlines = Deadlines()
    ours, server = socket.socketpair()
    with ours, server:
        reader = _blocked_reader(ours, timeout=5.0)
        deadlines.arm(_connection_on(ours), 0.3)
        reader["thread"].join(5)
        assert reader["data"] == b""  # woken by the shutdown, not by the 5 s timeout
        assert 0.25 <= reader["after"] < 1.5, reader["after"]
        assert deadlines.abandoned == 1


def test_disarmed_connection_is_left_alone() -> None:
    deadlines = Deadlines()
    ours, server = socket.socketpair()
    with ours, server:
        token = deadlines.arm(_connection_on(ours), 0.2)
        deadlines.disarm(token)
        reader = _blocked_reader(ours, timeout=0.8)
        reader["thread"].join(5)
        assert reader["data"] == "timeout"
        assert deadlines.abandoned == 0
        server.sendall(b"x")  # still a working connection
        assert ours.recv(1) == b"x"


def test_earliest_deadline_first_whatever_the_order_armed() -> None:
    deadlines = Deadlines()
    late_ours, late_server = socket.socketpair()
    soon_ours, soon_server = socket.socketpair()
    with late_ours, late_server, soon_ours, soon_server:
        late = _blocked_reader(late_ours, timeout=5.0)
        soon = _blocked_reader(soon_ours, timeout=5.0)
        deadlines.arm(_connection_on(late_ours), 1.2)
        deadlines.arm(_connection_on(soon_ours), 0.2)
        soon["thread"].join(5)
        late["thread"].join(5)
        assert soon["after"] < 0.8 <= late["after"] < 2.5, (soon["after"], late["after"])


def test_statement_bounds_become_startup_options() -> None:
    assert StatementBounds(2000, 1000).startup_options() == "-c statement_timeout=2000 -c lock_timeout=1000"
