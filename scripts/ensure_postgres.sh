#!/usr/bin/env bash
# Makes sure a PostgreSQL server (initdb, pg_ctl, postgres) and the pg_trgm extension (Prefect's
# server needs it; Debian's postgresql-contrib, part of postgresql >= 15) are installed: the
# scale-out tests (tests/scaleout, via tasks/servers.py) start a throwaway cluster on 127.0.0.1 as
# the unprivileged user mixq-pg (PostgreSQL refuses to run as root; created when missing).
# Does nothing when present; otherwise runs `apt-get update` once and installs Debian's postgresql (needs root, as in CI; no stdin).
# Prints the directory of the server binaries.
set -euo pipefail
find_bin() {
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
      local share
      share="$("$d/pg_config" --sharedir 2>/dev/null || echo "/usr/share/postgresql/$(basename "$(dirname "$d")")")"
      if [ -f "$share/extension/pg_trgm.control" ]; then echo "$d"; return 0; fi
    fi
  done
  return 1
}
if bin="$(find_bin)"; then echo "ensure_postgres: $bin"; exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "ensure_postgres: PostgreSQL server missing; run: sudo apt-get install -y postgresql" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -q --no-install-recommends postgresql postgresql-contrib </dev/null
bin="$(find_bin)"
echo "ensure_postgres: $bin"
