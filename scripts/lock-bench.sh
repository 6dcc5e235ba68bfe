#!/usr/bin/env bash
# Measures `quorumd lock` beside `etcdctl lock` (etcd's lease-based lock), in
# the same run, on 3-node clusters on loopback:
#
#   1. kill -9 of the holder's box (its node and the holder process) until
#      the next holder's command runs, lock-delay 0, the shortest TTL each
#      allows (quorumd: 10s, Consul's floor; etcd: --ttl 2);
#   2. a clean release (the holder's command exits) until the next holder's
#      command runs;
#   3. lock acquisitions per second with 8 contenders, each running
#      `lock PREFIX -- true` in a loop (a process, a session, an acquire, a
#      release and a destroy per acquisition, for both).
#
#   scripts/lock-bench.sh [ROUNDS]      (default 3 rounds of 1 and 2)
#
# QUORUMD overrides the binary (default target/release/quorumd). Needs etcd
# and etcdctl on PATH (Debian: etcd-server, etcd-client). Prints one line per
# measure; times are medians over the rounds.

set -euo pipefail
rounds=${1:-3}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${QUORUMD:-$root/target/release/quorumd}
[[ -x $bin ]] || { echo "$0: $bin not built" >&2; exit 2; }
command -v etcd >/dev/null && command -v etcdctl >/dev/null ||
    { echo "$0: needs etcd and etcdctl (Debian: etcd-server etcd-client)" >&2; exit 2; }
export ETCDCTL_API=3

work=$(mktemp -d "${TMPDIR:-/tmp}/lock-bench.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

now_ms() { date +%s%3N; }
# A base port whose 40 ports above it nothing listens on now (the machine
# may be shared with other tests).
pick_base() {
    local listening
    listening=$(ss -Hltn 2>/dev/null | awk '{print $4}' | sed 's/.*://')
    while :; do
        # Below the kernel's ephemeral ports (32768 and up), so that no
        # outgoing connection holds one of them.
        base=$((12000 + RANDOM % 20000))
        local p clash=0
        for p in $(seq $((base + 1)) $((base + 40))); do
            grep -qx "$p" <<<"$listening" && { clash=1; break; }
        done
        ((clash == 0)) && return 0
    done
}
# Waits up to 60 s for a file to be written.
await() { for _ in $(seq 1200); do [[ -s $1 ]] && return 0; sleep 0.05; done; return 1; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# ---- quorumd ----
qfile=$work/q.toml
q_start() {
    pick_base
    rm -rf "$work/qdata"
    cat >"$qfile" <<TOML
[cluster]
name = "lockbench"
quorum_wait_timeout = "30s"
heartbeat_interval = "1s"
peer_timeout = "3s"
data_dir = "$work/qdata"
[raft]
tick_interval = "100ms"
election_ticks = 3
heartbeat_ticks = 1
TOML
    for i in 1 2 3; do
        printf '[[node]]\nid = %d\naddr = "127.0.0.1:%d"\nadmin = "127.0.0.1:%d"\n' \
            "$i" $((base + i)) $((base + 10 + i)) >>"$qfile"
    done
    for i in 1 2 3; do
        "$bin" run --cluster "$qfile" --node-id "$i" 2>"$work/q$i.log" &
        qpid[i]=$!; pids+=("${qpid[i]}")
    done
    for _ in $(seq 100); do
        "$bin" status --cluster "$qfile" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "$0: quorumd cluster did not form" >&2; exit 1
}
q_stop() { for i in 1 2 3; do kill -9 "${qpid[i]}" 2>/dev/null || true; done; wait 2>/dev/null || true; }
q_lock() { # node prefix cmd...
    local node=$1 prefix=$2; shift 2
    "$bin" lock --cluster "$qfile" --node "$node" --ttl 10s --lock-delay 0s "$prefix" -- "$@"
}

# ---- etcd ----
e_start() {
    pick_base
    rm -rf "$work/edata"
    local cluster="" i
    for i in 1 2 3; do cluster+="e$i=http://127.0.0.1:$((base + 20 + i)),"; done
    for i in 1 2 3; do
        etcd --name "e$i" --data-dir "$work/edata/e$i" \
            --listen-peer-urls "http://127.0.0.1:$((base + 20 + i))" \
            --initial-advertise-peer-urls "http://127.0.0.1:$((base + 20 + i))" \
            --listen-client-urls "http://127.0.0.1:$((base + 30 + i))" \
            --advertise-client-urls "http://127.0.0.1:$((base + 30 + i))" \
            --initial-cluster "${cluster%,}" --initial-cluster-state new \
            >"$work/e$i.log" 2>&1 &
        epid[i]=$!; pids+=("${epid[i]}")
    done
    local eps="127.0.0.1:$((base + 31)),127.0.0.1:$((base + 32)),127.0.0.1:$((base + 33))"
    for _ in $(seq 100); do
        etcdctl --endpoints "$eps" endpoint health >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "$0: etcd cluster did not form" >&2; exit 1
}
e_stop() { for i in 1 2 3; do kill -9 "${epid[i]}" 2>/dev/null || true; done; wait 2>/dev/null || true; }
e_lock() { # node name cmd...
    local node=$1 name=$2; shift 2
    etcdctl --endpoints "127.0.0.1:$((base + 30 + node))" lock --ttl 2 "$name" -- "$@"
}

# kill -9 of the holder's box: node 3 and the holder; the waiter asks node 1.
failover() { # impl round
    local impl=$1 r=$2 mark=$work/ran-$1-$2 holder waiter t0 t1
    # The holder runs in a process group of its own, so that one kill
    # takes it and its command, as the box's death would.
    setsid bash -c "$(declare -f "${impl}_lock"); $(declare -p bin qfile base 2>/dev/null); export ETCDCTL_API=3; ${impl}_lock 3 fo$r sh -c 'touch $work/held-$impl-$r; exec sleep 1000'" >/dev/null 2>&1 &
    holder=$!
    for _ in $(seq 200); do [[ -e $work/held-$impl-$r ]] && break; sleep 0.05; done
    "${impl}_lock" 1 "fo$r" sh -c "date +%s%3N > $mark" >/dev/null 2>&1 &
    waiter=$!
    sleep 1
    t0=$(now_ms)
    if [[ $impl == q ]]; then kill -9 "${qpid[3]}"; else kill -9 "${epid[3]}"; fi
    kill -9 -- "-$holder" 2>/dev/null || true
    await "$mark" || true
    kill -9 "$waiter" 2>/dev/null || true
    t1=$(cat "$mark" 2>/dev/null || echo "")
    if [[ -n $t1 ]]; then echo $((t1 - t0)); else echo "no-failover"; fi
}

# clean release: the holder's command exits; the waiter was queued.
handover() { # impl round
    local impl=$1 r=$2 mark=$work/next-$1-$2 end=$work/end-$1-$2 holder waiter
    "${impl}_lock" 1 "ho$r" sh -c "sleep 1.5; date +%s%3N > $end" >/dev/null 2>&1 &
    holder=$!
    sleep 0.5
    "${impl}_lock" 2 "ho$r" sh -c "date +%s%3N > $mark" >/dev/null 2>&1 &
    waiter=$!
    if await "$end" && await "$mark"; then
        echo $(( $(cat "$mark") - $(cat "$end") ))
    else
        echo "no-handover"
    fi
    kill -9 "$holder" "$waiter" 2>/dev/null || true
}

throughput() { # impl seconds
    local impl=$1 secs=$2 c n=0 until
    until=$(( $(now_ms) + secs * 1000 ))
    for c in $(seq 8); do
        ( k=0; while (( $(now_ms) < until )); do
              "${impl}_lock" $(( (c % 3) + 1 )) tp true >/dev/null 2>&1 && k=$((k + 1))
          done; echo "$k" >"$work/tp-$impl-$c" ) &
    done
    wait
    for c in $(seq 8); do n=$((n + $(cat "$work/tp-$impl-$c"))); done
    awk -v n="$n" -v s="$secs" 'BEGIN { printf "%.1f", n / s }'
}

echo "# $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $("$bin" --version); $(etcd --version | head -1)"
for impl in q e; do
    name=$([[ $impl == q ]] && echo "quorumd lock" || echo "etcdctl lock")
    fo=(); ho=()
    for r in $(seq "$rounds"); do
        "${impl}_start"
        ho+=("$(handover "$impl" "$r")")
        fo+=("$(failover "$impl" "$r")")
        "${impl}_stop"
    done
    "${impl}_start"
    tp=$(throughput "$impl" 20)
    "${impl}_stop"
    echo "$name: kill -9 of the holder's box to the next holder: median $(printf '%s\n' "${fo[@]}" | median) ms (${fo[*]})"
    echo "$name: clean release to the next holder: median $(printf '%s\n' "${ho[@]}" | median) ms (${ho[*]})"
    echo "$name: acquisitions per second, 8 contenders: $tp"
done
