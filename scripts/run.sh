#!/usr/bin/env bash
# Runs the platform on this machine with a demo fleet: the embedded TimescaleDB engine (supervised), the
# schema, the API under gunicorn on 127.0.0.1:8000 (FLEET_BIND), a demo fleet of 20 meters and 20 vehicles
# (`fleet demo seed`: mappings and API keys) and the device simulator (`fleet simulate`) posting their
# readings through the API every 5 s, so data arrives within seconds, and the scheduler (`fleet jobs run`:
# policies, checkpoints, alerts). It prints the URLs and keys to try.
# Ctrl-C, SIGINT or SIGTERM (also when started in the background) stops the simulator, the API and the engine;
# data stays in var/engine (FLEET_ENGINE_DIR),
# this run's API log is var/log/api.log. Re-running is safe: the demo's mappings are kept, its keys rotated.
set -euo pipefail
# Started in the background (`run.sh &`), a non-interactive shell begins with SIGINT ignored, and bash cannot trap
# a signal that was ignored on entry: run this script again once, with SIGINT back to its default, so that
# Ctrl-C and `kill -INT` stop everything cleanly however it was started.
if [ -z "${FLEET_RUN_SIGINT_RESTORED:-}" ] && (( 0x$(awk '/^SigIgn:/ {print $2}' /proc/$$/status) & 2 )); then
  export FLEET_RUN_SIGINT_RESTORED=1
  exec python3 -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp("bash", ["bash", *sys.argv[1:]])' "$0" "$@"
fi
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export FLEET_DB_POOL_SIZE=${FLEET_DB_POOL_SIZE:-0} # the embedded engine serves one connection at a time
bind=${FLEET_BIND:-127.0.0.1:8000}
url="http://$bind"
fleet=.venv/bin/fleet
python=.venv/bin/python
# A modest demo load: the embedded engine serves one connection at a time (40 devices / 5 s = 8 requests/s).
demo_devices=20
demo_interval=5
mkdir -p var/log
api_log=var/log/api.log

api_pid=
sim_pid=
jobs_pid=
jobs_log=var/log/jobs.log
alive() { # alive PID: running and not a zombie waiting to be reaped
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}
stop_pid() { # stop_pid PID: SIGTERM; after 30 s SIGKILL to its process group (setsid made it); reap it
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}
stop_all() {
  trap - EXIT INT TERM HUP
  echo
  echo "run.sh: stopping"
  stop_pid "$sim_pid" # first: it sends what it has queued while the API is still up
  stop_pid "$jobs_pid"
  stop_pid "$api_pid"
  $fleet engine stop >/dev/null || true
  echo "run.sh: stopped (data kept in ${FLEET_ENGINE_DIR:-var/engine})"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

$fleet engine start
$fleet db upgrade
$fleet db current

# The demo fleet: vehicle i charges on meter i; three API keys, printed once (only their hashes are stored).
seed_json=$($fleet demo seed --meters "$demo_devices" --vehicles "$demo_devices" --url "$url" --json)
{ read -r device_key && read -r read_key && read -r admin_key && read -r vehicle && read -r meter; } < <(
  "$python" -c 'import json, sys
d = json.load(sys.stdin)
print(*(d["keys"][r]["key"] for r in ("device", "read", "admin")), d["first_vehicle_id"], d["first_meter_id"], sep="\n")' \
    <<<"$seed_json"
)
echo "demo fleet: $demo_devices meters, $demo_devices vehicles ($vehicle charges on $meter, and so on)"

echo "run.sh: starting the API on $url (log: $api_log)"
# setsid: the API and the simulator do not get the terminal's Ctrl-C themselves; stop_all stops them in order
# (the simulator first, so it can still send what it has queued).
setsid $fleet serve --bind "$bind" --workers 1 >"$api_log" 2>&1 &
api_pid=$!
for ((i = 0; ; i++)); do
  if ! alive "$api_pid"; then
    echo "run.sh: the API did not start; the end of $api_log:" >&2
    tail -n 30 "$api_log" >&2
    exit 1
  fi
  if "$python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$url/ready" 2>/dev/null; then
    break
  fi
  if [ "$i" -ge 240 ]; then
    echo "run.sh: the API is not ready after 2 minutes; see $api_log" >&2
    exit 1
  fi
  sleep 0.5
done

# The scheduler: the embedded engine has no background workers, so `fleet jobs run` runs the Community
# policies (refresh, compression, retention) on their schedules, a periodic CHECKPOINT, and the alert scans.
setsid $fleet jobs run >"$jobs_log" 2>&1 &
jobs_pid=$!

# The devices: readings through the API until Ctrl-C (the key goes through stdin, not the process list).
setsid $fleet simulate --url "$url" --key - --meters "$demo_devices" --vehicles "$demo_devices" \
  --interval "$demo_interval" --duration 0 --progress 10 <<<"$device_key" &
sim_pid=$!

cat <<TXT

Fleet telemetry platform is running on $url with a simulated demo fleet
  operator page: $url/ui/       (sign in with the read key below)
  API docs:    $url/docs            (OpenAPI: $url/openapi.json)
  health:      $url/health          readiness: $url/ready          metrics: $url/metrics
  with the read key below in an X-API-Key header:
  performance: $url/v1/analytics/performance/$vehicle
  status:      $url/v1/vehicles/$vehicle      $url/v1/meters/$meter
  fleet:       $url/v1/analytics/fleet
  SQL:         psql 'postgresql://postgres@${FLEET_ENGINE_HOST:-127.0.0.1}:${FLEET_ENGINE_PORT:-5499}/postgres?sslmode=disable'

API keys of this run (shown once; the next run replaces them):
  read:   $read_key
  admin:  $admin_key
  device: $device_key   (the simulator's)

Try:
  curl -H 'X-API-Key: $read_key' $url/v1/analytics/performance/$vehicle
  curl -H 'X-API-Key: $read_key' '$url/v1/vehicles?isCharging=true&page_size=5'
  curl -H 'X-API-Key: $read_key' $url/v1/analytics/fleet
  curl -H 'X-API-Key: $device_key' -H 'Content-Type: application/json' $url/v1/telemetry/ingest \\
    -d '{"type":"METER","payload":{"meterId":"$meter","kwhConsumedAc":0.42,"voltage":231.5,"timestamp":"'"\$(date -u +%FT%TZ)"'"}}'
  (payload fields: README, "Send a reading yourself")

The simulator prints its progress every 10 s; the API logs to $api_log, the scheduler to $jobs_log.
Press Ctrl-C to stop (or send SIGINT or SIGTERM to PID $$).

TXT
wait "$api_pid"
