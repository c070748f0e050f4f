#!/usr/bin/env bash
# Installs, with apt-get, what the tests need and this machine lacks: redis-server, PostgreSQL's
# server binaries (initdb, postgres), promtool (alert rule tests) and systemd-analyze (deploy unit
# checks) and chromium (the status page's headless browser test). Used by ops/test.sh and
# ops/flake-check.sh.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# A font too: without one, screenshots show boxes.
command -v chromium >/dev/null 2>&1 || missing+=(chromium fonts-dejavu-core)
# initdb is not on PATH in Debian's package: look where it installs the server.
{ command -v initdb || ls /usr/lib/postgresql/*/bin/initdb; } >/dev/null 2>&1 || missing+=(postgresql)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "ops/install-test-tools.sh: installing ${missing[*]} (the tests use them)" >&2
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts the packaged services on install; the tests start their own.
    $sudo systemctl disable --now prometheus redis-server postgresql >/dev/null 2>&1 || true
fi

