#!/usr/bin/env bash
# Runs the platform on this machine: the embedded TimescaleDB engine (supervised), the schema, and the API
# under gunicorn on 127.0.0.1:8000. Ctrl-C stops the API and the engine; data stays in var/engine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export FLEET_DB_POOL_SIZE=${FLEET_DB_POOL_SIZE:-0} # the embedded engine serves one connection at a time
bind=${FLEET_BIND:-127.0.0.1:8000}
fleet=.venv/bin/fleet

$fleet engine start
api_pid=
stop_all() {
  trap - EXIT INT TERM
  if [ -n "$api_pid" ]; then kill "$api_pid" 2>/dev/null || true; wait "$api_pid" 2>/dev/null || true; fi
  $fleet engine stop >/dev/null || true
}
trap stop_all EXIT
trap 'exit 130' INT TERM
$fleet db upgrade
$fleet db current

cat <<TXT

Fleet telemetry platform is starting on http://$bind
  health:     http://$bind/health
  readiness:  http://$bind/ready
  OpenAPI:    http://$bind/openapi.json
  SQL:        psql 'postgresql://postgres@${FLEET_ENGINE_HOST:-127.0.0.1}:${FLEET_ENGINE_PORT:-5499}/postgres?sslmode=disable'
Press Ctrl-C to stop.

TXT
$fleet serve --bind "$bind" --workers 1 &
api_pid=$!
wait "$api_pid"
