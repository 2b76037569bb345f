#!/usr/bin/env bash
# The benchmark command: provisions the native engine (PostgreSQL 15 + TimescaleDB, scripts/provision-native.sh),
# installs the project with its test and load extras into .venv (as scripts/setup.sh does, plus locust and
# py-spy), then runs every benchmark of tests/load/ as a subprocess (tests/load/report.py): ingest through the API
# vs direct SQL; a full fleet day on native Community (aggregates refreshed while the fleet ingests, compression)
# next to native Apache: status, 24 h / 7 d analytics and the fleet view; the locust steady fleet and burst; the
# embedded engine at a small scale; history growth over 3 full fleet days with compression on; the overload
# (2 x the machine's measured single-reading capacity, with dashboards; issue 14). Raw results go to
# var/bench/<UTC timestamp>/, the report to docs/BENCHMARKS.md. Loopback only; every cluster, server and load
# generator it starts is stopped (by PID) and removed, also on Ctrl-C. About 50 minutes on a quiet 2-core machine.
#   bash scripts/bench.sh            # the full run: writes docs/BENCHMARKS.md
#   bash scripts/bench.sh --quick    # small scale, a few minutes (development): var/bench/<ts>/BENCHMARKS.md
#   bash scripts/bench.sh --only bench_embedded,bench_growth    # some steps only
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib.sh
as_root bash scripts/provision-native.sh
if [ ! -x /usr/bin/wrk ]; then # the load generator that is not Python, beside locust
  echo "bench: installing wrk"
  apt_install wrk
fi
bash scripts/setup.sh

stamp=.venv/.fleet-load-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bench: installing the project with its test and load extras into .venv"
  .venv/bin/python -m pip install -q -e ".[test,load]"
  touch "$stamp"
fi

exec .venv/bin/python -m tests.load.report "$@"
