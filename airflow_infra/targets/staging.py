"""Local paths for a call whatever the store, for the kinds that run on this worker (local,
docker): a local store is used in place; a remote one is staged through a scratch folder
(call and inputs down before the call starts, outputs up after it ends, outcome last)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from airflow_infra.artifacts import CALL_FILE, OUTCOME_FILE
from airflow_infra.targets.contract import Call


@dataclass
class StagedCall:
    call: Call
    call_file: Path
    out: Path
    refs_file: Path | None
    scratch: Path
    # What a container must see at the same paths, and how: "rw" for the call's own folder
    # and the scratch folder, "ro" for each input artifact. Never the whole store: a
    # container may write only its own call's folder.
    mounts: dict[Path, str]

    @property
    def argv(self) -> list[str]:
        return [str(self.call_file), str(self.out), *([str(self.refs_file)] if self.refs_file else [])]

    @classmethod
    def open(cls, call: Call) -> StagedCall:
        scratch = Path(tempfile.mkdtemp(prefix="airflow-infra-"))
        try:
            store = call.store
            if store.is_local:
                folder = store.local_path(call.folder)
                inputs = {store.local_path(store.path(uri)): "ro" for uri in call.refs}
                return cls(call, folder / CALL_FILE, folder, None, scratch, {**inputs, folder: "rw", scratch: "rw"})
            call_file = store.download(call.folder / CALL_FILE, scratch / CALL_FILE)
            local_refs = {
                uri: str(store.download(store.path(uri), scratch / "refs" / f"{i}.pkl")) for i, uri in enumerate(call.refs)
            }
            refs_file = scratch / "refs.json"
            refs_file.write_text(json.dumps(local_refs))
            out = scratch / "out"
            out.mkdir()
            return cls(call, call_file, out, refs_file, scratch, {scratch: "rw"})
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise

    @classmethod
    def reopen(cls, call: Call, scratch: Path) -> StagedCall:
        """A remote store's call staged by an earlier try's worker on this machine, whose
        container a later try follows: close() uploads what it wrote, as it would have."""
        out = scratch / "out"
        refs_file = scratch / "refs.json"
        return cls(call, scratch / CALL_FILE, out, refs_file if refs_file.exists() else None, scratch, {scratch: "rw"})

    def close(self) -> None:
        """Upload what a staged call wrote (outcome.json last), then remove the scratch folder."""
        try:
            if self.out != self.scratch / "out" or not self.out.is_dir():
                return  # a local store: the call wrote in place
            for path in sorted(self.out.iterdir(), key=lambda p: p.name == OUTCOME_FILE):
                if not path.name.startswith("."):
                    self.call.store.upload(path, self.call.folder / path.name)
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)


def own_scratch(value: object) -> Path | None:
    """A staged call's scratch folder named by a stored handle, if it is one this worker's
    user made (StagedCall.open: tempfile.mkdtemp(prefix="airflow-infra-")): a later try
    uploads from it and then deletes it, so nothing else is ever taken for one."""
    path = Path(str(value))
    if path.parent != Path(tempfile.gettempdir()) or not _SCRATCH.match(path.name):
        return None
    try:
        info = path.lstat()
    except OSError:
        return None
    return path if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() else None


_SCRATCH = re.compile(r"airflow-infra-[A-Za-z0-9_]{1,64}\Z")
