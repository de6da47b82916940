#!/usr/bin/env bash
# Checks dist/knock-server.service without a running systemd:
#   1. `systemd-analyze verify` is clean (no warnings at all);
#   2. `systemd-analyze security --offline=true` exposure is at most
#      KNOCK_MAX_EXPOSURE (default 1.9, today's figure: any loosening fails).
# Fails, never skips: a missing systemd-analyze is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

unit=dist/knock-server.service
max="${KNOCK_MAX_EXPOSURE:-1.9}"

fail() { echo "check-unit: FAIL: $*" >&2; exit 1; }

command -v systemd-analyze >/dev/null || fail "systemd-analyze not found (apt-get install systemd)"
[[ -f $unit ]] || fail "$unit is missing"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# verify needs ExecStart='s binary to exist: point it at a stand-in.
printf '#!/bin/sh\nexit 0\n' >"$scratch/knock-server"
chmod 755 "$scratch/knock-server"
sed "s#/usr/bin/knock-server#$scratch/knock-server#g" "$unit" >"$scratch/knock-server.service"

# Documentation=man:... is checked when the generated pages are at hand
# (scripts/build-deb.sh writes them to target/release/dist/man).
man_dir="${KNOCK_DIST_DIR:-${CARGO_TARGET_DIR:-target}/release/dist}/man"
man_opt=--man=no
if [[ -d $man_dir ]]; then
    mkdir -p "$scratch/man/man1"
    cp "$man_dir"/*.1* "$scratch/man/man1/"
    export MANPATH="$scratch/man"
    man_opt=--man=yes
fi

echo "check-unit: systemd-analyze verify $man_opt $unit"
if ! out=$(systemd-analyze verify "$man_opt" "$scratch/knock-server.service" 2>&1); then
    printf '%s\n' "$out" >&2
    fail "systemd-analyze verify failed"
fi
if [[ -n $out ]]; then
    printf '%s\n' "$out" >&2
    fail "systemd-analyze verify printed warnings"
fi

echo "check-unit: systemd-analyze security --offline=true $unit"
report=$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1) || {
    printf '%s\n' "$report" >&2
    fail "systemd-analyze security failed"
}
exposure=$(printf '%s\n' "$report" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9][0-9]*\.[0-9]\).*/\1/p')
[[ -n $exposure ]] || { printf '%s\n' "$report" >&2; fail "no overall exposure figure in the report"; }
if awk -v e="$exposure" -v m="$max" 'BEGIN { exit !(e > m) }'; then
    printf '%s\n' "$report" | grep '✗' >&2 || true
    fail "exposure $exposure is above $max"
fi
echo "check-unit: OK: verify clean, exposure $exposure (at most $max)"
