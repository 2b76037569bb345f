"""In-process rate-limit counters without a thread per 10 ms: limits' MemoryStorage, expiring inline.

Why: `limits.storage.MemoryStorage` (what `memory://` gives Flask-Limiter) starts a new `threading.Timer` thread
on every hit whose previous timer has fired, i.e. up to every 10 ms in every API process under load. Profiled
with py-spy on the gunicorn workers during the benchmark's steady fleet (tests/load/run_locust.py --profile,
20,000 devices, 333 requests/s): `Thread.start` from that timer was 15.8 % of the workers' Python CPU and the
rate limiter 28 % in all, the largest single component; two threads racing to restart the timer also raised
`KeyError` in `threading` ("Failed to rate limit. Swallowing error": the request then went unlimited).

`InlineExpiryMemoryStorage` is the same storage (same counters, same fixed windows: an expired key already
reads as 0 in `get`), but the sweep that drops expired keys runs inline, at most once a second, in the request
that finds it due, instead of in a fresh thread. `api/auth.py` uses it wherever the configuration says
`memory://`; redis and the other backends are unchanged.
"""

from __future__ import annotations

import threading
import time

from limits.storage import MemoryStorage

#: Seconds between two sweeps of expired keys (memory held by keys no request reads any more).
SWEEP_EVERY_SECONDS = 1.0
SCHEME = "fleet-memory"


class InlineExpiryMemoryStorage(MemoryStorage):
    """`memory://` with expired keys swept inline (at most every SWEEP_EVERY_SECONDS) instead of by a timer thread."""

    STORAGE_SCHEME = [SCHEME]  # noqa: RUF012 - the base class declares it a list; registers the scheme

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: str) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)  # starts the base class's one timer
        self._sweep_lock = threading.Lock()
        self._next_sweep = time.monotonic() + SWEEP_EVERY_SECONDS

    # The base class calls this (name-mangled) on every hit; upstream it (re)starts a Timer thread.
    def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep or not self._sweep_lock.acquire(blocking=False):
            return
        try:
            self._next_sweep = now + SWEEP_EVERY_SECONDS
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]  # limits' private, name-mangled
        finally:
            self._sweep_lock.release()


def storage_uri(configured: str) -> str:
    """The URI to give Flask-Limiter: `memory://...` becomes this module's scheme; anything else is unchanged."""
    return SCHEME + configured[len("memory") :] if configured.startswith("memory://") else configured
