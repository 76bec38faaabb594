"""batch/v1 Jobs for the fake Kubernetes API (dev/fake_kube_api.py): a TEST DOUBLE of the
job controller, for what the cncf-kubernetes provider's KubernetesJobOperator and an Indexed
Job (completionMode: Indexed) need. Pods go through the double's Cluster as any pod does.

As the job controller of Kubernetes 1.33 does:
- create validates what it answers 422 for in these fields: a template with restartPolicy
  Never or OnFailure; Indexed needs `completions` (at most 100,000) and `parallelism` at
  most 100,000; backoffLimitPerIndex only with Indexed. Defaults: parallelism 1,
  completions 1 (NonIndexed), backoffLimit 6 (2147483647 with backoffLimitPerIndex);
- it keeps up to `parallelism` pods active; each is named `{job}-{index}-{5 chars}` (Indexed)
  or `{job}-{5 chars}`, labelled with the template's labels plus job-name and controller-uid
  (bare and batch.kubernetes.io/), owned by the job (ownerReferences); an Indexed pod has the
  annotation and label batch.kubernetes.io/job-completion-index and, in every container, the
  variable JOB_COMPLETION_INDEX read from that annotation through the downward API;
- a failed pod (restartPolicy Never) is kept and counted: with backoffLimitPerIndex, its
  index is retried until it failed more than that, then the index is failed and the others
  go on (the job ends Failed, reason FailedIndexes, once every index has ended); otherwise
  more failures than backoffLimit fail the job (reason BackoffLimitExceeded) and its active
  pods are deleted. A retry waits a back-off (10 s doubling on a cluster; 2 x --pace here);
- status: active, ready, succeeded, failed, completedIndexes and failedIndexes (intervals
  such as "0-2,4"), startTime, completionTime, conditions SuccessCriteriaMet then Complete,
  or FailureTarget then Failed;
- delete honours propagationPolicy: Foreground (the job stays listed, with a
  deletionTimestamp, until its pods are gone), Background (the job goes at once, its pods
  after), Orphan or none (the job goes; its pods stay, without their owner). The API's
  default for batch/v1 Jobs is to orphan; kubectl asks for Background.

Not done: NonIndexed work queues (completions unset with parallelism > 1), restartPolicy
OnFailure's in-place restarts (its pods are treated as Never's), podFailurePolicy,
successPolicy, suspend, ttlSecondsAfterFinished, maxFailedIndexes, pod replacement policy,
PATCH and watch of jobs.
"""

from __future__ import annotations

import copy
import re
import threading
import time
import uuid
from typing import Any

INDEX_KEY = "batch.kubernetes.io/job-completion-index"
MAX_INT32 = 2147483647
MAX_INDEXED = 100_000


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def intervals(indexes: set[int]) -> str | None:
    """Indexes as the API writes them: "0-2,4"; None for none."""
    out, ordered = [], sorted(indexes)
    for i in ordered:
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out) or None


def invalid(job: dict) -> list[str]:
    spec = job.get("spec") or {}
    template = spec.get("template") or {}
    problems = []
    name = (job.get("metadata") or {}).get("name") or ""
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
        problems.append(f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 label must consist of lower case '
                        "alphanumeric characters or '-', and must start and end with an alphanumeric character")
    restart = (template.get("spec") or {}).get("restartPolicy")
    if restart not in ("Never", "OnFailure"):
        problems.append(f'spec.template.spec.restartPolicy: Unsupported value: "{restart or ""}": supported values: "OnFailure", "Never"')
    if not (template.get("spec") or {}).get("containers"):
        problems.append("spec.template.spec.containers: Required value")
    mode = spec.get("completionMode", "NonIndexed")
    if mode not in ("NonIndexed", "Indexed"):
        problems.append(f'spec.completionMode: Unsupported value: "{mode}": supported values: "NonIndexed", "Indexed"')
    for field in ("completions", "parallelism", "backoffLimit", "backoffLimitPerIndex"):
        value = spec.get(field)
        if value is not None and (type(value) is not int or value < 0):
            problems.append(f"spec.{field}: Invalid value: {value}: must be greater than or equal to 0")
    if mode == "Indexed":
        if spec.get("completions") is None:
            problems.append("spec.completions: Required value: when completion mode is Indexed")
        elif type(spec["completions"]) is int and spec["completions"] > MAX_INDEXED:
            problems.append(f"spec.completions: Invalid value: {spec['completions']}: must be less than or equal to {MAX_INDEXED} when completion mode is Indexed")
        if type(spec.get("parallelism")) is int and spec["parallelism"] > MAX_INDEXED:
            problems.append(f"spec.parallelism: Invalid value: {spec['parallelism']}: must be less than or equal to {MAX_INDEXED} when completion mode is Indexed")
    elif spec.get("backoffLimitPerIndex") is not None:
        problems.append("spec.backoffLimitPerIndex: Forbidden: requires indexed completion mode")
    return problems


class Jobs:
    """The jobs of the double and their controller (a thread per job)."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.jobs: dict[tuple[str, str], dict] = {}

    def create(self, namespace: str, job: dict) -> dict:
        meta = job.setdefault("metadata", {})
        spec = job["spec"]
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("parallelism", 1)
        spec.setdefault("completions", 1)
        spec.setdefault("backoffLimit", MAX_INT32 if spec.get("backoffLimitPerIndex") is not None else 6)
        meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=now())
        labels = meta.setdefault("labels", {})
        labels.update({"batch.kubernetes.io/job-name": meta["name"], "job-name": meta["name"],
                       "batch.kubernetes.io/controller-uid": meta["uid"], "controller-uid": meta["uid"]})
        job.update(kind="Job", apiVersion="batch/v1", status={"active": 0, "ready": 0, "succeeded": 0, "failed": 0,
                                                               "startTime": now(), "uncountedTerminatedPods": {}})
        with self.cluster.lock:
            if (namespace, meta["name"]) in self.jobs:
                raise KeyError(meta["name"])
            self.cluster._bump(job)
            self.jobs[(namespace, meta["name"])] = job
        threading.Thread(target=self._control, args=(job,), daemon=True).start()
        return job

    # -- the controller ---------------------------------------------------------------------

    def _owned(self, job: dict) -> list[dict]:
        uid = job["metadata"]["uid"]
        return [p for p in self.cluster.pods.values()
                if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])]

    def _pod(self, job: dict, index: int | None) -> dict:
        meta, spec = job["metadata"], job["spec"]
        template = copy.deepcopy(spec["template"])
        pod_meta = template.setdefault("metadata", {})
        suffix = uuid.uuid4().hex[:5]
        pod_meta["name"] = f"{meta['name']}-{index}-{suffix}" if index is not None else f"{meta['name']}-{suffix}"
        labels = pod_meta.setdefault("labels", {})
        labels.update({k: meta["labels"][k] for k in ("batch.kubernetes.io/job-name", "job-name",
                                                       "batch.kubernetes.io/controller-uid", "controller-uid")})
        pod_meta["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"],
                                        "controller": True, "blockOwnerDeletion": True}]
        if index is not None:
            labels[INDEX_KEY] = str(index)
            pod_meta.setdefault("annotations", {})[INDEX_KEY] = str(index)
            field = {"valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": f"metadata.annotations['{INDEX_KEY}']"}}}
            for container in [*(template["spec"].get("initContainers") or []), *template["spec"]["containers"]]:
                env = [e for e in container.get("env") or [] if e.get("name") != "JOB_COMPLETION_INDEX"]
                container["env"] = [*env, {"name": "JOB_COMPLETION_INDEX", **field}]
        return {"metadata": pod_meta, "spec": template["spec"]}

    def _control(self, job: dict) -> None:
        meta, spec = job["metadata"], job["spec"]
        indexed = spec["completionMode"] == "Indexed"
        wanted = spec["completions"]
        per_index = spec.get("backoffLimitPerIndex")
        failures: dict[int | None, int] = {}
        counted: set[str] = set()
        done: set[int] = set()
        failed_indexes: set[int] = set()
        succeeded_pods = 0
        retry_at: dict[int | None, float] = {}
        backoff = max(self.cluster.pace, 0.2) * 2
        while True:
            time.sleep(0.2)
            with self.cluster.lock:
                if self.jobs.get((meta["namespace"], meta["name"])) is not job or "deletionTimestamp" in meta:
                    return
                pods = self._owned(job)
                active = []
                for pod in pods:
                    phase = pod["status"].get("phase")
                    index = int(pod["metadata"]["labels"][INDEX_KEY]) if indexed else None
                    name = pod["metadata"]["name"]
                    if phase == "Succeeded" and name not in counted:
                        counted.add(name)
                        succeeded_pods += 1
                        if indexed:
                            done.add(index)
                    elif phase == "Failed" and name not in counted:
                        counted.add(name)
                        failures[index] = failures.get(index, 0) + 1
                        retry_at[index] = time.monotonic() + backoff * 2 ** (failures[index] - 1)
                        if indexed and per_index is not None and failures[index] > per_index:
                            failed_indexes.add(index)
                    elif phase not in ("Succeeded", "Failed") and "deletionTimestamp" not in pod["metadata"]:
                        active.append(pod)
                total_failed = sum(failures.values())
                status = job["status"]
                status.update(active=len(active), ready=sum(p["status"].get("phase") == "Running" for p in active),
                              succeeded=succeeded_pods, failed=total_failed)
                if indexed:
                    status["completedIndexes"] = intervals(done) or ""
                    if per_index is not None:
                        status["failedIndexes"] = intervals(failed_indexes) or ""
                ended = None
                if total_failed > spec["backoffLimit"]:
                    ended = ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
                elif indexed and len(done) + len(failed_indexes) == wanted and failed_indexes:
                    ended = ("Failed", "FailedIndexes", "Job has failed indexes")
                elif (len(done) if indexed else succeeded_pods) >= wanted:
                    ended = ("Complete", "CompletionsReached", "Reached expected number of succeeded pods")
                if ended is not None:
                    self._finish(job, ended, active)
                    return
                # Start what is missing, up to parallelism (and what is left to complete).
                running = {int(p["metadata"]["labels"][INDEX_KEY]) for p in active} if indexed else set()
                room = min(spec["parallelism"], wanted - (len(done) if indexed else succeeded_pods)) - len(active)
                todo = [i for i in range(wanted) if i not in done and i not in failed_indexes and i not in running] if indexed else [None] * max(room, 0)
                starts = []
                for index in todo:
                    if room <= 0:
                        break
                    if retry_at.get(index, 0) > time.monotonic():
                        continue
                    starts.append(index)
                    room -= 1
                self.cluster._bump(job)
            for index in starts:
                try:
                    self.cluster.create(meta["namespace"], self._pod(job, index))
                except KeyError:  # a name taken (5 random characters): the next round makes another
                    pass

    def _finish(self, job: dict, ended: tuple[str, str, str], active: list[dict]) -> None:
        kind, reason, message = ended
        first = "SuccessCriteriaMet" if kind == "Complete" else "FailureTarget"
        stamp = now()
        job["status"]["conditions"] = [
            {"type": t, "status": "True", "reason": reason, "message": message, "lastProbeTime": stamp, "lastTransitionTime": stamp}
            for t in (first, kind)
        ]
        if kind == "Complete":
            job["status"]["completionTime"] = stamp
        self.cluster._bump(job)
        for pod in active:  # a failed job's running pods are deleted
            threading.Thread(target=self.cluster.delete, args=(pod["metadata"]["namespace"], pod["metadata"]["name"], None),
                             daemon=True).start()

    # -- deletion ---------------------------------------------------------------------------

    def delete(self, namespace: str, name: str, policy: str | None) -> dict | None:
        with self.cluster.lock:
            job = self.jobs.get((namespace, name))
            if job is None:
                return None
            pods = self._owned(job)
            if policy in (None, "Orphan"):
                self.jobs.pop((namespace, name))
                for pod in pods:
                    pod["metadata"]["ownerReferences"] = [r for r in pod["metadata"]["ownerReferences"] if r.get("uid") != job["metadata"]["uid"]]
                    self.cluster._bump(pod)
                return job
            if policy == "Background":
                self.jobs.pop((namespace, name))
            else:  # Foreground: listed, being deleted, until its pods are gone
                job["metadata"].update(deletionTimestamp=now(), finalizers=["foregroundDeletion"])
                self.cluster._bump(job)
        for pod in pods:
            self.cluster.delete(namespace, pod["metadata"]["name"], None)
        if policy == "Foreground":
            threading.Thread(target=self._remove_when_pods_gone, args=(job,), daemon=True).start()
        return job

    def _remove_when_pods_gone(self, job: dict) -> None:
        meta = job["metadata"]
        while True:
            with self.cluster.lock:
                if not self._owned(job):
                    self.jobs.pop((meta["namespace"], meta["name"]), None)
                    return
            time.sleep(0.2)


def env_value(pod: dict, entry: dict) -> str:
    """A container variable's value: `value`, or the downward API's `fieldRef` into the pod's
    metadata (name, namespace, uid, a label or an annotation), as the kubelet resolves it."""
    if "valueFrom" not in entry:
        return entry.get("value", "")
    path = ((entry["valueFrom"] or {}).get("fieldRef") or {}).get("fieldPath", "")
    meta = pod["metadata"]
    keyed = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if keyed:
        return str((meta.get(keyed.group(1)) or {}).get(keyed.group(2), ""))
    return str({"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
                "metadata.uid": meta.get("uid")}.get(path) or "")
