#!/usr/bin/env bash
# User-space instructions per request or message, switchyard vs nginx vs
# HAProxy, counted by valgrind's callgrind (see bench/README.md). Unlike CPU
# time, the count does not move with the load of a shared machine, so small
# changes show; it leaves out the kernel's share (measured by bench/run.sh).
#
#   bench/callgrind.sh                         # all three proxies, three cases: ~10 minutes
#   PROXIES=switchyard CASES=h1 bench/callgrind.sh
#   PROXIES=switchyard CASES="h1 h1nopp h1pp" bench/callgrind.sh   # the cost of PROXY protocol
#   SWITCHYARD_BIN=/path/to/switchyard SKIP_BUILD=1 bench/callgrind.sh
#   PROXIES="switchyard nginx" CASES=sf1k bench/callgrind.sh   # a 1 KiB static file (files route vs alias)
#   WORKERS=2 PROXIES=switchyard CASES="h1 h2" bench/callgrind.sh   # switchyard with two workers (issue 20)
#   CACHE_SIM=1 CASES=h1 bench/callgrind.sh   # also simulated cache misses and branch mispredictions per request
#   CALLGRIND_ARGS="--dump-instr=yes" ...   # more callgrind options (per-instruction costs, to find call sites)
#
# Each case starts each proxy once and loads it three times: a warm-up of
# N1 requests, then N1 and N2 requests, each load on new connections.
# callgrind's counters are zeroed after the warm-up and dumped after each
# of the other two (callgrind_control), so (instructions of the N2 load -
# those of the N1 load) / (N2 - N1) leaves out start-up, TLS handshakes and
# every one-off cost of the first requests. Two processes, one per load,
# did not: a clock calibration the metrics library runs once, for a
# wall-clock time, moved the count by up to 800 instructions per request
# (2.5 %) from run to run. Every load targets 127.0.0.1 only and is bounded
# in count (and, by `timeout`, in time).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
PROXIES=${PROXIES:-"switchyard nginx haproxy"}
CASES=${CASES:-"h1 h2 ws128"}
N1=${N1:-1000}
N2=${N2:-5000}
# Workers per proxy. callgrind runs one thread at a time, so the count is
# of instructions (work per request spread over both workers, hand-offs
# included), not of cache traffic between cores.
WORKERS=${WORKERS:-1}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PORT=${PORT:-28443} HTTP_PORT=${HTTP_PORT:-28080} WS_PORT=${WS_PORT:-28090}
RUN=${RUN_DIR:-$BENCH/results/callgrind-$(date -u +%Y%m%dT%H%M%SZ)}
T0=$(date +%s)
log() { printf '[%4ds] %s\n' $(( $(date +%s) - T0 )) "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v valgrind >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
}
# Installs nginx, HAProxy, h2load and the tools, builds, renders the configurations.
RUN_DIR=$RUN PREPARE_ONLY=1 WORKERS=$WORKERS PROXY_CPU=$PROXY_CPU LOAD_CPU=$LOAD_CPU PORT=$PORT HTTP_PORT=$HTTP_PORT WS_PORT=$WS_PORT "$BENCH/run.sh"
TOOLS=$BENCH/tools/target/release
CA=$ROOT/certs/dev-ca.crt
[ -f "$CA" ] || CA=$RUN/bench.crt
# sf1k: the file cases' configurations, serving a 1 KiB file.
mkdir -p "$RUN/files" && head -c 1024 /dev/urandom >"$RUN/files/1k.bin"
sed 's/^master_process on;/master_process off;/' "$RUN/conf/nginx-files.conf" >"$RUN/conf/nginx-files-single.conf"
for v in "" -pp; do   # -pp: the PROXY protocol variants (case h1pp)
    # nginx's master process only forks the worker: one process, as callgrind needs.
    sed 's/^master_process on;/master_process off;/' "$RUN/conf/nginx$v.conf" >"$RUN/conf/nginx$v-single.conf"
    # valgrind keeps a few descriptors for itself, so HAProxy cannot have all 20,000.
    sed 's/^\( *\)ulimit-n 20000/\1ulimit-n 19000/' "$RUN/conf/haproxy$v.cfg" >"$RUN/conf/haproxy-valgrind$v.cfg"
done
ulimit -n 20000

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=bench/common.sh
. "$BENCH/common.sh"

taskset -c "$LOAD_CPU" "$TOOLS/bench-http" --listen "127.0.0.1:$HTTP_PORT" 2>/dev/null &
PIDS+=($!)
taskset -c "$LOAD_CPU" "$TOOLS/bench-ws-echo" --listen "127.0.0.1:$WS_PORT" 2>/dev/null &
PIDS+=($!)
wait_port "$HTTP_PORT" && wait_port "$WS_PORT" || die "backends did not start"

# One load of N requests (or messages) of case C; its output goes to OUT.
load() { # case n out
    local c=$1 n=$2 out=$3
    case $c in
    h1) timeout 600 taskset -c "$LOAD_CPU" h2load --h1 -t1 -c64 -n "$n" "https://localhost:$PORT/" >"$out" 2>&1 ;;
    sf1k) timeout 600 taskset -c "$LOAD_CPU" h2load --h1 -t1 -c64 -n "$n" "https://localhost:$PORT/static/1k.bin" >"$out" 2>&1 ;;
    # h1's shape from bench-h1-load, which can open each connection with a
    # PROXY header (h2load cannot): h1nopp without one, h1pp with a v1 header
    # against the proxy_protocol = true configuration.
    h1nopp) timeout 600 taskset -c "$LOAD_CPU" "$TOOLS/bench-h1-load" --addr "127.0.0.1:$PORT" --ca "$CA" \
        --sni localhost --connections 64 --requests "$n" --duration 590 >"$out" 2>&1 ;;
    h1pp) timeout 600 taskset -c "$LOAD_CPU" "$TOOLS/bench-h1-load" --addr "127.0.0.1:$PORT" --ca "$CA" \
        --sni localhost --connections 64 --requests "$n" --duration 590 --proxy-header v1 >"$out" 2>&1 ;;
    h2) timeout 600 taskset -c "$LOAD_CPU" h2load -t1 -c16 -m10 -n "$n" "https://localhost:$PORT/" >"$out" 2>&1 ;;
    ws128) timeout 600 taskset -c "$LOAD_CPU" "$TOOLS/bench-ws-load" --url "wss://127.0.0.1:$PORT/ws/echo" \
        --ca "$CA" --sni localhost --sessions 64 --size 128 --duration 600 --max "$n" >"$out" 2>&1 ;;
    esac
}

# How many requests (or relayed messages) a load's output says succeeded.
done_count() { # case out
    local c=$1 out=$2 count
    case $c in
    h1 | h2 | sf1k) count=$(awk '$1 == "requests:" {print $8; exit}' "$out") ;;   # succeeded
    h1nopp | h1pp) count=$(sed -n 's/.* succeeded=\([0-9]*\) .*/\1/p' "$out") ;;
    ws128) count=$(sed -n 's/.* messages=\([0-9]*\) .*/\1/p' "$out"); count=$((count * 2)) ;;  # relayed: both ways
    esac
    echo "${count:-0}"
}

# A profile's instruction total (0 when there is none).
instructions() { # file
    local ir=""
    [ -f "$1" ] && ir=$(awk '$1 == "summary:" || $1 == "totals:" {print $2; exit}' "$1")
    echo "${ir:-0}"
}

# Asks callgrind in process VP to dump its counters (and zero them) into
# FILE.K, the K-th dump; waits until the dump is whole.
dump() { # vp k
    callgrind_control -d "$1" >/dev/null || return 1
    local i
    for i in $(seq 300); do
        grep -q '^totals:\|^summary:' "$CG_OUT.$2" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# Runs PROXY under callgrind through a warm-up and two measured loads of
# case C; prints "instructions count" for the N1 load, then for the N2 one.
measure() { # proxy case
    local p=$1 c=$2 base=$RUN/$1.$2
    local cmd v=""
    if pp_case "$c"; then v=-pp; fi
    if [ "$c" = sf1k ]; then v=-files; fi
    case $p in
    switchyard) cmd=("$RUN/switchyard" run -c "$RUN/conf/switchyard$v") ;;
    nginx) cmd=(nginx -c "$RUN/conf/nginx$v-single.conf" -e "$RUN/nginx-error.log") ;;
    haproxy) cmd=(haproxy -db -f "$RUN/conf/haproxy-valgrind$v.cfg") ;;
    esac
    # Extra callgrind options, e.g. --dump-instr=yes to find call sites.
    local opts=()
    read -r -a opts <<<"${CALLGRIND_ARGS:-}"
    if [ -n "${CACHE_SIM:-}" ]; then opts+=(--cache-sim=yes --branch-sim=yes); fi
    CG_OUT=$base.callgrind
    rm -f "$CG_OUT" "$CG_OUT".*
    taskset -c "$PROXY_CPU" valgrind --tool=callgrind "${opts[@]}" --callgrind-out-file="$CG_OUT" \
        "${cmd[@]}" 2>"$base.valgrind" &
    local vp=$!
    wait_port "$PORT" 600 || die "$p did not start under valgrind"
    load "$c" "$N1" "$base.warmup.load"
    callgrind_control -z "$vp" >/dev/null || die "callgrind_control could not reach $p"
    load "$c" "$N1" "$base.$N1.load"
    dump "$vp" 1 || die "no callgrind dump from $p after $N1"
    load "$c" "$N2" "$base.$N2.load"
    dump "$vp" 2 || die "no callgrind dump from $p after $N2"
    kill -TERM "$vp" 2>/dev/null || true
    # nginx without a master process has once missed the TERM under valgrind
    # (open keep-alive connections); QUIT, its graceful stop, after 10 s.
    local i
    for i in $(seq 100); do kill -0 "$vp" 2>/dev/null || break; sleep 0.1; done
    kill -QUIT "$vp" 2>/dev/null || true
    wait "$vp" 2>/dev/null || true
    rm -f "$CG_OUT"   # what ran after the last dump: the stop
    # Named by load, as `callgrind_annotate` and the event totals below read them.
    mv "$CG_OUT.1" "$base.$N1.callgrind"
    mv "$CG_OUT.2" "$base.$N2.callgrind"
    echo "$(instructions "$base.$N1.callgrind") $(done_count "$c" "$base.$N1.load")"
    echo "$(instructions "$base.$N2.callgrind") $(done_count "$c" "$base.$N2.load")"
}

echo "workers=$WORKERS" >"$RUN/workers.txt"
printf '| case | unit | %s |\n|---|---|%s\n' "${PROXIES// / | }" "$(printf -- '---|%.0s' $PROXIES)" >"$RUN/table.md"
for c in $CASES; do
    row="| $c | $( [ "$c" = ws128 ] && echo "instructions per relayed message" || echo "instructions per request") |"
    for p in $PROXIES; do
        log "case $c: $p (warm-up, then $N1 and $N2)"
        { read -r i1 n1; read -r i2 n2; } < <(measure "$p" "$c")
        if [ "$n2" -gt "$n1" ] && [ "$i1" -gt 0 ] && [ "$i2" -gt 0 ]; then
            row+=" $(( (i2 - i1) / (n2 - n1) )) |"
        else
            row+=" failed ($n1, $n2 done) |"
        fi
    done
    echo "$row" >>"$RUN/table.md"
done
cat "$RUN/table.md"
# A profile's event totals, one per line, in its `events:` order.
totals() { # file
    awk '$1 == "summary:" || $1 == "totals:" {for (i = 2; i <= NF; i++) print $i; exit}' "$1"
}
if [ -n "${CACHE_SIM:-}" ]; then
    # Every simulated event per request, from the same runs: D1mr/D1mw are
    # first-level data misses, DLmr/DLmw last-level, Bcm/Bim mispredicted
    # conditional and indirect branches (valgrind's model, not this CPU).
    for c in $CASES; do
        for p in $PROXIES; do
            a=$RUN/$p.$c.$N1 b=$RUN/$p.$c.$N2
            n1=$(awk '$1 == "requests:" {print $8; exit}' "$a.load")
            n2=$(awk '$1 == "requests:" {print $8; exit}' "$b.load")
            [ -n "$n1" ] && [ -n "$n2" ] && [ "$n2" -gt "$n1" ] || continue
            paste <(grep -m1 '^events:' "$a.callgrind" | tr ' ' '\n' | tail -n +2) \
                <(totals "$a.callgrind") <(totals "$b.callgrind") |
                awk -v c="$c" -v p="$p" -v n=$((n2 - n1)) '{printf "%s %s %s %.0f\n", c, p, $1, ($3 - $2) / n}'
        done
    done | tee "$RUN/events.txt"
fi
log "done; callgrind profiles in $RUN (callgrind_annotate FILE)"
