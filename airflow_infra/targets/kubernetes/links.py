"""The kubernetes kind's extra link: the task instance's pod, from the target's `dashboard_url`."""

from __future__ import annotations

from airflow_infra.links import InfraLink


class PodLink(InfraLink):
    name = "Kubernetes pod"
    part = "pod"
