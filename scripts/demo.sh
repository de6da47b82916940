#!/usr/bin/env bash
# The knock demo: a server, a client and an eavesdropper in three network
# namespaces on one hub. A real OpenSSH server sits on a protected port.
# The client uses PUBLIC-KEY mode (protocol v2): it makes its own identity,
# the server enrols only its public line, and the profile it gets back holds
# no secret (mode 0644). Run as root on a fresh Debian machine: installs what
# it needs, builds, narrates, and cleans up everything, even on Ctrl-C or
# failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [[ $(id -u) -ne 0 ]]; then
    echo "demo: run as root (it creates network namespaces)" >&2
    exit 2
fi

if [[ -t 1 ]]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD='' PLAIN=''; fi
say()  { printf '\n%s== %s%s\n' "$BOLD" "$*" "$PLAIN"; }
show() { printf '   $ %s\n' "$*"; }
ok()   { printf '   -> %s\n' "$*"; }

scripts/install-deps.sh
say "Building knock (release)"
cargo build --release --quiet --bins
BIN=$ROOT/target/release

P="kdemo$$"
SRV=${P}srv CLI=${P}cli EVE=${P}eve HUB=${P}hub
WORK=$(mktemp -d /tmp/knock-demo.XXXXXX)
PIDS=()
cleanup() {
    set +e
    disown -a 2>/dev/null
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for ns in $SRV $CLI $EVE $HUB; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "Three hosts on one wire: server 198.18.0.1, client 198.18.0.2, eavesdropper 198.18.0.66"
for ns in $SRV $CLI $EVE $HUB; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n $HUB link add br0 type bridge ageing_time 0   # a hub: everyone sees every frame
ip -n $HUB link set br0 up
i=0
for pair in "$SRV 198.18.0.1" "$CLI 198.18.0.2" "$EVE 198.18.0.66"; do
    set -- $pair
    ip link add "kd$i$$" netns "$1" type veth peer name "kh$i$$" netns $HUB
    ip -n "$1" addr add "$2/24" dev "kd$i$$"
    ip -n "$1" link set "kd$i$$" up
    ip -n $HUB link set "kh$i$$" master br0 up
    i=$((i + 1))
done

say "Server: knock-server protects tcp/2222, where a real OpenSSH server listens"
mkdir -p "$WORK/etc/clients.d" "$WORK/client-home"
cat > "$WORK/etc/server.toml" <<TOML
interface  = "any"
knock_port = 62201
firewall   = "nftables"
protected  = ["tcp/2222"]
open_for   = "10s"
state_dir  = "$WORK/state"
clients_dir = "$WORK/etc/clients.d"
TOML
say "Public-key mode: the client makes its identity, the server enrols its public line"
show "knock-client identity   # on the client: creates ~/.config/knock/identity (0600), prints its public line"
LINE=$(KNOCK_HOME="$WORK/client-home" "$BIN/knock-client" identity | grep '^knock-id')
ok "$LINE"
show "knock-keygen alice --host 198.18.0.1 --public-key \"\$LINE\" --config server.toml --out alice.knock"
"$BIN/knock-keygen" alice --host 198.18.0.1 --public-key "$LINE" --config "$WORK/etc/server.toml" --out "$WORK/alice.knock" 2>&1 | sed 's/^/   /'
chmod 0644 "$WORK/alice.knock"
show "ls -l alice.knock; cat alice.knock   # public data only: it may be mailed or published"
ls -l "$WORK/alice.knock" | awk '{ print "   " $1 " alice.knock" }'
sed 's/^/     /' "$WORK/alice.knock"

ssh-keygen -q -t ed25519 -N '' -f "$WORK/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/user_key"
cp "$WORK/user_key.pub" "$WORK/authorized_keys"
mkdir -p /run/sshd
cat > "$WORK/sshd_config" <<SSHD
Port 2222
HostKey $WORK/host_key
AuthorizedKeysFile $WORK/authorized_keys
PidFile none
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
LogLevel ERROR
SSHD
ip netns exec $SRV /usr/sbin/sshd -D -e -f "$WORK/sshd_config" 2>/dev/null &
PIDS+=($!)
ip netns exec $SRV "$BIN/knock-server" run --config "$WORK/etc/server.toml" 2> "$WORK/server.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q ready "$WORK/server.log" && break; sleep 0.1; done
grep -q ready "$WORK/server.log" || { cat "$WORK/server.log"; echo "demo: server did not start" >&2; exit 1; }
sed 's/^/   [server] /' "$WORK/server.log"

probe() { # ns -> "open" or "closed"
    if ip netns exec "$1" nc -z -w 1 198.18.0.1 2222 2>/dev/null; then echo open; else echo "closed (connection refused, like any port nothing listens on)"; fi
}

say "1. The port is invisible: a scan from the client and from the eavesdropper"
show "nc -z -w1 198.18.0.1 2222   # from the client";       ok "$(probe $CLI)"
show "nc -z -w1 198.18.0.1 2222   # from the eavesdropper"; ok "$(probe $EVE)"

say "2. The eavesdropper listens to the wire while the client logs in with ssh"
ip netns exec $EVE tcpdump -i any -n -U --immediate-mode -c 1 -w "$WORK/stolen.pcap" udp port 62201 2>/dev/null &
TCPDUMP=$!
PIDS+=($TCPDUMP)
sleep 1
HOME_SSH="$WORK/ssh_config"
cat > "$HOME_SSH" <<SSHCFG
Host relay
  HostName 198.18.0.1
  Port 2222
  User root
  IdentityFile $WORK/user_key
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
  ProxyCommand $BIN/knock-client connect %h %p
SSHCFG
show "knock-client import alice.knock"
KNOCK_HOME="$WORK/client-home" ip netns exec $CLI "$BIN/knock-client" import "$WORK/alice.knock" 2>&1 | sed 's/^/   /'
show "cat ~/.ssh/config"; sed -n '/ProxyCommand/p' "$HOME_SSH" | sed 's/^/     /'
show "ssh relay 'echo logged in as \$(whoami), connection \$SSH_CONNECTION'"
KNOCK_HOME="$WORK/client-home" ip netns exec $CLI ssh -F "$HOME_SSH" relay \
    'echo logged in as $(whoami), connection $SSH_CONNECTION' < /dev/null 2>&1 | sed 's/^/   -> /'
grep granted "$WORK/server.log" | tail -n 1 | sed 's/^/   [server] /'
show "knock-server status   # on the server: the grant lives in the kernel"
ip netns exec $SRV "$BIN/knock-server" status --config "$WORK/etc/server.toml" | sed 's/^/   /'
wait $TCPDUMP 2>/dev/null || true

say "3. The eavesdropper replays the knock it captured, from its own address"
HEX=$(tcpdump -r "$WORK/stolen.pcap" -n -x 2>/dev/null | awk '/0x[0-9a-f]+:/ { for (i = 2; i <= NF; i++) printf "%s", $i }')
PAYLOAD=${HEX:56}   # skip the 20-byte IPv4 and 8-byte UDP headers
ok "captured one knock: $(( ${#PAYLOAD} / 2 )) bytes that look like noise: ${PAYLOAD:0:32}..."
show "replay it to udp/62201, then scan again"
printf "$(sed 's/../\\x&/g' <<< "$PAYLOAD")" | ip netns exec $EVE socat -u STDIN UDP4-SENDTO:198.18.0.1:62201
sleep 0.5
ok "$(probe $EVE)"
grep -E "refused|replay" "$WORK/server.log" | tail -n 1 | sed 's/^/   [server] /' || true

say "4. The window closes after 10 s; an ssh session opened inside it stays up"
coproc SSH { KNOCK_HOME="$WORK/client-home" ip netns exec $CLI ssh -F "$HOME_SSH" relay \
    'while read line; do echo "server says: got $line"; done' 2>/dev/null; }
PIDS+=($SSH_PID)
echo "before the window closes" >&"${SSH[1]}"
read -r -t 10 reply <&"${SSH[0]}" && ok "$reply"
show "waiting for the window to close..."
for _ in $(seq 30); do
    [[ $(probe $CLI) == open ]] || break
    sleep 1
done
show "nc -z -w1 198.18.0.1 2222   # from the client, a new connection"; ok "$(probe $CLI)"
echo "after the window closed" >&"${SSH[1]}"
read -r -t 10 reply <&"${SSH[0]}" && ok "$reply (the established session is still up)"
exec {SSH[1]}>&-

say "Done (public-key mode: the server holds only alice's public key; a stolen server.toml, clients.d or server.key does not let anyone knock as her). Cleaning up the namespaces."
