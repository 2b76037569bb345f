"""A real gunicorn (`fleet serve`, docker/gunicorn.conf.py) on a free loopback port, for tests that need one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import port_for


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def http(
    url: str, body: object | None = None, *, key: str | None = None, headers: dict[str, str] | None = None
) -> Reply:
    """One request on a new connection; HTTP errors are replies, not exceptions."""
    data = None if body is None else json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        all_headers["X-API-Key"] = key
    req = urllib.request.Request(url, data=data, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


@dataclass(frozen=True)
class Server:
    url: str
    proc: subprocess.Popen
    log: Path


@contextmanager
def gunicorn(env: dict[str, str], log: Path, workers: int = 2, threads: int = 2) -> Iterator[Server]:
    """Start `fleet serve` with `env` added to ours, wait until /ready answers 200, stop it (SIGTERM) at the end.
    Its stdout and stderr go to `log`."""
    port = port_for.select_random()
    args = ["--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--threads", str(threads)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if http(url + "/ready").status == 200:
                        break
                except OSError:
                    pass
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "gunicorn did not become ready"
                time.sleep(0.2)
            yield Server(url, proc, log)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def parent_pid(pid: int) -> int:
    """The parent of a process, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])
