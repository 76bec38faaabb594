"""A TEST DOUBLE of the Kubernetes API, not a Kubernetes: enough of core/v1 pods for the real
KubernetesPodOperator (blocking and deferrable) to run a pod end to end on this machine, with
the timing and rules of a real control plane and kubelet where the provider can tell.

Each container of a pod becomes a Docker container on the local engine (host network). Like a
cluster:
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
- deletion is graceful: a running pod stays listed with a deletionTimestamp, its containers
  get SIGTERM, then SIGKILL after the grace period (the request's, else the pod's, else 30 s);
  a container whose pod is deleted while it is being created is removed, never left running;
- init containers run one after another before the others; one that exits non-zero fails the
  pod (restartPolicy Never: initContainerStatuses show it terminated with its exit code, the
  containers stay PodInitializing); then all `containers` run together (sidecars from a pod
  template too), and the phase is the kubelet's: Running while any runs, Succeeded when all
  exit 0, else Failed; logs per container (`?container=`, required when there are several);
- eviction over local storage (fake_kube_eviction.py), measured on the engine every --pace
  seconds (a kubelet: every 10 s): a container's writable layer (SizeRw) and disk-backed
  emptyDirs against emptyDir sizeLimits and `ephemeral-storage` limits; the pod goes Failed with
  reason Evicted and the kubelet's message, a DisruptionTarget condition and an Evicted event,
  its containers SIGTERM then SIGKILL after 1 s (exit 137, reason Error: not OOMKilled).

- batch/v1 Jobs (fake_kube_jobs.py): the job controller's pods per index, retries and
  per-index back-off limits, status counts and conditions, deletion by propagation policy;
  container variables from the downward API's fieldRef (metadata name, namespace, uid, a
  label or an annotation), as JOB_COMPLETION_INDEX reaches an Indexed Job's pods.

Served: pods create/get/list (labelSelector)/patch (labels, annotations)/delete, jobs
create/get/list/delete, secrets
create/get/patch (labels, annotations, ownerReferences)/delete (mounted into pods as read-only
files; a missing one is CreateContainerConfigError until it exists; owned ones are garbage-
collected with their pod), pod logs
(follow, timestamps, sinceSeconds), events list and watch (a stream of lines from a
resourceVersion, 410 Expired once it is compacted). NOT modelled (a real cluster differs): no
pod watches (pods are listed and read); no restarts (restartPolicy is taken as Never, the
operator's pods' policy: no OnFailure/Always, no CrashLoopBackOff, no native sidecars, i.e.
init containers with restartPolicy Always); no node-pressure eviction (only limits are enforced;
container logs do not count towards local storage; usage is sampled, so a burst between samples
can pass); no probes (readiness, liveness, startup) or lifecycle hooks; containers of a pod share
the host network but not a process namespace, and each gets its own /dev/shm; the deadline
counts from the first container's start, not the kubelet's first sight of the pod; no config
maps, projected or persistent volumes (secrets, emptyDirs and the service account token are);
no auth, no other admission webhooks, no preemption, no node failures.

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
from fake_kube_eviction import storage_eviction, to_bytes, writable_layer
from fake_kube_jobs import Jobs, env_value
from fake_kube_jobs import invalid as invalid_job

LABEL = "airflow-infra.fake-kube"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    where no request is given (the API server defaults them so); init containers run one at a
    time before the others, so the pod needs the larger of their largest and the others' sum."""
    def requests_of(container: dict) -> dict[str, float]:
        resources = container.get("resources") or {}
        wanted = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        return {key: to_cores(value) if key == "cpu" else float(to_bytes(value)) if key in ("memory", "ephemeral-storage")
                else float(value) for key, value in wanted.items()}

    total: dict[str, float] = {}
    for container in spec.get("containers") or []:
        for key, amount in requests_of(container).items():
            total[key] = total.get(key, 0.0) + amount
    for container in spec.get("initContainers") or []:
        for key, amount in requests_of(container).items():
            total[key] = max(total.get(key, 0.0), amount)
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

    def event(self, pod: dict, reason: str, message: str, kind: str = "Normal", container: str | None = None) -> None:
        meta = pod["metadata"]
        inits = {c["name"] for c in pod["spec"].get("initContainers") or []}
        field = f"spec.{'initContainers' if container in inits else 'containers'}{{{container}}}"
        with self.lock:
            self.version += 1
            self.events.append({
                "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:8]}", "namespace": meta["namespace"],
                             "uid": str(uuid.uuid4()), "resourceVersion": str(self.version)},
                "involvedObject": {"kind": "Pod", "name": meta["name"], "namespace": meta["namespace"],
                                   "uid": meta["uid"], **({"fieldPath": field} if container else {})},
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
                for container in [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]:
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

    def _state(self, pod: dict, name: str, state: dict) -> None:
        """One container's state, in initContainerStatuses or containerStatuses."""
        with self.lock:
            for key in ("initContainerStatuses", "containerStatuses"):
                for entry in pod["status"].get(key) or []:
                    if entry["name"] == name:
                        entry.update(state=state, ready="running" in state, started="running" in state)
            self._bump(pod)

    def _waiting_state(self, pod: dict, container: dict, reason: str, message: str) -> None:
        self._state(pod, container["name"], self._waiting(container, reason, message)["state"])

    def _phase(self, pod: dict, phase: str, **extra) -> None:
        with self.lock:
            pod["status"]["phase"] = phase
            pod["status"].update(extra)
            self._bump(pod)
        if phase in ("Succeeded", "Failed"):  # no container runs: the pod is no longer ready
            self._condition(pod, "Ready", "False", reason="PodCompleted" if phase == "Succeeded" else "PodFailed")

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
            self.event(pod, "Pulling", f'Pulling image "{image}"', container=container["name"])
            try:
                self.docker.images.pull(image)
                self.event(pod, "Pulled", f'Successfully pulled image "{image}"', container=container["name"])
                return True
            except docker.errors.APIError as exc:
                message = f'failed to pull and unpack image "{image}": {exc.explanation or exc}'
            time.sleep(self.pace)  # the failure shows seconds after the pull began, not at create
            self.event(pod, "Failed", f"Failed to pull image \"{image}\": {message}", "Warning", container["name"])
            self.event(pod, "Failed", "Error: ErrImagePull", "Warning", container["name"])
            self._waiting_state(pod, container, "ErrImagePull", message)
            time.sleep(self.pace)
            if self._gone(pod):
                break
            back = f'Back-off pulling image "{image}": ErrImagePull: {message}'
            self.event(pod, "BackOff", f'Back-off pulling image "{image}"', container=container["name"])
            self._waiting_state(pod, container, "ImagePullBackOff", back)
            time.sleep(backoff)
            backoff = min(backoff * 2, 300)
        return False

    def _token_dir(self, pod: dict) -> Path:
        """A projected service account token, as the kubelet writes it for the pod: a JWT-shaped
        string naming the service account (moto's STS does not verify it; real STS would); one
        per pod, mounted into each of its containers."""
        meta, spec = pod["metadata"], pod["spec"]
        if pod.get("_token_dir"):
            return Path(pod["_token_dir"])
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
        """The pod's life on its node: init containers one after another (each must succeed),
        then all its containers together, supervised until they end, are evicted or overrun
        the deadline, or the pod is deleted."""
        spec = pod["spec"]
        inits, mains = spec.get("initContainers") or [], spec["containers"]
        time.sleep(self.pace)
        if not self._schedule(pod):
            return
        with self.lock:
            if inits:
                pod["status"]["initContainerStatuses"] = [self._waiting(c, "PodInitializing", "") for c in inits]
            first = "PodInitializing" if inits else "ContainerCreating"
            pod["status"]["containerStatuses"] = [self._waiting(c, first, "") for c in mains]
            self._bump(pod)
        if inits:
            self._condition(pod, "Initialized", "False", reason="ContainersNotInitialized",
                            message=f"containers with incomplete status: [{' '.join(c['name'] for c in inits)}]")
        time.sleep(self.pace)
        for init in inits:
            codes = self._supervise(pod, self._start(pod, [init]))
            if codes is None:
                return
            if codes[init["name"]] != 0:  # restartPolicy Never: the pod fails, its containers never start
                self._phase(pod, "Failed")
                return
        if inits:
            self._condition(pod, "Initialized", "True")
            for container in mains:
                self._waiting_state(pod, container, "ContainerCreating", "")
        codes = self._supervise(pod, self._start(pod, mains))
        if codes is not None:  # restartPolicy Never: Succeeded only when every container did
            self._phase(pod, "Succeeded" if not any(codes.values()) else "Failed")

    def _start(self, pod: dict, containers: list[dict]) -> dict | None:
        """Pull, check and create each container, then start them; None when the pod cannot go
        on (deleted, or left Pending as a kubelet leaves it: pull back-off, config error)."""
        prepared = []
        for container in containers:
            if not self._pull(pod, container):
                return None
            options = self._container_options(pod, container)
            if options is None:
                return None
            prepared.append((container, options))
        started: dict[str, object] = {}
        for container, options in prepared:
            name = container["name"]
            try:
                with self.lock:  # a delete from now on finds the container to stop
                    if self._gone(pod):
                        return None
                    created = self.docker.containers.create(
                        container["image"], command=container.get("args") or None,
                        entrypoint=container.get("command") or None, **options,
                    )
                    pod.setdefault("_containers", {})[name] = created.id
                created.start()
            except docker.errors.APIError as exc:
                if self._gone(pod):  # removed by a delete between create and start
                    return None
                self._state(pod, name, {"terminated": {"exitCode": 128, "reason": "StartError",
                                                       "message": str(exc), "finishedAt": now()}})
                self._stop(pod, started, {}, grace=0)
                self._phase(pod, "Failed")
                return None
            if self._gone(pod):  # deleted while it was being created: it must not run on
                try:
                    created.remove(force=True)
                except docker.errors.NotFound:
                    pass
                return None
            started[name] = created
            self.event(pod, "Started", f"Started container {name}", container=name)
            self._state(pod, name, {"running": {"startedAt": now()}})
        with self.lock:
            if "startTime" not in pod["status"]:  # the deadline counts from the pod's start
                pod["status"]["startTime"] = now()
                deadline = pod["spec"].get("activeDeadlineSeconds")
                pod["_deadline"] = time.monotonic() + int(deadline) if deadline else None
            if containers is pod["spec"]["containers"]:
                pod["status"]["phase"] = "Running"
            self._bump(pod)
        if containers is pod["spec"]["containers"]:
            self._condition(pod, "Ready", "True")
        return started

    def _container_options(self, pod: dict, container: dict) -> dict | None:
        """Docker's options for one container (limits, user, mounts, env); None when a kubelet
        cannot create it (CreateContainerConfigError): the pod stays Pending."""
        spec, meta = pod["spec"], pod["metadata"]
        security = {**(spec.get("securityContext") or {}), **(container.get("securityContext") or {})}
        if security.get("runAsNonRoot") and self._runs_as_root(container["image"], security):
            # A kubelet refuses to start it and leaves the pod Pending (it retries, to no avail).
            message = (f"container has runAsNonRoot and image will run as root (pod: \"{meta['name']}_{meta['namespace']}"
                       f"({meta['uid']})\", container: {container['name']})")
            self.event(pod, "Failed", f"Error: {message}", "Warning", container["name"])
            self._waiting_state(pod, container, "CreateContainerConfigError", message)
            return None
        limits = (container.get("resources") or {}).get("limits") or {}
        options: dict = {"network_mode": "host", "labels": {LABEL: f"{meta['namespace']}/{meta['name']}"}, "volumes": {}}
        if "memory" in limits:
            options["mem_limit"] = options["memswap_limit"] = to_bytes(limits["memory"])
        if "cpu" in limits:
            options["nano_cpus"] = int(to_cores(limits["cpu"]) * 1e9)
        for mount in container.get("volumeMounts") or []:
            volume = next(v for v in spec.get("volumes", []) if v["name"] == mount["name"])
            empty = volume.get("emptyDir")
            if empty is not None and empty.get("medium") == "Memory" and mount["mountPath"] == "/dev/shm":
                options["shm_size"] = to_bytes(empty.get("sizeLimit", "64Mi"))
            elif empty is not None:  # on the node's disk, shared by the pod's containers
                options["volumes"][self._empty_dir(pod, mount["name"])] = {"bind": mount["mountPath"], "mode": "rw"}
        if "runAsUser" in security:
            options["user"] = f"{security['runAsUser']}:{security.get('runAsGroup', security['runAsUser'])}"
        env = {e["name"]: env_value(pod, e) for e in container.get("env") or []}
        options["environment"] = env
        if "AWS_WEB_IDENTITY_TOKEN_FILE" in env and role_of(pod):  # the token the kubelet projects
            options["volumes"][str(self._token_dir(pod))] = {"bind": TOKEN_DIR, "mode": "ro"}
        while (secret_mounts := self._secret_volumes(pod, container)) is None:
            time.sleep(max(self.pace, 0.2) * 2)
            if self._gone(pod):
                return None
        options["volumes"].update(secret_mounts)
        return options

    def _empty_dir(self, pod: dict, volume: str) -> str:
        """A disk-backed emptyDir: one folder per pod and volume, world-writable as the kubelet
        makes it, counted against the pod's ephemeral storage."""
        with self.lock:
            folders = pod.setdefault("_empty_dirs", {})
            if volume not in folders:
                folder = tempfile.mkdtemp(prefix="fake-kube-emptydir-")
                os.chmod(folder, 0o777)
                folders[volume] = folder
            return folders[volume]

    def _supervise(self, pod: dict, started: dict | None) -> dict[str, int] | None:
        """Follow the started containers until each ends (their exit codes), or the kubelet ends
        the pod: its deadline passes, or its local storage goes over its limit (eviction; checked
        every --pace seconds, where a kubelet checks every 10 s). None when the pod ended so, or
        was deleted."""
        if started is None:
            return None
        codes: dict[str, int] = {}
        measured = time.monotonic()
        while len(codes) < len(started):
            for name, container in started.items():
                if name not in codes and self._ended(pod, name, container):
                    codes[name] = container.attrs["State"]["ExitCode"]
            if len(codes) == len(started):
                break
            if self._gone(pod):  # being deleted: _terminate stops them; record how they end
                time.sleep(0.2)
                continue
            deadline = pod.get("_deadline")
            if deadline and time.monotonic() > deadline:
                message = "Pod was active on the node longer than the specified deadline"
                self.event(pod, "DeadlineExceeded", message, "Warning")
                self._stop(pod, started, codes, grace=0)
                self._phase(pod, "Failed", reason="DeadlineExceeded", message=message)
                return None
            if time.monotonic() - measured >= max(self.pace, 0.5):
                measured = time.monotonic()
                if self._evicted(pod, started, codes):
                    return None
            time.sleep(0.2)
        return codes

    def _ended(self, pod: dict, name: str, container) -> bool:
        """Whether the container has stopped; if so its terminated state is recorded as a
        kubelet reports it (OOMKilled only for an OOM kill)."""
        try:
            container.reload()
        except docker.errors.NotFound:  # removed by a deletion
            container.attrs = {"State": {"ExitCode": 137, "OOMKilled": False, "Status": "removed"}}
        state = container.attrs["State"]
        if state.get("Status") not in ("exited", "dead", "removed"):
            return False
        code = state["ExitCode"]
        reason = "OOMKilled" if state.get("OOMKilled") else ("Completed" if code == 0 else "Error")
        self._state(pod, name, {"terminated": {"exitCode": code, "reason": reason, "finishedAt": now(),
                                               "containerID": f"docker://{container.id}"}})
        return True

    def _evicted(self, pod: dict, started: dict, codes: dict[str, int]) -> bool:
        """The kubelet's local storage eviction (fake_kube_eviction): the pod is Failed with
        reason Evicted, a DisruptionTarget condition and an Evicted event; its containers get
        SIGTERM and, after the 1 s grace a kubelet gives on a hard limit, SIGKILL."""
        layers = {name: writable_layer(self.docker, container.id) for name, container in started.items()}
        message = storage_eviction(pod, layers, dict(pod.get("_empty_dirs") or {}))
        if message is None:
            return False
        self.event(pod, "Evicted", message, "Warning")
        self._condition(pod, "DisruptionTarget", "True", reason="TerminationByKubelet", message=message)
        self._stop(pod, started, codes, grace=1)
        self._phase(pod, "Failed", reason="Evicted", message=message)
        return True

    def _stop(self, pod: dict, started: dict, codes: dict[str, int], grace: int) -> None:
        """Stop the containers still running as a kubelet kills them (SIGTERM, SIGKILL after
        `grace` seconds; at once when 0) and record how each ended."""
        running = {name: c for name, c in started.items() if name not in codes}
        for name, container in running.items():
            self.event(pod, "Killing", f"Stopping container {name}", container=name)
            try:
                container.kill(signal="SIGTERM" if grace else "SIGKILL")
            except docker.errors.APIError:
                pass  # it ended already
        for name, container in running.items():
            try:
                container.wait(timeout=grace or 5)
            except Exception:  # noqa: BLE001 - the grace period is over
                container.kill()
                container.wait()
            self._ended(pod, name, container)
            codes[name] = container.attrs["State"]["ExitCode"]

    def delete(self, namespace: str, name: str, grace: int | None) -> dict | None:
        """Graceful, as the API server and kubelet do it: a pod with a container running (init
        containers too) stays listed with a deletionTimestamp, its containers get SIGTERM, then
        SIGKILL once the grace period is over; a pod with nothing running goes at once."""
        with self.lock:
            pod = self.pods.get((namespace, name))
            if pod is None:
                return None
            running = pod["status"].get("phase") not in ("Succeeded", "Failed") and pod.get("_containers")
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
        ends = time.monotonic() + period
        with self.lock:
            running = dict(pod.get("_containers") or {})
        for name, container_id in running.items():
            try:
                container = self.docker.containers.get(container_id)
                if container.status == "running":
                    self.event(pod, "Killing", f"Stopping container {name}", container=name)
                    container.kill(signal="SIGTERM")
            except docker.errors.APIError:  # ended already
                pass
        for container_id in running.values():
            try:
                self.docker.containers.get(container_id).wait(timeout=max(ends - time.monotonic(), 0.1))
            except Exception:  # noqa: BLE001 - gone already, or the grace period is over
                pass
        time.sleep(0.5)  # the kubelet reports how they ended before the pod goes
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
                self._waiting_state(pod, container, "CreateContainerConfigError", message)
                self.event(pod, "Failed", f"Error: {message}", "Warning", container["name"])
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
        for folder in [*pod.get("_secret_dirs", []), *(pod.get("_empty_dirs") or {}).values()]:
            shutil.rmtree(folder, ignore_errors=True)
        if pod.get("_token_dir"):
            shutil.rmtree(pod["_token_dir"], ignore_errors=True)
        with self.lock:
            containers = list((pod.get("_containers") or {}).values())
        for container_id in containers:
            try:
                self.docker.containers.get(container_id).remove(force=True)
            except docker.errors.NotFound:
                pass


def public(pod: dict) -> dict:
    return {k: v for k, v in pod.items() if not k.startswith("_")} | {"kind": "Pod", "apiVersion": "v1"}


class Handler(BaseHTTPRequestHandler):
    cluster: Cluster
    jobs: Jobs  # batch/v1 (fake_kube_jobs.py)
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

    def _job_route(self) -> tuple[str, str | None, bool, dict] | None:
        """/apis/batch/v1/namespaces/{ns}/jobs[/{name}[/status]]: (ns, name, status, query)."""
        url = urlsplit(self.path)
        match = re.fullmatch(r"/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?(/status)?", url.path)
        if not match:
            return None
        return match.group(1), match.group(2), bool(match.group(3)), {k: v[-1] for k, v in parse_qs(url.query).items()}

    def _jobs(self, method: str) -> bool:
        """Serve a batch/v1 Job request; False when the path is not one."""
        route = self._job_route()
        if route is None:
            return False
        ns, name, _, query = route
        if method == "POST" and name is None:
            body = self._body()
            problems = invalid_job(body)
            if problems:
                shown = (body.get("metadata") or {}).get("name") or ""
                self._reply(422, status(422, "Invalid", f'Job.batch "{shown}" is invalid: ' + ", ".join(problems)))
                return True
            try:
                job = self.jobs.create(ns, body)
            except KeyError as exc:
                self._reply(409, status(409, "AlreadyExists", f"jobs.batch {exc} already exists"))
                return True
            with self.cluster.lock:
                self._reply(201, job)
            return True
        if method == "GET" and name is None:
            with self.cluster.lock:
                items = [j for (n, _), j in self.jobs.jobs.items()
                         if n == ns and matches(j["metadata"].get("labels") or {}, query.get("labelSelector", ""))]
                self._reply(200, {"kind": "JobList", "apiVersion": "batch/v1", "metadata": {}, "items": items})
            return True
        if method == "GET":
            with self.cluster.lock:
                job = self.jobs.jobs.get((ns, name))
                if job is None:
                    self._reply(404, status(404, "NotFound", f'jobs.batch "{name}" not found'))
                else:
                    self._reply(200, job)
            return True
        if method == "DELETE" and name is not None:
            policy = self._body().get("propagationPolicy") or query.get("propagationPolicy")
            job = self.jobs.delete(ns, name, policy)
            if job is None:
                self._reply(404, status(404, "NotFound", f'jobs.batch "{name}" not found'))
            else:
                with self.cluster.lock:
                    self._reply(200, job)
            return True
        self._reply(405, status(405, "MethodNotAllowed", f"{method} {self.path} is not served by this test double"))
        return True

    def _pod(self, ns: str, name: str) -> dict | None:
        pod = self.cluster.pods.get((ns, name))
        if pod is None:
            self._reply(404, status(404, "NotFound", f'pods "{name}" not found'))
        return pod

    def do_GET(self) -> None:  # noqa: N802
        if self._jobs("GET"):
            return None
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
        spec = pod["spec"]
        mains = [c["name"] for c in spec["containers"]]
        inits = [c["name"] for c in spec.get("initContainers") or []]
        wanted = query.get("container") or (mains[0] if len(mains) == 1 else None)
        if wanted is None:  # as the API server answers: which one is ambiguous
            choice = f"choose one of: [{' '.join(mains)}]" + (f" or one of the init containers: [{' '.join(inits)}]" if inits else "")
            return self._reply(400, status(400, "BadRequest", f"a container name must be specified for pod {name}, {choice}"))
        if wanted not in mains + inits:
            return self._reply(400, status(400, "BadRequest", f"container {wanted} is not valid for pod {name}"))
        container_id = (pod.get("_containers") or {}).get(wanted)
        if not container_id:
            return self._reply(400, status(400, "BadRequest", f'container "{wanted}" in pod "{name}" is waiting to start'))
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
        statuses = [*(pod["status"].get("initContainerStatuses") or []), *(pod["status"].get("containerStatuses") or [])]
        for _ in range(50 if follow else 0):
            if any(c["name"] == wanted and "terminated" in c["state"] for c in statuses) or pod["status"]["phase"] not in ("Pending", "Running"):
                break
            time.sleep(0.1)

    def do_POST(self) -> None:  # noqa: N802
        if self._jobs("POST"):
            return None
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
        if self._jobs("DELETE"):
            return None
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
    Handler.jobs = Jobs(Handler.cluster)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"fake Kubernetes API (a test double) on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
