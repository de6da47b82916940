#!/usr/bin/env bash
# Checks the systemd units in dist/ without a running systemd:
#   1. `systemd-analyze verify` of both units together is clean (no warnings
#      at all; knock-server.service wants knock-server-restore.service, so
#      they are verified side by side);
#   2. `systemd-analyze security --offline=true` exposure of each is at most
#      its ceiling: KNOCK_MAX_EXPOSURE (default 1.9) for the daemon,
#      KNOCK_MAX_EXPOSURE_RESTORE (default 1.8) for the boot unit: today's
#      figures, so any loosening fails;
#   3. the boot unit's relations: early (no default dependencies, before
#      network-pre.target, after the admin's ruleset), and pulled in and
#      waited for by the daemon's unit.
# Fails, never skips: a missing systemd-analyze is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

daemon=dist/knock-server.service
restore=dist/knock-server-restore.service
declare -A max=(
    [$daemon]="${KNOCK_MAX_EXPOSURE:-1.9}"
    [$restore]="${KNOCK_MAX_EXPOSURE_RESTORE:-1.8}"
)

fail() { echo "check-unit: FAIL: $*" >&2; exit 1; }

command -v systemd-analyze >/dev/null || fail "systemd-analyze not found (apt-get install systemd)"
for unit in "$daemon" "$restore"; do
    [[ -f $unit ]] || fail "$unit is missing"
done

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# verify needs ExecStart='s binary to exist: point it at a stand-in.
printf '#!/bin/sh\nexit 0\n' >"$scratch/knock-server"
chmod 755 "$scratch/knock-server"
for unit in "$daemon" "$restore"; do
    sed "s#/usr/bin/knock-server#$scratch/knock-server#g" "$unit" >"$scratch/$(basename "$unit")"
done

# Documentation=man:... is checked when the generated pages are at hand
# (scripts/build-deb.sh writes them to target/release/dist/PROGRAM/man).
dist_dir="${KNOCK_DIST_DIR:-${CARGO_TARGET_DIR:-target}/release/dist}"
man_opt=--man=no
if compgen -G "$dist_dir/*/man/*.1*" >/dev/null; then
    mkdir -p "$scratch/man/man1"
    cp "$dist_dir"/*/man/*.1* "$scratch/man/man1/"
    export MANPATH="$scratch/man"
    man_opt=--man=yes
fi

echo "check-unit: systemd-analyze verify $man_opt $daemon $restore"
if ! out=$(systemd-analyze verify "$man_opt" "$scratch/knock-server.service" \
    "$scratch/knock-server-restore.service" 2>&1); then
    printf '%s\n' "$out" >&2
    fail "systemd-analyze verify failed"
fi
if [[ -n $out ]]; then
    printf '%s\n' "$out" >&2
    fail "systemd-analyze verify printed warnings"
fi

for unit in "$daemon" "$restore"; do
    echo "check-unit: systemd-analyze security --offline=true $unit"
    report=$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1) || {
        printf '%s\n' "$report" >&2
        fail "systemd-analyze security failed for $unit"
    }
    exposure=$(printf '%s\n' "$report" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9][0-9]*\.[0-9]\).*/\1/p')
    [[ -n $exposure ]] || { printf '%s\n' "$report" >&2; fail "no overall exposure figure for $unit"; }
    if awk -v e="$exposure" -v m="${max[$unit]}" 'BEGIN { exit !(e > m) }'; then
        printf '%s\n' "$report" | grep '✗' >&2 || true
        fail "exposure of $unit is $exposure, above ${max[$unit]}"
    fi
    echo "check-unit: $unit: exposure $exposure (at most ${max[$unit]})"
done

# The relations that make the ports closed from boot. Read from the units as
# systemd parses them (`systemd-analyze dump` needs a running manager, so the
# files' own lines are checked, one setting per line as systemd reads them).
setting() { # unit key -> every value given for key, space-separated
    sed -n "s/^$2=//p" "$1" | tr '\n' ' '
}
has() { # unit key word...
    local unit=$1 key=$2 values
    shift 2
    values=" $(setting "$unit" "$key") "
    for word in "$@"; do
        [[ $values == *" $word "* ]] || fail "$unit: $key= lacks $word (has:$values)"
    done
}
has "$restore" DefaultDependencies no
has "$restore" Before network-pre.target
has "$restore" Wants network-pre.target
has "$restore" After nftables.service netfilter-persistent.service systemd-tmpfiles-setup.service
has "$restore" Type oneshot
has "$restore" RemainAfterExit yes
has "$daemon" Wants knock-server-restore.service
has "$daemon" After knock-server-restore.service time-sync.target network-online.target
has "$daemon" Restart always
has "$daemon" StartLimitIntervalSec 0
has "$daemon" TimeoutStartSec infinity
has "$daemon" ReadWritePaths -/run/xtables.lock
has "$restore" ReadWritePaths -/run/xtables.lock
# Not Requires=: a failed restore must not stop the daemon from starting.
[[ -z $(setting "$daemon" Requires) ]] || fail "$daemon: Requires= would keep the daemon down when restoring fails"
grep -q '^WantedBy=multi-user.target$' "$daemon" || fail "$daemon: not WantedBy=multi-user.target"
echo "check-unit: OK: verify clean, exposure within bounds, boot relations in place"
