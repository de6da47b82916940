#!/usr/bin/env bash
# Builds the two Debian packages: release binaries, man pages and completions
# generated from the clap definitions (xtask, one directory per program), then
# cargo-deb for each:
#   knock-server  knock-server, knock-keygen, the units, the configuration
#   knock-client  knock-client alone (depends on libc only)
# The last two lines on stdout are the paths of the knock-server .deb, then
# of the knock-client .deb:
#   debs=$(scripts/build-deb.sh | tail -n 2)
#   server=$(sed -n 1p <<<"$debs") client=$(sed -n 2p <<<"$debs")
#   KNOCK_DEB_OUT=DIR          where to write the .debs (default: <target>/debian)
#   KNOCK_DEB_VERSION=VERSION  the packages' version (cargo deb --deb-version;
#                              default: the crate's version, revision 1)
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
version=()
if [[ -n ${KNOCK_DEB_VERSION:-} ]]; then
    version=(--deb-version "$KNOCK_DEB_VERSION")
fi

log "cargo build --release (knock-server, knock-client, knock-keygen)"
cargo build --release --locked -p knock-server -p knock-client -p knock-keys --bins >&2

log "man pages and completions into $dist"
rm -rf "$dist"
cargo run --quiet --locked -p xtask -- dist "$dist" >&2
gzip -9nf "$dist"/*/man/*.1

mkdir -p "$out"
debs=()
for package in knock-server knock-client; do
    log "cargo deb -p $package"
    deb=$(cargo deb -p "$package" --no-build "${version[@]}" --output "$out" | tail -n 1)
    [[ -f $deb ]] || { log "cargo deb did not produce the $package package (got: $deb)"; exit 1; }
    log "built $deb"
    debs+=("$deb")
done
printf '%s\n' "${debs[@]}"
