"""Extra links from an infra task instance to where it ran: its image here; each target
kind's own (its pod, its Batch job) live in the kind's folder and are named by its TargetKind.

Runners record each URL in an XCom entry of its own while the task runs (`publish`); the
links read them back when Airflow stores them at the end of the task. Kept free of provider imports: this
module loads with the operator at DAG parse time.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from airflow.sdk import BaseOperatorLink

KEY_PREFIX = "airflow_infra_link_"
_ECR = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com$")


def publish(context: Any, part: str, url: str | None) -> None:
    """Record where the task instance's `part` (image, pod, batch_job) can be seen."""
    if url and context and "ti" in context:
        context["ti"].xcom_push(key=KEY_PREFIX + part, value=url)


def image_url(reference: str, template: str | None) -> str | None:
    """A page for an image: `image_url` from infra.yaml if set, ECR's console for ECR, else the
    registry's manifest URL (registries without a UI have nothing better)."""
    from airflow_infra.images.registry import ImageRef

    try:
        ref = ImageRef.parse(reference)
    except ValueError:
        return None  # an image in the local engine only: nothing to link to
    if template:
        return template.format(reference=reference, registry=ref.host, repository=ref.repository, tag=ref.tag)
    ecr = _ECR.match(ref.host)
    if ecr:
        account, region = ecr.groups()
        return (
            f"https://{region}.console.aws.amazon.com/ecr/repositories/private/{account}/{ref.repository}"
            f"/_/image/{ref.tag}/details?region={region}"
        )
    return f"{ref.base_url}/v2/{ref.repository}/manifests/{ref.tag}"


class InfraLink(BaseOperatorLink):
    name: ClassVar[str]
    part: ClassVar[str]

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        url = XCom.get_value(key=KEY_PREFIX + self.part, ti_key=ti_key)
        return url if isinstance(url, str) else ""


class ImageLink(InfraLink):
    name = "Image"
    part = "image"
