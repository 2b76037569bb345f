"""A stand-in for `jobs.alerts.scan_alerts` in the scheduler tests: it records every call (pid, start, end) in
the file named by FLEET_TEST_ALERTS_LOG, sleeps FLEET_TEST_ALERTS_SLEEP seconds (to make two schedulers
overlap), raises when FLEET_TEST_ALERTS_FAIL is set, and with FLEET_TEST_ALERTS_GATE=PATH creates PATH.entered
and then waits until the test creates PATH.open (to hold a run in progress for as long as a test needs).

Registered by replacing `sys.modules["jobs.alerts"]` after `cli` is imported: the scheduler imports the
module when the alerts job runs, so it finds this one. `SUBPROCESS_MAIN` does that in a `python -c` process.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

SUBPROCESS_MAIN = (
    "import sys; from cli import main; from tests.integration import alerts_stand_in;"
    " sys.modules['jobs.alerts'] = alerts_stand_in; main()"
)


@dataclass(frozen=True)
class StandInStats:
    """What a real scan would return, reduced to what the tests check."""

    pid: int
    started: float
    finished: float


def scan_alerts(engine: Any, settings: Any) -> StandInStats:
    """Record the call; sleep; fail on request."""
    started = time.time()
    gate = os.environ.get("FLEET_TEST_ALERTS_GATE")
    if gate:
        open(f"{gate}.entered", "w").close()
        deadline = time.monotonic() + 120
        while not os.path.exists(f"{gate}.open") and time.monotonic() < deadline:
            time.sleep(0.05)
    time.sleep(float(os.environ.get("FLEET_TEST_ALERTS_SLEEP", "0")))
    if os.environ.get("FLEET_TEST_ALERTS_FAIL"):
        raise RuntimeError("stand-in alert scan failed on purpose")
    finished = time.time()
    line = json.dumps({"pid": os.getpid(), "started": started, "finished": finished}) + "\n"
    # One short O_APPEND write per call: lines from concurrent processes never interleave.
    fd = os.open(os.environ["FLEET_TEST_ALERTS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return StandInStats(pid=os.getpid(), started=started, finished=finished)


def calls(path: os.PathLike[str] | str) -> list[dict[str, float]]:
    """The recorded calls, oldest first."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return sorted((json.loads(line) for line in f if line.strip()), key=lambda c: c["started"])
