"""Start, supervise, health-check and stop the embedded engine (PGlite + TimescaleDB Community).

Process layout: `fleet engine start` spawns a detached supervisor (`python -m db.embedded.supervisor supervise`)
that runs `node db/embedded/server.mjs` and restarts it whenever it exits unexpectedly (a crashed WASM instance is
not trustworthy; PGlite reopens the data directory in 1-4 s and committed data survives). The supervisor
writes its state to `<engine dir>/engine.json`; `stop` signals the supervisor, which stops Node gracefully
(PGlite closes its files) and removes the state file.

Invariant: one supervisor per engine directory. `start` refuses to start a second one while the first is
alive, and a supervisor takes an exclusive lock on `<engine dir>/supervisor.lock` for its lifetime.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg

logger = logging.getLogger(__name__)

SERVER_SCRIPT = Path(__file__).resolve().parent / "server.mjs"
STATE_FILE = "engine.json"
LOG_FILE = "engine.log"
LOCK_FILE = "supervisor.lock"
DATA_SUBDIR = "pgdata"

#: Restarts allowed within RESTART_WINDOW_S before the supervisor gives up (a crash loop needs a human).
MAX_RESTARTS = 10
RESTART_WINDOW_S = 60.0
STOP_GRACE_S = 30.0
#: Seconds between two health probes of a running engine (and each probe's timeout); before its first answer.
HEALTH_PROBE_EVERY_S = 1.0
STARTUP_PROBE_EVERY_S = 0.1


class EngineError(RuntimeError):
    """The embedded engine could not be started, reached or stopped."""


@dataclass(frozen=True)
class EngineConfig:
    """Where the engine keeps its files and where it listens."""

    directory: Path
    host: str = "127.0.0.1"
    port: int = 5499
    health_port: int = 5500
    node: str = "node"
    #: Seconds the engine may go without answering its health check once it has answered: then it is killed and
    #: restarted (see _Supervisor._wait_child); 0: never.
    stall_seconds: float = 120.0

    @property
    def data_dir(self) -> Path:
        return self.directory / DATA_SUBDIR

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE

    @property
    def log_path(self) -> Path:
        return self.directory / LOG_FILE

    @property
    def database_url(self) -> str:
        return f"postgresql+psycopg://postgres:postgres@{self.host}:{self.port}/postgres?sslmode=disable"


@dataclass(frozen=True)
class EngineStatus:
    """What `fleet engine status` reports."""

    running: bool
    supervisor_pid: int | None = None
    node_pid: int | None = None
    restarts: int = 0
    stalls: int = 0  # restarts that were kills of a stalled engine
    database_url: str | None = None
    health: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pid_alive(pid: int) -> bool:
    """True if `pid` runs; a zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def read_state(cfg: EngineConfig) -> dict[str, Any] | None:
    """The supervisor's state file, or None when no live supervisor owns the directory."""
    try:
        state: dict[str, Any] = json.loads(cfg.state_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not _pid_alive(int(state.get("supervisor_pid", 0))):
        return None
    return state


def health(cfg: EngineConfig, timeout: float = 2.0) -> dict[str, Any] | None:
    """The Node server's own health document, or None if it does not answer."""
    url = f"http://{cfg.host}:{cfg.health_port}/"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            document: dict[str, Any] = json.loads(resp.read())
            return document
    except (OSError, urllib.error.URLError, json.JSONDecodeError):
        return None


def status(cfg: EngineConfig) -> EngineStatus:
    """Running state, pids, restart count and health of the engine in `cfg.directory`."""
    state = read_state(cfg)
    if state is None:
        return EngineStatus(running=False)
    return EngineStatus(
        running=True,
        supervisor_pid=state["supervisor_pid"],
        node_pid=state.get("node_pid"),
        restarts=state.get("restarts", 0),
        stalls=state.get("stalls", 0),
        database_url=cfg.database_url,
        health=health(cfg),
    )


def wait_until_ready(cfg: EngineConfig, timeout: float = 120.0) -> None:
    """Block until the engine answers SQL (it may be starting or restarting)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    dsn = cfg.database_url.replace("postgresql+psycopg://", "postgresql://")
    while time.monotonic() < deadline:
        if health(cfg, timeout=1.0) is not None:
            try:
                with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.Error as exc:
                last_error = exc
        time.sleep(0.25)
    raise EngineError(f"embedded engine not ready after {timeout:.0f}s (last error: {last_error}); see {cfg.log_path}")


def start(cfg: EngineConfig, timeout: float = 120.0) -> EngineStatus:
    """Start a supervised engine (or find the running one) and wait until it answers SQL."""
    if read_state(cfg) is None:
        _check_prerequisites(cfg)
        cfg.directory.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "db.embedded.supervisor", "supervise", "--detach",
            "--dir", str(cfg.directory), "--host", cfg.host,
            "--port", str(cfg.port), "--health-port", str(cfg.health_port), "--node", cfg.node,
            "--stall-seconds", str(cfg.stall_seconds),
        ]  # fmt: skip
        with cfg.log_path.open("ab") as log:
            subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, check=True, timeout=30)
        deadline = time.monotonic() + 10
        while read_state(cfg) is None:
            if time.monotonic() > deadline:
                raise EngineError(f"the supervisor did not start; see {cfg.log_path}")
            time.sleep(0.1)
    wait_until_ready(cfg, timeout)
    return status(cfg)


def stop(cfg: EngineConfig, timeout: float = STOP_GRACE_S + 10) -> bool:
    """Stop the supervisor and its engine; False if none was running."""
    state = read_state(cfg)
    if state is None:
        return False
    pid = int(state["supervisor_pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            raise EngineError(f"supervisor {pid} did not stop within {timeout:.0f}s")
        time.sleep(0.1)
    return True


def _check_prerequisites(cfg: EngineConfig) -> None:
    if shutil.which(cfg.node) is None:
        raise EngineError(f"Node.js not found ({cfg.node!r}); install Node 20+")
    if not (SERVER_SCRIPT.parent / "node_modules" / "@unni-craftsman" / "pglite").is_dir():
        raise EngineError(f"PGlite is not installed: run `npm ci --prefix {SERVER_SCRIPT.parent}`")


class _Supervisor:
    """Runs Node, restarts it when it dies, and stops it on SIGTERM/SIGINT."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.stopping = False
        self.child: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.stalls = 0
        self.recent_starts: list[float] = []

    def _write_state(self) -> None:
        state = {
            "supervisor_pid": os.getpid(),
            "node_pid": self.child.pid if self.child else None,
            "restarts": self.restarts,
            "stalls": self.stalls,
            "host": self.cfg.host,
            "port": self.cfg.port,
            "health_port": self.cfg.health_port,
        }
        tmp = self.cfg.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.cfg.state_path)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stopping = True
        if self.child and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def _spawn(self) -> None:
        self.child = subprocess.Popen(
            [
                self.cfg.node, str(SERVER_SCRIPT), "--data-dir", str(self.cfg.data_dir.resolve()),
                "--host", self.cfg.host, "--port", str(self.cfg.port),
                "--health-port", str(self.cfg.health_port),
            ],
            cwd=str(SERVER_SCRIPT.parent), stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self._write_state()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            while not self.stopping:
                now = time.monotonic()
                self.recent_starts = [t for t in self.recent_starts if now - t < RESTART_WINDOW_S]
                if len(self.recent_starts) >= MAX_RESTARTS:
                    logger.error("engine crashed %d times in %.0fs; giving up", MAX_RESTARTS, RESTART_WINDOW_S)
                    return 1
                self.recent_starts.append(now)
                self._spawn()
                assert self.child is not None
                code = self._wait_child()
                if self.stopping:
                    break
                self.restarts += 1
                logger.warning("engine exited with %s; restarting (restart #%d)", code, self.restarts)
                time.sleep(min(0.5 * len(self.recent_starts), 5.0))
            return 0
        finally:
            self._stop_child()
            self.cfg.state_path.unlink(missing_ok=True)

    def _wait_child(self) -> int:
        """Wait for Node to exit; kill it when it stalls.

        The embedded engine has no statement_timeout and no query cancel, and PGlite runs a statement on Node's
        only thread: a runaway statement (an analyst's cross join, a query without its WHERE) blocks every client
        until it ends, and the health server with them. Once the engine has answered its health check, a silence of
        `stall_seconds` kills it (SIGKILL: a blocked event loop handles no SIGTERM) and the loop restarts it, in
        2-4 s, with every committed transaction (PGlite's data survived kill -9 in trials); the runaway
        statement's transaction, and any open one, is rolled back. The API's own client-side bound
        (db/deadlines.py) has already answered the clients waiting on it. A statement that took the engine before
        the supervisor's first probe answered (within 0.1 s of the engine's start) is not caught."""
        assert self.child is not None
        answered_at: float | None = None
        while True:
            # Until its first answer, probed often: a start takes seconds (a data directory with a long WAL to
            # replay, minutes) and is never judged a stall, so the first answer must not be missed.
            every = HEALTH_PROBE_EVERY_S if answered_at is not None else STARTUP_PROBE_EVERY_S
            try:
                return self.child.wait(timeout=every)
            except subprocess.TimeoutExpired:
                pass
            if self.cfg.stall_seconds <= 0 or self.stopping:
                continue
            now = time.monotonic()
            if health(self.cfg, timeout=HEALTH_PROBE_EVERY_S) is not None:
                answered_at = time.monotonic()
            elif answered_at is not None and now - answered_at >= self.cfg.stall_seconds:
                logger.error(
                    "engine stalled: no health answer for %.0f s (a runaway statement?); killing it to restart",
                    now - answered_at,
                )
                self.stalls += 1
                self._write_state()
                self.child.kill()

    def _stop_child(self) -> None:
        if not self.child or self.child.poll() is not None:
            return
        self.child.send_signal(signal.SIGTERM)
        try:
            self.child.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            logger.error("engine did not stop within %.0fs; killing it", STOP_GRACE_S)
            self.child.kill()
            self.child.wait()


def supervise(cfg: EngineConfig) -> int:
    """Run the supervisor loop in this process (what `fleet engine start` spawns); returns an exit code."""
    cfg.directory.mkdir(parents=True, exist_ok=True)
    lock = (cfg.directory / LOCK_FILE).open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        logger.error("another supervisor owns %s", cfg.directory)
        return 1
    return _Supervisor(cfg).run()


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m db.embedded.supervisor")
    parser.add_argument("command", choices=["supervise"])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5499)
    parser.add_argument("--health-port", type=int, default=5500)
    parser.add_argument("--node", default="node")
    parser.add_argument("--stall-seconds", type=float, default=EngineConfig.stall_seconds)
    parser.add_argument("--detach", action="store_true", help="fork into a new session and return at once")
    args = parser.parse_args(argv)
    if args.detach and os.fork() > 0:
        # The caller waits for this parent only; the supervisor (the child) is re-parented and outlives the
        # shell or CLI that started it, in a session of its own so terminal signals do not reach it.
        return 0
    if args.detach:
        os.setsid()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s supervisor: %(message)s")
    cfg = EngineConfig(args.dir, args.host, args.port, args.health_port, args.node, args.stall_seconds)
    return supervise(cfg)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
