"""Scale out past Airflow's mapping limits: a grid search over points made at run time, as
ONE task instance (not one per point), then a reduce.

`make_grid` decides at run time how many points there are (`n_points`, default 2,000:
above `max_map_length`, 1024, which `.expand()` refuses). `evaluate` runs once per point
through `.fan_out()`: in chunks of points, in parallel, on whatever target the routing
rules pick for one point's resources (a pool of processes on the local target, one
container on docker, an array job on AWS Batch, an Indexed Job on Kubernetes). A point
that fails is tolerated up to 1% of them; `best` gets the scores as a lazy sequence.

    airflow dags test scale_out_example -c '{"n_points": 2000}'
"""

from __future__ import annotations

from airflow.sdk import Param, dag

from airflow_infra import infra_task


@dag(schedule=None, catchup=False, tags=["airflow-infra", "example"],
     params={"n_points": Param(2000, type="integer", minimum=1, maximum=100_000)})
def scale_out_example():
    @infra_task
    def make_grid(params: dict) -> list[dict]:
        n = params["n_points"]
        return [{"lr": 10 ** (-3 + 3 * i / max(1, n - 1)), "l2": (i % 7) / 10} for i in range(n)]

    @infra_task(packages=["numpy>=2"], cpu=0.5, memory="128Mi")
    def evaluate(point: dict, seed: int) -> float:
        """Ridge regression by gradient descent on a small synthetic problem: the loss it reaches."""
        import numpy as np

        rng = np.random.default_rng(seed)
        x = rng.normal(size=(200, 5))
        y = x @ np.array([3.0, -2.0, 1.0, 0.0, 0.5]) + rng.normal(scale=0.1, size=200)
        w = np.zeros(5)
        for _ in range(50):
            w -= point["lr"] * (x.T @ (x @ w - y) / len(y) + point["l2"] * w)
        return float(np.mean((x @ w - y) ** 2))

    @infra_task
    def best(scores, grid: list[dict]) -> dict:
        scored = [(s, i) for i, s in enumerate(scores) if s is not None]
        loss, at = min(scored)
        print(f"{len(scores)} points scored, {len(scores) - len(scored)} failed; best loss {loss:.4f} at {grid[at]}")
        return {"loss": loss, "point": grid[at], "points": len(scores)}

    grid = make_grid()
    best(evaluate.partial(seed=7).fan_out(point=grid, max_failures=0.01), grid)


scale_out_example()
