#!/usr/bin/env bash
# Sets up the TimescaleDB engines and runs the whole test suite against the three of them:
#   native        - this machine's PostgreSQL 15 + TimescaleDB 2.28.3 (Community), built from the vendored source
#   native-apache - the same build in a cluster started with timescaledb.license=apache (the Apache edition)
#   embedded      - PGlite + TimescaleDB Community, served by db/embedded/server.mjs
# Extra arguments go to pytest (e.g. `scripts/test.sh -k rollups`). Exits non-zero when a test fails and
# also when no test ran (pytest's exit code 5).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib.sh

as_root bash scripts/provision-native.sh
# The operator page's browser tests (tests/browser/) drive Debian's Chromium through Playwright: the browser
# comes from apt, never from a Playwright download.
if [ ! -x /usr/bin/chromium ]; then
  echo "test.sh: installing Chromium for the browser tests"
  apt_install chromium chromium-driver
fi
bash scripts/setup.sh

set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "test.sh: no test ran; that is a failure" >&2
  exit 1
fi
exit "$status"
