"""Deterministic image layers (gzipped tars) and the on-disk cache of finished ones.

The same entries give the same compressed bytes on any machine and at any time: entries
sorted by path, every ancestor directory present, owner root:root, modes 0755/0644 (or
0777 for symlinks), mtime 0, PAX headers only for long names, gzip with mtime 0 and no
file name. So a layer's digest depends on its content only, and equal layers of different
environments (or of different builds) are one blob in the registry and on every node.

Compression is gzip made with ISA-L (`isal`), single-threaded at a fixed level: about 8x
zlib's level 4 for ~10% more bytes, and still plain gzip, which every engine pulls (zstd
layers need Docker >= 23 or containerd >= 1.5; the Docker 20.10 of Debian 12 fails on them).
ISA-L's bytes for the same input may change with its version, so COMPRESSION, which the
layer cache keys carry, names it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import tarfile
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import isal
from isal import igzip

from airflow_infra.images.daemonless.timing import Stopwatch

# ISA-L's level 1: ~380 MiB/s on one core here (zlib's level 4: ~45) for ~12% more bytes.
GZIP_LEVEL = 1
COMPRESSION = f"gzip-isal{isal.ISAL_VERSION}-{GZIP_LEVEL}"
MTIME = 0


@dataclass(frozen=True)
class Entry:
    """One path in the image (absolute, e.g. /opt/airflow-infra/venv/bin/python)."""

    path: str
    source: Path | None = None  # a file's bytes on disk ...
    data: bytes | None = None  # ... or in memory
    executable: bool = False
    symlink: str | None = None  # a symlink's target
    directory: bool = False


@dataclass(frozen=True)
class Layer:
    """A finished layer: its gzip file and what a manifest/config needs to know about it."""

    name: str  # what it holds, for logs and the image history
    path: Path
    digest: str  # sha256 of the gzipped bytes (the blob)
    diff_id: str  # sha256 of the tar (the config's rootfs)
    size: int  # gzipped bytes
    unpacked: int  # bytes of file content in it

    def to_json(self) -> dict:
        return {"name": self.name, "digest": self.digest, "diff_id": self.diff_id, "size": self.size, "unpacked": self.unpacked}


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes what passes through to `target` (None: nowhere)."""

    def __init__(self, target=None):
        self.target = target
        self.sha = hashlib.sha256()
        self.count = 0
        self.seconds = 0.0  # spent in the target's write (for the compressor: compressing, and what follows)

    def writable(self) -> bool:
        return True

    def tell(self) -> int:  # tarfile asks where it is; streams here only ever grow
        return self.count

    def write(self, data) -> int:
        self.sha.update(data)
        self.count += len(data)
        if self.target is not None:
            started = time.perf_counter()
            self.target.write(data)
            self.seconds += time.perf_counter() - started
        return len(data)


def _with_ancestors(entries: Iterable[Entry]) -> list[Entry]:
    by_path: dict[str, Entry] = {}
    for entry in entries:
        path = posixpath.normpath(entry.path)
        if not path.startswith("/") or path == "/":
            raise ValueError(f"layer path {entry.path!r} is not an absolute path below /")
        by_path[path] = entry
        parent = posixpath.dirname(path)
        while parent != "/" and parent not in by_path:
            by_path[parent] = Entry(parent, directory=True)
            parent = posixpath.dirname(parent)
    return [by_path[p] for p in sorted(by_path)]


def write_layer(entries: Iterable[Entry], out: Path, name: str, watch: Stopwatch | None = None) -> Layer:
    """Write the layer to `out` (atomically) and return its digests."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".layer-")
    unpacked = 0
    try:
        with os.fdopen(fd, "wb") as raw:
            compressed = _Hashing(raw)
            with igzip.IGzipFile(filename="", mode="wb", fileobj=compressed, compresslevel=GZIP_LEVEL, mtime=MTIME) as gz:
                plain = _Hashing(gz)
                with tarfile.open(fileobj=plain, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for entry in _with_ancestors(entries):
                        info = tarfile.TarInfo(entry.path.lstrip("/"))
                        info.mtime, info.uid, info.gid, info.uname, info.gname = MTIME, 0, 0, "", ""
                        if entry.directory:
                            info.type, info.mode = tarfile.DIRTYPE, 0o755
                            tar.addfile(info)
                        elif entry.symlink is not None:
                            info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, entry.symlink
                            tar.addfile(info)
                        else:
                            info.mode = 0o755 if entry.executable else 0o644
                            if entry.data is not None:
                                info.size = len(entry.data)
                                tar.addfile(info, io.BytesIO(entry.data))
                            else:
                                assert entry.source is not None
                                info.size = entry.source.stat().st_size
                                with open(entry.source, "rb") as body:
                                    tar.addfile(info, body)
                            unpacked += info.size
        os.replace(tmp, out)
        if watch is not None:
            watch.add("compress", plain.seconds - compressed.seconds)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Layer(name, out, "sha256:" + compressed.sha.hexdigest(), "sha256:" + plain.sha.hexdigest(), compressed.count, unpacked)


def read_entries(layer: Layer) -> list[Entry]:
    """A layer's files back as entries (to merge small layers into one)."""
    entries = []
    with tarfile.open(layer.path, mode="r:gz") as tar:
        for info in tar:
            path = "/" + info.name
            if info.isdir():
                entries.append(Entry(path, directory=True))
            elif info.issym():
                entries.append(Entry(path, symlink=info.linkname))
            else:
                body = tar.extractfile(info)
                assert body is not None
                entries.append(Entry(path, data=body.read(), executable=bool(info.mode & 0o100)))
    return entries


class LayerCache:
    """Finished layers by key: `<key>.tar.gz` with `<key>.json` (written last) beside it."""

    def __init__(self, root: Path):
        self.root = root

    def get(self, key: str) -> Layer | None:
        meta = self.root / f"{key}.json"
        blob = self.root / f"{key}.tar.gz"
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None
        if not blob.exists() or blob.stat().st_size != data["size"]:
            return None
        return Layer(data["name"], blob, data["digest"], data["diff_id"], data["size"], data["unpacked"])

    def pushed_to(self, host: str, digest: str) -> str | None:
        """The repository of `host` this blob was last pushed to from here, if any."""
        try:
            return (self.root / "pushed" / host.replace(":", "_") / digest.removeprefix("sha256:")).read_text() or None
        except OSError:
            return None

    def note_pushed(self, host: str, digest: str, repository: str) -> None:
        folder = self.root / "pushed" / host.replace(":", "_")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / digest.removeprefix("sha256:")).write_text(repository)

    def put(self, key: str, entries: Iterable[Entry], name: str, watch: Stopwatch | None = None) -> Layer:
        layer = write_layer(entries, self.root / f"{key}.tar.gz", name, watch)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".meta-")
        with os.fdopen(fd, "w") as out:
            json.dump(layer.to_json(), out)
        os.replace(tmp, self.root / f"{key}.json")
        return layer
