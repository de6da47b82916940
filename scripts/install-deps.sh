#!/usr/bin/env bash
# Installs, from Debian packages, everything the demo and the tests use.
# Idempotent and quiet when everything is there already.
set -euo pipefail
packages=(nftables iptables ipset iproute2 conntrack tcpdump socat openssh-server openssh-client
          netcat-openbsd faketime procps e2fsprogs systemd systemd-container nmap)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo not found; install Rust (rustup) first" >&2
    exit 1
fi
