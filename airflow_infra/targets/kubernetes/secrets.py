"""A call's secrets in a pod (its Airflow connections, its store credentials): a
short-lived Secret per call, mounted as files.

The values never enter the pod spec (its env holds only where to read them) or the
operator's logs. The Secret is created just before the pod, owned by the pod once it exists
(so the cluster's garbage collector deletes it with the pod, whoever deletes the pod), and
deleted by the runner when the task ends, killed or not.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from airflow_infra import runtime
from airflow_infra.targets.contract import Call

MOUNT_DIR = "/var/run/airflow-infra/secrets"
VOLUME = "airflow-infra-secrets"
# The Secret's files -> the runtime's variable naming each.
FILES = {"connections.json": runtime.CONNECTIONS, "store.json": runtime.STORE_CREDENTIALS}


def secret_name(pod_name: str) -> str:
    return f"{pod_name}-secrets"  # pod names are DNS subdomains of 253 at most, ours far shorter


def documents(call: Call, store_credentials: dict[str, str] | None) -> dict[str, bytes]:
    """What the call's Secret holds, by file name (see FILES): only what the call has."""
    held = {}
    if call.connections:
        held["connections.json"] = json.dumps(call.connections.document()).encode()
    if store_credentials:
        held["store.json"] = json.dumps(store_credentials).encode()
    return held


def create_secret(client: Any, namespace: str, pod_name: str, files: dict[str, bytes]) -> str:
    from kubernetes.client import models as k8s

    name = secret_name(pod_name)
    client.create_namespaced_secret(namespace, k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(name=name, namespace=namespace, labels={"app.kubernetes.io/managed-by": "airflow-infra"}),
        type="Opaque",
        data={file: base64.b64encode(content).decode() for file, content in files.items()},
    ))
    return name


def mount_secret(pod: Any, name: str, container: str, files: list[str]) -> None:
    """Add the Secret to the pod request as read-only files of its base container (a pod
    template's sidecars get nothing), and tell the runtime where each file is."""
    from kubernetes.client import models as k8s

    pod.spec.volumes = [*(pod.spec.volumes or []), k8s.V1Volume(
        name=VOLUME, secret=k8s.V1SecretVolumeSource(secret_name=name, default_mode=0o444))]
    base = next(c for c in pod.spec.containers if c.name == container)
    base.volume_mounts = [*(base.volume_mounts or []), k8s.V1VolumeMount(name=VOLUME, mount_path=MOUNT_DIR, read_only=True)]
    base.env = [*(base.env or []), *(k8s.V1EnvVar(name=FILES[file], value=f"file:{MOUNT_DIR}/{file}") for file in files)]


def own_secret(client: Any, name: str, pod: Any) -> None:
    """Make the pod the Secret's owner: deleting the pod (the operator's cleanup, a person, a
    node drain) deletes the Secret too, even if this worker dies first. The uid is read from
    the API: the operator hands back its request, which has none."""
    created = client.read_namespaced_pod(pod.metadata.name, pod.metadata.namespace)
    client.patch_namespaced_secret(name, pod.metadata.namespace, {"metadata": {"ownerReferences": [{
        "apiVersion": "v1", "kind": "Pod", "name": created.metadata.name, "uid": created.metadata.uid,
    }]}})


def delete_secret(client: Any, namespace: str, name: str) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        client.delete_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status != 404:  # gone with its pod already
            raise
