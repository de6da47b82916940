# The namespace lab and the measuring helpers that bench/run.sh and
# bench/scale.sh share; sourced, not run.
#
# lab_begin PREFIX NAME: sets P (the prefix of this run's namespaces and
# links: PREFIX and the shell's pid) and WORK (a new work directory,
# /var/tmp/knock-NAME.P.XXXX), and arranges that on exit every process in
# PIDS is stopped, every namespace made with `netns` is removed with what
# still runs in it, and WORK is deleted (kept when KEEP_WORK is set).

lab_begin() {
    P=$1$$
    WORK=$(mktemp -d "/var/tmp/knock-$2.$P.XXXX")
    NAMESPACES=()
    PIDS=()
    trap lab_cleanup EXIT
    trap 'exit 130' INT TERM
}

lab_cleanup() {
    local pid ns
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for ns in "${NAMESPACES[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    if [ -z "${KEEP_WORK:-}" ]; then rm -rf "$WORK"; else echo "work dir kept: $WORK" >&2; fi
}

netns() { ip netns add "$1"; NAMESPACES+=("$1"); ip -n "$1" link set lo up; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# link NS_A DEV_A ADDR_A NS_B DEV_B ADDR_B (v4 /24)
link() {
    ip link add "$2" netns "$1" type veth peer name "$5" netns "$4"
    ip -n "$1" addr add "$3/24" dev "$2"; ip -n "$1" link set "$2" up
    ip -n "$4" addr add "$6/24" dev "$5"; ip -n "$4" link set "$5" up
}

# CPU time in ns of all the threads of a process (scheduler runtime: precise).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'; }
vm() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
rx_packets() { ip -n "$1" -s -j link show dev "$2" | sed -E 's/.*"rx":\{[^}]*"packets":([0-9]+).*/\1/'; }
# Drops of every packet socket in a namespace (kernel sk_drops: receive queue full).
pkt_drops() {
    in_ns "$1" ss -0 -a -m -H 2>/dev/null | grep -o ',d[0-9]*)' | tr -dc '0-9\n' | awk '{s += $1} END {print s + 0}'
}

# wait_quiet PHASE: this machine may be shared; before each measured phase,
# wait (at most QUIET_MAX s, default 60) until the CPUs are idle for a
# second, and say so, and add PHASE to NOISY, if not.
busy_pct() {
    local a b
    a=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $5 + $6}' /proc/stat); sleep 1
    b=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $5 + $6}' /proc/stat)
    echo "$a $b" | awk '{t = ($3 - $1) + ($4 - $2); printf "%.0f\n", (t > 0 ? 100 * ($3 - $1) / t : 0)}'
}
NOISY=""
wait_quiet() {
    local pct=0
    for _ in $(seq "${QUIET_MAX:-60}"); do
        pct=$(busy_pct)
        [ "$pct" -le 10 ] && return 0
    done
    echo "warning: the CPUs are ${pct}% busy with other work before phase $1; its figures are disturbed" >&2
    NOISY="$NOISY $1"
}

# The RESULT line a bench tool printed last, and a field of such a line
# ("n/a" if it has none).
result() { grep '^RESULT' | tail -1; }
field() { local v; v=$(sed -nE "s/.* $2=([^ ]*).*/\1/p" <<<"$1"); echo "${v:-n/a}"; }
