"""What every kind that runs images does in `prepare`: find the image of the call's
environment, build (and push) it if missing, and show it as the task's Image link."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_infra.errors import InfraEnvironmentError
from airflow_infra.targets.contract import Call

if TYPE_CHECKING:
    from airflow_infra.config import InfraConfig


def prepare_image(call: Call, config: InfraConfig) -> str:
    from airflow_infra.images.service import ensure_image, plan_image
    from airflow_infra.links import image_url

    plan = plan_image(call.environment, call.requirements_text, config)
    try:
        built = ensure_image(plan, config, lambda line: call.log.info("[build] %s", line))
    except InfraEnvironmentError as exc:
        raise InfraEnvironmentError(f"{call.where}: {exc}") from None
    call.log.info("image %s (%s)", plan.reference, "built now" if built else "present")
    call.publish_link("image", image_url(plan.reference, config.image_url))
    return plan.reference
