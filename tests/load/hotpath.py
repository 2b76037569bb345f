"""Where the API's CPU goes under load: py-spy on the gunicorn workers, summarised for the benchmark report.

`record(pids, seconds, out_dir)` runs `py-spy record --gil --nonblocking --format raw` on each worker for
`seconds` (in the background: `start()` returns at once, `finish()` waits and returns the summary). --gil
samples only the thread holding the GIL, so the shares are of the Python CPU time of the workers; waits on
the database or the network, with the GIL released, are not in them (the database's own CPU is measured
elsewhere). --nonblocking reads the workers' memory without pausing them, so the load is not disturbed.

The summary attributes each sample to the code that was running: walking up from the innermost frame, the first
frame in the application (api/, db/, jobs/) or in a third-party package decides, so time in the standard library
(json, logging, threading, selectors...) is charged to whoever called it. It lists the share per component
(gunicorn, Flask/Werkzeug, flask-smorest + marshmallow, flask-limiter, prometheus_client, SQLAlchemy, psycopg,
the application...) and the application functions with the largest inclusive share.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.load.benchlib import log, stop_process

#: First path component of a frame's file -> component shown in the report.
COMPONENTS = {
    "gunicorn": "gunicorn (HTTP parsing, connections, thread pool)",
    "flask": "Flask + Werkzeug (routing, request/response)",
    "werkzeug": "Flask + Werkzeug (routing, request/response)",
    "flask_smorest": "flask-smorest + marshmallow (schemas)",
    "marshmallow": "flask-smorest + marshmallow (schemas)",
    "apispec": "flask-smorest + marshmallow (schemas)",
    "webargs": "flask-smorest + marshmallow (schemas)",
    "flask_limiter": "flask-limiter + limits (rate limiting)",
    "limits": "flask-limiter + limits (rate limiting)",
    "prometheus_client": "prometheus_client (metrics)",
    "pythonjsonlogger": "logging (JSON lines)",
    "sqlalchemy": "SQLAlchemy (engine, pool, statements)",
    "psycopg": "psycopg (driver: encoding, protocol)",
    "psycopg_binary": "psycopg (driver: encoding, protocol)",
    "api": "application (api/, db/)",
    "db": "application (api/, db/)",
    "jobs": "application (api/, db/)",
}
_STDLIB_CALLERS = {"logging": "logging (JSON lines)"}
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::\d+)?\)$")


def _file_of(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame)
    return (m.group("func"), m.group("file")) if m else (frame, "")


def summarize_raw(paths: list[Path], top: int = 12) -> dict[str, Any]:
    """Shares (% of samples) per component, the busiest leaf functions, and application functions (inclusive)."""
    components: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    app_inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = stack.split(";")
            component = "other (standard library only)"
            for frame in reversed(frames):
                _, file = _file_of(frame)
                head = file.split("/", 1)[0]
                if head in COMPONENTS:
                    component = COMPONENTS[head]
                    break
                if head in _STDLIB_CALLERS and component.startswith("other"):
                    component = _STDLIB_CALLERS[head]
                    break
            components[component] += n
            func, file = _file_of(frames[-1])
            leaves[f"{func} ({file})"] += n
            seen = set()
            for frame in frames:
                func, file = _file_of(frame)
                if file.split("/", 1)[0] in ("api", "db") and (func, file) not in seen:
                    seen.add((func, file))
                    app_inclusive[f"{func} ({file})"] += n

    def pct(counter: collections.Counter[str], k: int) -> list[tuple[str, float]]:
        return [(name, round(100.0 * n / total, 1)) for name, n in counter.most_common(k)] if total else []

    return {
        "samples": total,
        "components": pct(components, 20),
        "leaves": pct(leaves, top),
        "application": pct(app_inclusive, top),
    }


class Recording:
    """py-spy on some processes, in the background."""

    def __init__(self, pids: list[int], seconds: float, out_dir: Path, label: str, rate: int = 100) -> None:
        self.paths = [out_dir / f"pyspy_{label}_{pid}.txt" for pid in pids]
        self.pids, self.seconds, self.rate, self.label = pids, seconds, rate, label
        self.procs: list[subprocess.Popen[bytes]] = []
        self.error: str | None = None

    def start(self) -> Recording:
        exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if exe is None:
            self.error = "py-spy is not installed (pip install '.[load]')"
            log(f"profile {self.label}: {self.error}")
            return self
        for pid, path in zip(self.pids, self.paths, strict=True):
            command = [exe, "record", "--pid", str(pid), "--duration", str(int(self.seconds)), "--rate", str(self.rate)]
            command += ["--gil", "--nonblocking", "--format", "raw", "--output", str(path)]
            self.procs.append(
                subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
            )
        log(f"profile {self.label}: py-spy on PIDs {self.pids} for {self.seconds:.0f} s")
        return self

    def finish(self) -> dict[str, Any]:
        """Wait for py-spy (bounded), stop it if needed, and summarise what it recorded."""
        errors = []
        for proc in self.procs:
            try:
                _, err = proc.communicate(timeout=self.seconds + 60)
                if proc.returncode:
                    errors.append(err.decode(errors="replace")[-300:])
            except subprocess.TimeoutExpired:
                stop_process(proc, grace=10, name="py-spy")
                errors.append("py-spy did not finish in time")
        summary = summarize_raw(self.paths)
        summary.update(
            seconds=self.seconds,
            pids=self.pids,
            files=[str(p) for p in self.paths],
            errors=[e for e in [self.error, *errors] if e],
        )
        return summary
