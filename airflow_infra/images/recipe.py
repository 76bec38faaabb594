"""A task's environment as a deterministic Dockerfile and build context, tagged by content hash.

    FROM <base>                      Debian + Python 3 of the workers' major.minor
    [extra CA certificates]          builds behind a TLS-intercepting proxy
    [apt-get install <apt_packages>]
    uv venv + uv pip install -r requirements.txt   declared packages + the runtime's own
    runtime.py                       the entrypoint; no Airflow, no user code

Every input that decides the image (base, Python, apt and pip packages, requirements file
content, the runtime's code, uv's and cloudpickle's versions, extra certificates, recipe
version) goes into the tag, so equal declarations share one image across tasks and DAGs
and a code change never rebuilds. Only validated values reach the Dockerfile: package
names match Debian's grammar, requirements go in a file, never into a RUN line.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from airflow_infra import runtime
from airflow_infra.envbuild import RECIPE_VERSION
from airflow_infra.errors import InfraSpecError
from airflow_infra.spec import Environment

REPOSITORY = "airflow-infra-env"
VENV = "/opt/airflow-infra/venv"
RUNTIME_PATH = "/opt/airflow-infra/runtime.py"


@dataclass(frozen=True)
class ImageRecipe:
    base_image: str
    python: str
    apt_packages: tuple[str, ...]
    requirements: str  # the requirements.txt baked into the image
    ca_certificates: bytes = b""
    # Build-context files by path (uv's binary is large: read only when building).
    files: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for part in (
            RECIPE_VERSION,
            self.base_image,
            self.python,
            "\n".join(self.apt_packages),
            self.requirements,
            hashlib.sha256(self.ca_certificates).hexdigest(),
            hashlib.sha256(Path(self.files["runtime.py"]).read_bytes()).hexdigest(),
            _uv_version(),
        ):
            digest.update(part.encode() + b"\0")
        return digest.hexdigest()

    @property
    def tag(self) -> str:
        return self.content_hash[:24]

    def reference(self, registry: str | None) -> str:
        repository = f"{registry.rstrip('/')}/{REPOSITORY}" if registry else REPOSITORY
        return f"{repository}:{self.tag}"

    def dockerfile(self) -> str:
        major_minor = tuple(int(p) for p in self.python.split("."))
        lines = [
            f"# airflow-infra image recipe {RECIPE_VERSION}; content hash {self.content_hash}",
            f"FROM {self.base_image}",
            "ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 PYTHONUNBUFFERED=1 "
            "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
        ]
        if self.ca_certificates:
            lines += [
                "COPY extra-ca.crt /usr/local/share/ca-certificates/airflow-infra-extra.crt",
                "RUN update-ca-certificates >/dev/null 2>&1",
            ]
        if self.apt_packages:
            lines.append(
                "RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends "
                + " ".join(self.apt_packages)
                + " >/dev/null && rm -rf /var/lib/apt/lists/*"
            )
        lines += [
            # The function travels as bytecode: the image's Python must be the workers'.
            f"RUN python3 -c 'import sys; v = sys.version_info[:2]; assert v == {major_minor!r}, "
            f"f\"base image has Python {{v}}, the workers run {self.python}\"'",
            "COPY uv /usr/local/bin/uv",
            "COPY requirements.txt /opt/airflow-infra/requirements.txt",
            # Bytecode in the layer: each call is a new container, which would otherwise
            # compile every module it imports from source again (as the daemonless builder does).
            f"RUN uv venv --quiet --python /usr/bin/python3 {VENV} && "
            f"uv pip install --quiet --no-cache --compile-bytecode --python {VENV}/bin/python -r /opt/airflow-infra/requirements.txt",
            f"COPY runtime.py {RUNTIME_PATH}",
            f"ENV PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            f'ENTRYPOINT ["{VENV}/bin/python", "-u", "-P", "{RUNTIME_PATH}"]',
        ]
        return "\n".join(lines) + "\n"

    def context_tar(self) -> bytes:
        """The build context: Dockerfile, uv, requirements.txt, runtime.py, certificates."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            members = {"Dockerfile": self.dockerfile().encode(), "requirements.txt": self.requirements.encode()}
            members.update({name: Path(path).read_bytes() for name, path in self.files.items()})
            if self.ca_certificates:
                members["extra-ca.crt"] = self.ca_certificates
            for name, data in sorted(members.items()):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o755 if name == "uv" else 0o644
                tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()


def _uv_version() -> str:
    try:
        from importlib.metadata import version

        return version("uv")
    except Exception:  # noqa: BLE001 - uv found on PATH instead of as a package
        return "unknown"


def check_requirements_text(text: str) -> None:
    """Requirement lines only: options (`--index-url`, `-r`, `-e`, ...) would reach the build
    (and be baked into the image) unchecked; indexes come from the build host's configuration."""
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("-"):
            option = line.strip().split()[0].split("=")[0]
            raise InfraSpecError(
                f"requirements file, line {number}: the option {option!r} is not accepted; give one requirement "
                "per line (package indexes come from the build host's pip/uv configuration)"
            )


def make_recipe(
    environment: Environment,
    *,
    requirements_text: str | None,
    base_image: str,
    ca_certificate_files: list[str] | tuple[str, ...] = (),
    extra_requirements: list[str] | tuple[str, ...] = (),
) -> ImageRecipe:
    from airflow_infra.envbuild import runtime_requirements, uv_binary

    lines = [*runtime_requirements(), *extra_requirements, *environment.packages]
    if requirements_text:
        check_requirements_text(requirements_text)
        lines += ["", "# from the task's requirements file", requirements_text.strip()]
    certificates = b"".join(Path(path).read_bytes().rstrip() + b"\n" for path in ca_certificate_files)
    return ImageRecipe(
        base_image=environment.base_image or base_image,
        python=environment.python_version,
        apt_packages=environment.apt_packages,
        requirements="\n".join(lines) + "\n",
        ca_certificates=certificates,
        files={"uv": uv_binary(), "runtime.py": runtime.__file__},
    )
