#!/usr/bin/env bash
# Runs every node of a cluster file in the foreground, each output line
# prefixed with `[node-N] `. Ctrl-C stops every node gracefully.
#
#   scripts/cluster.sh clusters/cluster3.toml
#
# The nodes run in their own sessions, so the terminal's Ctrl-C reaches only
# this script and the line filters; the script then sends each node exactly
# one SIGTERM, however many SIGTERMs or SIGINTs reach the script at once (a
# second signal would make a node exit at once, which a second Ctrl-C a
# second later still does on purpose). Exits 0 if every node exited 0.
#
# QUORUMD overrides the binary (make sets it to the static release build;
# default target/release/quorumd).

set -uo pipefail

usage() { echo "usage: $0 CLUSTER_FILE" >&2; exit 2; }
[[ $# -eq 1 ]] || usage

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ -f $1 ]] || { echo "$0: no such cluster file: $1" >&2; exit 2; }
file=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
bin=${QUORUMD:-$root/target/release/quorumd}
[[ -x $bin ]] || { echo "$0: $bin not built; run \`make build\` first" >&2; exit 2; }
for tool in setsid setpriv; do
    command -v "$tool" >/dev/null || { echo "$0: needs $tool (util-linux)" >&2; exit 2; }
done

# Relative data_dir and [tls] paths are relative to the cluster file; the
# nodes run from the repo root.
cd "$root" || exit 2

"$bin" check "$file" >/dev/null || exit 2

# Node ids: the `id = N` lines of the [[node]] tables.
mapfile -t ids < <(sed -n 's/^[[:space:]]*id[[:space:]]*=[[:space:]]*\([0-9][0-9]*\).*/\1/p' "$file")
[[ ${#ids[@]} -gt 0 ]] || { echo "$0: no [[node]] ids in $file" >&2; exit 2; }

fifos=$(mktemp -d "${TMPDIR:-/tmp}/quorumd-cluster.XXXXXX")
declare -A node_pid=()
filter_pids=()
stopping=0

# One SIGTERM or SIGINT to the process group is one clean shutdown, however
# many copies of it arrive: `timeout` or a supervisor signals the whole group,
# and make passes the SIGTERM it gets on to this script too. Only a Ctrl-C
# typed again a second or more later means "exit at once".
first_stop=0
stop_nodes() {
    local sig=$1 now
    now=$(date +%s%N)
    stopping=$((stopping + 1))
    if [[ $stopping -eq 1 ]]; then
        first_stop=$now
        echo "[cluster] stopping nodes ${ids[*]} (SIGTERM)" >&2
    elif [[ $sig == INT ]] && (( now - first_stop >= 1000000000 )); then
        echo "[cluster] second Ctrl-C: nodes exit at once" >&2
    else
        return
    fi
    for id in "${!node_pid[@]}"; do
        kill -TERM "${node_pid[$id]}" 2>/dev/null
    done
}
trap 'stop_nodes INT' INT
trap 'stop_nodes TERM' TERM HUP
# A closed output pipe must not kill the script before it has stopped the nodes.
trap '' PIPE
trap 'rm -rf "$fifos"' EXIT

echo "[cluster] starting nodes ${ids[*]} of $file (Ctrl-C stops them)" >&2
for id in "${ids[@]}"; do
    fifo=$fifos/node-$id
    mkfifo "$fifo"
    # The filter must outlive Ctrl-C so the nodes' shutdown lines still print.
    ( trap '' INT TERM; exec sed -u "s/^/[node-$id] /" <"$fifo" ) &
    filter_pids+=($!)
    # setsid: no terminal signals reach the node; only stop_nodes does.
    # setpriv --pdeathsig: if this script dies anyway (its terminal closed,
    # kill -9), each node still gets one SIGTERM and shuts down cleanly.
    setsid setpriv --pdeathsig TERM "$bin" run --cluster "$file" --node-id "$id" >"$fifo" 2>&1 </dev/null &
    node_pid[$id]=$!
done

# `wait PID` returns early (>128) when a trapped signal arrives; loop until
# the node has really exited and been reaped.
rc=0
for id in "${ids[@]}"; do
    pid=${node_pid[$id]}
    while :; do
        wait "$pid"
        code=$?
        kill -0 "$pid" 2>/dev/null || break
    done
    unset "node_pid[$id]"
    if [[ $code -ne 0 ]]; then
        echo "[cluster] node-$id exited with code $code" >&2
        rc=1
    fi
done
for pid in "${filter_pids[@]}"; do
    wait "$pid" 2>/dev/null
done
[[ $rc -eq 0 ]] && echo "[cluster] all nodes exited cleanly" >&2
exit "$rc"
