#!/usr/bin/env bash
# A profile-guided (PGO) release build of switchyard: build it instrumented,
# run a training load through it, build it again with the profile. Writes
# target/pgo/switchyard; `PGO=1 bench/run.sh` and `PGO=1 bench/callgrind.sh`
# measure it (see bench/README.md, "Cycles per instruction, and a
# profile-guided build").
#
#   bench/pgo.sh          # ~10 minutes on 2 cores: two full release builds
#
# Why: callgrind's cache model puts a third of switchyard's per-request cost
# in instruction-cache misses (the request path runs through tokio, hyper,
# rustls and ours, laid out without knowing which paths are hot). With the
# profile, LLVM lays hot code together, inlines along the hot paths and moves
# cold code out of line.
#
# The training load is a broad mix, not only the benchmark's shapes:
# HTTP/1.1 and HTTP/2 GETs and POSTs to the fast backend, the sync-worker
# pool, WebSocket echo of small and large messages, and TLS handshakes (new
# connections each load). Every load targets 127.0.0.1 and is bounded in
# count and time.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
WORK=${PGO_DIR:-$ROOT/target/pgo}
PORT=${PORT:-28443} HTTP_PORT=${HTTP_PORT:-28080} WS_PORT=${WS_PORT:-28090} SYNC_BASE=${SYNC_BASE:-28100}
T0=$(date +%s)
log() { printf '[%4ds] pgo: %s\n' $(( $(date +%s) - T0 )) "$*" >&2; }
die() { log "error: $*"; exit 1; }

# llvm-profdata must match rustc's LLVM: the one rustup ships with it.
rustup component add llvm-tools >/dev/null 2>&1 || die "rustup cannot add llvm-tools (needed to merge the profile)"
HOST=$(rustc -vV | sed -n 's/^host: //p')
PROFDATA=$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata
[ -x "$PROFDATA" ] || die "no llvm-profdata at $PROFDATA"

rm -rf "$WORK/raw" && mkdir -p "$WORK/raw"
log "instrumented build (release)"
(cd "$ROOT" && RUSTFLAGS="-Cprofile-generate=$WORK/raw" \
    cargo build --release --quiet --target-dir "$WORK/gen" --bin switchyard)
# Build scripts and proc-macros of that build wrote profiles too; only the
# training run's counts go into the merge.
find "$WORK/raw" -name '*.profraw' -delete

# Installs the load generators and backends and renders the benchmark's
# two-worker configuration (TLS on $PORT; /, /sync/ and /ws/ routes).
RUN=$WORK/run
rm -rf "$RUN"
RUN_DIR=$RUN PREPARE_ONLY=1 SKIP_BUILD=1 WORKERS=2 SWITCHYARD_BIN="$WORK/gen/release/switchyard" \
    PORT=$PORT HTTP_PORT=$HTTP_PORT WS_PORT=$WS_PORT SYNC_BASE=$SYNC_BASE "$BENCH/run.sh"
TOOLS=$BENCH/tools/target/release
CA=$ROOT/certs/dev-ca.crt
[ -f "$CA" ] || CA=$RUN/bench.crt
# shellcheck source=bench/common.sh
. "$BENCH/common.sh"

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
ulimit -n 20000
"$TOOLS/bench-http" --listen "127.0.0.1:$HTTP_PORT" 2>/dev/null &
PIDS+=($!)
"$TOOLS/bench-ws-echo" --listen "127.0.0.1:$WS_PORT" 2>/dev/null &
PIDS+=($!)
"$TOOLS/bench-sync-pool" --base-port "$SYNC_BASE" --workers 4 --delay-ms 2 2>/dev/null &
PIDS+=($!)
wait_port "$HTTP_PORT" && wait_port "$WS_PORT" && wait_port "$SYNC_BASE" || die "backends did not start"

"$WORK/gen/release/switchyard" run -c "$RUN/conf/switchyard" 2>"$WORK/train.log" &
SY=$!
wait_port "$PORT" 60 || die "the instrumented switchyard did not start (see $WORK/train.log)"

head -c 4096 /dev/urandom >"$WORK/post.bin"
U=https://localhost:$PORT
N=0
load() { # what -- command...
    local what=$1 out=$WORK/load-$((N += 1)).out; shift 2
    log "training: $what"
    timeout 120 "$@" >"$out" 2>&1 || die "training load failed: $what (see $out)"
    # A profile of error paths would train the wrong code: every answer
    # must be a 2xx (h2load) and every message echoed (bench-ws-load).
    if grep -q '^status codes:' "$out"; then
        grep -q '^status codes: [1-9][0-9]* 2xx, 0 3xx, 0 4xx, 0 5xx' "$out" || die "training load got errors: $what (see $out)"
    else
        grep -q ' errors=0' "$out" || die "training load got errors: $what (see $out)"
    fi
}
load "HTTP/1.1 GET" -- h2load --h1 -t2 -c64 -n 100000 "$U/"
load "HTTP/1.1 POST 4 KiB" -- h2load --h1 -t2 -c16 -n 20000 -d "$WORK/post.bin" "$U/upload"
load "HTTP/2 GET" -- h2load -t2 -c16 -m10 -n 100000 "$U/"
load "HTTP/2 POST 4 KiB" -- h2load -t2 -c8 -m10 -n 20000 -d "$WORK/post.bin" "$U/upload"
load "HTTP/1.1 new connections" -- h2load --h1 -t2 -c200 -n 2000 "$U/"
load "sync pool" -- h2load --h1 -t2 -c8 -n 2000 "$U/sync/"
load "WebSocket 128 B" -- "$TOOLS/bench-ws-load" --url "wss://127.0.0.1:$PORT/ws/echo" --ca "$CA" \
    --sni localhost --sessions 64 --size 128 --duration 30 --max 100000
load "WebSocket 16 KiB" -- "$TOOLS/bench-ws-load" --url "wss://127.0.0.1:$PORT/ws/echo" --ca "$CA" \
    --sni localhost --sessions 16 --size 16384 --duration 30 --max 10000
# A graceful stop: the profile is written as the process exits.
kill -TERM "$SY"
wait "$SY" || die "the instrumented switchyard did not exit cleanly"
ls "$WORK"/raw/*.profraw >/dev/null 2>&1 || die "the training run wrote no profile"
"$PROFDATA" merge -o "$WORK/switchyard.profdata" "$WORK"/raw/*.profraw

log "optimized build (release, with the profile)"
(cd "$ROOT" && RUSTFLAGS="-Cprofile-use=$WORK/switchyard.profdata" \
    cargo build --release --quiet --target-dir "$WORK/use" --bin switchyard)
cp "$WORK/use/release/switchyard" "$WORK/switchyard"
log "done: $WORK/switchyard"
