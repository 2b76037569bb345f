#!/usr/bin/env bash
# Installs TimescaleDB 2.19.3 (Apache edition) into this machine's PostgreSQL 15, built from Debian's
# `timescaledb` source package (only the newer Debian release carries it; its tsl/ tree is removed, so the
# build is Apache-only by construction). Idempotent: exits at once when the extension is already installed.
#
# The machine's own apt configuration is left untouched: the source is fetched with a private sources list
# whose mirror address is read from the machine's existing apt sources, so no registry host is written here.
set -euo pipefail

PG_MAJOR=15
TSDB_VERSION=2.19.3
SOURCE_SUITE=trixie
PG_CONFIG=/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

installed() {
  [ -x "$PG_CONFIG" ] &&
    [ -f "$("$PG_CONFIG" --sharedir)/extension/timescaledb--${TSDB_VERSION}.sql" ] &&
    [ -f "$("$PG_CONFIG" --pkglibdir)/timescaledb-${TSDB_VERSION}.so" ]
}

if installed; then
  echo "provision-native: TimescaleDB ${TSDB_VERSION} is already installed for PostgreSQL ${PG_MAJOR}"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "provision-native: must run as root (it installs packages and the extension)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
packages=(postgresql-server-dev-${PG_MAJOR} cmake build-essential dpkg-dev libssl-dev)
# Install the server only where it is missing: re-installing it could upgrade (and restart) a running one.
[ -x "/usr/lib/postgresql/${PG_MAJOR}/bin/postgres" ] || packages+=(postgresql-${PG_MAJOR})
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null

# The main Debian mirror as this machine's apt is configured (deb822 or one-line format).
mirror=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | tr ' ' '\n' | grep -v security | head -n1 || true)
if [ -z "$mirror" ]; then
  mirror=$(grep -hE '^deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    grep -v security | awk '{for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' || true)
fi
if [ -z "$mirror" ]; then
  echo "provision-native: no Debian mirror found in /etc/apt/sources.list*" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/lists/partial" "$work/archives/partial"
echo "deb-src [signed-by=${KEYRING}] ${mirror} ${SOURCE_SUITE} main" >"$work/sources.list"
apt_private=(-o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-"
  -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::archives=$work/archives" -o "APT::Get::List-Cleanup=0" -o "APT::Sandbox::User=root")
apt-get "${apt_private[@]}" update -qq
(cd "$work" && apt-get "${apt_private[@]}" source -qq timescaledb >/dev/null)

src=$(find "$work" -maxdepth 1 -type d -name "timescaledb-${TSDB_VERSION}*" | head -n1)
if [ -z "$src" ]; then
  echo "provision-native: the source package timescaledb ${TSDB_VERSION} was not unpacked" >&2
  exit 1
fi
(
  cd "$src"
  ./bootstrap -DAPACHE_ONLY=1 -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF \
    -DSEND_TELEMETRY_DEFAULT=OFF -DUSE_TELEMETRY=OFF -DPG_CONFIG="$PG_CONFIG" >/dev/null
  make -C build -j"$(nproc)" install >/dev/null
)

installed || { echo "provision-native: build finished but the extension files are missing" >&2; exit 1; }
echo "provision-native: installed TimescaleDB ${TSDB_VERSION} (Apache edition) for PostgreSQL ${PG_MAJOR}"
