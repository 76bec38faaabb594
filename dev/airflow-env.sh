# Source me: a self-contained Airflow home for the examples (SQLite DB, dags_examples as the dags folder).
_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export AIRFLOW_HOME="${AIRFLOW_HOME:-$_repo/.airflow-home}"
export AIRFLOW__CORE__DAGS_FOLDER="$_repo/dags_examples"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export PATH="$_repo/.venv/bin:$PATH"
unset _repo
