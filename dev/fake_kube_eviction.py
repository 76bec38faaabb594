"""Part of the Kubernetes TEST DOUBLE (dev/fake_kube_api.py): the kubelet's local storage
eviction, measured for real on the Docker engine.

A kubelet evicts a pod whose local ephemeral storage (its containers' writable layers, its
disk-backed emptyDirs; logs too, not counted here) goes over a limit, checking in this order,
as pkg/kubelet/eviction does (localStorageEviction): an emptyDir over its sizeLimit, the pod's
total over the sum of its containers' `ephemeral-storage` limits, a container over its own.
The messages are the kubelet's, word for word (with its trailing space).
"""

from __future__ import annotations

import os
import re

UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def to_bytes(quantity: str) -> int:
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity))
    return int(float(match.group(1)) * UNITS.get(match.group(2), 1))


def quantity(size: int) -> str:
    """As resource.Quantity prints a sum of binary quantities."""
    for suffix, shift in (("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)):
        if size and size % (1 << shift) == 0:
            return f"{size >> shift}{suffix}"
    return str(size)


def folder_usage(path: str) -> int:
    """Bytes under a folder, as `du` counts them (allocated blocks), the way a kubelet measures
    an emptyDir without filesystem quotas."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def writable_layer(docker_client, container_id: str) -> int:
    """A container's writable layer in bytes: what `docker container inspect --size` calls
    SizeRw (the engine walks the container's upper directory)."""
    listed = docker_client.api.containers(all=True, size=True, filters={"id": container_id})
    return int((listed[0].get("SizeRw") or 0) if listed else 0)


def storage_eviction(pod: dict, layers: dict[str, int], empty_dirs: dict[str, str]) -> str | None:
    """The kubelet's eviction message when the pod uses more local storage than it may, else
    None. `layers`: each container's writable layer in bytes; `empty_dirs`: each disk-backed
    emptyDir volume's folder."""
    spec = pod["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    dir_usage = {name: folder_usage(path) for name, path in empty_dirs.items()}
    for name, used in dir_usage.items():
        limit = (volumes[name].get("emptyDir") or {}).get("sizeLimit")
        if limit and used > to_bytes(limit):
            return f'Usage of EmptyDir volume "{name}" exceeds the limit "{limit}". '
    limits = {c["name"]: ((c.get("resources") or {}).get("limits") or {}).get("ephemeral-storage")
              for c in spec["containers"]}
    declared = [limit for limit in limits.values() if limit]
    if declared:
        total_limit = sum(to_bytes(limit) for limit in declared)
        if sum(layers.values()) + sum(dir_usage.values()) > total_limit:
            shown = declared[0] if len(declared) == 1 else quantity(total_limit)
            return f"Pod ephemeral local storage usage exceeds the total limit of containers {shown}. "
    for name, limit in limits.items():
        if limit and layers.get(name, 0) > to_bytes(limit):
            return f'Container {name} exceeded its local ephemeral storage limit "{limit}". '
    return None
