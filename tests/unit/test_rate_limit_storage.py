"""The in-process rate-limit storage (api/rate_limit_storage.py): limits enforced as by limits' own MemoryStorage,
expired keys still swept, and no thread started per hit (what made the limiter the API's largest CPU cost)."""

from __future__ import annotations

import threading
import time

import pytest
from limits import parse
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

from api import rate_limit_storage
from api.rate_limit_storage import InlineExpiryMemoryStorage


def test_memory_uris_map_to_the_inline_expiry_storage_and_others_stay() -> None:
    assert rate_limit_storage.storage_uri("memory://") == "fleet-memory://"
    assert rate_limit_storage.storage_uri("redis://localhost:6379/0") == "redis://localhost:6379/0"
    assert isinstance(storage_from_string(rate_limit_storage.storage_uri("memory://")), InlineExpiryMemoryStorage)


@pytest.mark.parametrize("storage_class", [MemoryStorage, InlineExpiryMemoryStorage])
def test_fixed_window_limits_are_the_same(storage_class: type[MemoryStorage]) -> None:
    limiter = FixedWindowRateLimiter(storage_class())
    limit = parse("3/second")
    assert [limiter.hit(limit, "key") for _ in range(4)] == [True, True, True, False]
    assert limiter.hit(limit, "other")  # counted per key
    time.sleep(1.05)
    assert limiter.hit(limit, "key")  # a new window


def test_hits_start_no_thread_and_expired_keys_are_swept(monkeypatch: pytest.MonkeyPatch) -> None:
    storage = InlineExpiryMemoryStorage()
    limiter = FixedWindowRateLimiter(storage)
    time.sleep(0.05)  # the one timer the base class starts in __init__ has fired
    started: list[threading.Thread] = []
    original = threading.Thread.start

    def counting_start(self: threading.Thread) -> None:
        started.append(self)
        original(self)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    monkeypatch.setattr(rate_limit_storage, "SWEEP_EVERY_SECONDS", 0.2)
    limit = parse("100/second")
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # hits spread over > 10 ms, when MemoryStorage restarts its timer
        limiter.hit(limit, "old")
        time.sleep(0.005)
    assert started == []
    storage._next_sweep = 0.0  # due now
    time.sleep(1.05)  # the key "old" has expired
    limiter.hit(limit, "new")  # any hit sweeps when due
    assert not any("old" in key for key in storage.storage)
    assert started == []
