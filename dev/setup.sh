#!/usr/bin/env bash
# Make .venv: Airflow 3 + this provider (editable) + test tools, pinned by dev/constraints.txt.
# Idempotent: a second run only checks. Regenerate the pins with:
#   uv pip compile setup.cfg --extra test --python-version 3.11 --no-header -o dev/constraints.txt
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if ! command -v uv >/dev/null 2>&1; then
    "$python" -m pip install --quiet uv
fi
uv=$(command -v uv || echo "$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/uv")
[ -x .venv/bin/python ] || "$uv" venv --quiet --python "$python" .venv
"$uv" pip install --quiet --python .venv/bin/python -c dev/constraints.txt -e ".[test]"
# uv installs no bytecode, and where PYTHONDONTWRITEBYTECODE is set (as on these machines)
# Python never writes it either: every `airflow` command would then compile Airflow from
# source again, about 5 s of CPU each. Compile once per change of the pins.
stamp=.venv/.bytecode-compiled
if [ ! -e "$stamp" ] || [ dev/constraints.txt -nt "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
    .venv/bin/python -m compileall -q -j 0 .venv/lib/python3*/site-packages >/dev/null || true
    touch "$stamp"
fi
