#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600) each, all at once at low
# priority, starting from the committed seed corpus. Needs cargo-fuzz
# (`cargo install cargo-fuzz`); on stable Rust it uses RUSTC_BOOTSTRAP=1.
#
#   fuzz/run.sh [SECONDS]        fuzz each target for SECONDS
#   fuzz/run.sh replay           run each target over its seed corpus once (CI)
#
# New inputs go to fuzz/corpus/<target>/ (ignored by git); crashes to
# fuzz/artifacts/<target>/. Copy a few small, interesting inputs into
# fuzz/corpus-seed/<target>/ to keep them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

export RUSTC_BOOTSTRAP=1
TARGETS=(frame_walker config_load request_head proxy_header files_path)
MODE="${1:-600}"
# No sanitizer: the code under test is safe Rust, and this is much faster.
# Debug assertions on, so integer overflow panics.
BUILD=(--sanitizer none --debug-assertions)

cargo fuzz build "${BUILD[@]}"

if [ "$MODE" = replay ]; then
    for t in "${TARGETS[@]}"; do
        echo "==> replay $t"
        cargo fuzz run "${BUILD[@]}" "$t" "corpus-seed/$t" -- -runs=0
    done
    exit 0
fi

pids=()
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t"
    echo "==> fuzz $t for ${MODE}s (log: fuzz-$t.log)"
    nice -n 19 cargo fuzz run "${BUILD[@]}" "$t" "corpus/$t" "corpus-seed/$t" -- \
        -max_total_time="$MODE" -max_len=4096 -timeout=10 -rss_limit_mb=1024 \
        -print_final_stats=1 >"fuzz-$t.log" 2>&1 &
    pids+=("$!")
done
status=0
for i in "${!TARGETS[@]}"; do
    if wait "${pids[$i]}"; then
        echo "$(tail -n 30 "fuzz-${TARGETS[$i]}.log" | grep -E 'stat::number_of_executed_units' || true) ${TARGETS[$i]}: ok"
    else
        echo "${TARGETS[$i]}: FAILED, see fuzz/fuzz-${TARGETS[$i]}.log and fuzz/artifacts/${TARGETS[$i]}/"
        status=1
    fi
done
exit "$status"
