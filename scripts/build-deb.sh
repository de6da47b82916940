#!/usr/bin/env bash
# Builds the Debian package: release binaries, man pages and completions
# generated from the clap definitions (xtask), then cargo-deb.
# Prints the path of the .deb as its last line on stdout.
#   KNOCK_DEB_OUT=DIR   where to write the .deb (default: <target>/debian)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "build-deb: $*" >&2; }

if ! cargo deb --version >/dev/null 2>&1; then
    log "installing cargo-deb (cargo install --locked cargo-deb)"
    cargo install --locked --quiet cargo-deb >&2
fi

target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[[ -n $target_dir ]] || { log "cannot find cargo's target directory"; exit 1; }
dist="$target_dir/release/dist"
out="${KNOCK_DEB_OUT:-$target_dir/debian}"

log "cargo build --release (knock-server, knock-client, knock-keygen)"
cargo build --release --locked -p knock-server -p knock-client -p knock-keys --bins >&2

log "man pages and completions into $dist"
rm -rf "$dist"
cargo run --quiet --locked -p xtask -- dist "$dist" >&2
gzip -9nf "$dist"/*/man/*.1

log "cargo deb"
mkdir -p "$out"
deb=$(cargo deb -p knock-server --no-build --output "$out" | tail -n 1)
[[ -f $deb ]] || { log "cargo deb did not produce a package (got: $deb)"; exit 1; }
log "built $deb"
echo "$deb"
