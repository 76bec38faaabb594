"""Local paths for a call whatever the store: a local store is used in place; a remote one
is staged through a scratch folder (call and inputs down, then outputs up, outcome last)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from airflow_infra.artifacts import CALL_FILE, OUTCOME_FILE
from airflow_infra.backends.base import Job


@dataclass(frozen=True)
class StagedCall:
    call: Path
    out: Path
    refs_file: Path | None
    scratch: Path
    mounts: tuple[Path, ...]  # what a container must see at the same paths

    @property
    def argv(self) -> list[str]:
        return [str(self.call), str(self.out), *([str(self.refs_file)] if self.refs_file else [])]


@contextmanager
def staged_call(job: Job) -> Iterator[StagedCall]:
    with tempfile.TemporaryDirectory(prefix="airflow-infra-") as scratch_name:
        scratch = Path(scratch_name)
        if job.store.is_local:
            task_dir = job.store.local_path(job.task_dir)
            root = job.store.local_path(job.store.root)
            yield StagedCall(task_dir / CALL_FILE, task_dir, None, scratch, (root, scratch))
            return
        call = job.store.download(job.task_dir / CALL_FILE, scratch / CALL_FILE)
        local_refs = {
            uri: str(job.store.download(job.store.path(uri), scratch / "refs" / f"{i}.pkl")) for i, uri in enumerate(job.refs)
        }
        refs_file = scratch / "refs.json"
        refs_file.write_text(json.dumps(local_refs))
        out = scratch / "out"
        out.mkdir()
        yield StagedCall(call, out, refs_file, scratch, (scratch,))
        for path in sorted(out.iterdir(), key=lambda p: p.name == OUTCOME_FILE):
            if not path.name.startswith("."):
                job.store.upload(path, job.task_dir / path.name)
