#!/usr/bin/env bash
# Start a production-shaped Airflow on this machine, all on 127.0.0.1:
#   PostgreSQL (metadata database) and Redis (Celery broker) from Debian's packages, each a
#   private instance with its own data folder, port and random password; Airflow's
#   api-server, scheduler, dag-processor, triggerer and two Celery workers (CeleryExecutor);
#   artifacts on moto's S3 (dev/start-moto.sh); dags_examples/ as the DAGs folder.
#
#   bash dev/prod-up.sh        # idempotent: what already runs is left alone
#   source /tmp/airflow-infra-prod/airflow.env && airflow dags list    # its CLI
#   bash dev/prod-down.sh      # stops everything; --purge also removes its state
#
# Settings (environment): PROD_DIR (/tmp/airflow-infra-prod), PROD_PG_PORT (5433),
# PROD_REDIS_PORT (6380), PROD_API_PORT (28180), PROD_WORKERS (2), PROD_DAGS (dags_examples).
# Every process runs in a session of its own (setsid), its pid in $PROD_DIR/pids/, its log in
# $PROD_DIR/logs/. The REST API's admin password: $PROD_DIR/home/simple_auth_manager_passwords.json.generated.
# Needs root (it installs postgresql and redis-server when missing, and runs PostgreSQL as
# the `postgres` user) and .venv (bash dev/setup.sh).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
repo=$(pwd)
dir=${PROD_DIR:-/tmp/airflow-infra-prod}
pg_port=${PROD_PG_PORT:-5433}
redis_port=${PROD_REDIS_PORT:-6380}
api_port=${PROD_API_PORT:-28180}
workers=${PROD_WORKERS:-2}
dags=${PROD_DAGS:-$repo/dags_examples}

missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
pg_bin=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")

install -d -m 755 "$dir" "$dir/logs" "$dir/pids" "$dir/home"
# Passwords and keys are made once per state folder and kept beside it (mode 600), so a
# restart keeps the database readable (the Fernet key) and the tokens valid (the JWT secret).
secrets=$dir/secrets.env
if [ ! -s "$secrets" ]; then
    umask 077
    .venv/bin/python - >"$secrets" <<'PY'
import secrets
from cryptography.fernet import Fernet
print(f"PG_PASSWORD={secrets.token_hex(16)}")
print(f"REDIS_PASSWORD={secrets.token_hex(16)}")
print(f"FERNET_KEY={Fernet.generate_key().decode()}")
print(f"JWT_SECRET={secrets.token_hex(32)}")
PY
    umask 022
fi
source "$secrets"

# -- PostgreSQL: a private cluster as the postgres user, password auth on 127.0.0.1 only --
pgdata=$dir/pg/data
if ! runuser -u postgres -- test -x "$dir"; then
    echo "prod-up: the postgres user cannot reach $dir (a parent folder is not world-searchable); set PROD_DIR elsewhere" >&2
    exit 1
fi
if [ ! -s "$pgdata/PG_VERSION" ]; then
    install -d -o postgres -g postgres -m 700 "$dir/pg"
    pwfile=$(mktemp)
    printf '%s\n' "$PG_PASSWORD" >"$pwfile"
    chown postgres "$pwfile"
    runuser -u postgres -- "$pg_bin/initdb" -D "$pgdata" -U postgres --auth=scram-sha-256 \
        --pwfile="$pwfile" -E UTF8 >"$dir/logs/initdb.log" 2>&1 || { rm -f "$pwfile"; tail -20 "$dir/logs/initdb.log" >&2; exit 1; }
    rm -f "$pwfile"
fi
if ! runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
    runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pgdata" -w -t 60 -l "$dir/pg/postgres.log" \
        -o "-p $pg_port -c listen_addresses=127.0.0.1 -k $dir/pg -c max_connections=200" start >/dev/null
fi
export PGPASSWORD=$PG_PASSWORD
if ! psql -h 127.0.0.1 -p "$pg_port" -U postgres -tAc "select 1 from pg_database where datname='airflow'" | grep -q 1; then
    psql -h 127.0.0.1 -p "$pg_port" -U postgres -qc "create database airflow"
fi
echo "postgresql on 127.0.0.1:$pg_port up"

# -- Redis: the Celery broker ----------------------------------------------------------------
install -d -m 700 "$dir/redis"
if ! REDISCLI_AUTH=$REDIS_PASSWORD redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG; then
    # The password goes through a config file, not the command line (ps would show it).
    printf 'port %s\nbind 127.0.0.1\ndir %s\nrequirepass %s\nappendonly yes\nsave ""\n' \
        "$redis_port" "$dir/redis" "$REDIS_PASSWORD" >"$dir/redis/redis.conf"
    chmod 600 "$dir/redis/redis.conf"
    setsid redis-server "$dir/redis/redis.conf" >"$dir/logs/redis.log" 2>&1 </dev/null &
    echo $! >"$dir/pids/redis.pid"
    wait_until "redis on 127.0.0.1:$redis_port" "$dir/logs/redis.log" \
        env REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -p "$redis_port" ping
fi

# -- moto's S3 for the artifacts, and the examples' data --------------------------------------
bash dev/start-moto.sh >/dev/null
moto=http://127.0.0.1:${MOTO_PORT:-5001}

# -- Airflow's settings: one file every component and the CLI source --------------------------
umask 077
cat >"$dir/airflow.env" <<ENV
# Written by dev/prod-up.sh: the production-shaped deployment's settings (mode 600: secrets).
set -a
source "$secrets"
AIRFLOW_HOME=$dir/home
PATH=$repo/.venv/bin:\$PATH
AIRFLOW__CORE__EXECUTOR=CeleryExecutor
AIRFLOW__CORE__DAGS_FOLDER=$dags
AIRFLOW__CORE__LOAD_EXAMPLES=False
AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
AIRFLOW__CORE__FERNET_KEY=\$FERNET_KEY
AIRFLOW__API_AUTH__JWT_SECRET=\$JWT_SECRET
AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgresql+psycopg2://postgres:\$PG_PASSWORD@127.0.0.1:$pg_port/airflow
AIRFLOW__CELERY__BROKER_URL=redis://:\$REDIS_PASSWORD@127.0.0.1:$redis_port/0
AIRFLOW__CELERY__RESULT_BACKEND=db+postgresql+psycopg2://postgres:\$PG_PASSWORD@127.0.0.1:$pg_port/airflow
AIRFLOW__API__HOST=127.0.0.1
AIRFLOW__API__PORT=$api_port
AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$api_port/execution/
AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=10
AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=$((api_port + 10))
AIRFLOW_CONN_AWS_DEFAULT='{"conn_type": "aws", "login": "testing", "password": "testing", "extra": {"region_name": "us-east-1", "endpoint_url": "$moto"}}'
AIRFLOW_CONN_RECSYS_DATA=\$AIRFLOW_CONN_AWS_DEFAULT
set +a
ENV
umask 022
set -a
source "$dir/airflow.env"
set +a
# A platform's own infra.yaml, when one is there already, is kept.
[ -e "$AIRFLOW_HOME/infra.yaml" ] || printf 'artifacts: s3://aws_default@airflow-infra-prod/artifacts\n' >"$AIRFLOW_HOME/infra.yaml"
.venv/bin/python - "$moto" <<'PY'
import sys, boto3
s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=sys.argv[1], aws_access_key_id="testing", aws_secret_access_key="testing")
if "airflow-infra-prod" not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
    s3.create_bucket(Bucket="airflow-infra-prod")
PY
.venv/bin/python dev/seed_data.py >/dev/null
airflow db migrate >"$dir/logs/db-migrate.log" 2>&1 || { tail -30 "$dir/logs/db-migrate.log" >&2; exit 1; }

# -- the components ---------------------------------------------------------------------------
running() { [ -s "$dir/pids/$1.pid" ] && kill -0 "$(cat "$dir/pids/$1.pid")" 2>/dev/null; }
start() {  # start NAME COMMAND...: in a session of its own, unless it already runs
    local name=$1
    shift
    running "$name" && return 0
    (cd "$AIRFLOW_HOME" && exec setsid "$@" >"$dir/logs/$name.log" 2>&1 </dev/null) &
    echo $! >"$dir/pids/$name.pid"
}
start api-server airflow api-server
start scheduler airflow scheduler
start dag-processor airflow dag-processor
start triggerer airflow triggerer
for n in $(seq 1 "$workers"); do
    # Each worker serves its task logs on a port of its own.
    start "worker-$n" env AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=$((api_port + 10 + n)) \
        airflow celery worker --celery-hostname "worker-$n@%h" --concurrency 4
done

healthy() {
    curl -fsS "http://127.0.0.1:$api_port/api/v2/monitor/health" | .venv/bin/python -c '
import json, sys
health = json.load(sys.stdin)
sys.exit(0 if all(part.get("status") == "healthy" for part in health.values()) else 1)'
}
workers_ready() {
    for n in $(seq 1 "$workers"); do grep -q "ready\." "$dir/logs/worker-$n.log" || return 1; done
}
for _ in $(seq 1 240); do
    healthy 2>/dev/null && workers_ready && break
    for name in api-server scheduler dag-processor triggerer $(seq -f "worker-%g" 1 "$workers"); do
        if ! running "$name"; then
            echo "airflow $name exited; its log:" >&2
            tail -30 "$dir/logs/$name.log" >&2
            exit 1
        fi
    done
    sleep 0.5
done
healthy && workers_ready || { echo "the deployment did not become healthy in 120 s (logs: $dir/logs)" >&2; exit 1; }
echo "airflow (CeleryExecutor, $workers workers, PostgreSQL, Redis) on http://127.0.0.1:$api_port up"
