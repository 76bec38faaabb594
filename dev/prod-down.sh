#!/usr/bin/env bash
# Stop what dev/prod-up.sh started: each Airflow component's and Redis's session (SIGTERM,
# then SIGKILL after 30 s), then PostgreSQL (fast shutdown). `--purge` also removes its state
# folder (database, broker data, logs, passwords).
#   bash dev/prod-down.sh [--purge]
set -uo pipefail
dir=${PROD_DIR:-/tmp/airflow-infra-prod}
[ -d "$dir" ] || exit 0
groups=()
for pidfile in "$dir"/pids/*.pid; do
    [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    # Each was started with setsid: its pid is its session's and process group's id, so the
    # group holds what it forked (task supervisors, Celery's pool, gunicorn/uvicorn workers).
    kill -TERM -- "-$pid" 2>/dev/null && groups+=("$pid")
    rm -f "$pidfile"
done
for _ in $(seq 1 60); do
    alive=0
    for pid in "${groups[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.5
done
for pid in "${groups[@]}"; do kill -KILL -- "-$pid" 2>/dev/null; done
pg_ctl=$(ls /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -1)
if [ -n "$pg_ctl" ] && [ -s "$dir/pg/data/PG_VERSION" ]; then
    runuser -u postgres -- "$pg_ctl" -D "$dir/pg/data" -m fast -w stop >/dev/null 2>&1
fi
if [ "${1:-}" = "--purge" ]; then
    rm -rf "$dir"
fi
echo "production-shaped deployment stopped${1:+ ($1)}"
