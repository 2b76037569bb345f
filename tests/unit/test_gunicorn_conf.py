"""docker/gunicorn.conf.py sizes its connection queue to the open-file limit it can get: a worker that runs out
of file descriptors fails accept() and dies, so the queue must fit the limit, and the limit is raised towards
the queue when the hard limit allows. Each case loads the file in a fresh process with its own limits."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

CONF = Path(__file__).resolve().parents[2] / "docker" / "gunicorn.conf.py"
# The config keeps this many descriptors for the pool, logs and metrics files (checked here, not imported).
RESERVED = 256

_PROBE = """
import json, resource, runpy
conf = runpy.run_path({conf!r})
print(json.dumps({{
    "worker_connections": conf["worker_connections"],
    "backlog": conf["backlog"],
    "soft": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
}}))
"""


def run_probe(probe: str, tmp: Path, preexec_fn: Callable[[], None] | None = None, **env: str) -> dict[str, int]:
    """Run `probe` (formatted with conf=the config's path) in a fresh process; the JSON it printed last."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")} | env
    environ["PROMETHEUS_MULTIPROC_DIR"] = str(tmp)  # else the file makes a temporary directory of its own
    out = subprocess.run(
        [sys.executable, "-c", probe.format(conf=str(CONF))],
        env=environ,
        preexec_fn=preexec_fn,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def load_conf(tmp: Path, soft: int, hard: int, **env: str) -> dict[str, int]:
    """The settings gunicorn would read, in a process started with these open-file limits."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return run_probe(_PROBE, tmp, limit, **env)


def test_gunicorn_conf_queue_fits_a_low_hard_limit(tmp_path: Path) -> None:
    got = load_conf(tmp_path, 1024, 1024)
    assert got["soft"] == 1024
    assert got["worker_connections"] == 1024 - RESERVED


def test_gunicorn_conf_raises_the_soft_limit_for_the_queue(tmp_path: Path) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 5000 + RESERVED:
        pytest.skip(f"hard open-file limit {hard} is below the default queue")
    got = load_conf(tmp_path, 1024, hard)
    assert got["worker_connections"] == 5000
    assert got["soft"] == 5000 + RESERVED
    assert got["backlog"] == 4096


def test_gunicorn_conf_queue_and_backlog_from_the_environment(tmp_path: Path) -> None:
    got = load_conf(tmp_path, 1024, 1024, FLEET_WORKER_CONNECTIONS="300", FLEET_BACKLOG="128")
    assert got["worker_connections"] == 300
    assert got["backlog"] == 128
    assert got["soft"] == 1024  # already enough: left alone


_DEFER_PROBE = """
import json, logging, runpy, socket, types
conf = runpy.run_path({conf!r})
sock = socket.create_server(("127.0.0.1", 0))
server = types.SimpleNamespace(LISTENERS=[types.SimpleNamespace(sock=sock)], log=logging.getLogger("probe"))
conf["when_ready"](server)
print(json.dumps({{"defer_accept": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT)}}))
"""


def test_gunicorn_conf_accepts_a_connection_once_its_request_arrived(tmp_path: Path) -> None:
    # A gthread thread given a connection without data blocks waiting for it: the kernel holds such connections.
    assert run_probe(_DEFER_PROBE, tmp_path)["defer_accept"] > 0
