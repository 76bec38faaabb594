"""What Airflow's ProvidersManager reads (entry point `apache_airflow_provider`)."""

from __future__ import annotations


def get_provider_info() -> dict:
    from airflow_infra import __version__

    return {
        # Must equal the distribution name, or provider discovery fails for every provider.
        "package-name": "airflow-infra",
        "name": "Airflow Infra",
        "description": "Per-task environments, resources and routing to local, Docker, Kubernetes and AWS Batch.",
        "versions": [__version__],
        "task-decorators": [{"name": "infra", "class-name": "airflow_infra.decorator.infra_task"}],
        "config": {
            "infra": {
                "description": "airflow-infra: where its configuration file and caches live.",
                "options": {
                    "config_file": {
                        "description": "Path of infra.yaml (targets, routing rules, registry, artifact store). "
                        "Empty means $AIRFLOW_HOME/infra.yaml; with no file every task runs on the local target.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/opt/airflow/infra.yaml",
                        "default": "",
                    },
                    "env_cache_dir": {
                        "description": "Where the local target keeps its virtual environments, one per "
                        "environment hash. Empty means $AIRFLOW_HOME/infra/envs.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/var/cache/airflow-infra/envs",
                        "default": "",
                    },
                    "layer_cache_dir": {
                        "description": "Where the daemonless builder keeps finished image layers, one per "
                        "installed distribution. Empty means $AIRFLOW_HOME/infra/layers.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/var/cache/airflow-infra/layers",
                        "default": "",
                    },
                },
            }
        },
    }
