#!/usr/bin/env bash
# Installs TimescaleDB 2.28.3 into this machine's PostgreSQL 15, built from the complete upstream source tarball
# (Community edition included: continuous aggregates, compression, policies). One build serves both editions: a
# server started with `-c timescaledb.license=apache` is the Apache edition. Idempotent: exits at once when this
# version is already installed.
#
# The tarball's location is a setting, FLEET_TIMESCALEDB_TARBALL. Its default is the vendored copy at
# ../shared/vendor/ beside this checkout; elsewhere, make the tarball from the upstream release tag 2.28.3 with
# `git archive --prefix=timescaledb-2.28.3/ 2.28.3 | gzip` and point the setting at it. Its sha256 is checked
# against FLEET_TIMESCALEDB_SHA256 (default: the pinned value below) before anything is built.
#
# Licensing: tsl/ (the Community code) is under the Timescale License, which allows building and running it for
# one's own platform; the rest is Apache-2.0.
set -euo pipefail

PG_MAJOR=15
TSDB_VERSION=2.28.3
TSDB_SHA256_PINNED=c80abd42995a317d9c046da6499a7a6e63c58e188124a2f20580f7c82fa4b801
PG_CONFIG=/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config
here=$(cd "$(dirname "$0")/.." && pwd)
TARBALL=${FLEET_TIMESCALEDB_TARBALL:-$here/../shared/vendor/timescaledb-${TSDB_VERSION}.tar.gz}
SHA256=${FLEET_TIMESCALEDB_SHA256:-$TSDB_SHA256_PINNED}

installed() {
  [ -x "$PG_CONFIG" ] &&
    [ -f "$("$PG_CONFIG" --sharedir)/extension/timescaledb--${TSDB_VERSION}.sql" ] &&
    [ -f "$("$PG_CONFIG" --pkglibdir)/timescaledb-${TSDB_VERSION}.so" ] &&
    [ -f "$("$PG_CONFIG" --pkglibdir)/timescaledb-tsl-${TSDB_VERSION}.so" ]
}

if installed; then
  echo "provision-native: TimescaleDB ${TSDB_VERSION} (Community and Apache editions) is already installed for PostgreSQL ${PG_MAJOR}"
  exit 0
fi

if [ ! -f "$TARBALL" ]; then
  echo "provision-native: no TimescaleDB source tarball at $TARBALL." >&2
  echo "  Set FLEET_TIMESCALEDB_TARBALL to the source of the upstream release tag ${TSDB_VERSION}" >&2
  echo "  (git archive --prefix=timescaledb-${TSDB_VERSION}/ ${TSDB_VERSION} | gzip > timescaledb-${TSDB_VERSION}.tar.gz)." >&2
  exit 1
fi
actual=$(sha256sum "$TARBALL" | awk '{print $1}')
if [ "$actual" != "$SHA256" ]; then
  echo "provision-native: $TARBALL has sha256 $actual, expected $SHA256 (FLEET_TIMESCALEDB_SHA256); not building it" >&2
  exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "provision-native: must run as root (it installs packages and the extension)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
packages=(postgresql-server-dev-${PG_MAJOR} cmake build-essential libssl-dev)
# Install the server only where it is missing: re-installing it could upgrade (and restart) a running one.
[ -x "/usr/lib/postgresql/${PG_MAJOR}/bin/postgres" ] || packages+=(postgresql-${PG_MAJOR})
missing=()
for p in "${packages[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$TARBALL" -C "$work"
src="$work/timescaledb-${TSDB_VERSION}"
[ -d "$src/tsl" ] || { echo "provision-native: $TARBALL has no tsl/ tree (an Apache-only source?)" >&2; exit 1; }
(
  cd "$src"
  ./bootstrap -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF \
    -DSEND_TELEMETRY_DEFAULT=OFF -DPG_CONFIG="$PG_CONFIG" >/dev/null
  make -C build -j"$(nproc)" install >/dev/null
)

installed || { echo "provision-native: build finished but the extension files are missing" >&2; exit 1; }
echo "provision-native: installed TimescaleDB ${TSDB_VERSION} (Community and Apache editions) for PostgreSQL ${PG_MAJOR}"
