#!/usr/bin/env bash
# Every test of knock: unit, property, namespace (real nftables, real
# iptables+ipset), the real-ssh end-to-end test, clippy and rustfmt.
# Run as root on Debian. Installs what the tests need. Namespace tests FAIL,
# never skip, when they cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "scripts/test.sh: run as root (the namespace tests create network namespaces)" >&2
    exit 2
fi

scripts/install-deps.sh

export CARGO_TERM_COLOR=never
export KNOCK_TESTS_REQUIRE_ROOT=1

step() { printf '\n==> %s\n' "$*"; }

step "test vectors of docs/PROTOCOL.md, recomputed in Python (Debian's python3-cryptography)"
/usr/bin/python3 scripts/vectors.py docs/PROTOCOL.md

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "build the binaries the integration tests drive"
cargo build --workspace --bins

step "build the Debian packages (tests/tests/package.rs installs them in a container)"
debs=$(scripts/build-deb.sh | tail -n 2)
KNOCK_DEB_SERVER=$(sed -n 1p <<<"$debs")
KNOCK_DEB_CLIENT=$(sed -n 2p <<<"$debs")
export KNOCK_DEB_SERVER KNOCK_DEB_CLIENT

step "cargo test (unit, property, CLI, namespace, ssh end-to-end, package)"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
cargo test --workspace --no-fail-fast -- --test-threads="${KNOCK_TEST_THREADS:-4}" 2>&1 | tee "$results"

if [[ -x scripts/fuzz.sh && "${KNOCK_SKIP_FUZZ:-0}" != 1 ]]; then
    step "fuzz smoke run"
    scripts/fuzz.sh open_knock 20
    scripts/fuzz.sh parse_files 10
fi

if [[ -x scripts/check-unit.sh ]]; then
    step "systemd unit checks"
    scripts/check-unit.sh
fi

step "all tests passed"
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$results"
