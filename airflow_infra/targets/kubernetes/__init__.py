"""The `kubernetes` kind: a pod per call, through the cncf-kubernetes provider's KubernetesPodOperator."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from airflow_infra.config import check_registry, check_url_template
from airflow_infra.targets.contract import TargetConfig, TargetKind
from airflow_infra.targets.store_credentials import StoreCredentials, check_store_credentials


class GpuPlacement(BaseModel):
    """Where pods asking for one `gpu_type` may run: merged into the pod's selector and tolerations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}\Z)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_KEY = re.compile(r"((?=.{1,253}/)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")

# Pods run as a non-root user unless the target says otherwise (runtime.py needs no root).
DEFAULT_POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000}


class KubernetesTarget(TargetConfig):
    """A pod per call, through the cncf-kubernetes provider's KubernetesPodOperator."""

    kind: Literal["kubernetes"]
    namespace: str = "default"
    kubernetes_conn_id: str = "kubernetes_default"
    service_account: str | None = None
    image_pull_secrets: list[str] = []
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    # gpu_type -> placement, e.g. {a100: {node_selector: {gpu: a100}, tolerations: [...]}}.
    # When set, a task asking for a gpu_type not listed here fails before any pod is made.
    gpu_types: dict[str, GpuPlacement] = {}
    gpu_resource: str = "nvidia.com/gpu"
    # Limits policy: "request" sets the limit equal to the request, "none" sets no limit.
    memory_limit: Literal["request", "none"] = "request"
    cpu_limit: Literal["request", "none"] = "none"
    # A pod template (YAML file on the worker) the provider's pod is merged onto.
    pod_template_file: str | None = None
    # The pod's securityContext; `{}` lets pods run as the image's user (root).
    security_context: dict[str, Any] = DEFAULT_POD_SECURITY
    # The registry address as the cluster's nodes see it, when it differs from `registry`
    # (e.g. a pull-through mirror); pods pull the same repository and tag from there.
    pull_registry: str | None = None
    # Wait for the pod in the triggerer instead of holding a worker slot.
    deferrable: bool = False
    # While deferred, the pod's new log lines reach the task log at least this often
    # (seconds): the pod operator's logging_interval, a moment on a worker each time.
    log_interval: int = Field(default=30, ge=1, le=3600)
    startup_timeout: int = Field(default=120, gt=0)
    # How often the provider asks whether the pod has started (KubernetesPodOperator's
    # startup_check_interval_seconds; its default, 5 s, is most of a short task's latency).
    startup_check_interval: int = Field(default=5, ge=1, le=300)
    # The Kubernetes pod link of a task instance, e.g.
    # "https://dashboard.example/#/pod/{namespace}/{name}?namespace={namespace}".
    dashboard_url: str | None = None
    # Hand the artifact store connection's keys to the pod as environment variables. Only for
    # local test set-ups (moto); real pods get credentials from their service account.
    pass_credentials: bool = False
    # Per-call credentials for the artifact store (targets/store_credentials.py): each pod may
    # write only its own call's folder. They reach the pod in its own Secret.
    store_credentials: StoreCredentials | None = None

    @model_validator(mode="after")
    def _store_credentials(self) -> KubernetesTarget:
        check_store_credentials(self)
        return self

    @field_validator("namespace")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not _DNS_LABEL.fullmatch(value):
            raise ValueError(f"{value!r} is not a Kubernetes namespace name (lowercase letters, digits, '-')")
        return value

    @field_validator("service_account")
    @classmethod
    def _service_account(cls, value: str | None) -> str | None:
        if value is not None and not _DNS_SUBDOMAIN.fullmatch(value):
            raise ValueError(f"{value!r} is not a service account name (lowercase letters, digits, '-', '.')")
        return value

    @field_validator("image_pull_secrets")
    @classmethod
    def _secret_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _DNS_SUBDOMAIN.fullmatch(name):
                raise ValueError(f"{name!r} is not a Secret name (lowercase letters, digits, '-', '.')")
        return value

    @field_validator("labels", "node_selector")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(label):
                raise ValueError(f"{key!r}: {label!r} is not a Kubernetes label (key [prefix/]name, value of 63 characters at most)")
        return value

    @field_validator("pod_template_file")
    @classmethod
    def _template_file(cls, value: str | None) -> str | None:
        if value is not None and not (value.startswith("/") and Path(value).is_file()):
            raise ValueError(f"{value!r} is not an absolute path to a pod template file on this machine")
        return value

    @field_validator("dashboard_url")
    @classmethod
    def _dashboard_url(cls, value: str | None) -> str | None:
        return check_url_template(value, "namespace", "name")

    @field_validator("pull_registry")
    @classmethod
    def _pull_registry(cls, value: str | None) -> str | None:
        return check_registry(value)


KIND = TargetKind(
    name="kubernetes",
    schema=KubernetesTarget,
    runner="airflow_infra.targets.kubernetes.runner:KubernetesRunner",
    needs_image=True,
    links=("airflow_infra.targets.kubernetes.links:PodLink",),
)
