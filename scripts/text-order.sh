#!/usr/bin/env bash
# Regenerates scripts/text-order.ld: the functions a node runs, which the
# release build's linker places together at the start of the code (see
# build.rs, and "Memory" in docs/architecture.md). Not needed to build.
#
#   scripts/text-order.sh   (needs valgrind, curl, gcc, nm, ld.bfd, cargo; perf if present)
#
# 1. It builds the static release binary with its symbols (the same names
#    as the shipped build's: build.rs strips it when it links).
# 2. It runs a 3-node cluster on 127.0.0.1 with every node under valgrind's
#    callgrind, and drives what nodes do: start, election, puts, gets,
#    deletes, listings, transactions, sessions and locks, blocking queries,
#    status and metrics, a leader that stops and one that is killed and the
#    failover after each, restarts that replay the log, a fresh cluster
#    whose nodes start one by one, a cluster with mutual TLS; with
#    RUST_LOG=info, as the systemd unit sets it, and without. Callgrind
#    writes every function that ran.
# 3. With perf, up to three times: it links the binary with the list, runs
#    the nodes natively under `perf record -e page-faults`, and adds every
#    function whose first run mapped code, so that what valgrind's CPU does
#    not run (the AVX-512 variants; startup code of the static C library)
#    joins the list too; then once with TLS (ring picks its code by the CPU
#    as well).
#
# A function that runs but is missing from the list still works; it costs
# memory: the kernel maps up to 64 KiB of the code around it.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
for tool in valgrind curl gcc nm ld.bfd cargo; do
  command -v "$tool" >/dev/null || { echo "text-order: $tool is not installed" >&2; exit 1; }
done
TARGET=$(rustc -vV | sed -n 's/^host: //p')
OUT=target/text-order
rm -rf "$OUT/data" "$OUT/data-tls" "$OUT"/cg.* "$OUT"/pf.* "$OUT"/*.log "$OUT"/native*.txt
mkdir -p "$OUT"
touch "$OUT/native.txt" "$OUT/native-tls.txt"
BIN="$OUT/build/$TARGET/release/quorumd"
build() {
  RUSTFLAGS="-C target-feature=+crt-static -C link-arg=-Wl,-Map=$PWD/$OUT/link.map" \
    QUORUMD_KEEP_SYMBOLS=1 CARGO_TARGET_DIR="$OUT/build" \
    cargo build --release --target "$TARGET" -p quorumd
  # The functions the compiler put among the unlikely ones (#[cold]).
  sed -n 's/^ \.text\.unlikely\.\([^ ]*\).*/\1/p' "$OUT/link.map" | sort -u > "$OUT/unlikely.txt"
}
CONF="$OUT/cluster.toml"
cat > "$CONF" <<EOF
[cluster]
name = "text-order"
quorum_wait_timeout = "120s"
heartbeat_interval = "1s"
peer_timeout = "10s"
data_dir = "$PWD/$OUT/data"

[raft]
tick_interval = "100ms"
election_ticks = 30

[[node]]
id = 1
addr = "127.0.0.1:17301"
admin = "127.0.0.1:18301"

[[node]]
id = 2
addr = "127.0.0.1:17302"
admin = "127.0.0.1:18302"

[[node]]
id = 3
addr = "127.0.0.1:17303"
admin = "127.0.0.1:18303"
EOF

# The same cluster with mutual TLS, on other ports.
sed -e 's/^name = "text-order"/name = "text-order-tls"/' -e 's/:1730/:1731/' -e 's/:1830/:1831/' \
  -e "s|^data_dir = .*|data_dir = \"$PWD/$OUT/data-tls\"|" "$CONF" |
  awk -v c="$PWD/$OUT/certs" '{ print } /^election_ticks/ {
    print "\n[tls]"; print "ca = \"" c "/ca.pem\""; print "cert = \"" c "/node-{id}.pem\""
    print "key = \"" c "/node-{id}.key\""; print "client_cert = \"" c "/client.pem\""
    print "client_key = \"" c "/client.key\"" }' > "$OUT/cluster-tls.toml"
conf() { if [ "$MODE" = tls ]; then echo "$OUT/cluster-tls.toml"; else echo "$CONF"; fi; }

# The cluster the nodes run: plain, or with mutual TLS (`tls`).
MODE=plain
url() {
  if [ "$MODE" = tls ]; then echo "https://127.0.0.1:1831$1"; else echo "http://127.0.0.1:1830$1"; fi
}
# curl, with the client certificate when the cluster has TLS.
q() {
  if [ "$MODE" = tls ]; then
    curl -sf --cacert "$OUT/certs/ca.pem" --cert "$OUT/certs/client.pem" \
      --key "$OUT/certs/client.key" "$@"
  else
    curl -sf "$@"
  fi
}
get() { q "$(url "$1")$2"; }

declare -A PIDS
# The log filter of the nodes started next: `info`, as the systemd unit sets
# it (parsing it runs code of its own), or none, as `make cluster3` runs.
LOG=info
# Node $1, under callgrind, or natively under perf when $2 is a pass number.
start() {
  if [ -n "$LOG" ]; then export RUST_LOG=$LOG; else unset RUST_LOG; fi
  if [ -z "${2:-}" ]; then
    valgrind --tool=callgrind --demangle=no --dump-instr=no --compress-strings=no \
      --callgrind-out-file="$OUT/cg.$MODE.$1.%p" \
      "$BIN" run --cluster "$(conf)" --node-id "$1" > "$OUT/node$1.$RANDOM.log" 2>&1 &
  else
    perf record -q -e page-faults -c 1 -d -o "$OUT/pf.$2.$1.$RANDOM" \
      -- "$BIN" run --cluster "$(conf)" --node-id "$1" > "$OUT/native$1.$RANDOM.log" 2>&1 &
  fi
  PIDS[$1]=$!
}
# SIGTERM: a node stops cleanly (callgrind writes its profile), and perf
# passes it on to the node it runs.
stop() {
  [ -n "${PIDS[$1]:-}" ] || return 0
  kill -TERM "${PIDS[$1]}" 2>/dev/null || true
  wait "${PIDS[$1]}" 2>/dev/null || true
  unset 'PIDS[$1]'
}
cleanup() {
  for n in "${!PIDS[@]}"; do kill -TERM "${PIDS[$n]}" 2>/dev/null || true; done
  for _ in $(seq 100); do
    alive=0
    for n in "${!PIDS[@]}"; do kill -0 "${PIDS[$n]}" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return
    sleep 0.1
  done
  for n in "${!PIDS[@]}"; do kill -KILL "${PIDS[$n]}" 2>/dev/null || true; done
}
trap cleanup EXIT

# The node that says it leads (a dead leader's followers may still name it).
leader() {
  for _ in $(seq 600); do
    for n in 1 2 3; do
      if get "$n" /admin/cluster/status 2>/dev/null | grep -q '"role":"leader"'; then
        echo "$n"
        return
      fi
    done
    sleep 0.5
  done
  echo "text-order: no leader" >&2
  exit 1
}

work() {
  local u i n s
  u=$(url "$1")
  for i in $(seq 40); do q -X PUT -d "value-$i" "$u/v1/kv/app/k$i" >/dev/null || true; done
  for n in 1 2 3; do
    q "$(url "$n")/v1/kv/app/k1" >/dev/null || true
    q "$(url "$n")/v1/kv/app/k1?stale" >/dev/null || true
    q "$(url "$n")/v1/kv/app/k1?consistent" >/dev/null || true
    q "$(url "$n")/v1/kv/app/?recurse" >/dev/null || true
    q "$(url "$n")/v1/kv/app/?keys" >/dev/null || true
    q "$(url "$n")/v1/kv/app/k2?raw" >/dev/null || true
    q "$(url "$n")/admin/cluster/status" >/dev/null || true
    q "$(url "$n")/metrics" >/dev/null || true
    q "$(url "$n")/v1/status/leader" >/dev/null || true
    q "$(url "$n")/v1/kv/app/k3?index=1&wait=1s" >/dev/null || true
  done
  q -X PUT -d v "$u/v1/kv/app/k1?cas=0" >/dev/null || true
  q -X PUT -d v "$u/v1/kv/app/k1?flags=7" >/dev/null || true
  q -X DELETE "$u/v1/kv/app/k40" >/dev/null || true
  q -X DELETE "$u/v1/kv/app/k3?recurse" >/dev/null || true
  q -X PUT -d '[{"KV":{"Verb":"set","Key":"app/t","Value":"dg=="}},{"KV":{"Verb":"get","Key":"app/t"}}]' \
    "$u/v1/txn" >/dev/null || true
  local s
  s=$(q -X PUT -d '{"Name":"text-order","TTL":"30s"}' "$u/v1/session/create" |
    sed -n 's/.*"ID":"\([^"]*\)".*/\1/p') || true
  if [ -n "${s:-}" ]; then
    q -X PUT -d held "$u/v1/kv/app/lock?acquire=$s" >/dev/null || true
    q -X PUT "$u/v1/session/renew/$s" >/dev/null || true
    q "$u/v1/session/info/$s" >/dev/null || true
    q "$u/v1/session/list" >/dev/null || true
    q -X PUT "$u/v1/kv/app/lock?release=$s" >/dev/null || true
    q -X PUT "$u/v1/session/destroy/$s" >/dev/null || true
  fi
  q "$u/ui" >/dev/null || true
  q "$u/v1/kv/nope" >/dev/null || true
  q -X PUT -d x "$u/v1/kv/" >/dev/null || true
  # The follower side of a write load: enough entries for a compaction.
  for i in $(seq 200); do q -X PUT -d "$i" "$u/v1/kv/load/$((i % 50))" >/dev/null || true; done
}

# Work on the leader; it stops, and the next one gets the same; then every
# node stops.
work_and_failover() {
  local l n
  l=$(leader)
  work "$l"
  stop "$l"
  n=$(leader)
  work "$n"
  sleep 3
  for n in 1 2 3; do stop "$n"; done
}

# Every function in $1 (one name a line) and every other name of the same
# code (the compiler merges identical functions; callgrind and perf name
# one of them).
aliases() {
  nm --defined-only "$BIN" | awk '$2 ~ /^[TtWw]$/ { print $1, $3 }' > "$OUT/symbols.txt"
  awk 'FILENAME == ARGV[1] { ran[$0] = 1; print; next }
    FILENAME == ARGV[2] { if ($2 in ran) at[$1] = 1; next }
    ($1 in at) { print $2 }' "$1" "$OUT/symbols.txt" - < "$OUT/symbols.txt" | sort -u
}

# The C libraries' code has one section per file, not per function: the
# files of archive $1 that define a function that ran, and every CPU
# variant of those (strchr-avx2.o, strchr-evex.o).
c_files() {
  nm -A --defined-only "$1" 2>/dev/null | sed "s|^$1:||" |
    awk -F: 'FILENAME == ARGV[1] { ran[$0] = 1; next }
      { m = $1; sub(/-(avx|evex|sse|ssse|erms|rtm|vaes).*$/, "", m); sub(/\.o$/, "", m)
        split($2, f, " "); if (f[2] ~ /^[TtWwi]$/ && (f[3] in ran)) want[m] = 1; file[$1] = m }
      END { for (x in file) if (file[x] in want) print x }' "$OUT/functions-all.txt" - | sort
}

# The section patterns of the functions in $1, in its order.
sections() {
  awk 'FILENAME == ARGV[1] { cold[$0] = 1; next }
    { print "    *(.text" (($0 in cold) ? ".unlikely." : ".") $0 ")" }' "$OUT/unlikely.txt" "$1"
}

write_order() {
  cat "$OUT/ran.txt" "$OUT/native.txt" | sort -u > "$OUT/seen.txt"
  aliases "$OUT/seen.txt" > "$OUT/functions.txt"
  # What only a cluster with TLS ran comes after the rest: a node without
  # TLS then maps little of it.
  sort -u "$OUT/ran-tls.txt" "$OUT/native-tls.txt" > "$OUT/seen-tls.txt"
  aliases "$OUT/seen-tls.txt" | comm -23 - "$OUT/functions.txt" > "$OUT/functions-tls.txt"
  sort -u "$OUT/functions.txt" "$OUT/functions-tls.txt" > "$OUT/functions-all.txt"
  {
    cat <<'EOF'
/* The functions a node runs, first in the code and together (generated by
 * scripts/text-order.sh; build.rs passes it to GNU ld with the release
 * build). The kernel maps a binary's code into a process 64 KiB at a time,
 * around each page that runs; with what runs spread through 4 MiB of code,
 * a node mapped nearly all of it. `.text.run` holds the functions that ran
 * by their exact names, then the C libraries' files that hold what ran
 * (with TLS or without), then what only a cluster with TLS ran; `.text.near` each Rust function
 * again without the hash that ends its name (17h<16 hex digits>E), which
 * also takes the other copies of a generic function, so that a list made
 * before a change of version or dependencies still puts what runs near the
 * rest. A name that matches nothing is ignored: a stale list costs memory,
 * never correctness. */
SECTIONS
{
  .text.run :
  {
    *crt1.o(.text .text.*)
    *crtbegin*.o(.text .text.*)
EOF
    sections "$OUT/functions.txt"
    local libc
    libc=$(gcc -print-file-name=libc.a)
    for a in "$libc" "$(dirname "$libc")"/libm-*.a "$(gcc -print-libgcc-file-name)"; do
      [ -f "$a" ] || continue
      c_files "$a" | sed "s|^\(.*\)\$|    *$(basename "$a"):\1(.text .text.*)|"
    done
    sections "$OUT/functions-tls.txt"
    # ring's assembly (TLS), one section a file. The linker reads ring's
    # files from its rlib, and their names start with a hash of the build.
    # (Its C files have a section a function, listed by name above.)
    for a in "$OUT"/build/"$TARGET"/release/build/ring-*/out/libring_core_*_.a; do
      [ -f "$a" ] || continue
      c_files "$a" | sed -n 's|^[0-9a-f]*-\(.*-elf\.o\)$|    *libring-*.rlib:*-\1(.text)|p'
    done | sort -u
    cat <<'EOF'
  }
  .text.near :
  {
EOF
    cat "$OUT/functions.txt" "$OUT/functions-tls.txt" |
      sed -n 's/17h[0-9a-f]\{16\}E$/17h*/p' | awk '!seen[$0]++' | sed 's/^\(.*\)$/    *(.text.\1)/'
    cat <<'EOF'
  }
}
INSERT BEFORE .text;
EOF
  } > "$OUT/text-order.ld"
  # Whole or not at all: every release build links with it.
  mv "$OUT/text-order.ld" scripts/text-order.ld
}

# The day, under callgrind.
build
for n in 1 2 3; do start "$n"; done
L=$(leader)
work "$L"
sleep 5
# The leader stops; the others elect one at once and serve; it comes back.
stop "$L"
N=$(leader)
work "$N"
start "$L"
sleep 10
# The leader is killed (its own profile is lost; the others' is what
# counts), and restarts.
L=$(leader)
work "$L"
kill -KILL "${PIDS[$L]}"
wait "${PIDS[$L]}" 2>/dev/null || true
unset 'PIDS[$L]'
N=$(leader)
work "$N"
start "$L"
sleep 10
N=$(leader)
work "$N"
sleep 5
for n in 1 2 3; do stop "$n"; done
# A fresh cluster, its nodes started one by one in the other order, with no
# log filter.
rm -rf "$OUT/data"
LOG=
for n in 3 2 1; do
  start "$n"
  sleep 3
done
L=$(leader)
work "$L"
sleep 5
for n in 1 2 3; do stop "$n"; done
# With mutual TLS between the peers and with the clients.
"$BIN" certs --cluster "$OUT/cluster-tls.toml" --out "$OUT/certs" --force > /dev/null
rm -rf "$OUT/data-tls"
MODE=tls
LOG=info
for n in 1 2 3; do start "$n"; done
work_and_failover
MODE=plain
# Every function that ran under callgrind (`fn=` lines), by mangled name (a
# recursive call's `'N` suffix dropped); $@: its profiles.
ran() {
  cat "$@" | sed -n "/^fn=/{s/^fn=//;s/'[0-9]*\$//;p}" |
    { grep -E '^[A-Za-z_.$][A-Za-z0-9_.$]*$' || true; } | sort -u
}
compgen -G "$OUT/cg.plain.*" > /dev/null && compgen -G "$OUT/cg.tls.*" > /dev/null ||
  { echo "text-order: callgrind wrote no profile" >&2; exit 1; }
ran "$OUT"/cg.plain.* > "$OUT/ran.txt"
ran "$OUT"/cg.tls.* > "$OUT/ran-tls.txt"
[ -s "$OUT/ran.txt" ] || { echo "text-order: callgrind recorded no function" >&2; exit 1; }
write_order

# Natively, under perf: the functions whose first instruction fetch faulted
# in the runs of pass $1, into faulted.txt.
faulted() {
  for f in "$OUT"/pf."$1".*; do
    perf script -i "$f" --no-demangle -F ip,sym,addr 2>/dev/null |
      awk 'NF == 4 && substr($1, 1, length($1) - 3) == substr($3, 1, length($3) - 3) { print $4 }' ||
      true
  done | { grep -E '^[A-Za-z_.$][A-Za-z0-9_.$]*$' || true; } | sort -u > "$OUT/faulted.txt"
}

if command -v perf >/dev/null; then
  for pass in 1 2 3; do
    build
    rm -rf "$OUT/data"
    LOG=info
    start 1 "$pass"
    start 2 "$pass"
    LOG=
    start 3 "$pass"
    work_and_failover
    faulted "$pass"
    # Only what the list lacks counts: the rest faulted inside it.
    new=$(comm -23 "$OUT/faulted.txt" "$OUT/functions.txt" | tee -a "$OUT/native.txt" | wc -l)
    sort -u -o "$OUT/native.txt" "$OUT/native.txt"
    echo "text-order: pass $pass: $new functions ran natively outside the list" >&2
    [ "$new" -gt 0 ] || break
    write_order
  done
  # Once with TLS: ring picks its code by the CPU too.
  build
  rm -rf "$OUT/data-tls"
  MODE=tls
  LOG=info
  for n in 1 2 3; do start "$n" tls; done
  work_and_failover
  MODE=plain
  faulted tls
  comm -23 "$OUT/faulted.txt" "$OUT/functions-all.txt" >> "$OUT/native-tls.txt"
  sort -u -o "$OUT/native-tls.txt" "$OUT/native-tls.txt"
  echo "text-order: with TLS: $(wc -l < "$OUT/native-tls.txt") functions ran natively outside the list" >&2
  write_order
else
  echo "text-order: perf is not installed: only what ran under valgrind is listed" >&2
fi
trap - EXIT
echo "text-order: $(wc -l < "$OUT/ran.txt") functions ran under valgrind ($(wc -l < "$OUT/functions-tls.txt") more with TLS only), $(wc -l < "$OUT/native.txt") faulted natively; $(wc -l < "$OUT/functions-all.txt") names in scripts/text-order.ld"
