"""The seed scenario: load -> two model fits with conflicting numpy pins, in parallel -> ensemble.

fit_a runs with numpy 1.x and fit_b with numpy 2.x, each in its own environment; the
results meet in `ensemble`, which declares nothing and runs in the default environment.
fit_b asks for a GPU, so routing rules can send it to a GPU target.

    airflow dags test recsys_seed
    airflow dags test recsys_seed -c '{"lr": 0.05}'
"""

from __future__ import annotations

from airflow.sdk import Param, dag

from airflow_infra import infra_task

N_ROWS = 200


def make_rows(n: int, seed: int) -> dict[str, list[float]]:
    """A small synthetic data set: y = 3*x1 - 2*x2 + 1 + noise (a helper the task ships with it)."""
    import random

    rnd = random.Random(seed)
    x1 = [rnd.uniform(-1, 1) for _ in range(n)]
    x2 = [rnd.uniform(-1, 1) for _ in range(n)]
    y = [3 * a - 2 * b + 1 + rnd.gauss(0, 0.05) for a, b in zip(x1, x2)]
    return {"x1": x1, "x2": x2, "y": y}


@dag(schedule=None, catchup=False, tags=["airflow-infra", "example"], params={"lr": Param(0.1, type="number")})
def recsys_seed():
    @infra_task(packages=["pandas>=2.2,<3"])
    def load() -> dict:
        import pandas as pd

        frame = pd.DataFrame(make_rows(N_ROWS, seed=7))
        print(f"loaded {len(frame)} rows with pandas {pd.__version__}")
        return {"columns": frame.to_dict(orient="list"), "pandas": pd.__version__}

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

    data = load()
    ensemble(fit_a(data, lr="{{ params.lr }}"), fit_b(data, lr="{{ params.lr }}"))


recsys_seed()
