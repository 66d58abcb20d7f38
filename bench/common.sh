# Helpers shared by bench/run.sh and bench/callgrind.sh (sourced, not run).

# Waits until 127.0.0.1:PORT accepts a connection: TRIES × 0.1 s at most.
wait_port() { # port [tries]
    local i
    for ((i = 0; i < ${2:-100}; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# Whether a case's load opens each connection with a PROXY protocol header
# (the proxy then runs its -pp configuration).
pp_case() { # case
    case $1 in
    a_pp | h1pp) return 0 ;;
    *) return 1 ;;
    esac
}
