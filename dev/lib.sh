# Sourced by the dev/ scripts.

# wait_until NAME LOG CMD...: retry CMD for up to 30 s; on failure print LOG's tail and return 1.
wait_until() {
    local name=$1 log=$2
    shift 2
    for _ in $(seq 1 120); do
        if "$@" >/dev/null 2>&1; then echo "$name up"; return 0; fi
        sleep 0.25
    done
    echo "$name did not come up; its log:" >&2
    tail -20 "$log" >&2
    return 1
}
