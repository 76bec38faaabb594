"""Per-call store credentials (targets/store_credentials.py): on a target with
`store_credentials`, a call's pod or job may write only its own folder and read only its
DAG's folder and its inputs.

`attack` does what a hostile function could: it takes the runtime's own store credentials
(the strongest it can reach) and tries to read and overwrite another DAG's result
(params.foreign), to overwrite a result of its own DAG's from another run (params.sibling),
and to list the bucket. The honest path must still work: `produce`'s result reaches
`attack` as an input, and `attack`'s result is stored. tests/test_store_credentials.py
runs it on batch (moto) and kubernetes (the fake API).
"""

from __future__ import annotations

from airflow.sdk import dag

from airflow_infra import infra_task


@dag(schedule=None, catchup=False, params={"foreign": "", "sibling": ""}, tags=["airflow-infra-tests"])
def infra_store_scope():
    @infra_task(cache=False)
    def produce() -> list[int]:
        return [1, 2, 3]

    @infra_task(cache=False)
    def attack(numbers: list[int], foreign: str, sibling: str) -> dict:
        import os

        import fsspec

        from airflow_infra import runtime

        options = dict(runtime._store_options)

        def attempt(action) -> str:
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - what was refused, by its kind
                return type(exc).__name__
            return "allowed"

        def read(uri: str):
            return lambda: fsspec.open(uri, "rb", **options).open().read()

        def overwrite(uri: str):
            def write():
                with fsspec.open(uri, "wb", **options) as fh:
                    fh.write(b"overwritten")
            return write

        bucket = foreign.split("/")[2]
        return {
            "sum": sum(numbers),
            "credentials": sorted(options),
            "read_foreign": attempt(read(foreign)),
            "write_foreign": attempt(overwrite(foreign)),
            "read_sibling": attempt(read(sibling)),
            "write_sibling": attempt(overwrite(sibling)),
            "list_bucket": attempt(lambda: fsspec.filesystem("s3", skip_instance_cache=True, **options).ls(bucket)),
            "aws_variables": sorted(k for k in os.environ if k.startswith("AWS_") or "STORE_CREDENTIALS" in k),
            # Handed back for the test to look for everywhere else (this result is the one place).
            "stolen": [options.get("secret"), options.get("token")],
        }

    attack(produce(), "{{ params.foreign }}", "{{ params.sibling }}")


infra_store_scope()
