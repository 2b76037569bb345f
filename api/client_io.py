"""Bounded time for a client's own part of a request: sending it, and taking the answer.

gthread hands a connection to a thread once its first bytes arrived (TCP_DEFER_ACCEPT, gunicorn's 5 s wait for
data); from then on the thread reads the request line, headers and body with blocking reads and no time bound,
and writes the response with a blocking sendall. A client that sends a few bytes and then one every few seconds
(slowloris), or asks for answers and never reads them, held a thread each: a handful of such connections per
worker took every thread of the API.

`api.admission.QueueTimedThreadWorker` hands a connection to a thread only once the request's head (request line
and headers) has arrived; until then it waits in the worker's poller, holding no thread, and is closed
FLEET_REQUEST_READ_TIMEOUT_S after its first byte (a slowloris client that sends a byte now and then).
`BoundedConn` (gthread's connection, as that worker makes them) then gives each request:
- FLEET_REQUEST_READ_TIMEOUT_S from the moment a thread takes it to receive the rest of the request, its body
  (a total, not per read: dribbling does not extend it). Past it the connection is closed; if the app was
  already reading the body, the request answers 408 first (`RequestReadTimeout`, api/problems.py);
- FLEET_RESPONSE_WRITE_TIMEOUT_S to take the response (Python's sendall bounds the whole call by the socket's
  timeout): a reader that stalls is disconnected (`QueueTimedThreadWorker.handle_request`).
"""

from __future__ import annotations

import socket
import time
from typing import Any

from gunicorn.http.errors import NoMoreData
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import TConn


class RequestReadTimeout(NoMoreData):
    """The client did not send its whole request within FLEET_REQUEST_READ_TIMEOUT_S.

    A NoMoreData to gunicorn (a client that went away: the connection is closed, logged at debug level)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"request not received within {seconds:g} s")
        self.seconds = seconds


class _DeadlineReader:
    """Stands in for the socket gunicorn's parser reads from: each recv may only wait until the request's deadline."""

    def __init__(self, sock: socket.socket, write_timeout: float) -> None:
        self.sock = sock
        self.write_timeout = write_timeout
        self.seconds = 0.0
        self.deadline = float("inf")

    def restart(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def recv(self, size: int) -> bytes:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise RequestReadTimeout(self.seconds)
        self.sock.settimeout(remaining)
        try:
            return self.sock.recv(size)
        except TimeoutError:
            raise RequestReadTimeout(self.seconds) from None
        finally:
            self.sock.settimeout(self.write_timeout)  # what the response's sendall is bounded by


class BoundedConn(TConn):  # type: ignore[misc]  # gunicorn is untyped
    """gthread's connection, each of whose requests gets the bounds above when a thread takes it.

    `fleet_io_bounds` (read, write seconds) is set on the instance by the worker."""

    fleet_io_bounds: tuple[float, float]
    #: The worker's non-blocking graceful close (QueueTimedThreadWorker.linger), set by the worker.
    fleet_linger: Any = None

    def init(self) -> None:
        """Start the bounds of the request a thread is about to read (gthread calls this for every request, after
        making the socket blocking; the parser is built on the first)."""
        super().init()
        unreader = getattr(self.parser, "unreader", None)
        if not isinstance(unreader, SocketUnreader):
            return  # HTTP/2 or another parser: left as gunicorn has it
        read_timeout, write_timeout = self.fleet_io_bounds
        if not isinstance(unreader.sock, _DeadlineReader):
            unreader.sock = _DeadlineReader(unreader.sock, write_timeout)
        unreader.sock.restart(read_timeout)
        self.sock.settimeout(write_timeout)

    def close(self, graceful: bool = False) -> None:
        # gthread closes gracefully in the worker's event loop (its main thread): it half-closes, then reads until
        # the peer closes, for up to 2 s. A client that keeps the connection open after its last answer (a slow
        # reader cut off, or on purpose) held the whole worker that long: no accept, no dispatch. The worker
        # lingers in its poller instead.
        if graceful and self.fleet_linger is not None:
            self.fleet_linger(self.sock)
        else:
            super().close(graceful)
