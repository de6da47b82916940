#!/usr/bin/env bash
# Installs, from Debian packages, everything the demo and the tests use.
# Idempotent and quiet when everything is there already.
set -euo pipefail
packages=(nftables iptables ipset iproute2 conntrack tcpdump socat openssh-server openssh-client
          netcat-openbsd faketime procps e2fsprogs systemd systemd-container nmap
          coturn   # coturn: turnserver --stun-only, the STUN server of tests/tests/stun.rs
          python3 python3-cryptography)  # scripts/vectors.py, the independent check of the test vectors
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The tests run turnserver themselves, in namespaces; the service the
    # package may have started on this host is not wanted. Only a coturn
    # installed just now is stopped, never one that was here before.
    if [[ " ${missing[*]} " == *" coturn "* ]] && command -v systemctl >/dev/null; then
        systemctl disable --now coturn.service >/dev/null 2>&1 || true
    fi
fi
if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo not found; install Rust (rustup) first" >&2
    exit 1
fi
