#!/usr/bin/env bash
# switchyard side-by-side benchmark against nginx and HAProxy (issue 8, plus
# the WebSocket case of issue 3 and the sync-pool case of issue 4).
# See bench/README.md. Usage:
#
#   bench/run.sh                 # everything, ~15 minutes on 2 cores
#   REPS=1 DUR=3 bench/run.sh    # a quick smoke run
#   CASES="a d128" PROXIES="switchyard nginx" bench/run.sh
#   CASES="a_nopp a_pp" PROXIES=switchyard bench/run.sh   # case a without and with a PROXY header
#   SKIP_BUILD=1 bench/run.sh files   # only the file-serving cases (issue 16): switchyard, nginx, Caddy; ~3.5 minutes
#   SKIP_BUILD=1 bench/run.sh compress   # only the compression cases (issue 17): switchyard, nginx; ~4 minutes
#   SKIP_BUILD=1 bench/run.sh cores2     # two-core mode (issue 20): a, c, d128 with two workers per proxy
#   PGO=1 bench/run.sh cores2            # the same with the profile-guided build (bench/pgo.sh, ~10 minutes more)
#
# Every load targets 127.0.0.1 only and is bounded in time and count.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
REPS=${REPS:-3}                  # repetitions of each case per proxy (>= 3 for the table)
DUR=${DUR:-5}                    # seconds per CPU / latency run
IDLE_SESSIONS=${IDLE_SESSIONS:-9000}
SYNC_WORKERS=${SYNC_WORKERS:-4}  # sync pool: workers, 20 ms each
SYNC_CONNS=${SYNC_CONNS:-128}    # sync pool: concurrent clients (capacity is SYNC_WORKERS*50 req/s)
XFER_BYTES=${XFER_BYTES:-1073741824}
# The file-serving cases (issue 16): switchyard's files route, nginx's alias,
# Caddy's file_server (HAProxy serves no files; Caddy runs only these).
FILE_CASES="sf1k sfdown sfdown_http sfrss"
# The compression cases (issue 17): switchyard's `compress = true` route
# against nginx's gzip filter at the same level (nginx has no zstd or br:
# zs64k, br64k and zsstream run on switchyard alone).
COMPRESS_CASES="gz64k zs64k br64k gzstream zsstream"
if [ "${1:-}" = files ]; then
    CASES=${CASES:-$FILE_CASES}
    PROXIES=${PROXIES:-"switchyard nginx caddy"}
elif [ "${1:-}" = compress ]; then
    CASES=${CASES:-$COMPRESS_CASES}
    PROXIES=${PROXIES:-"switchyard nginx"}
elif [ "${1:-}" = cores2 ]; then
    # Two workers per proxy (switchyard worker_threads, nginx
    # worker_processes, HAProxy nbthread), spread over both cores with the
    # load generators and backends beside them.
    CASES=${CASES:-"a c d128"}
    PROXIES=${PROXIES:-"switchyard nginx haproxy"}
    WORKERS=2
elif [ $# -gt 0 ]; then
    echo "usage: bench/run.sh [files|compress|cores2]" >&2
    exit 2
fi
PROXIES=${PROXIES:-"switchyard nginx haproxy caddy"}
CASES=${CASES:-"a b c d128 d64k e ew fup fdown sync syncmix $FILE_CASES $COMPRESS_CASES"}
SYNCMIX_CONNS=${SYNCMIX_CONNS:-8} # mixed-latency sync case: concurrent clients (1 in 20 requests is a 500 ms view)
SKIP_BUILD=${SKIP_BUILD:-0}      # 1: reuse target/release/switchyard as it is
PGO=${PGO:-0}                    # 1: measure the profile-guided build, target/pgo/switchyard (bench/pgo.sh)
if [ "$PGO" = 1 ]; then SWITCHYARD_BIN=${SWITCHYARD_BIN:-$ROOT/target/pgo/switchyard}; fi
PREPARE_ONLY=${PREPARE_ONLY:-0}  # 1: install, build and render the configurations, then stop (bench/callgrind.sh)
WORKERS=${WORKERS:-1}            # workers per proxy (cores2: 2)
if [ "$WORKERS" -gt 1 ]; then
    PROXY_CPU=${PROXY_CPU:-0-$((WORKERS - 1))}
    LOAD_CPU=${LOAD_CPU:-0-$((WORKERS - 1))}
fi
PROXY_CPU=${PROXY_CPU:-0}        # the core(s) every proxy is pinned to
LOAD_CPU=${LOAD_CPU:-1}          # the core(s) for load generators and backends
LOAD_THREADS=$WORKERS            # wrk / h2load threads
SF_CONNS=${SF_CONNS:-50}         # sf1k: wrk connections, one request in flight on each
SF_BIG_BYTES=${SF_BIG_BYTES:-1073741824}   # sfdown, sfdown_http: the one-connection download
SF_RSS_BYTES=${SF_RSS_BYTES:-104857600}    # sfrss: the file all downloads fetch
SF_RSS_CONNS=${SF_RSS_CONNS:-200}          # sfrss: concurrent downloads
SF_RSS_RATE=${SF_RSS_RATE:-1M}             # sfrss: each download's read rate (curl --limit-rate)
SF_RSS_SECS=${SF_RSS_SECS:-10}             # sfrss: how long they run (curl --max-time)
GZ_CONNS=${GZ_CONNS:-50}                   # gz64k, zs64k, br64k: wrk connections, one request in flight on each
GZ_STREAM_BYTES=${GZ_STREAM_BYTES:-1073741824}  # gzstream, zsstream: the uncompressed size of the one response
NGINX_GZ_BUFFERING=${NGINX_GZ_BUFFERING:-on}    # the compression cases: nginx's proxy_buffering (off: flushes per read)

# Unusual ports: other developers on this machine use the 8xxx and 18xxx ones.
PORT=${PORT:-28443} ADMIN_PORT=${ADMIN_PORT:-29901} HTTP_PORT=${HTTP_PORT:-28080}
WS_PORT=${WS_PORT:-28090} SYNC_BASE=${SYNC_BASE:-28100} FILES_HTTP_PORT=${FILES_HTTP_PORT:-28480}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RUN=${RUN_DIR:-$BENCH/results/$STAMP}
RAW=$RUN/raw
FILES_DIR=$RUN/files   # the served files, written at run time and deleted at the end
mkdir -p "$RAW" "$RUN/conf" "$RUN/nginx-body" "$RUN/nginx-proxy"
T0=$(date +%s)

log() { printf '[%4ds] %s\n' $(( $(date +%s) - T0 )) "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Each process may hold 9,000 client sockets plus 9,000 upstream sockets.
ulimit -n 20000 || die "cannot raise the open-files limit to 20000"

in_list() { # word list...
    local w=$1 x; shift
    for x in $*; do [ "$x" = "$w" ] && return 0; done
    return 1
}
file_case() { case $1 in sf*) return 0 ;; *) return 1 ;; esac; }
compress_case() { case $1 in gz64k | zs64k | br64k | gzstream | zsstream) return 0 ;; *) return 1 ;; esac; }
# The content coding a compression case asks for.
coding() { case $1 in gz*) echo gzip ;; zs*) echo zstd ;; br*) echo br ;; esac; }
# Whether the run has file cases (and so needs their files and configurations).
FILE_RUN=0 COMPRESS_RUN=0
for c in $CASES; do
    if file_case "$c"; then FILE_RUN=1; fi
    if compress_case "$c"; then COMPRESS_RUN=1; fi
done
# Which proxies run a case: the file cases switchyard, nginx and Caddy; the
# gzip cases switchyard and nginx, the zstd and br ones switchyard alone;
# the others switchyard, nginx and HAProxy.
supports() { # proxy case
    if file_case "$2"; then [ "$1" != haproxy ]
    elif compress_case "$2"; then
        case $(coding "$2") in gzip) [ "$1" = switchyard ] || [ "$1" = nginx ] ;; *) [ "$1" = switchyard ] ;; esac
    else [ "$1" != caddy ]; fi
}

# ---------------------------------------------------------------- install ---
install_deps() {
    local need=()
    command -v nginx >/dev/null || need+=(nginx)
    command -v haproxy >/dev/null || need+=(haproxy)
    command -v wrk >/dev/null || need+=(wrk)
    command -v h2load >/dev/null || need+=(nghttp2-client)
    command -v curl >/dev/null || need+=(curl)
    command -v openssl >/dev/null || need+=(openssl)
    command -v taskset >/dev/null || need+=(util-linux)
    command -v python3 >/dev/null || need+=(python3)
    [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
    if [ "$FILE_RUN" = 1 ] && in_list caddy $PROXIES; then command -v caddy >/dev/null || need+=(caddy); fi
    if [ ${#need[@]} -gt 0 ]; then
        log "installing ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    local v; v=$(nginx -V 2>&1)
    for m in http_ssl_module http_v2_module stream; do
        grep -q -- "--with-$m" <<<"$v" || die "nginx lacks --with-$m (install nginx or nginx-light from Debian)"
    done
    # The Debian packages start services where an init system runs: the port must be ours.
    local q
    for q in "$PORT" "$ADMIN_PORT" "$HTTP_PORT" "$WS_PORT" "$SYNC_BASE" "$FILES_HTTP_PORT"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$q") 2>/dev/null; then die "127.0.0.1:$q is already in use"; fi
    done
}

build() {
    log "building bench/tools (release)"
    cargo build --release --quiet --manifest-path "$BENCH/tools/Cargo.toml"
    if [ "$SKIP_BUILD" != 1 ] && [ "$PGO" = 1 ]; then
        log "building switchyard with PGO (bench/pgo.sh: two release builds and a training load)"
        "$BENCH/pgo.sh"
    elif [ "$SKIP_BUILD" != 1 ]; then
        log "building switchyard (release; lto = fat takes minutes)"
        (cd "$ROOT" && cargo build --release --quiet)
    fi
    # A private copy, so that another rebuild of target/ cannot change it mid-run.
    cp "${SWITCHYARD_BIN:-$ROOT/target/release/switchyard}" "$RUN/switchyard"
    TOOLS=$BENCH/tools/target/release
}

certs() {
    if [ -f "$ROOT/certs/localhost.crt" ] && [ -f "$ROOT/certs/localhost.key" ] && [ -f "$ROOT/certs/dev-ca.crt" ]; then
        CERT=$ROOT/certs/localhost.crt KEY=$ROOT/certs/localhost.key CA=$ROOT/certs/dev-ca.crt
    else
        log "generating a self-signed ECDSA P-256 certificate"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
            -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
            -keyout "$RUN/bench.key" -out "$RUN/bench.crt" 2>/dev/null
        CERT=$RUN/bench.crt KEY=$RUN/bench.key CA=$RUN/bench.crt
    fi
    cat "$CERT" "$KEY" >"$RUN/bench.pem"
}

# ---------------------------------------------------------------- configs ---
render() { # template output
    local sq="" sn="" sh="" i p
    for ((i = 0; i < SYNC_WORKERS; i++)); do
        p=$((SYNC_BASE + i))
        sq+="${sq:+, }\"127.0.0.1:$p\""
        sn+="${sn:+$'\n'}        server 127.0.0.1:$p;"
        sh+="${sh:+$'\n'}    server w$i 127.0.0.1:$p maxconn 1"
    done
    PORT=$PORT ADMIN_PORT=$ADMIN_PORT HTTP_PORT=$HTTP_PORT WS_PORT=$WS_PORT CERT=$CERT KEY=$KEY \
    FILES_HTTP_PORT=$FILES_HTTP_PORT FILES_DIR=$FILES_DIR \
    PEM=$RUN/bench.pem RUN=$RUN SYNC_SERVERS_QUOTED=$sq SYNC_SERVERS_NGINX=$sn SYNC_SERVERS_HAPROXY=$sh \
    python3 -c '
import os, sys
t = open(sys.argv[1]).read()
for k in ("PORT ADMIN_PORT HTTP_PORT WS_PORT CERT KEY PEM RUN SYNC_SERVERS_QUOTED "
          "SYNC_SERVERS_NGINX SYNC_SERVERS_HAPROXY FILES_HTTP_PORT FILES_DIR").split():
    t = t.replace("@" + k + "@", os.environ[k])
open(sys.argv[2], "w").write(t)
' "$1" "$2"
}

configs() {
    mkdir -p "$RUN/conf/switchyard/sites"
    render "$BENCH/conf/switchyard/switchyard.toml" "$RUN/conf/switchyard/switchyard.toml"
    render "$BENCH/conf/switchyard/sites/bench.toml" "$RUN/conf/switchyard/sites/bench.toml"
    render "$BENCH/conf/nginx.conf.in" "$RUN/conf/nginx.conf"
    render "$BENCH/conf/haproxy.cfg.in" "$RUN/conf/haproxy.cfg"
    # The PROXY protocol variants (case a_pp, and h1pp in callgrind.sh): the
    # same configurations, except that every connection must open with a
    # PROXY header; switchyard accepts one from 127.0.0.1 only (the load
    # tool's address), nginx and HAProxy from anyone.
    mkdir -p "$RUN/conf/switchyard-pp"
    cp -r "$RUN/conf/switchyard/sites" "$RUN/conf/switchyard-pp/"
    python3 - "$RUN/conf" <<'PY'
import sys
conf = sys.argv[1]
def derive(src, dst, old, new):
    t = open(f"{conf}/{src}").read()
    assert t.count(old) == 1, f"{src}: expected one {old!r}"
    open(f"{conf}/{dst}", "w").write(t.replace(old, new))
derive("switchyard/switchyard.toml", "switchyard-pp/switchyard.toml", "[listen]\n",
       '[listen]\nproxy_protocol = true\ntrusted_proxies = ["127.0.0.1/32"]\n')
# nginx: the client is the header's source (realip), as in switchyard and HAProxy.
derive("nginx.conf", "nginx-pp.conf", " ssl http2 backlog=4096;\n",
       " ssl http2 proxy_protocol backlog=4096;\n"
       "        set_real_ip_from 127.0.0.1;\n        real_ip_header proxy_protocol;\n")
derive("haproxy.cfg", "haproxy-pp.cfg", " alpn h2,http/1.1\n", " alpn h2,http/1.1 accept-proxy\n")
PY
    if [ "$WORKERS" -gt 1 ]; then
        # The same configurations with WORKERS workers each.
        local f
        for f in "$RUN"/conf/switchyard*/switchyard.toml; do
            sed -i "s/^worker_threads = 1$/worker_threads = $WORKERS/" "$f"
            grep -q "^worker_threads = $WORKERS$" "$f" || die "$f: no worker_threads = 1 to change"
        done
        sed -i "s/^worker_processes 1;$/worker_processes $WORKERS;/" "$RUN"/conf/nginx*.conf
        sed -i "s/^    nbthread 1$/    nbthread $WORKERS/" "$RUN"/conf/haproxy*.cfg
        grep -q "^worker_processes $WORKERS;" "$RUN/conf/nginx.conf" || die "nginx.conf: worker_processes not changed"
        grep -q "^    nbthread $WORKERS$" "$RUN/conf/haproxy.cfg" || die "haproxy.cfg: nbthread not changed"
    fi
    local v
    for v in "" -pp; do
        "$RUN/switchyard" check -c "$RUN/conf/switchyard$v" >/dev/null || die "switchyard check failed ($v)"
        nginx -t -q -c "$RUN/conf/nginx$v.conf" -e "$RUN/nginx-error.log" || die "nginx -t failed ($v)"
        haproxy -c -q -f "$RUN/conf/haproxy$v.cfg" || die "haproxy -c failed ($v)"
    done
    # The file cases: /static/ served from FILES_DIR (which must exist when
    # switchyard loads the configuration), plain HTTP on FILES_HTTP_PORT too.
    mkdir -p "$RUN/conf/switchyard-files/sites" "$FILES_DIR" "$RUN/caddy"
    render "$BENCH/conf/switchyard-files/switchyard.toml" "$RUN/conf/switchyard-files/switchyard.toml"
    render "$BENCH/conf/switchyard-files/sites/files.toml" "$RUN/conf/switchyard-files/sites/files.toml"
    render "$BENCH/conf/nginx-files.conf.in" "$RUN/conf/nginx-files.conf"
    render "$BENCH/conf/Caddyfile.in" "$RUN/conf/Caddyfile"
    if [ "$FILE_RUN" = 1 ] && [ "$PREPARE_ONLY" != 1 ]; then
        if in_list switchyard $PROXIES; then
            "$RUN/switchyard" check -c "$RUN/conf/switchyard-files" >/dev/null ||
                die "switchyard check failed (files; does this build have files routes?)"
        fi
        nginx -t -q -c "$RUN/conf/nginx-files.conf" -e "$RUN/nginx-error.log" || die "nginx -t failed (files)"
        if in_list caddy $PROXIES; then
            "${CADDY_ENV[@]}" caddy validate --config "$RUN/conf/Caddyfile" --adapter caddyfile >/dev/null 2>&1 ||
                die "caddy validate failed"
        fi
    fi
}

# The compression cases: every path to the fast backend, compressed.
compress_configs() {
    mkdir -p "$RUN/conf/switchyard-compress/sites"
    render "$BENCH/conf/switchyard/switchyard.toml" "$RUN/conf/switchyard-compress/switchyard.toml"
    render "$BENCH/conf/switchyard-compress/sites/compress.toml" "$RUN/conf/switchyard-compress/sites/compress.toml"
    render "$BENCH/conf/nginx-compress.conf.in" "$RUN/conf/nginx-compress.conf"
    if [ "$NGINX_GZ_BUFFERING" != on ]; then
        sed -i "s/proxy_buffering on;/proxy_buffering $NGINX_GZ_BUFFERING;/" "$RUN/conf/nginx-compress.conf"
    fi
    if [ "$PREPARE_ONLY" != 1 ]; then
        if in_list switchyard $PROXIES; then
            "$RUN/switchyard" check -c "$RUN/conf/switchyard-compress" >/dev/null ||
                die "switchyard check failed (compress; does this build have compress routes?)"
        fi
        nginx -t -q -c "$RUN/conf/nginx-compress.conf" -e "$RUN/nginx-error.log" || die "nginx -t failed (compress)"
    fi
}

# Caddy on one core (GOMAXPROCS=1), its state (autosaved configuration,
# certificate storage) kept in the run directory.
# (A command prefix, not a function: a function run with & would be a
# subshell, and its PID not Caddy's.)
CADDY_ENV=(env GOMAXPROCS=1 "XDG_DATA_HOME=$RUN/caddy" "XDG_CONFIG_HOME=$RUN/caddy" "HOME=$RUN/caddy")

# The served files: random content (1 KiB; the concurrent downloads' file;
# the big download), written once per run, in the page cache before any
# proxy reads them.
make_files() {
    log "writing the served files into $FILES_DIR"
    head -c 1024 /dev/urandom >"$FILES_DIR/1k.bin"
    if in_list sfrss $CASES; then head -c "$SF_RSS_BYTES" /dev/urandom >"$FILES_DIR/rss.bin"; fi
    if in_list sfdown $CASES || in_list sfdown_http $CASES; then
        head -c "$SF_BIG_BYTES" /dev/urandom >"$FILES_DIR/big.bin"
    fi
    cat "$FILES_DIR"/*.bin >/dev/null
}

# --------------------------------------------------------------- processes ---
BACKEND_PIDS=()
PROXY_PID=""
cleanup() {
    stop_proxy || true
    for p in "${BACKEND_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$FILES_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=bench/common.sh
. "$BENCH/common.sh"

start_backends() {
    taskset -c "$LOAD_CPU" "$TOOLS/bench-http" --listen "127.0.0.1:$HTTP_PORT" 2>"$RUN/bench-http.log" &
    BACKEND_PIDS+=($!)
    taskset -c "$LOAD_CPU" "$TOOLS/bench-ws-echo" --listen "127.0.0.1:$WS_PORT" 2>"$RUN/bench-ws-echo.log" &
    BACKEND_PIDS+=($!)
    taskset -c "$LOAD_CPU" "$TOOLS/bench-sync-pool" --base-port "$SYNC_BASE" --workers "$SYNC_WORKERS" \
        --delay-ms 20 2>"$RUN/bench-sync-pool.log" &
    BACKEND_PIDS+=($!)
    wait_port "$HTTP_PORT" && wait_port "$WS_PORT" && wait_port "$SYNC_BASE" || die "backends did not start"
}

start_proxy() { # name [case]
    local v="" pp=() wpath=/ wopt=()
    if pp_case "${2:-}"; then v=-pp pp=(--haproxy-protocol); fi
    if file_case "${2:-}"; then v=-files wpath=/static/1k.bin wopt=(-f); fi
    if compress_case "${2:-}"; then v=-compress wpath=/json64k wopt=(-f --compressed); fi
    # A proxy left over from an earlier run would answer in this one's place.
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then die "127.0.0.1:$PORT is in use before $1 starts"; fi
    case $1 in
    switchyard)
        taskset -c "$PROXY_CPU" "$RUN/switchyard" run -c "$RUN/conf/switchyard$v" 2>>"$RUN/switchyard.log" &
        PROXY_PID=$! ;;
    nginx)
        taskset -c "$PROXY_CPU" nginx -c "$RUN/conf/nginx$v.conf" -e "$RUN/nginx-error.log" &
        PROXY_PID=$! ;;
    caddy)
        "${CADDY_ENV[@]}" taskset -c "$PROXY_CPU" caddy run --config "$RUN/conf/Caddyfile" --adapter caddyfile \
            2>>"$RUN/caddy.log" &
        PROXY_PID=$! ;;
    haproxy)
        taskset -c "$PROXY_CPU" haproxy -db -f "$RUN/conf/haproxy$v.cfg" 2>>"$RUN/haproxy.log" &
        PROXY_PID=$! ;;
    esac
    wait_port "$PORT" || die "$1 did not start listening"
    # One request through, so that every process is up and the TLS stack warm.
    curl -s -o /dev/null --max-time 5 "${pp[@]}" --cacert "$CA" --resolve "localhost:$PORT:127.0.0.1" \
        "${wopt[@]}" "https://localhost:$PORT$wpath" || die "$1 does not answer"
}

stop_proxy() {
    [ -n "$PROXY_PID" ] || return 0
    kill -TERM "$PROXY_PID" 2>/dev/null || true
    local i
    for ((i = 0; i < 50; i++)); do
        kill -0 "$PROXY_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$PROXY_PID" 2>/dev/null || true
    wait "$PROXY_PID" 2>/dev/null || true
    PROXY_PID=""
    sleep 0.3
}

proxy_pids() { echo "$PROXY_PID" $(pgrep -P "$PROXY_PID" || true); }
cpu_ticks() { # utime + stime of the proxy and its children (nginx workers), in clock ticks
    local t=0 p f
    for p in $(proxy_pids); do
        f=$(cut -d')' -f2 "/proc/$p/stat" 2>/dev/null) || continue
        set -- $f
        t=$((t + ${12} + ${13}))   # fields 14 and 15 of /proc/PID/stat
    done
    echo $t
}
status_kib() { # field: VmRSS or VmHWM, summed over the proxy's processes
    local t=0 p v
    for p in $(proxy_pids); do
        v=$(awk -v k="$1:" '$1 == k {print $2}' "/proc/$p/status" 2>/dev/null) || continue
        t=$((t + ${v:-0}))
    done
    echo $t
}
now() { date +%s.%N; }

# ------------------------------------------------------------------ cases ---
# Each run leaves RAW/CASE.PROXY.REP.out (the load tool's output) and .meta
# (key=value: cpu_ticks, wall, rss/hwm figures); summarize.py makes the table.
measure() { # case proxy rep -- command...
    local c=$1 p=$2 r=$3; shift 4
    local t0 w0 t1 w1
    t0=$(cpu_ticks); w0=$(now)
    timeout 150 taskset -c "$LOAD_CPU" "$@" >"$RAW/$c.$p.$r.out" 2>&1 || true
    t1=$(cpu_ticks); w1=$(now)
    printf 'cpu_ticks=%s\nwall=%s\nclk_tck=%s\nhwm_kib=%s\n' $((t1 - t0)) \
        "$(awk "BEGIN {print $w1 - $w0}")" "$(getconf CLK_TCK)" "$(status_kib VmHWM)" >"$RAW/$c.$p.$r.meta"
}

# wrk and h2load send the URL's host as SNI; an IP address there is illegal
# (rustls ignores it and logs a warning per handshake), so use "localhost"
# when it resolves to 127.0.0.1 only.
if [ "$(getent ahosts localhost | awk '{print $1}' | sort -u)" = 127.0.0.1 ]; then
    URL=https://localhost:$PORT
else
    URL=https://127.0.0.1:$PORT
fi
WSURL=wss://127.0.0.1:$PORT/ws/echo   # bench-ws-load connects to 127.0.0.1 with SNI "localhost"
run_case() { # case proxy rep
    local c=$1 p=$2 r=$3
    case $c in
    a) measure "$@" -- wrk -t"$LOAD_THREADS" -c64 -d"${DUR}s" --timeout 5s --latency "$URL/" ;;
    # Case a's shape from bench-h1-load (wrk cannot send a PROXY header),
    # without and with a PROXY v1 header opening each connection.
    a_nopp) measure "$@" -- "$TOOLS/bench-h1-load" --addr "127.0.0.1:$PORT" --ca "$CA" --sni localhost \
        --connections 64 --requests 100000000 --duration "$DUR" ;;
    a_pp) measure "$@" -- "$TOOLS/bench-h1-load" --addr "127.0.0.1:$PORT" --ca "$CA" --sni localhost \
        --connections 64 --requests 100000000 --duration "$DUR" --proxy-header v1 ;;
    b) measure "$@" -- wrk -t1 -c64 -d"${DUR}s" --timeout 5s --latency -H "Connection: close" "$URL/" ;;
    c) measure "$@" -- h2load -t"$LOAD_THREADS" -c16 -m10 -D "$DUR" "$URL/" ;;
    d128) measure "$@" -- "$TOOLS/bench-ws-load" --url "$WSURL" --ca "$CA" --sni localhost \
        --sessions 64 --size 128 --duration "$DUR" --max 20000000 ;;
    d64k) measure "$@" -- "$TOOLS/bench-ws-load" --url "$WSURL" --ca "$CA" --sni localhost \
        --sessions 64 --size 65536 --duration "$DUR" --max 2000000 ;;
    fup) measure "$@" -- curl -sS --http1.1 --max-time 120 --cacert "$CA" --resolve "localhost:$PORT:127.0.0.1" \
        -H "Expect:" -T "$RUN/xfer.bin" -o /dev/null -w 'bytes=%{size_upload} secs=%{time_total} http=%{http_code}\n' \
        "https://localhost:$PORT/upload" ;;
    fdown) measure "$@" -- curl -sS --http1.1 --max-time 120 --cacert "$CA" --resolve "localhost:$PORT:127.0.0.1" \
        -o /dev/null -w 'bytes=%{size_download} secs=%{time_total} http=%{http_code}\n' \
        "https://localhost:$PORT/download?bytes=$XFER_BYTES" ;;
    sync) measure "$@" -- wrk -t1 -c"$SYNC_CONNS" -d"${DUR}s" --timeout 6s --latency "$URL/sync/" ;;
    syncmix) measure "$@" -- wrk -t1 -c"$SYNCMIX_CONNS" -d"${DUR}s" --timeout 6s --latency \
        -s "$ROOT/bench/conf/syncmix.lua" "$URL/sync/" ;;
    e) idle_case "$@" ;;
    ew) idle_case "$@" --warm 4096 ;;
    # The file cases (issue 16): /static/ is FILES_DIR on every proxy.
    sf1k) measure "$@" -- wrk -t1 -c"$SF_CONNS" -d"${DUR}s" --timeout 5s --latency "$URL/static/1k.bin" ;;
    sfdown) measure "$@" -- curl -sS --http1.1 --max-time 120 --cacert "$CA" --resolve "localhost:$PORT:127.0.0.1" \
        -o /dev/null -w 'bytes=%{size_download} secs=%{time_total} http=%{http_code}\n' \
        "https://localhost:$PORT/static/big.bin" ;;
    sfdown_http) measure "$@" -- curl -sS --http1.1 --max-time 120 \
        -o /dev/null -w 'bytes=%{size_download} secs=%{time_total} http=%{http_code}\n' \
        "http://127.0.0.1:$FILES_HTTP_PORT/static/big.bin" ;;
    sfrss) rss_case "$@" ;;
    # The compression cases (issue 17): /json64k (64 KiB of JSON) asking for
    # one coding, after checking that the answer really is encoded with it.
    gz64k | zs64k | br64k)
        compress_check "$@" /json64k
        measure "$@" -- wrk -t1 -c"$GZ_CONNS" -d"${DUR}s" --timeout 5s --latency \
            -H "Accept-Encoding: $(coding "$c")" "$URL/json64k"
        cat "$RAW/$c.$p.$r.check" >>"$RAW/$c.$p.$r.meta" ;;
    gzstream | zsstream) stream_case "$@" ;;
    esac
}

# The reference bodies, straight from the backend (plain HTTP, no coding).
reference() { # path file
    curl -sS --max-time 60 -H "Accept-Encoding: identity" -o "$2" "http://127.0.0.1:$HTTP_PORT$1" ||
        die "bench-http does not answer $1"
}

# Fails the run unless the proxy answers PATH encoded with the case's coding
# and curl decodes that to the backend's bytes; leaves RAW/CASE.PROXY.REP.check
# (coding, the encoded size, the Content-Encoding and Vary seen).
compress_check() { # case proxy rep path
    local c=$1 p=$2 r=$3 path=$4 enc hdr body ref dec ce vary n m
    enc=$(coding "$c") hdr=$RAW/$c.$p.$r.headers body=$RUN/check.body ref=$RUN/check.ref dec=$RUN/check.dec
    reference "$path" "$ref"
    curl -sS --http1.1 --max-time 60 --cacert "$CA" --resolve "localhost:$PORT:127.0.0.1" \
        -H "Accept-Encoding: $enc" -D "$hdr" -o "$body" "https://localhost:$PORT$path" || die "$p: $path failed"
    ce=$(awk -F': *' 'tolower($1) == "content-encoding" {print $2}' "$hdr" | tr -d '\r')
    vary=$(awk -F': *' 'tolower($1) == "vary" {print $2}' "$hdr" | tr -d '\r' | tr ' ' _)
    [ "$ce" = "$enc" ] || die "$p: $path answered with Content-Encoding '${ce}', not $enc"
    curl -sS --http1.1 --max-time 60 --compressed --cacert "$CA" --resolve "localhost:$PORT:127.0.0.1" \
        -H "Accept-Encoding: $enc" -o "$dec" "https://localhost:$PORT$path" || die "$p: $path failed"
    cmp -s "$dec" "$ref" || die "$p: $path does not decode ($enc) to the backend's bytes"
    n=$(wc -c <"$body") m=$(wc -c <"$ref")
    printf 'coding=%s\ncontent_encoding=%s\nvary=%s\nencoded_bytes=%s\nplain_bytes=%s\n' \
        "$enc" "$ce" "${vary:-none}" "$n" "$m" >"$RAW/$c.$p.$r.check"
    log "$p: $path as $enc: $m -> $n bytes ($(awk "BEGIN {printf \"%.2f\", $m / $n}")x), Vary: ${vary:-none}"
    rm -f "$body" "$ref" "$dec"
}

# gzstream, zsstream: one HTTPS download of GZ_STREAM_BYTES of JSON lines
# (/jsonstream: chunked, no Content-Length) asking for gzip or zstd; curl
# decodes it (--compressed) and wc counts the decoded bytes. The proxy's
# VmRSS (nginx: master + worker) is sampled every 0.2 s.
stream_case() { # case proxy rep
    local c=$1 p=$2 r=$3 out=$RAW/$1.$2.$3.out enc
    enc=$(coding "$c")
    compress_check "$c" "$p" "$r" "/jsonstream?bytes=4194304"
    sleep 0.5
    local before t0 w0 lp rss peak=0
    before=$(status_kib VmRSS); t0=$(cpu_ticks); w0=$(now)
    (
        taskset -c "$LOAD_CPU" curl -sS --http1.1 --max-time 120 --compressed --cacert "$CA" \
            --resolve "localhost:$PORT:127.0.0.1" -H "Accept-Encoding: $enc" -o - \
            -w '%{stderr}bytes=%{size_download} secs=%{time_total} http=%{http_code}\n' \
            "https://localhost:$PORT/jsonstream?bytes=$GZ_STREAM_BYTES" 2>"$out" |
            taskset -c "$LOAD_CPU" wc -c >"$RAW/$c.$p.$r.decoded"
    ) &
    lp=$!
    while kill -0 "$lp" 2>/dev/null; do
        rss=$(status_kib VmRSS)
        ((rss > peak)) && peak=$rss
        sleep 0.2
    done
    wait "$lp" 2>/dev/null || true
    printf 'rss_before_kib=%s\npeak_rss_kib=%s\nhwm_kib=%s\ncpu_ticks=%s\nwall=%s\nclk_tck=%s\n' \
        "$before" "$peak" "$(status_kib VmHWM)" $(($(cpu_ticks) - t0)) \
        "$(awk "BEGIN {print $(now) - $w0}")" "$(getconf CLK_TCK)" >"$RAW/$c.$p.$r.meta"
    printf 'plain_bytes=%s\ndecoded_bytes=%s\ncoding=%s\n' "$GZ_STREAM_BYTES" \
        "$(cat "$RAW/$c.$p.$r.decoded")" "$enc" >>"$RAW/$c.$p.$r.meta"
}

# sfrss: SF_RSS_CONNS concurrent HTTPS downloads of one SF_RSS_BYTES file
# (one curl process, --parallel, one HTTP/1.1 connection each), each read at
# SF_RSS_RATE, so that every one is still in flight when curl stops them all
# after SF_RSS_SECS: the proxy's send buffers stay full, as with slow clients.
# The proxy's VmRSS (nginx: master + worker) and its number of established
# connections are sampled every 0.2 s; the figure is the largest VmRSS seen
# while all SF_RSS_CONNS were open.
rss_case() { # case proxy rep
    local c=$1 p=$2 r=$3 out=$RAW/$1.$2.$3.out
    local urls=() i
    for ((i = 0; i < SF_RSS_CONNS; i++)); do urls+=(-o /dev/null "https://localhost:$PORT/static/rss.bin"); done
    sleep 0.5
    local before t0 w0 lp rss conns peak=0 peak_all=0 maxc=0 n_all=0
    before=$(status_kib VmRSS); t0=$(cpu_ticks); w0=$(now)
    taskset -c "$LOAD_CPU" timeout $((SF_RSS_SECS + 20)) curl -sS --no-progress-meter --http1.1 --parallel --parallel-immediate \
        --parallel-max "$SF_RSS_CONNS" --limit-rate "$SF_RSS_RATE" --max-time "$SF_RSS_SECS" \
        --cacert "$CA" --resolve "localhost:$PORT:127.0.0.1" \
        -w 'http=%{http_code} bytes=%{size_download}\n' "${urls[@]}" >"$out" 2>"$RAW/$c.$p.$r.err" &
    lp=$!
    while kill -0 "$lp" 2>/dev/null; do
        rss=$(status_kib VmRSS)
        conns=$(ss -Htn state established "( sport = :$PORT )" | wc -l)
        ((rss > peak)) && peak=$rss
        ((conns > maxc)) && maxc=$conns
        if ((conns >= SF_RSS_CONNS)); then
            n_all=$((n_all + 1))
            ((rss > peak_all)) && peak_all=$rss
        fi
        sleep 0.2
    done
    wait "$lp" 2>/dev/null || true
    printf 'rss_before_kib=%s\npeak_rss_kib=%s\npeak_rss_all_kib=%s\nsamples_all=%s\nmax_conns=%s\nconns=%s\n' \
        "$before" "$peak" "$peak_all" "$n_all" "$maxc" "$SF_RSS_CONNS" >"$RAW/$c.$p.$r.meta"
    printf 'hwm_kib=%s\ncpu_ticks=%s\nwall=%s\nclk_tck=%s\n' "$(status_kib VmHWM)" $(($(cpu_ticks) - t0)) \
        "$(awk "BEGIN {print $(now) - $w0}")" "$(getconf CLK_TCK)" >>"$RAW/$c.$p.$r.meta"
}

idle_case() { # case proxy rep [load options]: RSS with IDLE_SESSIONS idle TLS WebSockets open minus before
    local c=$1 p=$2 r=$3 out=$RAW/$1.$2.$3.out fifo=$RUN/hold.fifo
    shift 3
    local before after i
    sleep 0.5
    before=$(status_kib VmRSS)
    rm -f "$fifo"; mkfifo "$fifo"
    taskset -c "$LOAD_CPU" timeout 150 "$TOOLS/bench-ws-load" --mode hold --url "$WSURL" --ca "$CA" \
        --sni localhost --sessions "$IDLE_SESSIONS" --concurrency 64 --max-hold 120 "$@" <"$fifo" >"$out" 2>&1 &
    local hp=$!
    exec 7>"$fifo"
    for ((i = 0; i < 1200; i++)); do
        grep -q '^ready' "$out" 2>/dev/null && break
        kill -0 "$hp" 2>/dev/null || break
        sleep 0.1
    done
    sleep 2   # let the proxy settle (freed handshake buffers, etc.)
    after=$(status_kib VmRSS)
    exec 7>&-
    wait "$hp" 2>/dev/null || true
    rm -f "$fifo"
    printf 'rss_before_kib=%s\nrss_after_kib=%s\nhwm_kib=%s\n' "$before" "$after" "$(status_kib VmHWM)" \
        >"$RAW/$c.$p.$r.meta"
}

# ------------------------------------------------------------------- main ---
install_deps
build
certs
configs
if [ "$COMPRESS_RUN" = 1 ] || [ "$PREPARE_ONLY" = 1 ]; then compress_configs; fi
if [ "$PREPARE_ONLY" = 1 ]; then
    log "prepared $RUN"
    exit 0
fi
truncate -s "$XFER_BYTES" "$RUN/xfer.bin"   # sparse: reading it costs no disk
if [ "$FILE_RUN" = 1 ]; then make_files; fi
start_backends

{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc=$(nproc)"
    echo "cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "kernel=$(uname -r)"
    echo "switchyard=$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml || echo '+uncommitted')"
    echo "switchyard_bin=$(stat -c %y "${SWITCHYARD_BIN:-$ROOT/target/release/switchyard}" | cut -c1-19) sha256:$(sha256sum "$RUN/switchyard" | cut -c1-12) pgo=$PGO"
    echo "nginx=$(nginx -v 2>&1 | sed 's/.*\///')"
    echo "haproxy=$(haproxy -v | awk 'NR==1 {print $3}')"
    echo "wrk=$(dpkg-query -W -f='${Version}' wrk 2>/dev/null)"
    echo "h2load=$(dpkg-query -W -f='${Version}' nghttp2-client 2>/dev/null)"
    if [ "$FILE_RUN" = 1 ]; then
        echo "caddy=$(dpkg-query -W -f='${Version}' caddy 2>/dev/null)"
        echo "files=sf_conns=$SF_CONNS sf_big_bytes=$SF_BIG_BYTES sf_rss_bytes=$SF_RSS_BYTES sf_rss_conns=$SF_RSS_CONNS sf_rss_rate=$SF_RSS_RATE sf_rss_secs=$SF_RSS_SECS"
    fi
    if [ "$COMPRESS_RUN" = 1 ]; then
        echo "compress=gz_conns=$GZ_CONNS gz_stream_bytes=$GZ_STREAM_BYTES nginx_proxy_buffering=$NGINX_GZ_BUFFERING"
    fi
    echo "workers=$WORKERS proxy_cpu=$PROXY_CPU load_cpu=$LOAD_CPU"
    echo "reps=$REPS dur=$DUR idle_sessions=$IDLE_SESSIONS sync_workers=$SYNC_WORKERS sync_conns=$SYNC_CONNS xfer_bytes=$XFER_BYTES"
    echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)"
} >"$RUN/machine.txt"

read -r -a clist <<<"$CASES"
for ((r = 1; r <= REPS; r++)); do
    for ((ci = 0; ci < ${#clist[@]}; ci++)); do
        c=${clist[ci]}
        plist=()
        for p in $PROXIES; do if supports "$p" "$c"; then plist+=("$p"); fi; done
        n=${#plist[@]}
        # Rotate the order of the proxies run by run.
        for ((k = 0; k < n; k++)); do
            p=${plist[(k + r + ci) % n]}
            log "rep $r/$REPS case $c: $p"
            start_proxy "$p" "$c"
            run_case "$c" "$p" "$r"
            stop_proxy
        done
    done
done
echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RUN/machine.txt"
echo "elapsed_s=$(( $(date +%s) - T0 ))" >>"$RUN/machine.txt"
rm -f "$RUN/xfer.bin"
rm -rf "$FILES_DIR"

python3 "$BENCH/summarize.py" "$RUN" | tee "$RUN/table.md"
ln -sfn "$RUN" "$BENCH/results/latest"
log "done in $(( $(date +%s) - T0 ))s; raw results in $RUN"
