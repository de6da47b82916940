#!/usr/bin/env bash
# knock scale benchmark (issue 14): for fleets of generated clients (1,000,
# 10,000, 100,000 and a 10-client reference), the server's time to ready,
# reload time, peak RSS, CPU per flood datagram, the longest delay of a knock
# over 32 s without reload (the hint index advancing) and during a reload of
# the whole fleet, a burst of knocks from 1,000 different clients, and
# arrival-to-grant latency on both firewall backends.
#
#   sudo bench/scale.sh                          # about 6 minutes
#   sudo SIZES=1000 REFERENCE=0 bench/scale.sh   # quick: one fleet of 1,000
#   sudo OUT=scale.md bench/scale.sh             # also write the tables to a file
#
# The clients come from `knock-fleet enroll` (bench/src/bin/knock-fleet.rs):
# every key is derived from one seed, so the knockers need no per-client
# file. Every PUBLIC_EVERY-th client is a public-key client.
#
# Everything happens in network namespaces this script creates (addresses
# 198.18.0.0/16 only; one set per server run) and removes on exit; the root
# namespace's interfaces and firewall are never touched. Every traffic
# generator is bounded in packets and in time, and every wait has a bound:
# a server that is not ready, or a reload that does not answer, within its
# bound is reported as a timeout.
#
# Knobs (environment):
#   SIZES="1000 10000 100000"  fleet sizes
#   REFERENCE=10               the reference row's fleet size (0: none)
#   PUBLIC_EVERY=10            one client in this many is public-key (0: none)
#   RATE=50000                 flood rate, datagrams per second
#   FLOOD_SECONDS=5            length of each flood (junk, wrong-key)
#   TRICKLE_EVERY=2ms          knocks sent during the reload: one every this
#   IDLE_SECONDS=32            then a trickle this long without reload, one knock
#                              every 20 ms: it spans a 30 s hint slot boundary,
#                              when the server advances its index (0: skip)
#   BURST=1000                 knocks (from as many clients) in the burst...
#   BURST_WITHIN=1s            ...sent evenly within this time
#   BACKENDS="nftables iptables"  backends of the latency phase ("": none)
#   LATENCY_CLIENTS=1000       fleet size of the latency phase
#   LATENCY_TRIALS=100         knocks per backend (20 ms apart)
#   LATENCY_KNOCKER=fleet      fleet: each knock from the next fleet client (one
#                              in PUBLIC_EVERY public-key); bench: all from one
#                              shared-key client, as bench/run.sh does
#   READY_TIMEOUT=120          seconds a server may take to be ready
#   RELOAD_TIMEOUT=120         seconds a reload may take
#   QUIET_MAX=30               seconds to wait for idle CPUs before a phase
#   SKIP_BUILD=1               use the binaries already built
#   CARGO_TARGET_DIR           where cargo builds (default: ./target)
#   OUT=FILE                   also write the Markdown tables to FILE
#   KEEP_WORK=1                keep the work directory (logs) after the run
set -euo pipefail

SIZES=${SIZES:-"1000 10000 100000"}
REFERENCE=${REFERENCE:-10}
PUBLIC_EVERY=${PUBLIC_EVERY:-10}
RATE=${RATE:-50000}
FLOOD_SECONDS=${FLOOD_SECONDS:-5}
TRICKLE_EVERY=${TRICKLE_EVERY:-2ms}
IDLE_SECONDS=${IDLE_SECONDS:-32}
BURST=${BURST:-1000}
BURST_WITHIN=${BURST_WITHIN:-1s}
BACKENDS=${BACKENDS-"nftables iptables"}
LATENCY_CLIENTS=${LATENCY_CLIENTS:-1000}
LATENCY_TRIALS=${LATENCY_TRIALS:-100}
LATENCY_KNOCKER=${LATENCY_KNOCKER:-fleet}
READY_TIMEOUT=${READY_TIMEOUT:-120}
RELOAD_TIMEOUT=${RELOAD_TIMEOUT:-120}
QUIET_MAX=${QUIET_MAX:-30}
SEED=scale-$$-$(date +%s)   # the fleet's seed: a new one every run

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release

die() { echo "bench/scale.sh: $*" >&2; exit 1; }
log() { printf '\n== %s\n' "$*" >&2; }
int() { [[ "$2" =~ ^[0-9]+$ ]] || die "$1=$2: not a number"; }

[ "$(id -u)" = 0 ] || die "needs root (it creates network namespaces): run sudo bench/scale.sh"
for tool in ip nft ss timeout; do command -v "$tool" >/dev/null || die "$tool is missing (apt-get install iproute2 nftables coreutils)"; done
for n in $SIZES; do int SIZES "$n"; { [ "$n" -ge 1 ] && [ "$n" -le 1000000 ]; } || die "SIZES: each 1..1000000"; done
for v in REFERENCE IDLE_SECONDS PUBLIC_EVERY RATE FLOOD_SECONDS BURST LATENCY_CLIENTS LATENCY_TRIALS READY_TIMEOUT RELOAD_TIMEOUT QUIET_MAX; do int "$v" "${!v}"; done
[ "$IDLE_SECONDS" -le 300 ] || die "IDLE_SECONDS: at most 300"
{ [ "$FLOOD_SECONDS" -ge 1 ] && [ "$FLOOD_SECONDS" -le 60 ]; } || die "FLOOD_SECONDS: use 1..60"
{ [ "$RATE" -ge 1 ] && [ "$RATE" -le 500000 ]; } || die "RATE: use 1..500000"
{ [ "$LATENCY_TRIALS" -ge 1 ] && [ "$LATENCY_TRIALS" -le 200 ]; } || die "LATENCY_TRIALS: use 1..200 (one source address each)"
{ [ "$READY_TIMEOUT" -ge 1 ] && [ "$READY_TIMEOUT" -le 600 ] && [ "$RELOAD_TIMEOUT" -ge 1 ] && [ "$RELOAD_TIMEOUT" -le 600 ]; } || die "READY_TIMEOUT, RELOAD_TIMEOUT: use 1..600"
case $LATENCY_KNOCKER in fleet | bench) ;; *) die "LATENCY_KNOCKER: fleet or bench" ;; esac
for b in $BACKENDS; do case $b in nftables) ;; iptables) for t in iptables ipset; do command -v "$t" >/dev/null || die "BACKENDS has iptables: $t is missing (apt-get install iptables ipset)"; done ;; *) die "BACKENDS: nftables, iptables" ;; esac; done

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building release binaries into $TARGET"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release -p knock-server -p knock-keys -p knock-bench --bins)
fi
for b in knock-server knock-keygen knock-flood knock-probe knock-sink knock-fleet; do
    [ -x "$BIN/$b" ] || die "$BIN/$b is missing: build with cargo build --release -p knock-server -p knock-keys -p knock-bench"
done

# ---------------------------------------------------------------- the lab --
# shellcheck source=bench/lab.sh
. "$ROOT/bench/lab.sh"
lab_begin ks scale        # P: the prefix of namespaces and links; WORK
P=$P-

# lab NAME: server (S), client (C) and attacker (A) namespaces, as in
# bench/run.sh: the client at 198.18.0.2, with 200 more /32 source addresses
# 198.18.16.10-209 for the latency probe; the attacker at 198.18.1.66.
lab() {
    local n=$1
    S=${P}${n}s C=${P}${n}c A=${P}${n}a
    netns "$S"; netns "$C"; netns "$A"
    link "$S" "${S}c" 198.18.0.1 "$C" "${C}s" 198.18.0.2
    link "$S" "${S}a" 198.18.1.1 "$A" "${A}s" 198.18.1.66
    ip -n "$C" route add default via 198.18.0.1
    ip -n "$A" route add default via 198.18.1.1
    ip -n "$S" route add 198.18.16.0/20 via 198.18.0.2
    local batch=$WORK/addrs-$n host
    : >"$batch"
    for host in $(seq 10 209); do echo "addr add 198.18.16.$host/32 dev ${C}s" >>"$batch"; done
    ip -n "$C" -batch "$batch"
}
# lab_del: removes the current lab's namespaces (their firewall with them),
# and ends what still runs in them: every process this script starts in the
# background runs in the current lab, so none is left to kill at exit.
lab_del() {
    local ns pid
    for ns in "$S" "$C" "$A"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    PIDS=()
}

mib() { awk -v k="${1:-0}" 'BEGIN {if (k > 0) printf "%.1f", k / 1024; else print "n/a"}'; }
now_ms() { local t; t=$(date +%s%N); echo "${t:0:-6}.${t: -6:3}"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "n/a" || b == "n/a" || a == "" || b == "") print "n/a"; else printf "%.1f", a - b}'; }
# secs MS: milliseconds as seconds (words such as "timeout" pass through).
secs() {
    case $1 in
        '' | n/a) echo n/a ;;
        *[!0-9.]*) echo "$1" ;;
        *) awk -v m="$1" 'BEGIN {if (m < 10000) printf "%.3f", m / 1000; else printf "%.1f", m / 1000}' ;;
    esac
}
log_size() { stat -c %s "$1" 2>/dev/null || echo 0; }
# settle LOG MAX: wait until no new grant is logged for 1.5 s (at most MAX s).
settle() {
    local last=-1 now same=0
    for _ in $(seq $(($2 * 10))); do
        now=$(grep -c ' granted ' "$1" || true)
        if [ "$now" = "$last" ]; then
            same=$((same + 1)); [ "$same" -ge 15 ] && return 0
        else
            same=0; last=$now
        fi
        sleep 0.1
    done
    echo "warning: grants still being logged after ${2}s" >&2
}

# slot_fit NAME NEED: knocks are stamped in 30 s slots of unix time, and
# when the clock enters a new slot the server brings its hint index up to
# date (before issue 14: rebuilds it, seconds at 100,000 clients). So that a
# timed phase does not measure that too, start it only when at least NEED
# seconds are left in the slot and SLOT_OFFSET seconds have passed since the
# slot began (set from the time to ready: the index takes no longer to
# build than the whole start). Sleeps at most 30 s.
SLOT_OFFSET=3
slot_fit() {
    local wait
    wait=$(awk -v t="$(date +%s.%N)" -v off="$SLOT_OFFSET" -v need="$2" 'BEGIN {
        into = t - 30 * int(t / 30)
        if (into >= off && into + need <= 29.5) print 0
        else if (into < off && off + need <= 29.5) print off - into
        else print 30 - into + off }')
    if awk -v o="$SLOT_OFFSET" -v n="$2" 'BEGIN {exit !(o + n > 29.5)}'; then
        echo "warning: phase $1 ($2 s) cannot fit in a 30 s slot after ${SLOT_OFFSET}s: it may include an index update" >&2
        NOISY="$NOISY $1(slot)"
        return 0
    fi
    sleep "$wait"
}

# The index update after a slot boundary takes no longer than the start.
set_slot_offset() {
    SLOT_OFFSET=$(awk -v m="$READY_MS" 'BEGIN {o = int(m / 1000) + 3; if (o > 18) o = 18; print o}')
}

NOTES=$WORK/notes.md
: >"$NOTES"
note() { echo "- $*" >>"$NOTES"; echo "$*" >&2; }

# setup DIR BACKEND N: a server configuration in DIR, the bench client
# (knock-keygen: also server.id, server.key and the first replay state) and
# a fleet of N clients.
setup() {
    local dir=$1 backend=$2 n=$3
    mkdir -p "$dir/clients.d"
    cat >"$dir/server.toml" <<EOF
interface = "any"
knock_port = 62201
firewall = "$backend"
protected = ["tcp/4992"]
open_for = "30s"
state_dir = "$dir/state"
clients_dir = "$dir/clients.d"
EOF
    "$BIN/knock-keygen" bench --host 198.18.0.1 --config "$dir/server.toml" --out "$dir/bench.knock" 2>/dev/null >/dev/null
    "$BIN/knock-fleet" enroll --config "$dir/server.toml" --count "$n" --public-every "$PUBLIC_EVERY" --seed "$SEED" >/dev/null
    sync -f "$dir/clients.d"
}
fleet() { "$BIN/knock-fleet" "$1" --config "$DIR/server.toml" --public-every "$PUBLIC_EVERY" --seed "$SEED" "${@:2}"; }

# start_server: knock-server run in $S with $DIR/server.toml; sets SERVER
# and READY_MS (exec → the `ready:` line, from the line's own timestamp), or
# READY_MS=timeout / failed.
start_server() {
    local t0 res logged seen
    t0=$(now_ms)
    # `ip netns exec` execs the program, so $! is the server's pid.
    ip netns exec "$S" "$BIN/knock-server" run --config "$DIR/server.toml" 2>"$DIR/server.log" &
    SERVER=$!
    PIDS+=("$SERVER")
    res=$("$BIN/knock-fleet" await --log "$DIR/server.log" --match "ready:" --timeout "${READY_TIMEOUT}s" \
        --pid "$SERVER" --poll 1ms --name ready | result) || true
    if [ "$(field "$res" found)" != 1 ]; then
        if kill -0 "$SERVER" 2>/dev/null; then READY_MS=timeout; else READY_MS=failed; fi
        tail -5 "$DIR/server.log" >&2
        return 1
    fi
    logged=$(field "$res" logged_ms); seen=$(field "$res" seen_ms)
    if [ "$logged" != n/a ]; then READY_MS=$(sub "$logged" "$t0"); else READY_MS=$(sub "$seen" "$t0"); fi
    READY_LINE=$(grep -m1 'ready:' "$DIR/server.log" | sed 's/.*ready: //')
    # Where the start went: each log line up to `ready`, as ms after exec.
    STARTUP=$(sed '/ready:/q' "$DIR/server.log" | head -20 | while IFS= read -r line; do
        local at; at=$(date -u -d "${line%% *}" +%s%3N 2>/dev/null) || continue
        printf '+%s ms: %s; ' "$(sub "$at" "$t0")" "$(cut -d' ' -f4- <<<"$line" | cut -c1-60)"
    done)
    [ "$(cat /proc/$SERVER/comm)" = knock-server ] || die "pid $SERVER is not knock-server"
}
stop_server() {
    kill -TERM "$SERVER" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
}

# reload NAME: `knock-server reload`, timed; sets RELOAD_MS (or timeout /
# failed) and prints the server's answer.
reload() {
    local t0 t1 out rc=0
    t0=$(now_ms)
    out=$(timeout $((RELOAD_TIMEOUT + 5)) ip netns exec "$S" "$BIN/knock-server" reload --config "$DIR/server.toml" 2>&1) || rc=$?
    t1=$(now_ms)
    if [ "$rc" = 0 ]; then
        RELOAD_MS=$(sub "$t1" "$t0")
    elif [ "$rc" = 124 ] || awk -v d="$(sub "$t1" "$t0")" -v max="$RELOAD_TIMEOUT" 'BEGIN {exit !(d >= max * 1000)}'; then
        RELOAD_MS=timeout
    else
        RELOAD_MS=failed
    fi
    echo "$1: ${RELOAD_MS} ms: $out" >&2
}

# flood NAME MODE: knock-flood from the attacker; CPU per datagram as in
# bench/run.sh: server CPU time (all threads) / datagrams processed
# (received on its attacker link minus the packet sockets' drops).
flood() {
    local name=$1 mode=$2 count=$((RATE * FLOOD_SECONDS))
    local cpu0 rx0 drop0 cpu1 rx1 drop1 fl
    cpu0=$(cpu_ns "$SERVER"); rx0=$(rx_packets "$S" "${S}a"); drop0=$(pkt_drops "$S")
    ip netns exec "$A" "$BIN/knock-flood" --target 198.18.1.1:62201 --mode "$mode" --rate "$RATE" \
        --count "$count" --duration "${FLOOD_SECONDS}s" --profile "$DIR/bench.knock" >"$DIR/flood-$name.log" 2>&1 \
        || { cat "$DIR/flood-$name.log" >&2; die "knock-flood failed"; }
    sleep 0.5   # let the server drain its queue
    cpu1=$(cpu_ns "$SERVER"); rx1=$(rx_packets "$S" "${S}a"); drop1=$(pkt_drops "$S")
    fl=$(result <"$DIR/flood-$name.log")
    local processed=$(( (rx1 - rx0) - (drop1 - drop0) ))
    FLOOD_US=$(awk -v t=$((cpu1 - cpu0)) -v n="$processed" 'BEGIN {if (n > 0) printf "%.2f", t / 1e3 / n; else print "n/a"}')
    note "$N clients, $name flood: $(field "$fl" sent) sent at $(field "$fl" pps) pps, $processed processed, $((drop1 - drop0)) dropped by the kernel, server CPU $FLOOD_US µs per datagram"
}

TABLE=$WORK/table.md BURSTS=$WORK/bursts.md LATENCY=$WORK/latency.md
: >"$TABLE"; : >"$BURSTS"; : >"$LATENCY"

# ------------------------------------------------------------- one size --
run_size() {
    N=$1
    local idx=$2
    DIR=$WORK/n$N
    log "fleet of $N clients (one in $PUBLIC_EVERY public-key): lab ${P}${idx}"
    lab "$idx"
    setup "$DIR" nftables "$N"

    wait_quiet "ready-$N"
    if ! start_server; then
        note "$N clients: knock-server not ready: $READY_MS"
        echo "| $N | $READY_MS | — | — | — | — | — | — | — |" >>"$TABLE"
        stop_server; lab_del; return 0
    fi
    local hwm_ready; hwm_ready=$(vm "$SERVER" VmHWM)
    log "ready in $READY_MS ms: $READY_LINE; VmHWM $(mib "$hwm_ready") MiB"

    set_slot_offset
    wait_quiet "floods-$N"
    slot_fit "floods-$N" $((2 * FLOOD_SECONDS + 2))
    flood junk junk; local junk=$FLOOD_US
    flood wrong-key wrong-key; local wrong=$FLOOD_US

    # A burst of BURST knocks from as many different clients within
    # BURST_WITHIN. Before any other knock: each grant rewrites the replay
    # state, whose size grows with the knocks of the last minute, so the
    # burst sees the same (empty) state at every fleet size.
    if [ "$N" -ge "$BURST" ]; then
        wait_quiet "burst-$N"
        slot_fit "burst-$N" 6
        local off; off=$(log_size "$DIR/server.log")
        rm -f "$DIR/burst.sends"
        local b; b=$(in_ns "$C" "$BIN/knock-fleet" burst --config "$DIR/server.toml" --public-every "$PUBLIC_EVERY" \
            --seed "$SEED" --count "$BURST" --within "$BURST_WITHIN" --to 198.18.0.1:62201 \
            --sends "$DIR/burst.sends" 2>>"$DIR/burst.log" | result)
        settle "$DIR/server.log" 120
        local g; g=$("$BIN/knock-fleet" grants --log "$DIR/server.log" --from-byte "$off" \
            --sends "$DIR/burst.sends" --name burst | result)
        local live
        if [ "$(field "$g" live_n)" = 0 ]; then live="n/a"; else live="$(field "$g" live_p50_ms) / $(field "$g" live_max_ms) ms"; fi
        echo "| $N | $(field "$g" honoured) / $(field "$b" sent) | $(secs "$(field "$g" span_ms)") s (sent over $(secs "$(sub "$(field "$b" last_sent_ms)" "$(field "$b" first_sent_ms)")") s) | $(field "$g" delay_p50_ms) / $(field "$g" delay_p99_ms) / $(field "$g" delay_max_ms) ms | $live |" >>"$BURSTS"
        note "$N clients, burst: $(field "$g" honoured) of $(field "$b" sent) honoured; first send → last grant $(field "$g" span_ms) ms"
    fi

    # The longest delay of a knock with no reload, over IDLE_SECONDS: when
    # the clock enters a new 30 s slot, the server brings its hint index up
    # to date.
    local idle="—"
    if [ "$N" -ge 1000 ] && [ "$IDLE_SECONDS" -gt 0 ]; then
        wait_quiet "idle-$N"
        local off; off=$(log_size "$DIR/server.log")
        rm -f "$DIR/idle.sends"
        in_ns "$C" "$BIN/knock-fleet" trickle --config "$DIR/server.toml" --public-every "$PUBLIC_EVERY" \
            --seed "$SEED" --every 20ms --duration "${IDLE_SECONDS}s" --to 198.18.0.1:62201 \
            --first $((N / 4)) --count $((N - N / 4)) --sends "$DIR/idle.sends" --name idle >"$DIR/idle.log" 2>&1 \
            || { cat "$DIR/idle.log" >&2; die "knock-fleet trickle failed"; }
        settle "$DIR/server.log" 120
        local g; g=$("$BIN/knock-fleet" grants --log "$DIR/server.log" --from-byte "$off" \
            --sends "$DIR/idle.sends" --name idle | result)
        local live_max; live_max=$(field "$g" live_max_ms)
        idle="$( [ "$live_max" = n/a ] && echo "n/a" || echo "$live_max ms") / $(field "$g" delay_max_ms) ms ($(field "$g" honoured) / $(field "$g" sent))"
        note "$N clients, ${IDLE_SECONDS} s of knocks every 20 ms, no reload: $(field "$g" sent) sent, $(field "$g" honoured) honoured; send → grant logged p50 $(field "$g" delay_p50_ms) ms, p99 $(field "$g" delay_p99_ms) ms, max $(field "$g" delay_max_ms) ms; server's arrival → live max $live_max ms"
    fi

    # Reloads take about what the start took.
    local reload_need; reload_need=$(awk -v m="$READY_MS" 'BEGIN {print int(m / 1000) + 2}')
    wait_quiet "reload-$N"
    slot_fit "reload-$N" "$reload_need"
    reload "reload, unchanged"; local r_same=$RELOAD_MS
    local more=$(( N / 100 )); [ "$more" -ge 1 ] || more=1
    fleet enroll --first "$N" --count "$more" >/dev/null
    sync -f "$DIR/clients.d"
    wait_quiet "reload-more-$N"
    slot_fit "reload-more-$N" "$reload_need"
    reload "reload, +$more clients"; local r_more=$RELOAD_MS
    local hwm_reload; hwm_reload=$(vm "$SERVER" VmHWM)

    # The longest delay of a knock sent while the whole fleet is reloaded
    # (the +1% removed again, so that the reload has work to do): a knock
    # from the next client every TRICKLE_EVERY, from 0.3 s before the reload
    # until 0.3 s after it answered.
    local stall="— | —"
    if [ "$N" -ge 1000 ]; then
        fleet enroll --remove --first "$N" --count "$more" >/dev/null
        sync -f "$DIR/clients.d"
        wait_quiet "stall-$N"
        slot_fit "stall-$N" $((reload_need + 1))
        local off; off=$(log_size "$DIR/server.log")
        rm -f "$DIR/stop" "$DIR/trickle.sends"
        ip netns exec "$C" "$BIN/knock-fleet" trickle --config "$DIR/server.toml" --public-every "$PUBLIC_EVERY" \
            --seed "$SEED" --every "$TRICKLE_EVERY" --duration "$((RELOAD_TIMEOUT + 30))s" --to 198.18.0.1:62201 \
            --first $((N / 2)) --count $((N - N / 2)) --stop-file "$DIR/stop" --sends "$DIR/trickle.sends" \
            >"$DIR/trickle.log" 2>&1 &
        local trickler=$!
        PIDS+=("$trickler")
        sleep 0.3
        reload "reload, -$more clients, during the trickle"; local r_trickle=$RELOAD_MS
        sleep 0.3
        touch "$DIR/stop"
        wait "$trickler" || { cat "$DIR/trickle.log" >&2; die "knock-fleet trickle failed"; }
        settle "$DIR/server.log" 120
        local g; g=$("$BIN/knock-fleet" grants --log "$DIR/server.log" --from-byte "$off" \
            --sends "$DIR/trickle.sends" --name stall | result)
        local live_max delay_max step
        live_max=$(field "$g" live_max_ms); delay_max=$(field "$g" delay_max_ms)
        # The server's own figure, when it logs one: "... whose longest step
        # meanwhile (the swap included) took X ms".
        step=$(tail -c +$((off + 1)) "$DIR/server.log" | grep -o 'longest step[^;]* took [0-9.]* ms' | tail -1 | sed -E 's/.* took ([0-9.]+) ms/\1 ms/') || true
        stall="$( [ "$live_max" = n/a ] && echo "n/a" || echo "$live_max ms") / $delay_max ms (p50 $(field "$g" delay_p50_ms) ms; loop's longest step ${step:-n/a}) | $(field "$g" honoured) / $(field "$g" sent)"
        note "$N clients, trickle during a reload ($r_trickle ms): $(field "$g" sent) knocks sent, $(field "$g" honoured) honoured; send → grant logged p50 $(field "$g" delay_p50_ms) ms, p99 $(field "$g" delay_p99_ms) ms, max $delay_max ms; server's arrival → live: max $live_max ms ($(field "$g" live_n) figures)"
        sed -n "$(( $(head -c "$off" "$DIR/server.log" | wc -l) + 1 )),\$p" "$DIR/server.log" | grep -E 'refused|WARN|ERROR' | head -5 | sed 's/^/    server: /' >&2 || true
    fi

    local hwm_end; hwm_end=$(vm "$SERVER" VmHWM)
    stop_server
    echo "| $N | $(secs "$READY_MS") s | $(secs "$r_same") / $(secs "$r_more") s | $(mib "$hwm_ready") / $(mib "$hwm_reload") / $(mib "$hwm_end") MiB | $junk µs | $wrong µs | $idle | $stall |" >>"$TABLE"
    note "$N clients: start: $STARTUP"
    lab_del
    [ -n "${KEEP_WORK:-}" ] || rm -rf "$DIR"
}

# ------------------------------------------------------------- latency --
# latency BACKEND IDX: LATENCY_TRIALS knocks of the bench client, 20 ms
# apart, each from its own source: knock → first TCP connect (knock-probe),
# and the server's own arrival → live figures from its grant lines.
latency() {
    local backend=$1 idx=$2
    N=$LATENCY_CLIENTS
    DIR=$WORK/lat-$backend
    log "latency on $backend, $N clients: lab ${P}${idx}"
    lab "$idx"
    setup "$DIR" "$backend" "$N"
    ip netns exec "$S" "$BIN/knock-sink" --port 4992 --duration 10m >"$DIR/sink.log" 2>&1 &
    PIDS+=($!)
    disown $!   # lab_del ends it
    if ! start_server; then
        echo "| $backend | server not ready: $READY_MS | — |" >>"$LATENCY"
        stop_server; lab_del; return 0
    fi
    set_slot_offset
    sleep 1
    wait_quiet "latency-$backend"
    slot_fit "latency-$backend" $((LATENCY_TRIALS / 20 + 3))
    local off; off=$(log_size "$DIR/server.log")
    local who=(--profile "$DIR/bench.knock") only=(--client bench)
    if [ "$LATENCY_KNOCKER" = fleet ]; then
        who=(--fleet "$DIR/server.toml" --fleet-first 0 --seed "$SEED" --public-every "$PUBLIC_EVERY"); only=()
    fi
    local p; p=$(in_ns "$C" "$BIN/knock-probe" knock "${who[@]}" --server 198.18.0.1 --port 4992 \
        --sources "198.18.16.10+$LATENCY_TRIALS" --trials "$LATENCY_TRIALS" --gap 20ms --timeout 1s \
        --name "latency-$backend" | tee -a "$DIR/probe.log" | result)
    settle "$DIR/server.log" 30
    # Only the probe knocks now: every grant since $off is one of its.
    local g; g=$("$BIN/knock-fleet" grants --log "$DIR/server.log" --from-byte "$off" "${only[@]}" --name "live-$backend" | result)
    local live
    if [ "$(field "$g" live_n)" = 0 ]; then live="n/a (no figure in the grant lines)"; else
        live="$(field "$g" live_p50_ms) / $(field "$g" live_p90_ms) / $(field "$g" live_p99_ms) ms ($(field "$g" live_n) grants)"; fi
    echo "| $backend | $(field "$p" p50_ms) / $(field "$p" p90_ms) / $(field "$p" p99_ms) ms ($(field "$p" honoured)/$(field "$p" trials) honoured) | $live |" >>"$LATENCY"
    stop_server
    lab_del
    [ -n "${KEEP_WORK:-}" ] || rm -rf "$DIR"
}

# ------------------------------------------------------------------ run --
ALL=""
if [ "$REFERENCE" -gt 0 ] && ! grep -qw "$REFERENCE" <<<"$SIZES"; then ALL="$REFERENCE"; fi
ALL="$ALL $SIZES"
i=0
for n in $ALL; do i=$((i + 1)); run_size "$n" "$i"; done
for b in $BACKENDS; do i=$((i + 1)); latency "$b" "$i"; done

# ---------------------------------------------------------------- results --
OUTPUT=$WORK/results.md
{
    echo "Fleets from \`knock-fleet enroll\`, one client in $PUBLIC_EVERY public-key; nftables; floods at $RATE pps for ${FLOOD_SECONDS}s;"
    echo "$(nproc) CPUs, Linux $(uname -r), state on $(df --output=fstype "$WORK" | tail -1); $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')."
    echo
    echo "| clients | time to ready | reload: unchanged / +1% | peak RSS (VmHWM): ready / after reloads / end | server CPU per junk datagram | per wrong-key datagram | longest knock delay over ${IDLE_SECONDS} s without reload: server's arrival → live / send → grant logged (honoured / sent) | longest knock delay during a reload: server's arrival → live / send → grant logged | honoured / sent during that reload |"
    echo "|---|---|---|---|---|---|---|---|---|"
    cat "$TABLE"
    if [ -s "$BURSTS" ]; then
        echo
        echo "| clients | burst of $BURST knocks from $BURST clients within $BURST_WITHIN: honoured | first send → last grant logged | send → grant logged p50 / p99 / max | server's arrival → live p50 / max |"
        echo "|---|---|---|---|---|"
        cat "$BURSTS"
    fi
    if [ -s "$LATENCY" ]; then
        echo
        if [ "$LATENCY_KNOCKER" = fleet ]; then by="each from another fleet client"; else by="all from one shared-key client"; fi
        echo "| backend ($LATENCY_CLIENTS clients) | knock → first TCP connect p50 / p90 / p99 ($LATENCY_TRIALS knocks 20 ms apart, $by) | server's arrival → live p50 / p90 / p99 |"
        echo "|---|---|---|"
        cat "$LATENCY"
    fi
    echo
    echo "The delay columns cover fleets of 1,000 or more (smaller fleets would knock with each client every few ms). Server's arrival → live: the largest \`live X ms after arrival\` of the grant lines; send → grant logged: from the knocker's send to the grant line's timestamp; loop's longest step: the server's own \"longest step\" line after the reload. \"n/a\": the server logs no such figure."
    [ -n "$NOISY" ] && echo "Warning: other work was running on this machine before:$NOISY; those figures are disturbed."
    echo
    echo "Details:"
    echo
    cat "$NOTES"
} >"$OUTPUT"

log "results"
cat "$OUTPUT"
if [ -n "${OUT:-}" ]; then cp "$OUTPUT" "$OUT"; fi
exit 0
