#!/usr/bin/env bash
# Runs each cargo-fuzz target for a bounded time and prints one line per
# target with its executions and crashes. A crash input is copied into
# fuzz/regressions/<target>/, where `make test` replays it on stable Rust
# (tests/fuzz_regressions.rs); fix the bug and commit the input.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      (make fuzz FUZZ_SECONDS=60)
#
# Needs the nightly toolchain (rustup) and cargo-fuzz, which it installs
# with `cargo install cargo-fuzz` if it is missing. Exits 1 if any target
# crashed.

set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:-60}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(frames cluster_file raft_step http)

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked || exit 2
cd "$root/fuzz" || exit 2

status=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "regressions/$t" "artifacts/$t"
    log="artifacts/$t/last-run.log"
    echo "fuzz: $t for ${seconds}s" >&2
    # No sanitizer: the code is safe Rust, and AddressSanitizer would cost
    # most of the executions.
    cargo +nightly fuzz run --sanitizer none "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=1024 -timeout=10 \
        >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    # libFuzzer names each crash, timeout or out-of-memory input it saves.
    crashes=0
    for found in $(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log"); do
        crashes=$((crashes + 1))
        cp "$found" "regressions/$t/"
        echo "fuzz: $t: crash input kept as fuzz/regressions/$t/$(basename "$found")" >&2
    done
    if [[ $rc -ne 0 && $crashes -eq 0 ]]; then
        echo "fuzz: $t: cargo fuzz failed (exit $rc); see fuzz/$log" >&2
        status=1
    fi
    [[ $crashes -gt 0 ]] && status=1
    summary+=("fuzz: $t: ${execs:-?} executions in ${seconds}s, $crashes crashes")
done
printf '%s\n' "${summary[@]}"
exit "$status"
