"""api.admission.ThreadQueue: requests waiting for a thread, and when the queue stands (the short ingest bound)."""

from __future__ import annotations

import random

from api.admission import RetryAfter, ThreadQueue

TARGET, INTERVAL = 0.1, 1.0


def test_waits_within_the_target_never_make_the_queue_stand():
    # A client keeping every thread busy without overloading them: always someone waiting, waits of tens of ms.
    q = ThreadQueue()
    for _ in range(3):
        q.queued()
    now = 0.0
    for _ in range(100):
        q.queued()
        now += 0.05
        assert q.taken(now) == 3
        assert not q.note_wait(now, 0.04, TARGET, INTERVAL)
    assert q.standing_for(now) == 0.0


def test_a_queue_stands_after_an_interval_without_a_wait_within_the_target_until_it_empties():
    q = ThreadQueue()
    q.last_within_target = 10.0
    for _ in range(5):
        q.queued()
    assert q.taken(10.5) == 4
    assert not q.note_wait(10.5, 0.3, TARGET, INTERVAL)  # a burst: not for long enough yet
    assert q.taken(11.2) == 3
    assert q.note_wait(11.2, 0.9, TARGET, INTERVAL)  # 1.2 s since a wait within the target
    assert q.standing_for(11.2) > 1.0
    assert q.standing_for(12.0) == 2.0  # stood since the last wait within the target, at 10.0
    # Held at the short bound, requests now get a thread within the target: it still stands (no swing back).
    assert q.taken(11.3) == 2
    assert q.note_wait(11.3, 0.09, TARGET, INTERVAL)
    assert q.taken(11.4) == 1
    assert q.note_wait(11.4, 0.03, TARGET, INTERVAL)
    assert q.taken(11.5) == 0  # empty: the overload is over
    assert not q.standing
    assert not q.note_wait(11.5, 0.02, TARGET, INTERVAL)


def test_a_standing_queue_stops_standing_when_a_request_waits_under_a_quarter_of_the_target():
    q = ThreadQueue()
    q.last_within_target = 0.0
    for _ in range(10):
        q.queued()
    assert q.note_wait(2.0, 0.5, TARGET, INTERVAL)
    assert q.note_wait(2.1, 0.03, TARGET, INTERVAL)  # within the target, not under a quarter of it
    assert not q.note_wait(2.2, 0.02, TARGET, INTERVAL)  # drained: the clients no longer overload the worker
    assert q.waiting == 10


def test_sheds_are_counted():
    q = ThreadQueue()
    q.record_shed(1.0)
    q.record_shed(2.0)
    assert (q.shed, q.last_shed) == (2, 2.0)


def _window(controller: RetryAfter, start: float, admitted: int, shed: int) -> float:
    """One judging window of requests; returns the time after it."""
    for i in range(admitted + shed):
        controller.note(start + i * 1e-3, shed=i < shed)
    end = start + RetryAfter.WINDOW_S
    controller.note(end, shed=False)  # closes the window
    return end + 1e-3


def test_retry_after_grows_while_a_worker_keeps_shedding_and_shrinks_back():
    controller = RetryAfter(5, 120)
    controller.window_start = 0.0
    assert controller.base == 5
    now = _window(controller, 0.0, admitted=50, shed=50)
    assert controller.base == 10
    for _ in range(5):
        now = _window(controller, now, admitted=50, shed=50)
    assert controller.base == 40  # a third of the longest: [40, 120] s
    rng_values = {controller.seconds() for _ in range(500)}
    assert min(rng_values) >= 40 and max(rng_values) <= 120 and len(rng_values) > 40
    now = _window(controller, now, admitted=95, shed=5)  # 5 %: between the thresholds, unchanged
    assert controller.base == 40
    for _ in range(10):
        now = _window(controller, now, admitted=100, shed=0)
    assert controller.base == 5  # never below the shortest


def test_retry_after_values_spread_over_base_to_three_times_base():
    random.seed(1)
    controller = RetryAfter(1, 3)
    values = [controller.seconds() for _ in range(200)]
    assert set(values) == {1, 2, 3}
