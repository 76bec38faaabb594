# Source me: a self-contained Airflow home for the examples (SQLite DB, dags_examples as the dags folder).
_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export AIRFLOW_HOME="${AIRFLOW_HOME:-$_repo/.airflow-home}"
export AIRFLOW__CORE__DAGS_FOLDER="$_repo/dags_examples"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export PATH="$_repo/.venv/bin:$PATH"
# The seed example's `load` reads its input through this connection: here moto's S3
# (dev/start-moto.sh, dev/seed_data.py). Set your own to read from real S3.
if [ -z "${AIRFLOW_CONN_RECSYS_DATA:-}" ]; then
    export AIRFLOW_CONN_RECSYS_DATA='{"conn_type": "aws", "login": "testing", "password": "testing", "extra": {"region_name": "us-east-1", "endpoint_url": "http://127.0.0.1:'"${MOTO_PORT:-5001}"'"}}'
fi
unset _repo
