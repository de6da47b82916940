#!/usr/bin/env bash
# Runs one cargo-fuzz target of fuzz/ for a given time.
#
#   scripts/fuzz.sh TARGET SECONDS        e.g. scripts/fuzz.sh open_knock 600
#
# Targets: open_knock (the server's open path on arbitrary datagrams),
# open_sealed (the same on authentic knocks with arbitrary plaintexts),
# parse_files (server.toml, client profiles, the replay state file).
#
# The committed seeds in fuzz/corpus/TARGET are read, never written; what the
# fuzzer learns goes to fuzz/target/corpus/TARGET, and a crash to
# fuzz/artifacts/TARGET/ (reproduce with `cargo fuzz run TARGET FILE` in fuzz/).
# Exit status: 0 when the time ran out with no finding, non-zero otherwise.
#
# cargo-fuzz needs nightly rustc flags (-Zsanitizer). With a nightly toolchain
# installed it is used; otherwise the stable toolchain is run with
# RUSTC_BOOTSTRAP=1. KNOCK_FUZZ_TOOLCHAIN=stable|nightly forces one.
# KNOCK_FUZZ_SANITIZER (default address) is passed to `cargo fuzz -s`.
set -euo pipefail

usage() {
    echo "usage: scripts/fuzz.sh TARGET SECONDS (TARGET: open_knock, open_sealed, parse_files)" >&2
    exit 2
}
[ $# -eq 2 ] || usage
target=$1
seconds=$2
case "$seconds" in '' | *[!0-9]*) usage ;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
[ -f "$root/fuzz/fuzz_targets/$target.rs" ] || {
    echo "scripts/fuzz.sh: no fuzz target '$target' in fuzz/fuzz_targets/" >&2
    exit 2
}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "scripts/fuzz.sh: installing cargo-fuzz from crates.io" >&2
    cargo install cargo-fuzz --locked
fi

toolchain=${KNOCK_FUZZ_TOOLCHAIN:-}
if [ -z "$toolchain" ]; then
    if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
        toolchain=nightly
    else
        toolchain=stable
    fi
fi
if [ "$toolchain" = nightly ]; then
    cargo=(cargo +nightly)
else
    cargo=(cargo)
    export RUSTC_BOOTSTRAP=1
fi

cd "$root/fuzz"
work="target/corpus/$target"
mkdir -p "$work" "artifacts/$target"
echo "fuzzing $target for ${seconds}s ($toolchain toolchain)" >&2
exec "${cargo[@]}" fuzz run --sanitizer "${KNOCK_FUZZ_SANITIZER:-address}" "$target" \
    "$work" "corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1
