"""A TEST DOUBLE of the Kubernetes API, not a Kubernetes: just enough of core/v1 pods for the
real KubernetesPodOperator (blocking and deferrable) to run a pod end to end on this machine.

Each pod becomes one Docker container on the local engine (host network): the image is
pulled if missing (a failed pull shows as ErrImagePull, like a kubelet), memory/CPU limits
become the container's cgroup limits, a memory-backed emptyDir at /dev/shm becomes its shm
size, securityContext.runAsUser/runAsGroup its user, activeDeadlineSeconds a deadline after
which the pod fails with reason DeadlineExceeded, and an OOM kill shows as OOMKilled/137.

Served: pods create/get/list (labelSelector)/patch (labels, annotations)/delete, pod logs
(follow, timestamps, sinceSeconds), events list. No scheduling, no nodes, no auth, no watch.

    python dev/fake_kube_api.py --port 5002
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


class Cluster:
    def __init__(self) -> None:
        self.docker = docker.from_env(version="auto")
        self.pods: dict[tuple[str, str], dict] = {}
        self.events: list[dict] = []
        self.lock = threading.RLock()
        self.version = 1

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

    def create(self, namespace: str, pod: dict) -> dict:
        meta = pod.setdefault("metadata", {})
        meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=now())
        with self.lock:
            if (namespace, meta.get("name")) in self.pods:
                raise KeyError(meta.get("name"))
            container = pod["spec"]["containers"][0]
            pod["status"] = {
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}],
                "containerStatuses": [self._waiting(container, "ContainerCreating", "")],
            }
            self._bump(pod)
            self.pods[(namespace, meta["name"])] = pod
        threading.Thread(target=self._run, args=(pod,), daemon=True).start()
        return pod

    @staticmethod
    def _waiting(container: dict, reason: str, message: str) -> dict:
        return {"name": container["name"], "image": container["image"], "imageID": "", "ready": False,
                "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}}}

    def _set(self, pod: dict, phase: str, state: dict, **extra) -> None:
        with self.lock:
            status_ = pod["status"]
            status_["phase"] = phase
            status_["containerStatuses"][0]["state"] = state
            status_["containerStatuses"][0]["ready"] = "running" in state
            status_.update(extra)
            self._bump(pod)

    def _run(self, pod: dict) -> None:
        spec, meta = pod["spec"], pod["metadata"]
        container = spec["containers"][0]
        image = container["image"]
        try:
            self.docker.images.get(image)
        except docker.errors.ImageNotFound:
            self.event(pod, "Pulling", f'Pulling image "{image}"')
            try:
                self.docker.images.pull(image)
            except docker.errors.APIError as exc:
                message = f'failed to pull and unpack image "{image}": {exc.explanation or exc}'
                self.event(pod, "Failed", message, "Warning")
                with self.lock:
                    pod["status"]["containerStatuses"][0] = self._waiting(container, "ErrImagePull", message)
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
        security = {**(spec.get("securityContext") or {}), **(container.get("securityContext") or {})}
        if "runAsUser" in security:
            kwargs["user"] = f"{security['runAsUser']}:{security.get('runAsGroup', security['runAsUser'])}"
        env = {e["name"]: e.get("value", "") for e in container.get("env") or []}
        try:
            docker_container = self.docker.containers.create(
                image, command=container.get("args") or None, entrypoint=container.get("command") or None,
                environment=env, **kwargs,
            )
            pod["_container"] = docker_container.id
            docker_container.start()
        except docker.errors.APIError as exc:
            self._set(pod, "Failed", {"terminated": {"exitCode": 128, "reason": "ContainerCannotRun",
                                                     "message": str(exc), "finishedAt": now()}})
            return
        started = now()
        self.event(pod, "Started", "Started container base")
        self._set(pod, "Running", {"running": {"startedAt": started}}, startTime=started)
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

    def delete(self, namespace: str, name: str) -> dict | None:
        with self.lock:
            pod = self.pods.pop((namespace, name), None)
        if pod and pod.get("_container"):
            try:
                self.docker.containers.get(pod["_container"]).remove(force=True)
            except docker.errors.NotFound:
                pass
        return pod


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
        match = re.fullmatch(r"/api/v1/namespaces/([^/]+)/(pods|events)(?:/([^/]+))?(/log)?", url.path)
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
        if what == "events":
            involved = re.search(r"involvedObject\.name=([^,]+)", query.get("fieldSelector", ""))
            with self.cluster.lock:
                items = [e for e in self.cluster.events if e["metadata"]["namespace"] == ns
                         and (not involved or e["involvedObject"]["name"] == involved.group(1))]
            return self._reply(200, {"kind": "EventList", "apiVersion": "v1",
                                     "metadata": {"resourceVersion": str(self.cluster.version)}, "items": items})
        return self._reply(404, status(404, "NotFound", f"{self.path} is not served by this test double"))

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
        if what != "pods" or name is not None:
            return self._reply(404, status(404, "NotFound", f"{self.path} is not served by this test double"))
        try:
            pod = self.cluster.create(ns, self._body())
        except KeyError as exc:
            return self._reply(409, status(409, "AlreadyExists", f"pods {exc} already exists"))
        with self.cluster.lock:
            self._reply(201, public(pod))

    def do_PATCH(self) -> None:  # noqa: N802
        what, ns, name, _ = self._route()
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
        what, ns, name, _ = self._route()
        pod = self.cluster.delete(ns, name) if what == "pods" and name else None
        if pod is None:
            return self._reply(404, status(404, "NotFound", f'pods "{name}" not found'))
        self._reply(200, public(pod))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5002)
    args = parser.parse_args()
    Handler.cluster = Cluster()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"fake Kubernetes API (a test double) on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
