"""Dynamic fan-out over a list produced at run time, then a reduce.

`make_shards` decides at run time how many shards there are; `count_words` runs once per
shard (`.partial()` fixes an argument for all of them, `.expand()` maps the rest), and
`merge` receives every shard's result. Each shard's result is a Counter, not a plain
value, so it stays in the artifact store and XCom carries a reference; `merge` gets the
Counters back as objects, inside its own environment.

    airflow dags test fanout_example -c '{"n_shards": 5}'
"""

from __future__ import annotations

from collections import Counter

from airflow.sdk import Param, dag

from airflow_infra import infra_task

WORDS = "the quick brown fox jumps over the lazy dog and the cat".split()


@dag(schedule=None, catchup=False, tags=["airflow-infra", "example"], params={"n_shards": Param(3, type="integer", minimum=1)})
def fanout_example():
    @infra_task
    def make_shards(params: dict) -> list[list[str]]:
        n = params["n_shards"]
        return [[WORDS[(i + j) % len(WORDS)] for j in range(20)] for i in range(n)]

    @infra_task(packages=["numpy>=2"], cpu=0.25, memory="128Mi")
    # No `-> Counter` annotation: TaskFlow would read a Mapping return type as multiple_outputs=True.
    def count_words(shard: list[str], min_length: int, map_index: int = -1):
        import numpy as np

        lengths = np.array([len(w) for w in shard])
        print(f"shard {map_index}: {len(shard)} words, mean length {lengths.mean():.2f}")
        return Counter(w for w in shard if len(w) >= min_length)

    @infra_task
    def merge(counts: list) -> dict:
        total: Counter = Counter()
        for part in counts:
            assert isinstance(part, Counter), type(part)
            total.update(part)
        print(f"{len(counts)} shards, {sum(total.values())} words counted")
        return dict(total.most_common())

    merge(count_words.partial(min_length=3).expand(shard=make_shards()))


fanout_example()
