#!/usr/bin/env bash
# Autobahn|Testsuite conformance run for switchyard's WebSocket relay.
#
# Runs the suite's fuzzingclient, in one run, against the suite's own echo
# server directly and through switchyard (plain HTTP and TLS), then fails when
# any case is worse through the proxy than directly. Two echo servers: one
# answers a protocol error with a close frame ("direct", "proxy", "proxy-tls"),
# the other drops TCP as `wstest -m echoserver` does ("direct-drop",
# "proxy-drop"). See autobahn/README.md.
#
# Installs what it needs on first use into the gitignored work dir
# (.autobahn/ by default): Debian 11's Python 2.7 (Debian 12 has none), pip,
# and autobahntestsuite with the pins in autobahn/requirements-py27.txt.
# Reaches only Debian's archive and PyPI, and only when something is missing.
#
# Environment (all optional):
#   AUTOBAHN_WORK        work dir (default: <repo>/.autobahn)
#   AUTOBAHN_CASES       JSON list of cases to run (default: 1.* to 7.* and 10.*,
#                        plus a sample of 9.* (limits) and 12.*/13.* (compression))
#   AUTOBAHN_EXCLUDE     JSON list of cases to skip (default: [])
#   AUTOBAHN_FULL=1      run every case (all of 9.*, 12.*, 13.*): far longer
#   AUTOBAHN_TLS=0       skip the run through the proxy's TLS listener
#   AUTOBAHN_ALLOW_WORSE case ids or patterns (e.g. "7.9.* 7.5.1") that may be
#                        worse through the proxy without failing the run
#   AUTOBAHN_TIMEOUT     seconds the fuzzingclient may take (default: 900)
#   SWITCHYARD_BIN       proxy binary to test (default: cargo build, then target/debug/switchyard)
#   AUTOBAHN_ECHO_PORT, AUTOBAHN_ECHO_DROP_PORT, AUTOBAHN_HTTP_PORT,
#   AUTOBAHN_HTTPS_PORT, AUTOBAHN_ADMIN_PORT
#                        loopback ports (default: free ones, picked at start)
#   AUTOBAHN_NICE        niceness for everything it starts (default: 10)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
HERE=$REPO/autobahn
WORK=${AUTOBAHN_WORK:-$REPO/.autobahn}
# Free loopback ports picked at start unless set (the machine may be shared).
free_ports() {
    python3 -c 'import socket
s = [socket.socket() for _ in range(5)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))'
}
read -r P1 P2 P3 P4 P5 <<<"$(free_ports)"
ECHO_PORT=${AUTOBAHN_ECHO_PORT:-$P1}
ECHO_DROP_PORT=${AUTOBAHN_ECHO_DROP_PORT:-$P5}
HTTP_PORT=${AUTOBAHN_HTTP_PORT:-$P2}
HTTPS_PORT=${AUTOBAHN_HTTPS_PORT:-$P3}
ADMIN_PORT=${AUTOBAHN_ADMIN_PORT:-$P4}
NICE=${AUTOBAHN_NICE:-10}
TIMEOUT=${AUTOBAHN_TIMEOUT:-900}
# All of 1.* to 7.* and 10.* (framing, pings, reserved bits and opcodes,
# fragmentation, UTF-8, closing, auto-fragmentation); of 9.* (limits and
# performance: minutes in all) messages of 64 KiB to 16 MiB, fragmented and
# chopped, and 1,000-message round trips; of 12.*/13.* (permessage-deflate:
# ~1-3 s a case, 216 cases) one case of each group, enough to see the extension
# negotiated end to end and RSV1 frames relayed.
SAMPLE_9='"9.1.1", "9.1.3", "9.2.1", "9.2.3", "9.2.6", "9.3.1", "9.4.1", "9.5.1", "9.6.1", "9.7.1", "9.8.1"'
SAMPLE_12_13='"12.1.1", "12.2.1", "12.3.1", "12.4.1", "12.5.1", "13.1.1", "13.3.1", "13.5.1", "13.7.1"'
# The drop-TCP backend differs from the other only in how it fails a
# connection, so the cases where nothing fails run against one backend only.
# Against it, cases that send a good message and then a bad frame (3.2-3.4,
# 4.1.3-4.1.5, 4.2.3-4.2.5, 5.15) are a race, directly too: whether the echo
# of the good message leaves before the connection is dropped depends on
# how the bytes were split into reads. Those run against the other backend only.
DROP_RACES='"3.2", "3.3", "3.4", "4.1.3", "4.1.4", "4.1.5", "4.2.3", "4.2.4", "4.2.5", "5.15"'
if [ "${AUTOBAHN_FULL:-0}" = 1 ]; then
    CASES=${AUTOBAHN_CASES:-'["*"]'}
    DROP_EXCLUDE="[$DROP_RACES]"
else
    CASES=${AUTOBAHN_CASES:-"[\"1.*\", \"2.*\", \"3.*\", \"4.*\", \"5.*\", \"6.*\", \"7.*\", \"10.*\", $SAMPLE_9, $SAMPLE_12_13]"}
    DROP_EXCLUDE="[\"1.*\", \"2.*\", \"9.*\", \"10.*\", \"12.*\", \"13.*\", $DROP_RACES]"
fi
EXCLUDE_AGENT="{\"direct-drop\": $DROP_EXCLUDE, \"proxy-drop\": $DROP_EXCLUDE}"
EXCLUDE=${AUTOBAHN_EXCLUDE:-'[]'}

ROOT=$WORK/root                        # Debian 11's python2.7, unpacked
PY=$ROOT/usr/bin/python2.7
WSTEST=$ROOT/usr/local/bin/wstest
REQS=$HERE/requirements-py27.txt
PIP_WHEEL_VERSION=20.3.4               # the last pip that runs on Python 2.7
# Debian 11 packages unpacked into $ROOT. libssl1.1 and libffi7 are not in
# Debian 12; the other libraries libpython2.7-stdlib links are.
DEBS=(python2.7 python2.7-minimal libpython2.7-minimal libpython2.7-stdlib
      libpython2.7-dev libssl1.1 libffi7)

T0=$(date +%s)
say() { echo "autobahn [$(( $(date +%s) - T0 ))s]: $*"; }

# The Python 2.7 environment: Debian's binary relocated with PYTHONHOME. pip
# installs into $ROOT/usr/local/lib/python2.7/dist-packages, which Debian's
# site.py puts on sys.path.
py27_env() {
    export PYTHONHOME=$ROOT/usr
    export LD_LIBRARY_PATH=$ROOT/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export PYTHONNOUSERSITE=1
    export PYTHONDONTWRITEBYTECODE=1
    export PIP_FIND_LINKS=                # the machine's own wheel dir is for Python 3
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    export PIP_NO_PYTHON_VERSION_WARNING=1
    # Debian's distutils hard-codes /usr/include/python2.7; wsaccel is built
    # from source, so point the compiler at the unpacked headers.
    export CFLAGS="-I$ROOT/usr/include/python2.7 -I$ROOT/usr/include"
}

suite_ok() {
    [ -x "$PY" ] && [ -f "$WSTEST" ] && [ -f "$WORK/installed.stamp" ] \
        && cmp -s "$REQS" "$WORK/installed.stamp" \
        && (py27_env; "$PY" -c 'import autobahntestsuite, autobahn, twisted, wsaccel') >/dev/null 2>&1
}

install_python27() {
    say "fetching Debian 11 (bullseye) python2.7 packages"
    local apt=$WORK/apt
    rm -rf "$apt" "$WORK/debs" "$ROOT"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$WORK/debs" "$ROOT"
    cat >"$apt/sources.list" <<'EOF'
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main
EOF
    # A private apt state: the machine's own sources and package lists are
    # neither read nor changed.
    local opts=(-o "Dir::Etc::sourcelist=$apt/sources.list"
                -o "Dir::Etc::sourceparts=$apt/none"
                -o "Dir::State::Lists=$apt/lists"
                -o "Dir::Cache=$apt/cache"
                -o "Dir::State::status=/dev/null"
                -o "Debug::NoLocking=1"
                -o "APT::Sandbox::User=root"
                -q)
    nice -n "$NICE" apt-get "${opts[@]}" update >"$WORK/apt-update.log" 2>&1 \
        || { cat "$WORK/apt-update.log"; echo "autobahn: apt-get update (bullseye) failed" >&2; return 1; }
    (cd "$WORK/debs" && nice -n "$NICE" apt-get "${opts[@]}" download "${DEBS[@]}") \
        >"$WORK/apt-download.log" 2>&1 \
        || { cat "$WORK/apt-download.log"; echo "autobahn: apt-get download failed" >&2; return 1; }
    local deb
    for deb in "$WORK"/debs/*.deb; do
        dpkg-deb -x "$deb" "$ROOT"
    done
    rm -rf "$apt"   # the bullseye package lists (24 MB) are needed no more
    # Every shared library the interpreter and its C modules link must resolve.
    local missing
    missing=$( (py27_env; ldd "$PY" "$ROOT"/usr/lib/python2.7/lib-dynload/*.so) 2>/dev/null \
               | grep 'not found' | sort -u || true)
    if [ -n "$missing" ]; then
        echo "autobahn: libraries missing for python2.7:" >&2
        echo "$missing" >&2
        return 1
    fi
    (py27_env; "$PY" -c 'import ssl, ctypes, zlib, hashlib, sqlite3; print("python2.7 ok: " + ssl.OPENSSL_VERSION)')
}

install_suite() {
    say "installing pip $PIP_WHEEL_VERSION and autobahntestsuite for Python 2.7"
    mkdir -p "$WORK/wheels"
    local whl=$WORK/wheels/pip-$PIP_WHEEL_VERSION-py2.py3-none-any.whl
    if [ ! -f "$whl" ]; then
        # Any pip can fetch the wheel; a wheel of pip runs from its zip file.
        PIP_FIND_LINKS= nice -n "$NICE" python3 -m pip download -q --no-deps \
            -d "$WORK/wheels" "pip==$PIP_WHEEL_VERSION"
    fi
    (
        py27_env
        nice -n "$NICE" "$PY" "$whl/pip" install -q "pip==$PIP_WHEEL_VERSION" \
            setuptools==44.0.0 wheel==0.37.1
        nice -n "$NICE" "$PY" -m pip install -q --prefer-binary -r "$REQS"
        "$PY" -c 'import autobahntestsuite, autobahn, twisted, wsaccel'
    ) >"$WORK/pip.log" 2>&1 || { tail -40 "$WORK/pip.log"; echo "autobahn: pip install failed" >&2; return 1; }
    cp "$REQS" "$WORK/installed.stamp"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port, pid, what
    local i
    for i in $(seq 1 200); do
        port_open "$1" && return 0
        kill -0 "$2" 2>/dev/null || { echo "autobahn: $3 exited before listening on :$1" >&2; return 1; }
        sleep 0.1
    done
    echo "autobahn: $3 is not listening on :$1 after 20s" >&2
    return 1
}

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- install ---------------------------------------------------------------------
mkdir -p "$WORK"
if suite_ok; then
    say "autobahntestsuite already installed in $WORK"
else
    if ! { [ -x "$PY" ] && (py27_env; "$PY" -c 'import ssl') >/dev/null 2>&1; }; then
        install_python27
    fi
    install_suite
    suite_ok || { echo "autobahn: installation check failed" >&2; exit 1; }
fi
(py27_env; "$PY" "$WSTEST" --autobahnversion 2>/dev/null | sed 's/^/  /') || true

# --- the proxy binary --------------------------------------------------------------
if [ -z "${SWITCHYARD_BIN:-}" ]; then
    say "cargo build"
    nice -n "$NICE" cargo build --quiet --bin switchyard
    SWITCHYARD_BIN=${CARGO_TARGET_DIR:-$REPO/target}/debug/switchyard
fi
[ -x "$SWITCHYARD_BIN" ] || { echo "autobahn: no proxy binary at $SWITCHYARD_BIN" >&2; exit 1; }

for port in "$ECHO_PORT" "$ECHO_DROP_PORT" "$HTTP_PORT" "$HTTPS_PORT" "$ADMIN_PORT"; do
    if port_open "$port"; then
        echo "autobahn: 127.0.0.1:$port is already in use; set AUTOBAHN_*_PORT" >&2
        exit 1
    fi
done

# --- configuration ------------------------------------------------------------------
RUN=$WORK/run
REPORTS=$RUN/reports
rm -rf "$RUN"
mkdir -p "$RUN/config/sites" "$REPORTS"
subst() {
    sed -e "s|@REPO@|$REPO|g" -e "s|@ECHO_PORT@|$ECHO_PORT|g" -e "s|@ECHO_DROP_PORT@|$ECHO_DROP_PORT|g" \
        -e "s|@PROXY_HTTP_PORT@|$HTTP_PORT|g" -e "s|@PROXY_HTTPS_PORT@|$HTTPS_PORT|g" \
        -e "s|@PROXY_ADMIN_PORT@|$ADMIN_PORT|g" -e "s|@REPORT_DIR@|$REPORTS|g" \
        -e "s|@CASES@|$CASES|g" -e "s|@EXCLUDE_CASES@|$EXCLUDE|g" \
        -e "s|@EXCLUDE_AGENT_CASES@|$EXCLUDE_AGENT|g" "$1" >"$2"
}
PAIRS=(direct=proxy,proxy-tls direct-drop=proxy-drop)
subst "$HERE/config/switchyard.toml.in" "$RUN/config/switchyard.toml"
subst "$HERE/config/sites/autobahn.toml.in" "$RUN/config/sites/autobahn.toml"
subst "$HERE/fuzzingclient.json.in" "$RUN/fuzzingclient.json"
if [ "${AUTOBAHN_TLS:-1}" = 0 ]; then
    sed -i '/"proxy-tls"/d' "$RUN/fuzzingclient.json"
    PAIRS=(direct=proxy direct-drop=proxy-drop)
fi
"$SWITCHYARD_BIN" check -c "$RUN/config" >"$RUN/check.log" 2>&1 \
    || { cat "$RUN/check.log"; echo "autobahn: switchyard check failed" >&2; exit 1; }

# --- start the echo server and the proxy ------------------------------------------------
say "starting echo servers on :$ECHO_PORT and :$ECHO_DROP_PORT (drop), switchyard on :$HTTP_PORT and :$HTTPS_PORT (TLS)"
start_echo() { # port, log, options
    (
        py27_env
        cd "$RUN"
        exec nice -n "$NICE" "$PY" "$HERE/echoserver.py" "ws://127.0.0.1:$1" "${@:3}"
    ) >"$RUN/$2" 2>&1 &
    PIDS+=($!)
    wait_port "$1" "${PIDS[-1]}" "the echo server" || { cat "$RUN/$2"; exit 1; }
}
start_echo "$ECHO_PORT" echoserver.log --no-fail-by-drop
start_echo "$ECHO_DROP_PORT" echoserver-drop.log

nice -n "$NICE" "$SWITCHYARD_BIN" run -c "$RUN/config" >"$RUN/switchyard.log" 2>&1 &
PIDS+=($!)
PROXY_PID=${PIDS[-1]}
wait_port "$HTTP_PORT" "$PROXY_PID" "switchyard" || { cat "$RUN/switchyard.log"; exit 1; }
wait_port "$HTTPS_PORT" "$PROXY_PID" "switchyard" || { cat "$RUN/switchyard.log"; exit 1; }

# --- the suite --------------------------------------------------------------------
say "fuzzingclient: ${PAIRS[*]}; cases $CASES"
T1=$(date +%s)
rc=0
(
    py27_env
    cd "$RUN"
    exec timeout "$TIMEOUT" nice -n "$NICE" "$PY" "$WSTEST" -m fuzzingclient -s "$RUN/fuzzingclient.json"
) >"$RUN/fuzzingclient.log" 2>&1 || rc=$?
say "fuzzingclient finished in $(( $(date +%s) - T1 ))s (exit $rc); log: $RUN/fuzzingclient.log"
if [ "$rc" -ne 0 ] || [ ! -f "$REPORTS/index.json" ]; then
    tail -30 "$RUN/fuzzingclient.log"
    echo "autobahn: the fuzzingclient did not finish (exit $rc)" >&2
    exit 1
fi
proxy_failed=0
if ! kill -0 "$PROXY_PID" 2>/dev/null; then
    echo "autobahn: switchyard died during the run" >&2
    proxy_failed=1
elif grep -q 'panicked' "$RUN/switchyard.log"; then
    echo "autobahn: switchyard panicked during the run" >&2
    proxy_failed=1
fi
[ "$proxy_failed" = 0 ] || tail -30 "$RUN/switchyard.log" >&2

# --- compare ------------------------------------------------------------------------
rc=0
python3 "$HERE/compare.py" --allow "${AUTOBAHN_ALLOW_WORSE:-}" "$REPORTS" "${PAIRS[@]}" || rc=$?
[ "$proxy_failed" = 0 ] || rc=1
say "done in $(( $(date +%s) - T0 ))s; HTML report: $REPORTS/index.html"
exit "$rc"
