"""docker/gunicorn.conf.py sizes its connection queue to the open-file limit it can get: a worker that runs out
of file descriptors fails accept() and dies, so the queue must fit the limit, and the limit is raised towards
the queue when the hard limit allows. Each case loads the file in a fresh process with its own limits."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
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


def load_conf(tmp: Path, soft: int, hard: int, **env: str) -> dict[str, int]:
    """The settings gunicorn would read, in a process started with these open-file limits."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")} | env
    environ["PROMETHEUS_MULTIPROC_DIR"] = str(tmp)  # else the file makes a temporary directory of its own
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(conf=str(CONF))],
        env=environ,
        preexec_fn=limit,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


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
