#!/usr/bin/env bash
# Install Debian's PostgreSQL server binaries if they are missing, so the database tests run
# against a real server (the tests start their own throwaway server on 127.0.0.1; the
# package's default cluster is not used). Needs root and apt-get; otherwise it only says so.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null || command -v initdb > /dev/null; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get > /dev/null; then
  echo "ensure-postgres: PostgreSQL server binaries not found and cannot install them" \
       "(need root and apt-get); the database tests will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql > /dev/null
