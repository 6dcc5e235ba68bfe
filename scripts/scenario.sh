#!/usr/bin/env bash
# Runs one end-to-end scenario with real quorumd processes on loopback and
# prints `PASS: ...` (exit 0) or `FAIL: ...` (exit 1).
#
#   scripts/scenario.sh bootstrap   3 nodes launched together agree on leader 1;
#                                   prints the measured bootstrap times
#   scripts/scenario.sh timeout     1 node of 3 with a 1 s quorum wait exits 3
#                                   and names the missing peers
#   scripts/scenario.sh shutdown    SIGTERM of the leader: it exits 0 and the
#                                   others agree on a new leader; then the rest
#                                   exit 0 on SIGTERM
#
# Each run writes its own cluster file with free ports into a temp dir and
# kills only the processes it started. QUORUMD overrides the binary
# (default target/release/quorumd).

set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${QUORUMD:-$root/target/release/quorumd}
scenario=${1:-}

work=$(mktemp -d "${TMPDIR:-/tmp}/quorumd-scenario.XXXXXX")
declare -A pid=() addr=() admin=()
cfg=$work/cluster.toml

cleanup() {
    local p
    for p in "${pid[@]}"; do
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Milliseconds since the epoch (bash 5 EPOCHREALTIME, either decimal mark;
# GNU date otherwise).
if [[ -n ${EPOCHREALTIME:-} ]]; then
    now_ms() { local us=${EPOCHREALTIME//[.,]/}; echo $((us / 1000)); }
else
    now_ms() { date +%s%3N; }
fi

pass() { echo "PASS: $scenario: $*"; exit 0; }

fail() {
    echo "FAIL: $scenario: $*"
    local id
    for id in "${!addr[@]}"; do
        [[ -s $work/node-$id.log ]] || continue
        echo "---- node-$id stderr (last 20 lines)"
        tail -n 20 "$work/node-$id.log" | sed 's/^/  /'
    done
    exit 1
}

# Sets REPLY to a loopback port in 20000-31999 that nothing listens on and
# that this run has not used yet (below the ephemeral range, so the nodes'
# own client sockets cannot take it).
used_ports=" "
next_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 12000))
        [[ $used_ports == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            used_ports+="$p "
            REPLY=$p
            return
        fi
    done
}

# write_cluster NAME SIZE QUORUM_WAIT: the cluster3-style file for this run.
write_cluster() {
    local name=$1 size=$2 wait=$3 id
    {
        printf '[cluster]\nname = "%s"\nquorum_wait_timeout = "%s"\n' "$name" "$wait"
        printf 'heartbeat_interval = "1s"\npeer_timeout = "3s"\ndata_dir = "%s/data"\n' "$work"
        printf '\n[raft]\ntick_interval = "25ms"\nelection_ticks = 10\nheartbeat_ticks = 2\n'
        for ((id = 1; id <= size; id++)); do
            next_port; addr[$id]=127.0.0.1:$REPLY
            next_port; admin[$id]=127.0.0.1:$REPLY
            printf '\n[[node]]\nid = %d\naddr = "%s"\nadmin = "%s"\n' "$id" "${addr[$id]}" "${admin[$id]}"
        done
    } >"$cfg"
    "$bin" check "$cfg" >/dev/null 2>"$work/check.log" ||
        fail "quorumd check rejected the scenario file: $(cat "$work/check.log")"
}

start_node() {
    local id=$1
    RUST_LOG=${RUST_LOG:-info} "$bin" run --cluster "$cfg" --node-id "$id" \
        </dev/null >/dev/null 2>>"$work/node-$id.log" &
    pid[$id]=$!
}

# stop_node ID SIGNAL
stop_node() { kill "-$2" "${pid[$1]}" 2>/dev/null; }

# wait_exit ID TIMEOUT_MS: sets CODE to the exit code, or 124 on timeout.
wait_exit() {
    local id=$1 deadline=$(($(now_ms) + $2)) p=${pid[$1]}
    while kill -0 "$p" 2>/dev/null; do
        if (($(now_ms) > deadline)); then
            CODE=124
            return
        fi
        sleep 0.02
    done
    wait "$p"
    CODE=$?
    unset "pid[$id]"
}

# json_field JSON KEY: the scalar value of KEY (number, true, false, null).
json_field() { sed -n "s/.*\"$2\":[[:space:]]*\([^,}]*\).*/\1/p" <<<"$1"; }

status_of() { curl -s -m 1 "http://${admin[$1]}/admin/cluster/status"; }

http_code() { curl -s -m 1 -o /dev/null -w '%{http_code}' "http://${admin[$1]}$2"; }

# agreed IDS...: if every node reports bootstrap complete with the same known
# leader and term, sets LEADER and LEADER_TERM and succeeds.
agreed() {
    local id s l t leader='' term=''
    for id in "$@"; do
        s=$(status_of "$id") || return 1
        [[ $(json_field "$s" bootstrap_complete) == true ]] || return 1
        l=$(json_field "$s" leader_id)
        t=$(json_field "$s" term)
        [[ $l =~ ^[0-9]+$ && $t =~ ^[0-9]+$ ]] || return 1
        [[ -z $leader || ($l == "$leader" && $t == "$term") ]] || return 1
        leader=$l term=$t
    done
    LEADER=$leader LEADER_TERM=$term
}

# wait_agreed TIMEOUT_MS NOT_LEADER MIN_TERM IDS...: polls every 10 ms until
# IDS agree on a leader other than NOT_LEADER with a term >= MIN_TERM.
wait_agreed() {
    local deadline=$(($(now_ms) + $1)) not=$2 min_term=$3
    shift 3
    while (($(now_ms) <= deadline)); do
        if agreed "$@" && [[ $LEADER != "$not" ]] && ((LEADER_TERM >= min_term)); then
            return 0
        fi
        sleep 0.01
    done
    return 1
}

bootstrap_line() { grep -o 'bootstrap complete: leader=[0-9]* term=[0-9]* elapsed=[0-9]*ms' "$work/node-$1.log" | head -n 1; }

scenario_bootstrap() {
    write_cluster scenario-bootstrap 3 10s
    local t0 t1 id line
    t0=$(now_ms)
    for id in 1 2 3; do start_node "$id"; done
    wait_agreed 15000 none 0 1 2 3 || fail "the 3 nodes did not agree on a leader within 15 s"
    t1=$(now_ms)
    echo "all 3 nodes report leader=$LEADER term=$LEADER_TERM $((t1 - t0)) ms after launch (curl polling every 10 ms)"
    [[ $LEADER == 1 ]] || fail "leader is node $LEADER, expected node 1 (the lowest id)"
    for id in 1 2 3; do
        line=$(bootstrap_line "$id")
        local tries=0
        while [[ -z $line ]] && ((tries++ < 100)); do sleep 0.02; line=$(bootstrap_line "$id"); done
        [[ -n $line ]] || fail "node-$id logged no 'bootstrap complete' line"
        echo "  node-$id: $line"
        [[ $(http_code "$id" /ready) == 200 ]] || fail "node-$id /ready is not 200"
    done
    for id in 1 2 3; do stop_node "$id" TERM; done
    for id in 1 2 3; do
        wait_exit "$id" 15000
        ((CODE == 0)) || fail "node-$id exited with $CODE after SIGTERM"
    done
    pass "3 nodes agreed on leader 1 in $((t1 - t0)) ms; all /ready 200; all exited 0"
}

scenario_timeout() {
    write_cluster scenario-timeout 3 1s
    local t0 t1 err
    t0=$(now_ms)
    start_node 1
    wait_exit 1 15000
    t1=$(now_ms)
    err=$(cat "$work/node-1.log")
    ((CODE != 124)) || fail "node-1 still running 15 s after a 1 s quorum wait"
    ((CODE == 3)) || fail "node-1 exited with $CODE, expected 3"
    [[ $err == *"2@${addr[2]}"* && $err == *"3@${addr[3]}"* ]] ||
        fail "stderr does not name the missing peers 2@${addr[2]} and 3@${addr[3]}"
    echo "node-1 exited 3 after $((t1 - t0)) ms:"
    grep -F "2@${addr[2]}" "$work/node-1.log" | sed 's/^/  /'
    pass "exit 3 with the missing peers named"
}

scenario_shutdown() {
    write_cluster scenario-shutdown 3 10s
    local id old new others=() t0 t1
    for id in 1 2 3; do start_node "$id"; done
    wait_agreed 15000 none 0 1 2 3 || fail "the 3 nodes did not agree on a leader within 15 s"
    old=$LEADER
    local old_term=$LEADER_TERM
    for id in 1 2 3; do [[ $id == "$old" ]] || others+=("$id"); done
    echo "leader is node-$old (term $old_term); sending it SIGTERM"
    t0=$(now_ms)
    stop_node "$old" TERM
    wait_agreed 15000 "$old" $((old_term + 1)) "${others[@]}" ||
        fail "nodes ${others[*]} did not agree on a new leader within 15 s"
    t1=$(now_ms)
    new=$LEADER
    echo "nodes ${others[*]} agree on new leader node-$new (term $LEADER_TERM) $((t1 - t0)) ms after the SIGTERM (curl polling every 10 ms)"
    wait_exit "$old" 15000
    ((CODE == 0)) || fail "old leader node-$old exited with $CODE after SIGTERM, expected 0"
    for id in "${others[@]}"; do stop_node "$id" TERM; done
    for id in "${others[@]}"; do
        wait_exit "$id" 15000
        ((CODE == 0)) || fail "node-$id exited with $CODE after SIGTERM, expected 0"
    done
    pass "leader node-$old handed off to node-$new in $((t1 - t0)) ms; all 3 nodes exited 0"
}

case $scenario in
    bootstrap | timeout | shutdown) ;;
    *)
        echo "usage: $0 bootstrap|timeout|shutdown" >&2
        exit 2
        ;;
esac
[[ -x $bin ]] || { echo "FAIL: $scenario: $bin not built; run \`make build\` first"; exit 1; }
for tool in curl sed grep; do
    command -v "$tool" >/dev/null || { echo "FAIL: $scenario: $tool is required"; exit 1; }
done
"scenario_$scenario"
