"""Extra links from an infra task instance to where it ran: its image here; each target
kind's own (its pod, its Batch job) live in the kind's folder and are named by its TargetKind.

Runners record each URL while the call runs (`Call.publish_link`; a call that defers keeps
them in its stored handle); the links hand them to Airflow when it stores them at the end
of the task. Kept free of provider imports: this module loads with the operator at DAG
parse time.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from airflow.sdk import BaseOperatorLink

_ECR = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com\Z")


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
    """A link a runner recorded for `part` while the call ran (Call.publish_link). Airflow
    asks for it when the task ends, in the process that ran it, and stores it as XCom; the
    operator keeps only the links that were recorded, so no empty link is stored."""

    name: ClassVar[str]
    part: ClassVar[str]

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return getattr(operator.operator_extra_links, "recorded", {}).get(self.part, "")


class RecordedLinks(tuple):
    """An operator's links as Airflow reads them when the task ends: only those recorded by
    then. Lazy, because they are recorded while the call runs, after this is set."""

    def __new__(cls, links: tuple[InfraLink, ...], recorded: dict[str, str]) -> RecordedLinks:
        made = super().__new__(cls, links)
        made.recorded = recorded
        return made

    def __iter__(self):
        return iter([link for link in tuple.__iter__(self) if link.part in self.recorded])


class ImageLink(InfraLink):
    name = "Image"
    part = "image"
