"""The kubernetes kind's runner: the call runs in a pod, through the cncf-kubernetes
provider's KubernetesPodOperator (composition: we configure and drive the real operator).

The pod gets two arguments, the call's and the call folder's URIs in the artifact store;
the runtime in the image reads its call and writes its outputs there itself. So no xcom
sidecar and no `pods/exec` permission are needed, and the pod spec never carries data.

The verbs map onto the operator's own seams: `submit` builds the pod request and calls
`get_or_create_pod` (which reattaches to a pod an earlier attempt of this try started);
`wait` runs the operator's execute, which finds `pod` already set and follows it
(blocking) or hands back its trigger (deferrable); `resume` is its `trigger_reentry`.
"""

from __future__ import annotations

from typing import Any

from airflow_infra.targets.contract import Call, Deferral, Handle, Runner
from airflow_infra.targets.image import prepare_image
from airflow_infra.targets.kubernetes.podspec import (
    PULL_FAILURES,
    TASK_DIR_ANNOTATION,
    make_operator,
    operator_arguments,
    pull_reference,
    resource_requirements,
)
from airflow_infra.targets.remote import aws_environment, execute_delegate, require_object_store, store_conn_id


class KubernetesRunner(Runner):
    kind = "kubernetes"

    _reference = ""
    _operator: Any = None

    def prepare(self, call: Call) -> None:
        require_object_store(call, self.name, "Kubernetes")
        self._reference = pull_reference(prepare_image(call, self.config), self.config, self.target)

    def _environment(self, call: Call) -> dict[str, str]:
        env = dict(call.environment.env)
        if call.store.url.startswith(("s3://", "s3a://")):  # the pod reads and writes the store with s3fs
            from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

            hook = AwsBaseHook(aws_conn_id=store_conn_id(call.store.url) or "aws_default", client_type="s3")
            env.update(aws_environment(hook, pass_credentials=self.target.pass_credentials))
        return env

    def submit(self, call: Call) -> Handle:
        operator = make_operator(
            call, operator_arguments(call, self.target, self._reference, call.folder_uri, self._environment(call))
        )
        self._operator = operator
        operator.name = operator._set_name(operator.name)  # as the operator's execute does first
        operator.pod_request_obj = operator.build_pod_request_obj(call.context)
        try:
            operator.pod = operator.get_or_create_pod(operator.pod_request_obj, call.context)
        except Exception as exc:  # noqa: BLE001 - no pod was made: say why, in the API's words
            from airflow_infra.errors import InfraTaskFailed

            reason = getattr(exc, "body", None) or str(exc)
            raise InfraTaskFailed(f"{call.where}: the pod could not be created: {str(reason).strip()[:2000]}") from None
        metadata = operator.pod.metadata
        if self.target.dashboard_url:
            call.publish_link("pod", self.target.dashboard_url.format(namespace=metadata.namespace, name=metadata.name))
        # A pod an earlier attempt of this try started writes to that attempt's folder.
        folder = (metadata.annotations or {}).get(TASK_DIR_ANNOTATION) or call.folder_uri
        if folder != call.folder_uri:
            call.log.info("reattached to pod %s: its results are in %s", metadata.name, folder)
        return Handle(self.kind, self.name, metadata.name, folder, {"namespace": metadata.namespace})

    def wait(self, call: Call, handle: Handle) -> Deferral | None:
        from airflow.sdk.exceptions import TaskDeferred

        try:
            execute_delegate(self._operator, call.context)  # follows the pod submit() set
        except TaskDeferred as deferred:  # the operator's trigger; we come back through resume()
            return Deferral(deferred.trigger, deferred.timeout)
        return None

    def resume(self, call: Call, handle: Handle, event: dict[str, Any] | None) -> Deferral | None:
        from airflow.sdk.exceptions import TaskDeferred

        self._operator = make_operator(call, operator_arguments(call, self.target, "pending", handle.folder, {}))
        try:
            self._operator.trigger_reentry(call.context, event or {})
        except TaskDeferred as deferred:  # still running (periodic log fetching): wait again
            return Deferral(deferred.trigger, deferred.timeout)
        return None

    def explain(self, call: Call, handle: Handle, error: BaseException | None) -> str:
        """Say which way the pod failed and what to change, from its last status."""
        from airflow_infra.quantities import format_bytes

        if handle.details.get("killed"):
            return "the task was killed; its pod was deleted"
        operator = self._operator
        pod = getattr(operator, "remote_pod", None) or getattr(operator, "pod", None)
        text = str(error or "")
        status = getattr(pod, "status", None)
        name = handle.id or "?"
        states = [c.state for c in (getattr(status, "container_statuses", None) or []) if c.state]
        waiting = next((s.waiting for s in states if s.waiting and s.waiting.reason in PULL_FAILURES), None)
        if waiting is not None or "Image cannot be pulled" in text:
            detail = f"{waiting.reason}: {waiting.message}" if waiting is not None else text
            return (
                f"image pull failed: the cluster could not pull {self._reference or 'the image'} ({detail}); "
                "check that it was pushed (`airflow-infra build DAG_FILE`), that the nodes reach the registry "
                "(`pull_registry` in infra.yaml) and that `image_pull_secrets` grant access"
            )
        if "took too long" in text:
            return (f"pod {name} did not start within {self.target.startup_timeout}s; "
                    "raise `startup_timeout` or check the cluster's capacity")
        if status is not None and status.reason == "DeadlineExceeded":
            return (
                f"deadline exceeded: pod {name} ran longer than timeout={call.resources.timeout:g}s and was stopped; "
                "raise `timeout` or make the task faster"
            )
        terminated = next((s.terminated for s in states if s.terminated), None)
        if terminated is not None and (terminated.reason == "OOMKilled" or terminated.exit_code == 137):
            if "memory" in resource_requirements(call.resources, self.target).get("limits", {}):
                return (f"out of memory: pod {name} hit its memory limit of {format_bytes(call.resources.memory)} "
                        "and was killed (exit 137); raise `memory`")
            return (f"out of memory: pod {name} was killed (exit 137) with no memory limit set, so its node ran "
                    "short; declare `memory` (or a larger one) so it is scheduled where that much is free")
        if terminated is not None:
            return f"pod {name} failed: exit code {terminated.exit_code} ({terminated.reason or 'no reason given'})"
        return f"pod {name} failed: {text.splitlines()[0] if text else type(error).__name__}"

    def kill(self, handle: Handle) -> None:
        handle.details["killed"] = True
        operator = self._operator
        if operator is not None and operator.pod is not None:
            operator.on_kill()  # deletes the pod
            return
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        KubernetesHook(conn_id=self.target.kubernetes_conn_id).core_v1_client.delete_namespaced_pod(
            handle.id, handle.details.get("namespace", self.target.namespace)
        )
