"""Shared helpers of the load and scale benchmarks (run_locust, bench_embedded, bench_growth, report).

- `log`: progress lines with the seconds since the start of the run;
- `machine_info`, `summarize`/`percentile`: what every report states, the same way;
- `CpuWatch` and `LoadSampler`: how busy the shared machine was, and how much of that was not us (the
  machines are shared: a figure without its noise is not worth much);
- `gunicorn_server` and `stop_process`: a `fleet serve` on a free loopback port, stopped by PID (the master
  first, gracefully; then each worker it leaves behind), however the block exits.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import port_for

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_T0 = time.monotonic()


def log(message: str) -> None:
    """Progress line with the seconds since this process started."""
    print(f"[{time.monotonic() - _T0:7.1f} s] {message}", flush=True)


# --- statistics ----------------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending sequence; nan when empty."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """n, p50, p95, p99, max, mean of durations given in seconds, reported in ms."""
    ms = sorted(s * 1000.0 for s in seconds)
    return {
        "n": len(ms),
        "p50": percentile(ms, 50),
        "p95": percentile(ms, 95),
        "p99": percentile(ms, 99),
        "max": ms[-1] if ms else float("nan"),
        "mean": sum(ms) / len(ms) if ms else float("nan"),
    }


# --- the machine ---------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, memory, kernel, Python and the load average now."""
    model = ""
    with suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "loadavg": [round(v, 2) for v in os.getloadavg()],
    }


def _os_name() -> str:
    with suppress(OSError), open("/etc/os-release") as f:
        for line in f:
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return platform.system()


ProcTable = dict[int, tuple[int, float, float, str]]


def proc_table() -> ProcTable:
    """pid -> (ppid, CPU seconds of the process, CPU seconds of its reaped children, command name), from /proc."""
    table: ProcTable = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        close = raw.rfind(b")")
        fields = raw[close + 2 :].split()
        own = (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime stime
        reaped = (int(fields[13]) + int(fields[14])) / _CLK_TCK  # cutime cstime
        table[int(entry.name)] = (int(fields[1]), own, reaped, raw[raw.find(b"(") + 1 : close].decode(errors="replace"))
    return table


def descendants(table: ProcTable, roots: Sequence[int]) -> set[int]:
    """The roots (those alive) and every process below them."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: set[int] = set()
    todo = [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, []))
    return out


def machine_jiffies() -> list[float]:
    """The machine's CPU seconds so far (/proc/stat: user, nice, system, idle, iowait, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        return [int(v) / _CLK_TCK for v in f.readline().split()[1:9]]


class CpuWatch:
    """Machine CPU between `start()` and `stop()`, split into ours (this process tree and the extra `roots`,
    e.g. the cluster's postmaster) and everyone else's, in % of all cores."""

    def __init__(self, roots: Sequence[int] = ()) -> None:
        self.roots: list[int] = [os.getpid(), *roots]
        self._start: tuple[ProcTable, list[float]] | None = None

    def start(self) -> None:
        self._start = (proc_table(), machine_jiffies())

    def stop(self) -> dict[str, Any]:
        if self._start is None:
            raise RuntimeError("CpuWatch.stop() before start()")
        before, m0 = self._start
        after, m1 = proc_table(), machine_jiffies()
        delta = [b - a for a, b in zip(m0, m1, strict=True)]
        capacity = sum(delta) or 1.0
        busy = capacity - delta[3] - delta[4]
        ours = descendants(after, self.roots)
        others: dict[str, float] = {}
        mine = 0.0
        for pid, (_, own, reaped, name) in after.items():
            spent = own - (before[pid][1] if pid in before else 0.0)
            if pid in ours:
                # Our processes' exited children (loader processes, recycled workers) count as ours.
                mine += spent + reaped - (before[pid][2] if pid in before else 0.0)
            elif spent > 0:
                others[name] = others.get(name, 0.0) + spent
        top = sorted(others.items(), key=lambda kv: -kv[1])[:3]
        return {
            "seconds": round(capacity / max(1, len(os.sched_getaffinity(0))), 1),
            "busy_pct": round(100 * busy / capacity, 1),
            "ours_pct": round(100 * min(mine, busy) / capacity, 1),
            "others_pct": round(100 * max(0.0, busy - mine) / capacity, 1),
            "others_top": {name: round(100 * cpu / capacity, 1) for name, cpu in top if cpu > 0.005 * capacity},
        }


def cpu_line(cpu: Mapping[str, Any]) -> str:
    """One line for a CpuWatch result."""
    top = ", ".join(f"{k} {v:.0f} %" for k, v in cpu.get("others_top", {}).items()) or "-"
    return (
        f"machine busy {cpu['busy_pct']:.0f} % of all cores: this benchmark {cpu['ours_pct']:.0f} %,"
        f" other processes {cpu['others_pct']:.0f} % ({top})"
    )


class TreeCpu(threading.Thread):
    """CPU seconds used by named process trees (a process, its descendants and their reaped children), sampled
    every `interval` seconds until `stop()`: a tree that exits between samples keeps its last reading. `roots`
    may be added to while it runs (a process started later, e.g. the load generator)."""

    def __init__(self, roots: dict[str, int], interval: float = 1.0) -> None:
        super().__init__(name="tree-cpu", daemon=True)
        self.roots = roots
        self.interval = interval
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self._stop_event = threading.Event()
        self._sample()

    def _sample(self) -> None:
        table = proc_table()
        for name, root in list(self.roots.items()):
            pids = descendants(table, [root])
            if not pids:
                continue
            used = sum(table[p][1] + table[p][2] for p in pids)
            self.first.setdefault(name, used)
            self.last[name] = used

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self._sample()

    def stop(self) -> dict[str, float]:
        """CPU seconds per tree since it was first seen."""
        self._stop_event.set()
        self.join(timeout=self.interval + 5)
        self._sample()
        return {name: round(self.last[name] - self.first.get(name, 0.0), 2) for name in self.last}


class LoadSampler:
    """Samples the 1-minute load average every `interval` seconds in a daemon thread, until `stop()`."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loadavg-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.interval):
                return

    def start(self) -> LoadSampler:
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join(timeout=self.interval + 1)
        s = self.samples or [os.getloadavg()[0]]
        return {"min": round(min(s), 2), "mean": round(sum(s) / len(s), 2), "max": round(max(s), 2), "n": len(s)}


# --- processes -----------------------------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[Any], *, grace: float = 30.0, name: str = "process") -> None:
    """Stop `proc` and what it started, by PID: SIGTERM to it (graceful), SIGKILL after `grace` seconds,
    then SIGKILL to any descendant it left behind. Never raises."""
    try:
        if proc.poll() is not None:
            return
        below = descendants(proc_table(), [proc.pid]) - {proc.pid}
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log(f"{name} (PID {proc.pid}) did not stop within {grace:g} s: SIGKILL")
            proc.kill()
            proc.wait(timeout=10)
        for pid in below:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    except Exception as exc:  # clean-up must go on with the next process
        log(f"stopping {name} (PID {proc.pid}) failed: {exc!r}")


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a text file (for error messages)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Server:
    """A running `fleet serve`."""

    pid: int
    port: int
    log_path: Path
    workers: int
    threads: int
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_counts(self) -> dict[str, int]:
        """Worker boots and timeouts, tracebacks, 5xx and (of those) 503 access lines in the server's log so far."""
        text = self.log_path.read_text(errors="replace")
        return {
            "worker_boots": text.count("Booting worker"),
            "worker_timeouts": text.count("WORKER TIMEOUT"),
            "tracebacks": text.count("Traceback"),
            "status_5xx": sum(text.count(f'"status": {code}') for code in range(500, 505)),
            "status_503": text.count('"status": 503'),
        }

    def handler_latency(
        self, since: float, until: float, classify: Callable[[str, str], str | None]
    ) -> dict[str, dict[str, float]]:
        """p50/p95/p99/max (ms) of the app's own time per request (the access log's `duration_ms`: from the
        request read to the response written, without the time it waited for a thread) for access lines logged
        in [since, until) (epoch seconds), per class `classify(method, path)` (None: not counted)."""
        durations: dict[str, list[float]] = {}
        with self.log_path.open(errors="replace") as f:
            for line in f:
                if '"gunicorn.access"' not in line:
                    continue
                try:
                    entry = json.loads(line)
                    at = datetime.fromisoformat(entry["time"]).timestamp()
                except (ValueError, KeyError):
                    continue
                name = classify(entry.get("method", ""), entry.get("path", ""))
                if name is not None and since <= at < until:
                    durations.setdefault(name, []).append(float(entry["duration_ms"]))
        return {name: summarize([ms / 1000.0 for ms in values]) for name, values in durations.items()}


@contextmanager
def gunicorn_server(
    database_url: str,
    *,
    workers: int,
    threads: int,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 60.0,
) -> Iterator[Server]:
    """`fleet serve` (gunicorn with docker/gunicorn.conf.py) on a free loopback port, ready (GET /ready is 200)
    when yielded; stopped by PID afterwards. `env` adds or overrides variables (FLEET_RATE_LIMIT, ...)."""
    port = port_for.select_random()
    settings = {"DATABASE_URL": database_url, "FLEET_DB_POOL_SIZE": str(threads), **(env or {})}
    full_env = {**os.environ, **settings}
    for name in (
        "FLEET_WORKERS",
        "FLEET_THREADS",
        "FLEET_BIND",
        "FLEET_BACKLOG",
        "FLEET_WORKER_CONNECTIONS",
        "GUNICORN_CMD_ARGS",
        "PROMETHEUS_MULTIPROC_DIR",
    ):
        if name not in settings:
            full_env.pop(name, None)
    command = [sys.executable, "-m", "cli", "serve", "--bind", f"127.0.0.1:{port}"]
    command += ["--workers", str(workers), "--threads", str(threads)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        # Own session: a Ctrl-C in the terminal reaches only the benchmark, which stops the server itself.
        proc = subprocess.Popen(
            command, cwd=REPO_ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(
        proc.pid, port, log_path, workers, threads, {k: v for k, v in settings.items() if k != "DATABASE_URL"}
    )
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {proc.returncode}:\n{tail(log_path)}")
            with suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                try:
                    conn.request("GET", "/ready")
                    if conn.getresponse().status == 200:
                        break
                finally:
                    conn.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn not ready within {ready_timeout:g} s:\n{tail(log_path)}")
            time.sleep(0.2)
        log(f"gunicorn ready on 127.0.0.1:{port} (PID {proc.pid}, {workers} workers x {threads} threads)")
        yield server
    finally:
        stop_process(proc, name="gunicorn")


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT raise KeyboardInterrupt, so every `with`/`finally` clean-up runs (a shell starts
    background jobs with SIGINT ignored: Ctrl-C and `kill -INT` must still stop what was started)."""

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def run_benchmark(
    name: str,
    args: Any,
    run: Callable[[Any], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
    cleaned_up: str,
    passed: Callable[[dict[str, Any]], bool] = lambda report: True,
) -> int:
    """A benchmark's main: `run(args)` bounded by `args.timeout` seconds and stoppable by SIGINT/SIGTERM (its
    `with`/`finally` blocks clean up), then the rendered report on stdout and the JSON to `args.json` when given.
    Exit code 0 (1 when not `passed(report)`), 130 when interrupted, 1 past the timeout; `cleaned_up` says what
    the clean-up did."""

    def _timeout(signum: int, frame: object) -> None:
        raise TimeoutError(f"{name} exceeded --timeout")

    install_signal_handlers()
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(int(args.timeout))
    try:
        report = run(args)
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc}); {cleaned_up}")
        return 130
    except TimeoutError as exc:
        log(f"{exc}; {cleaned_up}")
        return 1
    finally:
        signal.alarm(0)
    print(render(report), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        log(f"results written to {args.json}")
    return 0 if passed(report) else 1
