"""A TEST DOUBLE of the Kubernetes API, not a Kubernetes: enough of core/v1 pods for the real
KubernetesPodOperator (blocking and deferrable) to run a pod end to end on this machine, with
the timing and rules of a real control plane and kubelet where the provider can tell.

Each pod becomes one Docker container on the local engine (host network). Like a cluster:
- create answers `{phase: Pending}` alone; every later step comes `--pace` seconds (default
  1 s) after the last, in a thread: scheduling, container creation, a pull's failure;
- three fake nodes (two CPU nodes of 4 cores/16Gi, one GPU node of 8 cores/32Gi/4
  `nvidia.com/gpu`, label accelerator=nvidia): a pod's requests (its limits where it gives no
  requests) must fit a node's unused allocatable and its nodeSelector and tolerations must
  match, else it stays Pending with PodScheduled=False/Unschedulable and a FailedScheduling
  event quoting the scheduler ("0/3 nodes are available: 3 Insufficient nvidia.com/gpu. ...");
- a missing image is pulled; a failed pull shows, seconds later, as ErrImagePull then
  ImagePullBackOff (alternating, retried with doubling back-off) with Failed/BackOff events;
- `runAsNonRoot` with an image that runs as root: CreateContainerConfigError, pod Pending;
- memory/CPU limits become cgroup limits; a memory-backed emptyDir at /dev/shm the shm size;
  runAsUser/runAsGroup the user; activeDeadlineSeconds a deadline, then DeadlineExceeded;
  an OOM kill shows as OOMKilled/137 (and only an OOM kill does);
- invalid names and labels get 422 Invalid, as the API server's validation gives them;
- a pod whose service account has an IAM role (FAKE_KUBE_SERVICE_ACCOUNT_ROLES; by default
  ml/s3-runner) gets what the EKS pod identity webhook adds: AWS_ROLE_ARN and
  AWS_WEB_IDENTITY_TOKEN_FILE in its spec and a projected token, which boto exchanges at
  (moto's) STS for the role's credentials; moto does not verify the token or the role;
- deletion is graceful: a running pod stays listed with a deletionTimestamp, its container
  gets SIGTERM, then SIGKILL after the grace period (the request's, else the pod's, else 30 s).

Served: pods create/get/list (labelSelector)/patch (labels, annotations)/delete, secrets
create/get/patch (labels, annotations, ownerReferences)/delete (mounted into pods as read-only
files; a missing one is CreateContainerConfigError until it exists; owned ones are garbage-
collected with their pod), pod logs
(follow, timestamps, sinceSeconds), events list and watch (a stream of lines from a
resourceVersion, 410 Expired once it is compacted). NOT modelled (a real cluster differs): no
pod watches (pods are listed and read), no eviction (ephemeral-storage is not enforced), only the first
container runs (no init containers, no sidecars), no auth, no other admission webhooks, no
preemption, no node failures, no restarts (restartPolicy is Never for the operator's pods).

    python dev/fake_kube_api.py --port 5002 [--pace 1.0]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import docker
import docker.errors

LABEL = "airflow-infra.fake-kube"
UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_bytes(quantity: str) -> int:
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity))
    return int(float(match.group(1)) * UNITS.get(match.group(2), 1))


def to_cores(quantity: str) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code}


def matches(labels: dict, selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


# Names and labels as the API server validates them (apimachinery's validation rules).
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]\Z")
LABEL_VALUE_RULE = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                    "and must start and end with an alphanumeric character")


def invalid_fields(pod: dict) -> list[str]:
    """What a real API server answers 422 for in the fields the provider sets (a subset)."""
    meta = pod.get("metadata") or {}
    name = meta.get("name") or ""
    problems = []
    if len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        problems.append(f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower '
                        "case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character")
    for key, value in (meta.get("labels") or {}).items():
        prefix, _, label = key.rpartition("/")
        if not label or len(label) > 63 or not LABEL_NAME.match(label) or (prefix and not DNS_SUBDOMAIN.match(prefix)):
            problems.append(f'metadata.labels: Invalid value: "{key}": name part must consist of alphanumeric characters, '
                            "'-', '_' or '.', and must start and end with an alphanumeric character")
        if value and (len(value) > 63 or not LABEL_NAME.match(str(value))):
            problems.append(f'metadata.labels: Invalid value: "{value}": {LABEL_VALUE_RULE}')
    return problems


# Service accounts with an IAM role, as `eks.amazonaws.com/role-arn` annotations give them on
# EKS: their pods get web identity credentials (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE and a
# projected token), which boto exchanges at STS (moto's) for the role's. namespace/name=arn,
# comma-separated, in FAKE_KUBE_SERVICE_ACCOUNT_ROLES; by default ml/s3-runner has one.
SERVICE_ACCOUNT_ROLES = dict(
    item.split("=", 1) for item in os.environ.get(
        "FAKE_KUBE_SERVICE_ACCOUNT_ROLES", "ml/s3-runner=arn:aws:iam::123456789012:role/airflow-infra-s3-runner"
    ).split(",") if "=" in item
)
TOKEN_DIR = "/var/run/secrets/eks.amazonaws.com/serviceaccount"


def role_of(pod: dict) -> str | None:
    return SERVICE_ACCOUNT_ROLES.get(f"{pod['metadata']['namespace']}/{pod['spec'].get('serviceAccountName') or 'default'}")

# Fake nodes (a small cluster: two CPU nodes and one GPU node). Allocatable as a kubelet reports it.
NODES = [
    {"name": "node-1", "labels": {"kubernetes.io/hostname": "node-1"}, "taints": [],
     "allocatable": {"cpu": 4.0, "memory": 16 << 30, "ephemeral-storage": 100 << 30, "nvidia.com/gpu": 0}},
    {"name": "node-2", "labels": {"kubernetes.io/hostname": "node-2"}, "taints": [],
     "allocatable": {"cpu": 4.0, "memory": 16 << 30, "ephemeral-storage": 100 << 30, "nvidia.com/gpu": 0}},
    {"name": "gpu-1", "labels": {"kubernetes.io/hostname": "gpu-1", "accelerator": "nvidia"}, "taints": [],
     "allocatable": {"cpu": 8.0, "memory": 32 << 30, "ephemeral-storage": 200 << 30, "nvidia.com/gpu": 4}},
]


def pod_requests(spec: dict) -> dict[str, float]:
    """The pod's requests as the scheduler sums them: per container, requests, or its limits
    where no request is given (the API server defaults them so)."""
    total: dict[str, float] = {}
    for container in spec.get("containers") or []:
        resources = container.get("resources") or {}
        wanted = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for key, value in wanted.items():
            amount = to_cores(value) if key == "cpu" else float(to_bytes(value)) if key in ("memory", "ephemeral-storage") else float(value)
            total[key] = total.get(key, 0.0) + amount
    return total


def tolerates(spec: dict, taint: dict) -> bool:
    for toleration in spec.get("tolerations") or []:
        if toleration.get("key") in (None, taint["key"]) and toleration.get("effect") in (None, "", taint["effect"]):
            if toleration.get("operator") == "Exists" or toleration.get("value") == taint.get("value"):
                return True
    return False


class Cluster:
    """Pods through the phases a control plane and a kubelet take them, each step a little
    later than the last (--pace seconds): Pending (as created), scheduled on a fake node or
    Unschedulable with a FailedScheduling event, ContainerCreating, image pulled (or
    ErrImagePull / ImagePullBackOff, retried with back-off), running, terminated. Deletion is
    graceful: a running pod stays listed with a deletionTimestamp, gets SIGTERM, and SIGKILL
    after its grace period."""

    def __init__(self, pace: float) -> None:
        self.docker = docker.from_env(version="auto")
        self.pods: dict[tuple[str, str], dict] = {}
        self.events: list[dict] = []
        self.lock = threading.RLock()
        self.version = 1
        self.pace = pace
        self.compacted = 0  # events up to this resourceVersion are gone: a watch from before gets 410
        self.secrets: dict[tuple[str, str], dict] = {}

    def _bump(self, obj: dict) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)

    def event(self, pod: dict, reason: str, message: str, kind: str = "Normal") -> None:
        meta = pod["metadata"]
        with self.lock:
            self.version += 1
            self.events.append({
                "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:8]}", "namespace": meta["namespace"],
                             "uid": str(uuid.uuid4()), "resourceVersion": str(self.version)},
                "involvedObject": {"kind": "Pod", "name": meta["name"], "namespace": meta["namespace"],
                                   "uid": meta["uid"], "fieldPath": "spec.containers{base}"},
                "reason": reason, "message": message, "type": kind, "count": 1,
                "firstTimestamp": now(), "lastTimestamp": now(),
            })
            if len(self.events) > 2000:  # as etcd compacts: old versions go, watches from them get 410
                del self.events[:1000]
                self.compacted = int(self.events[0]["metadata"]["resourceVersion"]) - 1

    def create(self, namespace: str, pod: dict) -> dict:
        meta = pod.setdefault("metadata", {})
        meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=now())
        with self.lock:
            if (namespace, meta.get("name")) in self.pods:
                raise KeyError(meta.get("name"))
            role = role_of(pod)
            if role:  # what the EKS pod identity webhook adds at admission, for every container
                added = {"AWS_ROLE_ARN": role, "AWS_WEB_IDENTITY_TOKEN_FILE": f"{TOKEN_DIR}/token",
                         "AWS_STS_REGIONAL_ENDPOINTS": "regional"}
                for container in pod["spec"]["containers"]:
                    env = [e for e in container.get("env") or [] if e["name"] not in added]
                    container["env"] = env + [{"name": k, "value": v} for k, v in added.items()]
            pod["status"] = {"phase": "Pending", "qosClass": "Burstable"}  # all a create answers with
            self._bump(pod)
            self.pods[(namespace, meta["name"])] = pod
        threading.Thread(target=self._run, args=(pod,), daemon=True).start()
        return pod

    def _gone(self, pod: dict) -> bool:
        meta = pod["metadata"]
        return self.pods.get((meta["namespace"], meta["name"])) is not pod or "deletionTimestamp" in meta

    @staticmethod
    def _waiting(container: dict, reason: str, message: str) -> dict:
        state: dict = {"reason": reason}
        if message:
            state["message"] = message
        return {"name": container["name"], "image": container["image"], "imageID": "", "ready": False,
                "restartCount": 0, "started": False, "state": {"waiting": state}}

    def _set(self, pod: dict, phase: str, state: dict, **extra) -> None:
        with self.lock:
            status_ = pod["status"]
            status_["phase"] = phase
            status_["containerStatuses"][0]["state"] = state
            status_["containerStatuses"][0]["ready"] = "running" in state
            status_.update(extra)
            self._bump(pod)

    def _condition(self, pod: dict, kind: str, value: str, **extra) -> None:
        with self.lock:
            conditions = [c for c in pod["status"].setdefault("conditions", []) if c["type"] != kind]
            conditions.append({"type": kind, "status": value, "lastTransitionTime": now(), **extra})
            pod["status"]["conditions"] = conditions
            self._bump(pod)

    def _fit(self, spec: dict) -> tuple[dict | None, str]:
        """A node for the pod (first fit), or the scheduler's message saying why there is none."""
        wanted = pod_requests(spec)
        selector = spec.get("nodeSelector") or {}
        reasons: dict[str, int] = {}
        with self.lock:
            used: dict[str, dict[str, float]] = {}
            for other in self.pods.values():
                node = other["spec"].get("nodeName")
                if node and other["status"].get("phase") in ("Pending", "Running"):
                    for key, amount in pod_requests(other["spec"]).items():
                        used.setdefault(node, {})[key] = used.setdefault(node, {}).get(key, 0.0) + amount
        for node in NODES:
            if any(node["labels"].get(k) != v for k, v in selector.items()):
                why = "node(s) didn't match Pod's node affinity/selector"
            elif any(not tolerates(spec, t) for t in node["taints"]):
                taint = next(t for t in node["taints"] if not tolerates(spec, t))
                why = f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"
            else:
                short = [key for key, amount in sorted(wanted.items())
                         if amount > node["allocatable"].get(key, 0) - used.get(node["name"], {}).get(key, 0.0)]
                if not short:
                    return node, ""
                why = f"Insufficient {short[0]}"
            reasons[why] = reasons.get(why, 0) + 1
        parts = ", ".join(f"{count} {why}" for why, count in sorted(reasons.items()))
        return None, (f"0/{len(NODES)} nodes are available: {parts}. preemption: 0/{len(NODES)} nodes are available: "
                      f"{len(NODES)} No preemption victims found for incoming pod.")

    def _schedule(self, pod: dict) -> bool:
        spec, meta = pod["spec"], pod["metadata"]
        reported = None
        while not self._gone(pod):
            node, why = self._fit(spec)
            if node is not None:
                with self.lock:
                    spec["nodeName"] = node["name"]
                self._condition(pod, "PodScheduled", "True")
                self.event(pod, "Scheduled", f"Successfully assigned {meta['namespace']}/{meta['name']} to {node['name']}")
                return True
            if why != reported:  # as the scheduler does: a condition and an event, then retries
                self._condition(pod, "PodScheduled", "False", reason="Unschedulable", message=why)
                self.event(pod, "FailedScheduling", why, "Warning")
                reported = why
            time.sleep(max(self.pace, 0.2) * 2)
        return False

    def _pull(self, pod: dict, container: dict) -> bool:
        """The image, as a kubelet gets it: pulled if missing; a failed pull is ErrImagePull,
        then ImagePullBackOff while it waits (doubling) to try again, until the pod is deleted."""
        image = container["image"]
        backoff = max(self.pace, 0.2) * 2
        while not self._gone(pod):
            try:
                self.docker.images.get(image)
                return True
            except docker.errors.ImageNotFound:
                pass
            self.event(pod, "Pulling", f'Pulling image "{image}"')
            try:
                self.docker.images.pull(image)
                self.event(pod, "Pulled", f'Successfully pulled image "{image}"')
                return True
            except docker.errors.APIError as exc:
                message = f'failed to pull and unpack image "{image}": {exc.explanation or exc}'
            time.sleep(self.pace)  # the failure shows seconds after the pull began, not at create
            self.event(pod, "Failed", f"Failed to pull image \"{image}\": {message}", "Warning")
            self.event(pod, "Failed", "Error: ErrImagePull", "Warning")
            with self.lock:
                pod["status"]["containerStatuses"][0] = self._waiting(container, "ErrImagePull", message)
                self._bump(pod)
            time.sleep(self.pace)
            if self._gone(pod):
                break
            back = f'Back-off pulling image "{image}": ErrImagePull: {message}'
            self.event(pod, "BackOff", f'Back-off pulling image "{image}"')
            with self.lock:
                pod["status"]["containerStatuses"][0] = self._waiting(container, "ImagePullBackOff", back)
                self._bump(pod)
            time.sleep(backoff)
            backoff = min(backoff * 2, 300)
        return False

    def _token_dir(self, pod: dict) -> Path:
        """A projected service account token, as the kubelet writes it for the pod: a JWT-shaped
        string naming the service account (moto's STS does not verify it; real STS would)."""
        meta, spec = pod["metadata"], pod["spec"]
        folder = Path(tempfile.mkdtemp(prefix="fake-kube-token-"))
        folder.chmod(0o755)
        subject = f"system:serviceaccount:{meta['namespace']}:{spec.get('serviceAccountName') or 'default'}"
        claims = base64.urlsafe_b64encode(json.dumps({"sub": subject, "aud": ["sts.amazonaws.com"]}).encode()).decode().rstrip("=")
        (folder / "token").write_text(f"eyJhbGciOiJSUzI1NiJ9.{claims}.fake-signature")
        (folder / "token").chmod(0o644)
        pod["_token_dir"] = str(folder)
        return folder

    def _runs_as_root(self, image: str, security: dict) -> bool:
        user = security.get("runAsUser")
        if user is not None:
            return int(user) == 0
        configured = (self.docker.images.get(image).attrs.get("Config") or {}).get("User") or ""
        return configured.split(":")[0] in ("", "0", "root")

    def _run(self, pod: dict) -> None:
        spec, meta = pod["spec"], pod["metadata"]
        container = spec["containers"][0]
        image = container["image"]
        time.sleep(self.pace)
        if not self._schedule(pod):
            return
        with self.lock:
            pod["status"]["containerStatuses"] = [self._waiting(container, "ContainerCreating", "")]
            self._bump(pod)
        time.sleep(self.pace)
        if not self._pull(pod, container):
            return
        security = {**(spec.get("securityContext") or {}), **(container.get("securityContext") or {})}
        if security.get("runAsNonRoot") and self._runs_as_root(image, security):
            # A kubelet refuses to start it and leaves the pod Pending (it retries, to no avail).
            message = f"container has runAsNonRoot and image will run as root (pod: \"{meta['name']}_{meta['namespace']}({meta['uid']})\", container: {container['name']})"
            self.event(pod, "Failed", f"Error: {message}", "Warning")
            with self.lock:
                pod["status"]["containerStatuses"][0] = self._waiting(container, "CreateContainerConfigError", message)
                self._bump(pod)
            return
        limits = (container.get("resources") or {}).get("limits") or {}
        kwargs: dict = {"network_mode": "host", "labels": {LABEL: f"{meta['namespace']}/{meta['name']}"}}
        if "memory" in limits:
            kwargs["mem_limit"] = kwargs["memswap_limit"] = to_bytes(limits["memory"])
        if "cpu" in limits:
            kwargs["nano_cpus"] = int(to_cores(limits["cpu"]) * 1e9)
        for mount in container.get("volumeMounts") or []:
            volume = next(v for v in spec.get("volumes", []) if v["name"] == mount["name"])
            empty = volume.get("emptyDir")
            if mount["mountPath"] == "/dev/shm" and empty and empty.get("medium") == "Memory":
                kwargs["shm_size"] = to_bytes(empty.get("sizeLimit", "64Mi"))
        if "runAsUser" in security:
            kwargs["user"] = f"{security['runAsUser']}:{security.get('runAsGroup', security['runAsUser'])}"
        env = {e["name"]: e.get("value", "") for e in container.get("env") or []}
        if "AWS_WEB_IDENTITY_TOKEN_FILE" in env and role_of(pod):  # the token the kubelet projects
            kwargs["volumes"] = {str(self._token_dir(pod)): {"bind": TOKEN_DIR, "mode": "ro"}}
        while (secret_mounts := self._secret_volumes(pod, container)) is None:
            time.sleep(max(self.pace, 0.2) * 2)
            if self._gone(pod):
                return
        if secret_mounts:
            kwargs["volumes"] = {**kwargs.get("volumes", {}), **secret_mounts}
        try:
            with self.lock:  # a delete from now on finds the container to stop
                if self._gone(pod):
                    return
                docker_container = self.docker.containers.create(
                    image, command=container.get("args") or None, entrypoint=container.get("command") or None,
                    environment=env, **kwargs,
                )
                pod["_container"] = docker_container.id
            docker_container.start()
        except docker.errors.APIError as exc:
            self._set(pod, "Failed", {"terminated": {"exitCode": 128, "reason": "StartError",
                                                     "message": str(exc), "finishedAt": now()}})
            return
        started = now()
        self.event(pod, "Started", "Started container base")
        self._set(pod, "Running", {"running": {"startedAt": started}}, startTime=started)
        self._condition(pod, "Ready", "True")
        deadline = spec.get("activeDeadlineSeconds")
        try:
            result = docker_container.wait(timeout=deadline) if deadline else docker_container.wait()
        except Exception:  # noqa: BLE001 - the deadline passed: kubelet kills the pod
            docker_container.kill()
            docker_container.wait()
            self.event(pod, "DeadlineExceeded", "Pod was active on the node longer than the specified deadline", "Warning")
            self._set(pod, "Failed", {"terminated": {"exitCode": 137, "reason": "Error", "startedAt": started,
                                                     "finishedAt": now()}},
                      reason="DeadlineExceeded", message="Pod was active on the node longer than the specified deadline")
            return
        code = result["StatusCode"]
        docker_container.reload()
        reason = "OOMKilled" if docker_container.attrs["State"].get("OOMKilled") else ("Completed" if code == 0 else "Error")
        self._set(pod, "Succeeded" if code == 0 else "Failed",
                  {"terminated": {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now()}})

    def delete(self, namespace: str, name: str, grace: int | None) -> dict | None:
        """Graceful, as the API server and kubelet do it: a pod whose container runs stays
        listed with a deletionTimestamp, its container gets SIGTERM, then SIGKILL once the
        grace period is over; a pod with nothing running goes at once."""
        with self.lock:
            pod = self.pods.get((namespace, name))
            if pod is None:
                return None
            running = pod["status"].get("phase") == "Running" and pod.get("_container")
            if not running or grace == 0:
                self.pods.pop((namespace, name), None)
                self._collect_garbage(pod)
            elif "deletionTimestamp" not in pod["metadata"]:
                period = grace if grace is not None else int(pod["spec"].get("terminationGracePeriodSeconds", 30))
                pod["metadata"].update(deletionTimestamp=now(), deletionGracePeriodSeconds=period)
                self._bump(pod)
                threading.Thread(target=self._terminate, args=(pod, period), daemon=True).start()
                return pod
        self._remove_container(pod)
        return pod

    def _terminate(self, pod: dict, period: int) -> None:
        meta = pod["metadata"]
        self.event(pod, "Killing", "Stopping container base")
        try:
            container = self.docker.containers.get(pod["_container"])
            container.kill(signal="SIGTERM")
            container.wait(timeout=period)
        except Exception:  # noqa: BLE001 - gone already, or the grace period is over
            pass
        with self.lock:
            self.pods.pop((meta["namespace"], meta["name"]), None)
            self._collect_garbage(pod)
        self._remove_container(pod)

    def _collect_garbage(self, pod: dict) -> None:
        """What the garbage collector does once a pod is gone: delete the objects it owns."""
        uid = pod["metadata"]["uid"]
        with self.lock:
            for key, secret in list(self.secrets.items()):
                if any(ref.get("uid") == uid for ref in secret["metadata"].get("ownerReferences") or []):
                    del self.secrets[key]

    def _secret_volumes(self, pod: dict, container: dict) -> dict[str, dict] | None:
        """Each secret volume the container mounts, written out as the kubelet does (a file per
        key, read-only); None while a Secret is missing: then the container cannot be created
        (CreateContainerConfigError) and the kubelet tries again."""
        spec, meta = pod["spec"], pod["metadata"]
        mounts: dict[str, dict] = {}
        for mount in container.get("volumeMounts") or []:
            volume = next(v for v in spec.get("volumes", []) if v["name"] == mount["name"])
            if "secret" not in volume:
                continue
            wanted = volume["secret"]["secretName"]
            with self.lock:
                secret = self.secrets.get((meta["namespace"], wanted))
            if secret is None:
                message = f'secret "{wanted}" not found'
                with self.lock:
                    pod["status"]["containerStatuses"][0] = self._waiting(container, "CreateContainerConfigError", message)
                    self._bump(pod)
                self.event(pod, "Failed", f"Error: {message}", "Warning")
                return None
            folder = Path(tempfile.mkdtemp(prefix="fake-kube-secret-"))
            folder.chmod(0o755)
            for key, value in (secret.get("data") or {}).items():
                (folder / key).write_bytes(base64.b64decode(value))
                (folder / key).chmod(volume["secret"].get("defaultMode", 0o644))
            pod.setdefault("_secret_dirs", []).append(str(folder))
            mounts[str(folder)] = {"bind": mount["mountPath"], "mode": "ro"}
        return mounts

    def _remove_container(self, pod: dict) -> None:
        for folder in pod.get("_secret_dirs", []):
            shutil.rmtree(folder, ignore_errors=True)
        if pod.get("_token_dir"):
            shutil.rmtree(pod["_token_dir"], ignore_errors=True)
        if pod.get("_container"):
            try:
                self.docker.containers.get(pod["_container"]).remove(force=True)
            except docker.errors.NotFound:
                pass


def public(pod: dict) -> dict:
    return {k: v for k, v in pod.items() if not k.startswith("_")} | {"kind": "Pod", "apiVersion": "v1"}


class Handler(BaseHTTPRequestHandler):
    cluster: Cluster
    protocol_version = "HTTP/1.0"  # log streams end when the connection closes

    def log_message(self, fmt: str, *args) -> None:  # quiet; errors still reach stderr via send_error
        pass

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def _route(self) -> tuple[str, str | None, str | None, dict]:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        match = re.fullmatch(r"/api/v1/namespaces/([^/]+)/(pods|events|secrets)(?:/([^/]+))?(/log)?", url.path)
        if not match:
            return "", None, None, query
        ns, kind, name, log = match.groups()
        return (kind + (log or "")), ns, name, query

    def _pod(self, ns: str, name: str) -> dict | None:
        pod = self.cluster.pods.get((ns, name))
        if pod is None:
            self._reply(404, status(404, "NotFound", f'pods "{name}" not found'))
        return pod

    def do_GET(self) -> None:  # noqa: N802
        if urlsplit(self.path).path == "/version":
            return self._reply(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake-airflow-infra"})
        what, ns, name, query = self._route()
        if what == "pods" and name is None:
            with self.cluster.lock:
                items = [public(p) for (n, _), p in self.cluster.pods.items()
                         if n == ns and matches(p["metadata"].get("labels") or {}, query.get("labelSelector", ""))]
            return self._reply(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
        if what == "pods":
            pod = self._pod(ns, name)
            if pod is not None:
                with self.cluster.lock:
                    self._reply(200, public(pod))
            return None
        if what == "pods/log":
            return self._logs(ns, name, query)
        if what == "secrets" and name:
            with self.cluster.lock:
                secret = self.cluster.secrets.get((ns, name))
            if secret is None:
                return self._reply(404, status(404, "NotFound", f'secrets "{name}" not found'))
            return self._reply(200, secret)
        if what == "events" and query.get("watch", "").lower() in ("true", "1"):
            return self._watch_events(ns, query)
        if what == "events":
            involved = re.search(r"involvedObject\.name=([^,]+)", query.get("fieldSelector", ""))
            with self.cluster.lock:
                items = [e for e in self.cluster.events if e["metadata"]["namespace"] == ns
                         and (not involved or e["involvedObject"]["name"] == involved.group(1))]
            return self._reply(200, {"kind": "EventList", "apiVersion": "v1",
                                     "metadata": {"resourceVersion": str(self.cluster.version)}, "items": items})
        return self._reply(404, status(404, "NotFound", f"{self.path} is not served by this test double"))

    def _watch_events(self, ns: str, query: dict) -> None:
        """A watch stream, as the API server sends it: one JSON object per line, ADDED for each
        event newer than `resourceVersion` (all of them without one), then each new event as it
        comes, until `timeoutSeconds`; an ERROR with a 410 Status when that version is compacted."""
        involved = re.search(r"involvedObject\.name=([^,]+)", query.get("fieldSelector", ""))
        since = int(query.get("resourceVersion") or 0)
        ends = time.monotonic() + min(int(query.get("timeoutSeconds") or 300), 1800)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()

        def send(kind: str, obj: dict) -> None:
            self.wfile.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
            self.wfile.flush()

        try:
            if since and since <= self.cluster.compacted:
                return send("ERROR", status(410, "Expired", f"too old resource version: {since} ({self.cluster.compacted})"))
            while time.monotonic() < ends:
                with self.cluster.lock:
                    new = [e for e in self.cluster.events if int(e["metadata"]["resourceVersion"]) > since
                           and e["metadata"]["namespace"] == ns
                           and (not involved or e["involvedObject"]["name"] == involved.group(1))]
                for event in new:
                    send("ADDED", {**event, "kind": "Event", "apiVersion": "v1"})
                    since = int(event["metadata"]["resourceVersion"])
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            return

    def _logs(self, ns: str, name: str, query: dict) -> None:
        pod = self._pod(ns, name)
        if pod is None:
            return
        container_id = pod.get("_container")
        if not container_id:
            return self._reply(400, status(400, "BadRequest", f'container "base" in pod "{name}" is waiting to start'))
        try:
            container = self.cluster.docker.containers.get(container_id)
        except docker.errors.NotFound:
            return self._reply(404, status(404, "NotFound", f'pods "{name}" not found'))
        since = int(query["sinceSeconds"]) if "sinceSeconds" in query else None
        follow = query.get("follow", "").lower() == "true"  # the Python client sends "True"
        stream = container.logs(
            stream=True, follow=follow, timestamps=query.get("timestamps", "").lower() == "true",
            since=int(time.time()) - since if since else None,
        )
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        try:
            for chunk in stream:
                self.wfile.write(chunk)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return
        # As a kubelet does, end a followed log only once the pod shows the container stopped.
        for _ in range(50 if follow else 0):
            if pod["status"]["phase"] != "Running":
                break
            time.sleep(0.1)

    def do_POST(self) -> None:  # noqa: N802
        what, ns, name, _ = self._route()
        if what == "secrets" and name is None:
            return self._create_secret(ns, self._body())
        if what != "pods" or name is not None:
            return self._reply(404, status(404, "NotFound", f"{self.path} is not served by this test double"))
        body = self._body()
        problems = invalid_fields(body)
        if problems:
            shown = (body.get("metadata") or {}).get("name") or ""
            return self._reply(422, status(422, "Invalid", f'Pod "{shown}" is invalid: ' + ", ".join(problems)))
        try:
            pod = self.cluster.create(ns, body)
        except KeyError as exc:
            return self._reply(409, status(409, "AlreadyExists", f"pods {exc} already exists"))
        with self.cluster.lock:
            self._reply(201, public(pod))

    def _create_secret(self, ns: str, body: dict) -> None:
        meta = body.setdefault("metadata", {})
        name = meta.get("name") or ""
        if len(name) > 253 or not DNS_SUBDOMAIN.match(name):
            return self._reply(422, status(422, "Invalid", f'Secret "{name}" is invalid: metadata.name: Invalid value: "{name}"'))
        meta.update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=now())
        body.update(kind="Secret", apiVersion="v1")
        with self.cluster.lock:
            if (ns, name) in self.cluster.secrets:
                return self._reply(409, status(409, "AlreadyExists", f'secrets "{name}" already exists'))
            self.cluster._bump(body)
            self.cluster.secrets[(ns, name)] = body
        return self._reply(201, body)

    def do_PATCH(self) -> None:  # noqa: N802
        what, ns, name, _ = self._route()
        if what == "secrets" and name:
            patch = self._body()
            with self.cluster.lock:
                secret = self.cluster.secrets.get((ns, name))
                if secret is None:
                    return self._reply(404, status(404, "NotFound", f'secrets "{name}" not found'))
                for field, value in (patch.get("metadata") or {}).items():
                    if field in ("labels", "annotations"):
                        secret["metadata"].setdefault(field, {}).update(value)
                    elif field == "ownerReferences":
                        secret["metadata"]["ownerReferences"] = value
                self.cluster._bump(secret)
                return self._reply(200, secret)
        pod = self._pod(ns, name) if what == "pods" and name else None
        if pod is None:
            return
        patch = self._body()
        with self.cluster.lock:
            for field in ("labels", "annotations"):
                update = (patch.get("metadata") or {}).get(field) or {}
                pod["metadata"].setdefault(field, {}).update(update)
            self.cluster._bump(pod)
            self._reply(200, public(pod))

    def do_DELETE(self) -> None:  # noqa: N802
        what, ns, name, query = self._route()
        if what == "secrets" and name:
            with self.cluster.lock:
                secret = self.cluster.secrets.pop((ns, name), None)
            if secret is None:
                return self._reply(404, status(404, "NotFound", f'secrets "{name}" not found'))
            return self._reply(200, secret)
        body = self._body()
        grace = body.get("gracePeriodSeconds", query.get("gracePeriodSeconds"))
        pod = self.cluster.delete(ns, name, None if grace is None else int(grace)) if what == "pods" and name else None
        if pod is None:
            return self._reply(404, status(404, "NotFound", f'pods "{name}" not found'))
        self._reply(200, public(pod))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5002)
    parser.add_argument("--pace", type=float, default=float(os.environ.get("FAKE_KUBE_PACE", "1.0")),
                        help="seconds between a pod's steps (scheduling, container creation, a pull's failure)")
    args = parser.parse_args()
    Handler.cluster = Cluster(args.pace)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"fake Kubernetes API (a test double) on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
