#!/usr/bin/env bash
# The Django example behind switchyard, on 127.0.0.1; the backends listen on
# unix sockets in $RUN_DIR, as gunicorn's and daphne's docs recommend behind a
# proxy:
#
#   redis-server     127.0.0.1:16379   channels_redis group messages
#   gunicorn-1, -2   $RUN_DIR/gunicorn-1.sock, -2.sock   views (2 sync workers each)
#   daphne-1, -2     $RUN_DIR/daphne-1.sock, -2.sock     the Channels chat consumer
#   switchyard       https://localhost:18443/  (http :18080 redirects; admin :19901)
#
# Before anything starts, start prepares the files switchyard serves itself
# (its files routes' directories must exist when the configuration loads),
# in examples/django/.data/ (chatsite/settings.py DATA_DIR):
#
#   static/      manage.py collectstatic (STATIC_ROOT), plus a .gz next to each
#                CSS and JS file                      -> /static/ route
#   media/       uploads kept by the /upload view (MEDIA_ROOT) -> /media/ route
#   protected/   private files, only reachable through the /download/ view's
#                X-Accel-Redirect; a 64 MiB one is made here if missing
#                                                     -> internal /protected/ route
#
# switchyard/sites/django.toml names the sockets relative to itself
# (unix:../../.run/...), which is the default RUN_DIR. With another RUN_DIR,
# start renders a copy of the config under $RUN_DIR/switchyard with the
# sockets (and the certificate, files and error page paths) made absolute,
# and runs that.
#
# usage: examples/django/run.sh {install|start|stop|restart|status|test}
#
#   install   venv with the pinned requirements.txt; redis-server from Debian
#             packages if it is missing (apt-get, as root or with sudo)
#   start     install, then start whatever is not running, waiting (bounded)
#             until each answers; idempotent
#   stop      SIGTERM everything (switchyard first, so it drains), SIGKILL what
#             is still there after a few seconds
#   status    what runs, with pids
#   test      start, run the end-to-end tests (e2e/test_django.py,
#             e2e/test_django_files.py, e2e/test_compression.py), stop
#
# Environment: VENV (default examples/django/.venv), RUN_DIR (pids and logs,
# default examples/django/.run), SWITCHYARD_BIN (default: target/release or
# target/debug switchyard, built with cargo if neither exists), PYTHON
# (the interpreter that makes the venv, default python3).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${VENV:-$HERE/.venv}"
# Absolute: the rendered site file names the sockets in it.
RUN_DIR="$(realpath -m "${RUN_DIR:-$HERE/.run}")"
PYTHON="${PYTHON:-python3}"
CONFIG="$HERE/switchyard"
# What switchyard serves from disk (settings.DATA_DIR; gitignored).
DATA_DIR="$HERE/.data"
# The protected download made by prepare_files (e2e/test_django_files.py uses it).
BIG_FILE="dataset-64MiB.bin"
BIG_FILE_MIB=64

REDIS_PORT=16379
HTTPS_PORT=18443
ADMIN=127.0.0.1:19901

log() { echo "run.sh: $*"; }
die() { echo "run.sh: $*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run: $*"
    fi
}

switchyard_bin() {
    if [ -n "${SWITCHYARD_BIN:-}" ]; then
        echo "$SWITCHYARD_BIN"
    elif [ -x "$REPO/target/release/switchyard" ]; then
        echo "$REPO/target/release/switchyard"
    elif [ -x "$REPO/target/debug/switchyard" ]; then
        echo "$REPO/target/debug/switchyard"
    else
        (cd "$REPO" && cargo build --bin switchyard >&2)
        echo "$REPO/target/debug/switchyard"
    fi
}

install() {
    if ! command -v redis-server >/dev/null 2>&1; then
        log "installing redis-server (Debian package)"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends redis-server >/dev/null
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$HERE/requirements.txt"
}

# The directories of the site's files routes, and what is in them. Idempotent:
# collectstatic copies only what changed, the .gz files and the big download
# are made only when missing or stale.
prepare_files() {
    mkdir -p "$DATA_DIR/static" "$DATA_DIR/media" "$DATA_DIR/protected"
    (cd "$HERE" && "$VENV/bin/python" manage.py collectstatic --noinput -v 0)
    # Precompressed siblings: switchyard sends FILE.gz (Content-Encoding: gzip)
    # to a client that accepts gzip. -n: no name or time stamp inside.
    local f
    while IFS= read -r -d '' f; do
        if [ ! -f "$f.gz" ] || [ "$f" -nt "$f.gz" ]; then
            gzip -9 -n -k -f "$f"
        fi
    done < <(find "$DATA_DIR/static" -type f \( -name '*.css' -o -name '*.js' \) -print0)
    local big="$DATA_DIR/protected/$BIG_FILE"
    if [ "$(stat -c %s "$big" 2>/dev/null || echo 0)" -ne $((BIG_FILE_MIB * 1024 * 1024)) ]; then
        log "making $big"
        # A dot file while it is being written: not listed, not served.
        head -c "${BIG_FILE_MIB}M" /dev/urandom >"$DATA_DIR/protected/.$BIG_FILE.tmp"
        mv "$DATA_DIR/protected/.$BIG_FILE.tmp" "$big"
    fi
}

# --- processes: one session (process group) each, pid in $RUN_DIR/NAME.pid -----

pid_of() {
    local f="$RUN_DIR/$1.pid"
    [ -f "$f" ] || return 1
    local pid
    pid="$(cat "$f")"
    kill -0 "$pid" 2>/dev/null || return 1
    # A killed process that nobody has reaped yet is a zombie: not running.
    case "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" in
        "" | Z) return 1 ;;
    esac
    echo "$pid"
}

running() { pid_of "$1" >/dev/null; }

# spawn NAME DIR ENV... -- ARGV...: start ARGV in DIR in a new session.
spawn() {
    local name="$1" dir="$2"
    shift 2
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    (cd "$dir" && exec env "${envs[@]}" setsid "$@" >>"$RUN_DIR/$name.log" 2>&1 </dev/null) &
    echo $! >"$RUN_DIR/$name.pid"
    disown $!   # no "Killed" job notices when a test kills one
}

# wait_for NAME SECONDS CHECK...: run CHECK until it succeeds; fail after SECONDS.
wait_for() {
    local name="$1" secs="$2"
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ! running "$name"; then
            tail -n 30 "$RUN_DIR/$name.log" >&2 || true
            die "$name exited while starting (log: $RUN_DIR/$name.log)"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 30 "$RUN_DIR/$name.log" >&2 || true
            die "$name not ready after ${secs}s (log: $RUN_DIR/$name.log)"
        fi
        sleep 0.2
    done
}

http_ok() {
    "$VENV/bin/python" - "$1" <<'EOF'
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=1) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
}

# unix_http_ok SOCKET PATH: GET PATH over the unix socket answers 200.
unix_http_ok() {
    "$VENV/bin/python" - "$1" "$2" <<'EOF'
import http.client, socket, sys
class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=1)
        self.unix_path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(1)
        self.sock.connect(self.unix_path)
c = UnixConnection(sys.argv[1])
c.request("GET", sys.argv[2])
sys.exit(0 if c.getresponse().status == 200 else 1)
EOF
}

sock() { echo "$RUN_DIR/$1.sock"; }

redis_ok() {
    "$VENV/bin/python" -c "import redis,sys; sys.exit(0 if redis.Redis(port=$REDIS_PORT, socket_timeout=1).ping() else 1)"
}

start_redis() {
    running redis && return 0
    spawn redis "$RUN_DIR" -- redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
        --save "" --appendonly no --dir "$RUN_DIR"
    wait_for redis 20 redis_ok
}

start_gunicorn() {
    local name="gunicorn-$1" s
    s="$(sock "gunicorn-$1")"
    running "$name" && return 0
    rm -f "$s"   # stale, from a killed instance
    # gunicorn believes X-Forwarded-Proto (wsgi.url_scheme) from a unix socket
    # peer (--forwarded-allow-ips only governs TCP peers), so keep RUN_DIR
    # private to the user running switchyard. REMOTE_ADDR comes from
    # chatsite.middleware.RealIPMiddleware.
    spawn "$name" "$HERE" INSTANCE="$name" -- \
        "$VENV/bin/gunicorn" --workers 2 --worker-class sync --bind "unix:$s" \
        --graceful-timeout 5 --access-logfile - chatsite.wsgi:application
    wait_for "$name" 30 unix_http_ok "$s" /healthz
}

start_daphne() {
    local name="daphne-$1" s
    s="$(sock "daphne-$1")"
    running "$name" && return 0
    rm -f "$s" "$s.lock"   # stale, from a killed instance (daphne's lock file too)
    # --proxy-headers: scope["client"] from the left-most X-Forwarded-For, which
    # switchyard replaces with the client's address (no trusted_proxies here).
    spawn "$name" "$HERE" INSTANCE="$name" -- \
        "$VENV/bin/daphne" -u "$s" --proxy-headers chatsite.asgi:application
    wait_for "$name" 30 unix_http_ok "$s" /healthz
}

# The config switchyard runs: the checked-in one when RUN_DIR is the default
# (its site file names the sockets as unix:../../.run/NAME.sock), else a copy
# under $RUN_DIR/switchyard with the sockets in $RUN_DIR and the certificate,
# files (../../.data/...) and error page paths made absolute.
config_dir() {
    if [ "$RUN_DIR" -ef "$HERE/.run" ]; then
        echo "$CONFIG"
        return 0
    fi
    local out="$RUN_DIR/switchyard"
    mkdir -p "$out/sites"
    cp "$CONFIG/switchyard.toml" "$out/switchyard.toml"
    sed -e "s|\"unix:\.\./\.\./\.run/|\"unix:$RUN_DIR/|g" \
        -e "s|\"\.\./\.\./\.\./\.\./certs/|\"$REPO/certs/|g" \
        -e "s|\"\.\./\.\./\.data/|\"$DATA_DIR/|g" \
        -e "s|\"\.\./errors/|\"$CONFIG/errors/|g" \
        "$CONFIG/sites/django.toml" >"$out/sites/django.toml"
    echo "$out"
}

start_switchyard() {
    running switchyard && return 0
    local bin
    bin="$(switchyard_bin)"
    [ -x "$bin" ] || die "no switchyard binary at $bin"
    local config
    config="$(config_dir)"
    "$bin" check -c "$config" >/dev/null
    spawn switchyard "$REPO" -- "$bin" run -c "$config"
    wait_for switchyard 20 http_ok "http://$ADMIN/readyz"
}

# Exported for the end-to-end test, which restarts one instance at a time.
start_one() {
    case "$1" in
        redis) start_redis ;;
        gunicorn-[12]) start_gunicorn "${1#gunicorn-}" ;;
        daphne-[12]) start_daphne "${1#daphne-}" ;;
        switchyard) start_switchyard ;;
        *) die "unknown service $1" ;;
    esac
}

start() {
    install
    mkdir -p "$RUN_DIR"
    prepare_files   # before gunicorn (the manifest) and switchyard (the directories)
    start_redis
    start_gunicorn 1
    start_gunicorn 2
    start_daphne 1
    start_daphne 2
    start_switchyard
    # The site is up once both pools' health checks pass.
    log "ready: https://localhost:$HTTPS_PORT/  (metrics: http://$ADMIN/metrics, logs: $RUN_DIR)"
}

stop_one() {
    local name="$1" pid
    pid="$(pid_of "$name")" || { rm -f "$RUN_DIR/$name.pid"; return 0; }
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + ${2:-10}))
    while pid_of "$name" >/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    if pid_of "$name" >/dev/null; then
        log "$name did not stop in time: SIGKILL"
    fi
    # Whatever is left of the group (a gunicorn worker whose master was killed).
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$RUN_DIR/$name.pid"
}

stop() {
    [ -d "$RUN_DIR" ] || return 0
    stop_one switchyard 10   # drain = 5s in switchyard.toml
    local jobs=() name
    for name in daphne-1 daphne-2 gunicorn-1 gunicorn-2; do
        stop_one "$name" 10 &
        jobs+=($!)
    done
    # Only these: when `test` started the services, they are jobs of this shell too.
    wait "${jobs[@]}"
    stop_one redis 10
    log "stopped"
}

status() {
    local name pid
    for name in redis gunicorn-1 gunicorn-2 daphne-1 daphne-2 switchyard; do
        if pid="$(pid_of "$name")"; then
            echo "$name: running (pid $pid)"
        else
            echo "$name: stopped"
        fi
    done
}

run_test() {
    start
    local rc=0
    # The test finds the services running and leaves them so; stop here.
    (cd "$REPO" && DJANGO_EXAMPLE_VENV="$VENV" RUN_DIR="$RUN_DIR" \
        "$VENV/bin/pip" install -q --disable-pip-version-check -r e2e/requirements.txt &&
        "$VENV/bin/python" -m pytest e2e/test_django.py e2e/test_django_files.py \
            e2e/test_compression.py "$@") || rc=$?
    stop
    return "$rc"
}

cmd="${1:-}"
shift || true
case "$cmd" in
    install) install ;;
    start) start ;;
    start-one) mkdir -p "$RUN_DIR"; start_one "$@" ;;
    stop) stop ;;
    restart) stop; start ;;
    status) status ;;
    test) run_test "$@" ;;
    *) echo "usage: $0 {install|start|stop|restart|status|test}" >&2; exit 2 ;;
esac
