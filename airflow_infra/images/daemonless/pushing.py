"""Pushing an image's blobs while it is still being built, and its manifest once all are in.

A layer is uploaded as soon as it is written (or found in the layer cache), on a few
threads, while the next ones compile and compress. The manifest, which makes the tag
exist, goes only after every blob is in: a failed build or push leaves no tag (blobs
already sent stay untagged, as after any failed push, until the registry's collection).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from airflow_infra.errors import InfraEnvironmentError
from airflow_infra.images.daemonless.layers import Layer, LayerCache
from airflow_infra.images.daemonless.registry_push import Blob, RegistryClient
from airflow_infra.images.daemonless.timing import Stopwatch
from airflow_infra.images.registry import ImageRef

Log = Callable[[str], None]
# Uploads overlap with each other and with compression (both release the GIL).
UPLOAD_THREADS = 2


class BlobPusher:
    """Blobs into the target's repository: skipped when present, mounted from the repository
    this host last pushed them to (another environment's, say), else uploaded."""

    def __init__(self, client: RegistryClient, target: ImageRef, cache: LayerCache, watch: Stopwatch):
        self.client, self.target, self.cache, self.watch = client, target, cache, watch
        self._pool = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="blob-push")
        self._sent: dict[str, Future[int]] = {}
        self._lock = threading.Lock()  # layers are submitted from the threads that write them

    def __enter__(self) -> BlobPusher:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def submit_layer(self, layer: Layer) -> None:
        self.submit(Blob(layer.digest, layer.size, path=layer.path))

    def submit(self, blob: Blob) -> None:
        with self._lock:
            if blob.digest not in self._sent:
                self._sent[blob.digest] = self._pool.submit(self._push, blob)

    def wait(self) -> list[int]:
        """Bytes uploaded per blob submitted (0: present or mounted); raises the first failure."""
        with self._lock:
            futures = list(self._sent.values())
        return [future.result() for future in futures]

    def _push(self, blob: Blob) -> int:
        started = time.perf_counter()
        try:
            host, client, repository = self.target.host, self.client, self.target.repository
            if client.blob_exists(repository, blob.digest):
                return 0
            source = self.cache.pushed_to(host, blob.digest)
            if source and source != repository and client.mount_blob(repository, blob.digest, source):
                self.cache.note_pushed(host, blob.digest, repository)
                return 0
            client.upload_blob(repository, blob)
            self.cache.note_pushed(host, blob.digest, repository)
            return blob.size
        finally:
            self.watch.add("upload", time.perf_counter() - started)


def mount_base(client: RegistryClient, base: ImageRef, base_manifest: dict, repository: str) -> int:
    """The base's layers into `repository`, by mount (never downloaded); how many were mounted."""
    mounted = 0
    for layer in base_manifest["layers"]:
        if client.blob_exists(repository, layer["digest"]):
            continue
        if base.repository == repository or not client.mount_blob(repository, layer["digest"], base.repository):
            raise InfraEnvironmentError(
                f"the registry did not mount the base layer {layer['digest']} from {base.repository} into {repository}; "
                "this builder never downloads base layers (check the credentials' pull right on the base's repository)"
            )
        mounted += 1
    return mounted


def finish_push(pusher: BlobPusher, layers: list[Layer], config: Blob, manifest: dict, base_mounted: int, log: Log) -> None:
    """The image's blobs not submitted yet, every upload waited for, then the manifest."""
    target = pusher.target
    for layer in layers:
        pusher.submit_layer(layer)
    pusher.submit(config)
    sent = pusher.wait()
    uploaded = [size for size in sent if size]
    body = json.dumps(manifest, separators=(",", ":")).encode()
    pusher.client.put_manifest(target.repository, target.tag, body, manifest["mediaType"])
    log(
        f"pushed {target.host}/{target.repository}:{target.tag}: {len(uploaded)} blobs uploaded "
        f"({sum(uploaded) / 2**20:.1f} MiB), {len(sent) - len(uploaded)} present or mounted, {base_mounted} base layers mounted"
    )
