#!/usr/bin/env bash
# knock benchmark: knock → first TCP connect latency, honour share under UDP
# floods, server CPU per flood datagram and peak RSS, on the nftables backend;
# fwknopd side by side when it is installed. See docs/PERFORMANCE.md.
#
#   sudo bench/run.sh
#
# Everything happens in network namespaces this script creates (addresses
# 198.18.0.0/16 only) and removes on exit; the root namespace's interfaces and
# firewall are never touched. Every traffic generator is bounded in packets
# and in time.
#
# Knobs (environment):
#   RATE=100000        flood rate, datagrams per second
#   FLOOD_SECONDS=12   length of each flood
#   TRIALS=200         in-process knocks per phase (one source address each)
#   CLIENT_RUNS=40     knock-client runs for the end-to-end latency (1 s apart:
#                      one profile gets one grant a second after its first 10)
#   FWKNOP=auto        auto | 0 | 1: run fwknopd side by side (needs fwknop-server, fwknop-client)
#   FWKNOP_TRIALS=40   knocks per fwknop phase (each takes a fwknop process)
#   SKIP_BUILD=1       use the binaries already built
#   CARGO_TARGET_DIR   where cargo builds (default: ./target)
#   OUT=FILE           also write the Markdown results table to FILE
set -euo pipefail

RATE=${RATE:-100000}
FLOOD_SECONDS=${FLOOD_SECONDS:-12}
TRIALS=${TRIALS:-200}
CLIENT_RUNS=${CLIENT_RUNS:-40}
FWKNOP=${FWKNOP:-auto}
FWKNOP_TRIALS=${FWKNOP_TRIALS:-40}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release

die() { echo "bench/run.sh: $*" >&2; exit 1; }
log() { printf '\n== %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || die "needs root (it creates network namespaces): run sudo bench/run.sh"
for tool in ip nft ss; do command -v "$tool" >/dev/null || die "$tool is missing (apt-get install iproute2 nftables)"; done
[ "$TRIALS" -le 200 ] || die "TRIALS: at most 200 (one source address each per phase)"
[ "$CLIENT_RUNS" -le 200 ] || die "CLIENT_RUNS: at most 200"
[ "$FLOOD_SECONDS" -ge 5 ] && [ "$FLOOD_SECONDS" -le 120 ] || die "FLOOD_SECONDS: use 5..120"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building release binaries into $TARGET"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release --workspace --bins)
fi
for b in knock-server knock-client knock-keygen knock-flood knock-probe knock-sink knock-fleet; do
    [ -x "$BIN/$b" ] || die "$BIN/$b is missing: build with cargo build --release --workspace --bins"
done

# ---------------------------------------------------------------- the lab --
# shellcheck source=bench/lab.sh
. "$ROOT/bench/lab.sh"
lab_begin kb bench        # P: the prefix of namespaces and links; WORK

# lab NAME: server, client, attacker namespaces; the client and the attacker
# each have their own link to the server, as in tests/src/lib.rs Lab::standard.
# Client source addresses for the trials: 198.18.16.0/20, /32 each, routed
# back by the server through the client.
lab() {
    local n=$1
    netns "${P}${n}s"; netns "${P}${n}c"; netns "${P}${n}a"
    link "${P}${n}s" "${P}${n}sc" 198.18.0.1 "${P}${n}c" "${P}${n}cs" 198.18.0.2
    link "${P}${n}s" "${P}${n}sa" 198.18.1.1 "${P}${n}a" "${P}${n}as" 198.18.1.66
    ip -n "${P}${n}c" route add default via 198.18.0.1
    ip -n "${P}${n}a" route add default via 198.18.1.1
    ip -n "${P}${n}s" route add 198.18.16.0/20 via 198.18.0.2
    local batch=$WORK/addrs-$n third host
    : >"$batch"
    for third in $(seq 16 31); do
        for host in $(seq 10 209); do
            echo "addr add 198.18.$third.$host/32 dev ${P}${n}cs" >>"$batch"
        done
    done
    ip -n "${P}${n}c" -batch "$batch"
}

# sources PHASE: the 200 client addresses reserved for one phase.
sources() { echo "198.18.$((16 + $1)).10-198.18.$((16 + $1)).209"; }

busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }

CLK_TCK=$(getconf CLK_TCK)   # /proc/stat counts in these
TABLE=$WORK/table.md
: >"$TABLE"
row() { printf '| %s |\n' "$(IFS='|'; echo "$*" | sed 's/|/ | /g')" >>"$TABLE"; }

# ------------------------------------------------------------ knock-server --
log "lab $P: namespaces ${P}ks (server) ${P}kc (client) ${P}ka (attacker)"
lab k
S=${P}ks C=${P}kc A=${P}ka
mkdir -p "$WORK/knock/clients.d"
cat >"$WORK/knock/server.toml" <<EOF
interface = "any"
knock_port = 62201
firewall = "nftables"
protected = ["tcp/4992"]
open_for = "30s"
state_dir = "$WORK/knock/state"
clients_dir = "$WORK/knock/clients.d"
EOF
"$BIN/knock-keygen" bench --host 198.18.0.1 --config "$WORK/knock/server.toml" --out "$WORK/knock/bench.knock" >/dev/null
PROFILE=$WORK/knock/bench.knock
# The in-process trials knock as generated clients, one each: the server
# grants one client 10 knocks at once, then one a second (issue 14), which
# 200 knocks from one profile would meet.
FLEET_SEED=bench-$P
"$BIN/knock-fleet" enroll --config "$WORK/knock/server.toml" --count 2000 --seed "$FLEET_SEED" >/dev/null

# Background processes are started with `ip netns exec` itself (it execs the
# program), so that $! is the program's pid.
ip netns exec "$S" "$BIN/knock-sink" --port 4992 --duration 30m >"$WORK/sink.log" 2>&1 &
PIDS+=($!)
ip netns exec "$S" "$BIN/knock-server" run --config "$WORK/knock/server.toml" 2>"$WORK/server.log" &
SERVER=$!
PIDS+=("$SERVER")
for _ in $(seq 100); do grep -q ready "$WORK/server.log" && break; sleep 0.1; done
grep -q ready "$WORK/server.log" || { cat "$WORK/server.log" >&2; die "knock-server never logged ready"; }
[ "$(cat /proc/$SERVER/comm)" = knock-server ] || die "pid $SERVER is not knock-server"
log "knock-server ready (pid $SERVER); state on $(df --output=fstype "$WORK" | tail -1)"

probe() { # NAME PHASE [extra args]: in-process knocks from the client namespace
    local name=$1 phase=$2; shift 2
    in_ns "$C" "$BIN/knock-probe" knock --fleet "$WORK/knock/server.toml" --seed "$FLEET_SEED" \
        --fleet-first $((phase * 200)) --server 198.18.0.1 --port 4992 \
        --sources "$(sources "$phase")" --trials "$TRIALS" --name "$name" "$@" | tee -a "$WORK/probe.log" | result
}

# Phase 0: baseline, in-process knocks.
wait_quiet baseline
log "baseline: $TRIALS in-process knocks, no flood"
BASE=$(probe baseline 0 --gap 10ms)
echo "$BASE" >&2

# Phase 1: baseline through knock-client, end to end.
wait_quiet knock-client
log "baseline: $CLIENT_RUNS runs of knock-client open, end to end"
CLIENT=$(in_ns "$C" "$BIN/knock-probe" client --exec "$BIN/knock-client" --dev "${C}s" \
    --profile "$PROFILE" --server 198.18.0.1 --port 4992 --sources "$(sources 1)" \
    --trials "$CLIENT_RUNS" --timeout 3s --gap 1000ms --name knock-client | tee -a "$WORK/probe.log" | result)
echo "$CLIENT" >&2
ip -n "$C" route del 198.18.0.1/32 2>/dev/null || true

# What `open` would take if it retried its connect as fast as the probe does:
# knock-client open --no-wait (process, profile, knock), then the probe's
# connects, timed from the process start.
log "baseline: $CLIENT_RUNS runs of knock-client open --no-wait + fast connect retries"
NOWAIT=$(in_ns "$C" "$BIN/knock-probe" command --dev "${C}s" --server 198.18.0.1 --port 4992 \
    --sources "$(sources 5)" --trials "$CLIENT_RUNS" --timeout 3s --gap 1000ms --name no-wait \
    -- env KNOCK_HOME="$WORK/knock" "$BIN/knock-client" open 198.18.0.1 4992 --no-wait --profile "$PROFILE" \
    | tee -a "$WORK/probe.log" | result)
echo "$NOWAIT" >&2
ip -n "$C" route del 198.18.0.1/32 2>/dev/null || true

# The cost of starting a process, for context: knock-client --version.
SPAWN_MS=$(in_ns "$C" bash -c "s=\$(date +%s%N); for i in \$(seq 20); do $BIN/knock-client --version >/dev/null 2>&1 || true; done; e=\$(date +%s%N); echo \$(( (e - s) / 20000 ))")
SPAWN_MS=$(awk -v us="$SPAWN_MS" 'BEGIN {printf "%.2f", us / 1000}')

# flood_phase NAME MODE PHASE: flood from the attacker while probing from the client.
flood_phase() {
    local name=$1 mode=$2 phase=$3
    local count=$((RATE * FLOOD_SECONDS))
    local probe_secs=$((FLOOD_SECONDS - 3))
    local gap_ms=$(( probe_secs * 1000 / TRIALS - 2 ))
    [ "$gap_ms" -ge 1 ] || gap_ms=1
    wait_quiet "$name"
    log "$name: $mode flood at $RATE pps for ${FLOOD_SECONDS}s, $TRIALS knocks during it"
    local cpu0 busy0 rx0 drop0 t0 cpu1 busy1 rx1 drop1 t1
    cpu0=$(cpu_ns "$SERVER"); busy0=$(busy_ticks); rx0=$(rx_packets "$S" "${S}a"); drop0=$(pkt_drops "$S")
    t0=$(date +%s%N)
    ip netns exec "$A" "$BIN/knock-flood" --target 198.18.1.1:62201 --mode "$mode" --rate "$RATE" \
        --count "$count" --duration "${FLOOD_SECONDS}s" --profile "$PROFILE" >"$WORK/flood-$name.log" 2>&1 &
    local flood=$!
    PIDS+=("$flood")
    sleep 1.5
    local peak=0 rss
    local res
    res=$(probe "$name" "$phase" --gap "${gap_ms}ms" --max-run "${probe_secs}s")
    wait "$flood" || die "knock-flood failed: $(cat "$WORK/flood-$name.log")"
    sleep 0.5   # let the server drain its queue
    t1=$(date +%s%N)
    cpu1=$(cpu_ns "$SERVER"); busy1=$(busy_ticks); rx1=$(rx_packets "$S" "${S}a"); drop1=$(pkt_drops "$S")
    rss=$(vm "$SERVER" VmHWM)
    local fl; fl=$(result <"$WORK/flood-$name.log")
    local sent pps received drops processed cpu_s us_per busy_us_per
    sent=$(field "$fl" sent); pps=$(field "$fl" pps)
    received=$((rx1 - rx0)); drops=$((drop1 - drop0)); processed=$((received - drops))
    cpu_s=$(awk -v t=$((cpu1 - cpu0)) 'BEGIN {printf "%.3f", t / 1e9}')
    us_per=$(awk -v t=$((cpu1 - cpu0)) -v n="$processed" 'BEGIN {if (n > 0) printf "%.2f", t / 1e3 / n; else print "n/a"}')
    busy_us_per=$(awk -v t=$((busy1 - busy0)) -v hz="$CLK_TCK" -v n="$sent" 'BEGIN {if (n > 0) printf "%.2f", t / hz * 1e6 / n; else print "n/a"}')
    echo "$res" >&2
    echo "FLOOD name=$name mode=$mode sent=$sent pps=$pps received=$received socket_drops=$drops processed=$processed server_cpu_s=$cpu_s server_us_per_pkt=$us_per server_core_pct=$(awk -v c="$cpu_s" -v w=$(( (t1 - t0) / 1000000 )) 'BEGIN {printf "%.0f", 100 * c * 1000 / w}') flooder_cpu_s=$(field "$fl" cpu_s) system_us_per_pkt=$busy_us_per vmhwm_kib=$rss wall_s=$(( (t1 - t0) / 1000000000 ))" | tee -a "$WORK/flood.log" >&2
    printf '%s\n%s\n' "$res" "$(tail -1 "$WORK/flood.log")" >"$WORK/phase-$name"
}

flood_phase junk junk 2
flood_phase wrong-key wrong-key 3
flood_phase forged-hint forged-hint 4
flood_phase stale-copy stale-copy 6

HWM=$(vm "$SERVER" VmHWM)
RSS_NOW=$(vm "$SERVER" VmRSS)

# Cross-check: the server's own counts of refused datagrams. Its summary comes
# at most every 10 s, so wait for the one that covers the last flood.
log "waiting for the server's last rejection summary"
sleep 11
REFUSED_LOG=$(grep -o 'refused [0-9]* datagrams' "$WORK/server.log" | awk '{s += $2} END {print s + 0}')
PROCESSED_SUM=$(cat "$WORK"/phase-* | grep '^FLOOD' | sed -E 's/.* processed=([0-9]+).*/\1/' | awk '{s += $1} END {print s + 0}')
GRANTS=$(grep -c 'granted tcp/4992' "$WORK/server.log" || true)
kill -TERM "$SERVER" 2>/dev/null || true
wait "$SERVER" 2>/dev/null || true

# --------------------------------------------------------------- fwknopd --
FW_BASE="" FW_JUNK="" FW_FLOOD="" FW_NOTE="" FW_RX=""
run_fwknop() {
    local fs fc fa
    log "fwknopd side by side: namespaces ${P}fs ${P}fc ${P}fa"
    lab f
    fs=${P}fs fc=${P}fc fa=${P}fa
    local dir=$WORK/fwknop
    mkdir -p "$dir/run"
    local key hmac
    key=$(head -c 32 /dev/urandom | base64 -w0)
    hmac=$(head -c 64 /dev/urandom | base64 -w0)
    # Debian's defaults (pcap polled every 100 ms, iptables rules), except
    # for paths and the interface: "any", as knock-server sniffs, so that the
    # flood from the attacker's link reaches it too.
    cat >"$dir/fwknopd.conf" <<EOF
PCAP_INTF                   any;
ENABLE_PCAP_PROMISC         N;
PCAP_FILTER                 udp port 62201;
FWKNOP_RUN_DIR              $dir/run;
FWKNOP_PID_FILE             $dir/run/fwknopd.pid;
DIGEST_FILE                 $dir/run/digest.cache;
EOF
    cat >"$dir/access.conf" <<EOF
SOURCE                      ANY
OPEN_PORTS                  tcp/4992
KEY_BASE64                  $key
HMAC_KEY_BASE64             $hmac
FW_ACCESS_TIMEOUT           30
EOF
    chmod 600 "$dir/fwknopd.conf" "$dir/access.conf"
    # Protect the port as knock does; fwknopd inserts its own jump to
    # FWKNOP_INPUT at the top of INPUT for each grant.
    in_ns "$fs" iptables -A INPUT -p tcp --dport 4992 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    in_ns "$fs" iptables -A INPUT -p udp --dport 62201 -j DROP
    in_ns "$fs" iptables -A INPUT -p tcp --dport 4992 -j DROP
    ip netns exec "$fs" "$BIN/knock-sink" --port 4992 --duration 30m >"$dir/sink.log" 2>&1 &
    PIDS+=($!)
    ip netns exec "$fs" fwknopd -f -c "$dir/fwknopd.conf" -a "$dir/access.conf" -d "$dir/run/digest.cache" \
        -p "$dir/run/fwknopd.pid" -r "$dir/run" >"$dir/fwknopd.log" 2>&1 &
    FWKNOPD=$!
    PIDS+=("$FWKNOPD")
    sleep 2
    kill -0 "$FWKNOPD" 2>/dev/null || { cat "$dir/fwknopd.log" >&2; return 1; }
    fw_trials() { # NAME PHASE TRIALS GAP_MS
        in_ns "$fc" env HOME="$dir" "$BIN/knock-probe" command --dev "${fc}s" --server 198.18.0.1 \
            --port 4992 --sources "$(sources "$2")" --trials "$3" --timeout 3s --gap "$4ms" \
            --name "$1" -- fwknop -A tcp/4992 -s -D 198.18.0.1 -p 62201 -P udp \
            --key-base64-rijndael "$key" --key-base64-hmac "$hmac" --use-hmac --no-save-args \
            | tee -a "$WORK/probe.log" | result
    }
    FW_BASE=$(fw_trials fwknop-baseline 0 "$FWKNOP_TRIALS" 20)
    echo "$FW_BASE" >&2
    log "fwknopd under a $RATE pps junk flood"
    local frx0
    frx0=$(rx_packets "$fs" "${fs}a")
    ip netns exec "$fa" "$BIN/knock-flood" --target 198.18.1.1:62201 --mode junk --rate "$RATE" \
        --count $((RATE * FLOOD_SECONDS)) --duration "${FLOOD_SECONDS}s" >"$WORK/flood-fwknop.log" 2>&1 &
    local flood=$!
    PIDS+=("$flood")
    sleep 1.5
    FW_JUNK=$(fw_trials fwknop-junk 2 "$FWKNOP_TRIALS" $(( (FLOOD_SECONDS - 3) * 1000 / FWKNOP_TRIALS / 2 )))
    echo "$FW_JUNK" >&2
    wait "$flood" || true
    FW_FLOOD=$(result <"$WORK/flood-fwknop.log")
    # (libpcap's ring drops are not counted in the socket's sk_drops, so
    # only what reached the host is known here.)
    FW_RX=$(( $(rx_packets "$fs" "${fs}a") - frx0 ))
    echo "fwknopd: $FW_RX flood datagrams reached its host" >&2
    kill "$FWKNOPD" 2>/dev/null || true
}
if [ "$FWKNOP" != 0 ]; then
    if command -v fwknopd >/dev/null && command -v fwknop >/dev/null && command -v iptables >/dev/null; then
        run_fwknop || FW_NOTE="fwknopd run failed; see the log above"
    elif [ "$FWKNOP" = 1 ]; then
        die "FWKNOP=1 but fwknopd/fwknop are not installed (apt-get install fwknop-server fwknop-client)"
    else
        FW_NOTE="fwknopd not installed (apt-get install fwknop-server fwknop-client): skipped"
    fi
fi

# ---------------------------------------------------------------- results --
get() { field "$(grep "^$1" "$WORK/phase-$2")" "$3"; }
{
    echo "| measure | target | knock | verdict |"
    echo "|---|---|---|---|"
    v() { awk -v a="$1" -v b="$2" -v op="$3" 'BEGIN { if (a == "n/a") print "n/a"; else if ((op == "le" && a + 0 <= b + 0) || (op == "ge" && a + 0 >= b + 0)) print "met"; else print "**missed**" }'; }
    c50=$(field "$CLIENT" p50_ms); b50=$(field "$BASE" p50_ms)
    echo "| latency p50, knock-client open end to end ($(field "$CLIENT" trials) runs) | ≤ 3 ms | $c50 ms (p90 $(field "$CLIENT" p90_ms), p99 $(field "$CLIENT" p99_ms), max $(field "$CLIENT" max_ms)) | $(v "$c50" 3 le) |"
    echo "| latency p50, knock-client open --no-wait + connect retried every 100 µs ($(field "$NOWAIT" trials) runs) | — | $(field "$NOWAIT" p50_ms) ms (p90 $(field "$NOWAIT" p90_ms), p99 $(field "$NOWAIT" p99_ms), max $(field "$NOWAIT" max_ms)) | |"
    echo "| latency p50, in-process knock → first connect, no flood ($(field "$BASE" trials) knocks) | — | $b50 ms (p90 $(field "$BASE" p90_ms), p99 $(field "$BASE" p99_ms), max $(field "$BASE" max_ms)) | |"
    echo "| honoured, no flood | — | $(field "$BASE" share_pct)% | |"
    for ph in junk wrong-key forged-hint stale-copy; do
        pr=$(grep '^RESULT' "$WORK/phase-$ph"); fl=$(grep '^FLOOD' "$WORK/phase-$ph")
        tgt="≥ 99%"; [ "$ph" = forged-hint ] && tgt="— (extra)"
        echo "| honoured under $ph flood ($(field "$fl" pps) pps achieved, $(field "$pr" trials) knocks) | $tgt | $(field "$pr" share_pct)% (p50 $(field "$pr" p50_ms) ms, p99 $(field "$pr" p99_ms) ms) | $( [ "$ph" = forged-hint ] && echo "" || v "$(field "$pr" share_pct)" 99 ge) |"
    done
    for ph in junk wrong-key forged-hint stale-copy; do
        fl=$(grep '^FLOOD' "$WORK/phase-$ph")
        tgt="≤ 2 µs"; [ "$ph" = forged-hint ] && tgt="—"
        echo "| server CPU per $ph datagram ($(field "$fl" processed) processed, $(field "$fl" socket_drops) dropped by the kernel) | $tgt | $(field "$fl" server_us_per_pkt) µs | $( [ "$ph" = forged-hint ] && echo "" || v "$(field "$fl" server_us_per_pkt)" 2 le) |"
    done
    for ph in junk wrong-key forged-hint stale-copy; do
        fl=$(grep '^FLOOD' "$WORK/phase-$ph")
        echo "| whole machine CPU per $ph datagram sent (flooder + kernel + server) | — | $(field "$fl" system_us_per_pkt) µs | |"
    done
    echo "| knock-server peak RSS (VmHWM) over all floods | ≤ 16 MiB | $(awk -v k="$HWM" 'BEGIN {printf "%.1f", k / 1024}') MiB (now $(awk -v k="$RSS_NOW" 'BEGIN {printf "%.1f", k / 1024}') MiB) | $(v "$HWM" 16384 le) |"
    echo "| process start, knock-client --version | — | $SPAWN_MS ms | |"
    if [ -n "$FW_BASE" ]; then
        f50=$(field "$FW_BASE" p50_ms)
        n50=$(field "$NOWAIT" p50_ms)
        echo "| fwknopd: latency p50, fwknop client + connect retried every 100 µs ($(field "$FW_BASE" trials) runs) | — | $f50 ms (p90 $(field "$FW_BASE" p90_ms), max $(field "$FW_BASE" max_ms)), honoured $(field "$FW_BASE" share_pct)%; knock by the same method ($n50 ms) is $(awk -v a="$f50" -v b="$n50" 'BEGIN {if (b > 0) printf "%.0f", a / b; else print "?"}')× faster | |"
        echo "| fwknopd: honoured under junk ($(field "$FW_FLOOD" pps) pps achieved, $(field "$FW_JUNK" trials) knocks) | — | $(field "$FW_JUNK" share_pct)% (p50 $(field "$FW_JUNK" p50_ms) ms, max $(field "$FW_JUNK" max_ms) ms; $FW_RX flood datagrams reached its host; honoured = connected within 3 s); knock: $(field "$(grep '^RESULT' "$WORK/phase-junk")" share_pct)% | |"
    elif [ -n "$FW_NOTE" ]; then
        echo "| fwknopd | — | $FW_NOTE | |"
    fi
} >"$TABLE"

log "results ($(nproc) CPUs, $(uname -r))"
cat "$TABLE"
echo
[ -n "$NOISY" ] && echo "warning: other work was running on this machine during:$NOISY"
echo "cross-check: the server logged $REFUSED_LOG refused datagrams in all; the floods' processed counts add up to $PROCESSED_SUM; $GRANTS grants logged"
[ -n "${OUT:-}" ] && cp "$TABLE" "$OUT"
exit 0
