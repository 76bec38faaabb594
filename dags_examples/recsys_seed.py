"""The seed scenario: load -> two model fits with conflicting numpy pins, in parallel -> ensemble.

`load` reads its input, a CSV on S3, through the Airflow connection `recsys_data` it
declares: an `aws` connection kept in Airflow (its secrets backend, the database or an
`AIRFLOW_CONN_RECSYS_DATA` variable), handed to the task where it runs and never written
into the DAG, an image or the store. fit_a runs with numpy 1.x and fit_b with numpy 2.x,
each in its own environment; the results meet in `ensemble`, which declares nothing and
runs in the default environment. fit_b asks for a GPU, so routing rules can send it to a
GPU target.

    bash dev/demo.sh          # moto's S3 as the data's home: dev/seed_data.py writes the CSV
    airflow dags test recsys_seed -c '{"lr": 0.05}'
    airflow dags test recsys_seed -c '{"data": "s3://my-bucket/rows.csv"}'
"""

from __future__ import annotations

from airflow.sdk import Param, dag

from airflow_infra import infra_task

DATA = "s3://airflow-infra-examples/recsys/rows.csv"  # dev/seed_data.py writes it


@dag(
    schedule=None,
    catchup=False,
    tags=["airflow-infra", "example"],
    params={"lr": Param(0.1, type="number"), "data": Param(DATA, type="string", pattern=r"^s3://[^/]+/.+")},
)
def recsys_seed():
    # boto3 takes the credentials, region and endpoint from the AWS_* variables the declared
    # aws connection sets in the task's process (and nowhere else).
    @infra_task(packages=["pandas>=2.2,<3", "boto3"], connections=["recsys_data"])
    def load(data: str) -> dict:
        import io

        import boto3
        import pandas as pd

        bucket, _, key = data.removeprefix("s3://").partition("/")
        body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        frame = pd.read_csv(io.BytesIO(body))
        print(f"loaded {len(frame)} rows from {data} with pandas {pd.__version__}")
        return {"columns": frame.to_dict(orient="list"), "pandas": pd.__version__, "source": data}

    @infra_task(packages=["numpy<2"], cpu=1, memory="512Mi")
    def fit_a(data: dict, lr: float) -> dict:
        import numpy as np

        cols = data["columns"]
        features = np.column_stack([cols["x1"], cols["x2"], np.ones(len(cols["y"]))])
        coef, *_ = np.linalg.lstsq(features, np.asarray(cols["y"]), rcond=None)
        print(f"fit_a: least squares with numpy {np.__version__}")
        return {"coef": [float(c) for c in coef], "numpy": np.__version__, "lr": lr}

    # The GPU fit: routing rules can send it to a GPU target (e.g. `gpu >= 1` -> AWS Batch). The
    # code itself runs on a CPU too, so with no such target it runs wherever the rules say.
    @infra_task(packages=["numpy>=2"], cpu=1, memory="512Mi", gpu=1)
    def fit_b(data: dict, lr: float) -> dict:
        import numpy as np

        cols = data["columns"]
        features = np.column_stack([cols["x1"], cols["x2"], np.ones(len(cols["y"]))])
        target = np.asarray(cols["y"])
        coef = np.zeros(3)
        for _ in range(500):  # plain gradient descent, so lr matters
            coef -= lr * features.T @ (features @ coef - target) / len(target)
        print(f"fit_b: gradient descent with numpy {np.__version__}, lr={lr}")
        return {"coef": [float(c) for c in coef], "numpy": np.__version__, "lr": lr}

    @infra_task
    def ensemble(a: dict, b: dict) -> dict:
        coef = [(x + y) / 2 for x, y in zip(a["coef"], b["coef"])]
        print(f"ensemble of numpy {a['numpy']} and numpy {b['numpy']}: {coef}")
        return {"coef": coef, "numpy_versions": [a["numpy"], b["numpy"]], "lr": [a["lr"], b["lr"]]}

    data = load("{{ params.data }}")
    ensemble(fit_a(data, lr="{{ params.lr }}"), fit_b(data, lr="{{ params.lr }}"))


recsys_seed()
