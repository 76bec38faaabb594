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

from airflow_infra.targets.contract import ENDED, GONE, RUNNING, Call, Deferral, Handle, Runner
from airflow_infra.targets.image import prepare_image
from airflow_infra.targets.kubernetes import indexed
from airflow_infra.targets.kubernetes.explain import explain_pod
from airflow_infra.targets.kubernetes.secrets import create_secret, delete_secret, documents, mount_secret, own_secret
from airflow_infra.targets.kubernetes.podspec import (
    TASK_DIR_ANNOTATION,
    make_operator,
    operator_arguments,
    pull_reference,
    resource_requirements,
)
from airflow_infra.targets.remote import (
    aws_environment,
    execute_delegate,
    issue_store_credentials,
    require_object_store,
    store_conn_id,
)


class KubernetesRunner(Runner):
    kind = "kubernetes"
    delivers_connections = True  # a short-lived Secret per call, mounted into its pod (secrets.py)
    fan_out, max_chunks = "array", 100_000  # an Indexed Job's most completions (indexed.py)

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
        if call.chunks:
            return self._submit_indexed(call)
        operator = make_operator(
            call, operator_arguments(call, self.target, self._reference, call.folder_uri, self._environment(call))
        )
        self._operator = operator
        operator.name = operator._set_name(operator.name)  # as the operator's execute does first
        namespace = self.target.namespace
        secret = None
        files = documents(call, issue_store_credentials(call, self.target))
        try:
            operator.pod_request_obj = operator.build_pod_request_obj(call.context)
            if files:  # before the pod, which mounts it; named after it (its random suffix included)
                secret = create_secret(operator.client, namespace, operator.pod_request_obj.metadata.name, files)
                mount_secret(operator.pod_request_obj, secret, operator.base_container_name, list(files))
            operator.pod = operator.get_or_create_pod(operator.pod_request_obj, call.context)
        except Exception as exc:  # noqa: BLE001 - no pod was made: say why, in the API's words
            from airflow_infra.errors import InfraTaskFailed

            if secret:
                delete_secret(operator.client, namespace, secret)
            reason = getattr(exc, "body", None) or str(exc)
            raise InfraTaskFailed(f"{call.where}: the pod could not be created: {str(reason).strip()[:2000]}") from None
        metadata = operator.pod.metadata
        if secret and metadata.name != operator.pod_request_obj.metadata.name:  # reattached: that pod has its own
            delete_secret(operator.client, namespace, secret)
        elif secret:
            own_secret(operator.client, secret, operator.pod)
        if self.target.dashboard_url:
            call.publish_link("pod", self.target.dashboard_url.format(namespace=metadata.namespace, name=metadata.name))
        # A pod an earlier attempt of this try started writes to that attempt's folder.
        folder = (metadata.annotations or {}).get(TASK_DIR_ANNOTATION) or call.folder_uri
        if folder != call.folder_uri:
            call.log.info("reattached to pod %s: its results are in %s", metadata.name, folder)
        details = {"namespace": metadata.namespace}
        if secret and metadata.name == operator.pod_request_obj.metadata.name:
            details["secret"] = secret  # the handle is stored: a resumed attempt deletes it too
        return Handle(self.kind, self.name, metadata.name, folder, details)

    def _submit_indexed(self, call: Call) -> Handle:
        if documents(call, issue_store_credentials(call, self.target)):
            from airflow_infra.errors import InfraTaskFailed

            raise InfraTaskFailed(f"{call.where}: a fan-out on kubernetes cannot take connections or per-call store "
                                  "credentials yet; declare none, or route the task to a batch or docker target")
        arguments = operator_arguments(call, self.target, self._reference, call.folder_uri, self._environment(call))
        self._operator = indexed.job_operator(call, arguments, call.parallelism or call.chunks)
        return indexed.submit(self._operator, call, self.kind, self.name)

    def wait(self, call: Call, handle: Handle) -> Deferral | None:
        from airflow.sdk.exceptions import TaskDeferred

        if handle.details.get("job"):  # a fan-out's Indexed Job: waited for here, also on deferrable targets
            indexed.wait(self._operator, call)
            return None

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
        """Say which way the pod failed and what to change, from the pod and its events as
        they were when it ended (not the snapshot the operator took at create)."""
        if handle.details.get("killed"):
            return "the task was killed; its pod was deleted"
        if handle.details.get("job"):
            return f"the Indexed Job {handle.id} ended before any of its pods reported: {error}"
        operator = self._operator
        pod = getattr(operator, "final_pod", None) or getattr(operator, "remote_pod", None) or getattr(operator, "pod", None)
        limits = resource_requirements(call.resources, self.target).get("limits", {})
        return explain_pod(
            pod, getattr(operator, "final_events", ()), name=handle.id or "?", error_text=str(error or ""),
            memory_limit=call.resources.memory if "memory" in limits else None, timeout=call.resources.timeout,
            startup_timeout=self.target.startup_timeout, reference=self._reference,
        )

    def collect(self, call: Call, handle: Handle) -> None:
        if handle.details.get("job"):  # its pods go with it
            indexed.delete(self._batch_client(), handle, self.target.namespace)
            return
        # The pod's Secret goes with the pod (it owns it); deleted here too, at once.
        if handle.details.get("secret"):
            delete_secret(self._client(), handle.details.get("namespace", self.target.namespace), handle.details["secret"])

    def kill(self, handle: Handle) -> None:
        handle.details["killed"] = True
        if handle.details.get("job"):
            indexed.delete(self._batch_client(), handle, self.target.namespace)
            return
        operator = self._operator
        if operator is not None and operator.pod is not None:
            operator.on_kill()  # deletes the pod
            return
        from kubernetes.client.exceptions import ApiException

        try:
            self._client().delete_namespaced_pod(handle.id, handle.details.get("namespace", self.target.namespace))
        except ApiException as exc:
            if exc.status != 404:  # gone already
                raise

    def detach(self, handle: Handle) -> bool:
        # The pod operator's cleanup, which runs as the task unwinds, deletes the pod unless
        # it was killed (on_kill then deletes it itself): marked so, it leaves the pod alone.
        if self._operator is not None:
            self._operator._killed = True
        return True

    def status(self, call: Call, handle: Handle) -> str:
        from kubernetes.client.exceptions import ApiException

        if handle.details.get("job"):
            # A fan-out's Indexed Job is not followed by a later try (a limit of this version):
            # the try runs the items again, and removes the job first.
            indexed.delete(self._batch_client(), handle, self.target.namespace)
            return GONE

        # The handle comes from the task state store, which Airflow's REST API can write: only
        # a pod of the target's namespace that writes this very call's folder is followed.
        handle.details["namespace"] = self.target.namespace
        try:
            pod = self._client().read_namespaced_pod(handle.id, self.target.namespace)
        except ApiException as exc:
            if exc.status in (404, 422):  # gone, or not a pod name at all
                return GONE
            raise
        if (pod.metadata.annotations or {}).get(TASK_DIR_ANNOTATION) != call.folder_uri:
            call.log.warning("pod %s does not run this task instance's call: not followed", handle.id[:253])
            return GONE
        if pod.metadata.deletion_timestamp is not None:
            return GONE  # being deleted (killed): never followed
        return RUNNING if pod.status.phase in ("Pending", "Running") else ENDED

    def reattach(self, call: Call, handle: Handle) -> None:
        # The operator follows a pod it is handed (execute_sync and execute_async alike).
        operator = make_operator(call, operator_arguments(call, self.target, "pending", handle.folder, {}))
        operator.pod_request_obj = operator.build_pod_request_obj(call.context)
        operator.pod = self._client().read_namespaced_pod(handle.id, self.target.namespace)
        self._operator = operator

    def _batch_client(self) -> Any:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        return KubernetesHook(conn_id=self.target.kubernetes_conn_id).batch_v1_client

    def _client(self) -> Any:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        return KubernetesHook(conn_id=self.target.kubernetes_conn_id).core_v1_client
