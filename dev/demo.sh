#!/usr/bin/env bash
# Set everything up on a fresh machine and run the seed example DAG locally with `airflow dags test`.
#   bash dev/demo.sh [DAG_ID] [CONF_JSON]
set -euo pipefail
cd "$(dirname "$0")/.."
bash dev/setup.sh
source dev/airflow-env.sh
airflow db migrate >/dev/null
dag=${1:-recsys_seed}
if [ "$dag" = recsys_seed ]; then
    # Its input lives on S3 (moto's, here) and is read through the `recsys_data` connection.
    bash dev/start-moto.sh
    python dev/seed_data.py
fi
airflow dags test "$dag" ${2:+-c "$2"} 2>&1 | tee "$AIRFLOW_HOME/last-dags-test.log" \
    | grep -E "target '|loaded [0-9]+ rows|ensemble of|shards,|loss=|DagRun Finished|Error" || true
grep -q "state=success" "$AIRFLOW_HOME/last-dags-test.log" && echo "OK: $dag succeeded (full log: $AIRFLOW_HOME/last-dags-test.log)"
