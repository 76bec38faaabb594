"""`builder: daemonless`: images assembled on the host and pushed over the registry's API.

Against the real registry (127.0.0.1:5000) and the real Docker engine, which only runs the
images here: building and pushing never touch it (docker.from_env is made to fail).
"""

from __future__ import annotations

import gzip
import http.server
import io
import itertools
import json
import os
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from airflow_infra import Environment
from airflow_infra.client import Client
from airflow_infra.codeship import dumps_call
from airflow_infra.config import InfraConfig
from airflow_infra.errors import InfraConfigError, InfraEnvironmentError, InfraSpecError
from airflow_infra.images.daemonless import builder as daemonless
from airflow_infra.images.daemonless.layers import Entry, write_layer
from airflow_infra.images.daemonless.registry_push import RegistryClient
from airflow_infra.images.recipe import make_recipe
from airflow_infra.images.service import ensure_image, image_exists, plan_image
from tests.dagrun import REPO

BASE = "127.0.0.1:5000/airflow-infra/base:bookworm"
_namespaces = itertools.count()


# --- layers on their own -----------------------------------------------------------------


def test_layers_are_byte_identical_whatever_the_files_metadata(tmp_path):
    def make(folder: Path, mode: int, mtime: int) -> Path:
        folder.mkdir()
        for name in ("b.py", "a.py"):
            (folder / name).write_text(f"# {name}\n")
            (folder / name).chmod(mode)
            os.utime(folder / name, (mtime, mtime))
        return folder

    layers = []
    for i, (mode, mtime) in enumerate([(0o600, 1_000_000), (0o664, 2_000_000)]):
        src = make(tmp_path / f"src{i}", mode, mtime)
        entries = [Entry(f"/opt/x/{p.name}", source=p) for p in sorted(src.iterdir(), reverse=bool(i))]
        layers.append(write_layer(entries, tmp_path / f"layer{i}.tar.gz", "x"))
    assert layers[0].digest == layers[1].digest and layers[0].diff_id == layers[1].diff_id
    raw = layers[0].path.read_bytes()
    assert raw[4:8] == b"\0\0\0\0" and not raw[3] & 0x08  # gzip: mtime 0, no file name
    with tarfile.open(layers[0].path) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["opt", "opt/x", "opt/x/a.py", "opt/x/b.py"]  # ancestors, sorted
    assert {(m.uid, m.gid, m.mtime) for m in members} == {(0, 0, 0)}
    assert [oct(m.mode) for m in members] == ["0o755", "0o755", "0o644", "0o644"]


def _wheel(folder: Path, name: str, modules: dict[str, str]) -> Path:
    wheel = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in modules.items():
            zf.writestr(path, text)
        zf.writestr(f"{name}-1.0.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        zf.writestr(f"{name}-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{name}-1.0.dist-info/RECORD", "")
    return wheel


@pytest.mark.integration
def test_modules_compile_in_memory_to_final_paths_deterministically(tmp_path):
    """Unchecked-hash .pyc of the image's Python, naming the final path; not for test suites
    nor for what does not compile; the same bytes whatever the order of the work."""
    import importlib.util
    import marshal
    import sys

    from airflow_infra.images.daemonless import install
    from airflow_infra.images.daemonless.timing import Stopwatch

    wheels = {
        "dlprobe": _wheel(tmp_path, "dlprobe", {
            "dlprobe/__init__.py": "from dlprobe.mod import VALUE\n",
            "dlprobe/mod.py": "VALUE = 'x' * 3\n\ndef f():\n    raise ValueError(VALUE)\n",
            "dlprobe/broken.py": "def (:\n",
            "dlprobe/tests/test_mod.py": "def test():\n    pass\n",
        }),
        "dlother": _wheel(tmp_path, "dlother", {f"dlother/m{i}.py": f"X = {i}\n" for i in range(40)}),
    }
    pins = [install.Pin(f"{name} @ {wheel.as_uri()}", name, ()) for name, wheel in wheels.items()]
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    site = install.site_packages(python)

    def pycs(order: list[str]) -> dict[str, bytes]:
        staging = tmp_path / f"stage-{'-'.join(order)}"
        dists = install.install(pins, python, sys.executable, staging, lambda _: None, Stopwatch())
        assert not any("/tests/" in final for final, _, _ in dists["dlprobe"].compile)
        done = list(install.compiled(sys.executable, [dists[name] for name in order]))
        assert [dist.name for dist in done] == order
        return {e.path: e.data for dist in done for e in dist.entries if e.path.endswith(".pyc")}

    first, second = pycs(["dlprobe", "dlother"]), pycs(["dlother", "dlprobe"])
    assert first == second  # same bytes, whatever the order
    tag = f"cpython-{python.replace('.', '')}"
    probe = {path.removeprefix(f"{site}/") for path in first if "/dlprobe/" in path}
    assert probe == {f"dlprobe/__pycache__/__init__.{tag}.pyc", f"dlprobe/__pycache__/mod.{tag}.pyc"}  # not broken, not tests
    assert len(first) == 2 + 40
    pyc = first[f"{site}/dlprobe/__pycache__/mod.{tag}.pyc"]
    assert pyc[:4] == importlib.util.MAGIC_NUMBER and int.from_bytes(pyc[4:8], "little") == 0b01  # unchecked hash
    source = (b"VALUE = 'x' * 3\n\ndef f():\n    raise ValueError(VALUE)\n")
    assert pyc[8:16] == importlib.util.source_hash(source)
    code = marshal.loads(pyc[16:])
    assert code.co_filename == f"{site}/dlprobe/mod.py"
    namespace: dict = {}
    exec(code, namespace)
    assert namespace["VALUE"] == "xxx"


def test_requirement_options_are_refused():
    for text in ("six\n--index-url https://user:secret@example.invalid/simple\n", "-r other.txt\n", "-e ./src\n"):
        with pytest.raises(InfraSpecError, match=r"line \d+: the option '-"):
            make_recipe(Environment(), requirements_text=text, base_image=BASE)


def test_daemonless_needs_a_registry():
    with pytest.raises(ValueError, match="daemonless pushes straight to a registry"):
        InfraConfig(builder="daemonless")


# --- against the registry ------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_in_registry(docker_infra) -> str:
    subprocess.run(["bash", str(REPO / "dev" / "push-base-image.sh")], check=True, timeout=600)
    return docker_infra


@pytest.fixture
def config(base_in_registry, tmp_path, monkeypatch):
    """A fresh registry namespace and an empty layer cache per test; Docker made unreachable."""
    import docker

    def no_engine(*args, **kwargs):
        raise AssertionError("the daemonless builder called the Docker engine")

    monkeypatch.setattr(docker, "from_env", no_engine)
    monkeypatch.setenv("AIRFLOW__INFRA__LAYER_CACHE_DIR", str(tmp_path / "layers"))
    registry = f"{base_in_registry}-dl{next(_namespaces)}"
    return InfraConfig(registry=registry, builder="daemonless", base_image=BASE)


_REAL_UPLOAD = RegistryClient.upload_blob


class Uploads:
    """Records each blob the builder uploads (the real upload still happens); `fail` makes the
    upload with that index (0-based, in the order they start) fail instead."""

    def __init__(self, monkeypatch, fail: int | None = None):
        self.digests: list[str] = []
        self.failed: list[str] = []
        started = itertools.count()
        real = _REAL_UPLOAD  # not an earlier test double's

        def upload(client, repository, blob):
            if next(started) == fail:
                self.failed.append(blob.digest)
                raise InfraEnvironmentError(f"injected failure uploading {blob.digest}")
            real(client, repository, blob)
            self.digests.append(blob.digest)

        monkeypatch.setattr(RegistryClient, "upload_blob", upload)


def build(config: InfraConfig, packages: list[str], logs: list[str] | None = None):
    plan = plan_image(Environment(packages=packages), None, config)
    assert ensure_image(plan, config, (logs if logs is not None else []).append) is True
    return plan


def manifest_of(reference: str) -> dict:
    host, _, rest = reference.partition("/")
    repository, _, tag = rest.rpartition(":")
    return RegistryClient(host, None).manifest(repository, tag)[0]


def layer_digests(reference: str) -> list[str]:
    return [layer["digest"] for layer in manifest_of(reference)["layers"]]


def run_in_image(reference: str, fn, tmp_path: Path) -> dict:
    """The image's own entrypoint (the runtime) runs a call as uid 1000, as a docker target would."""
    folder = tmp_path / "call"
    folder.mkdir()
    (folder / "call.pkl").write_bytes(dumps_call(fn, [], {}, roots=[], xcom_max_bytes=1 << 20)[0])
    folder.chmod(0o777)
    proc = subprocess.run(
        ["docker", "run", "--rm", "--network", "host", "--user", "1000:1000", "-v", f"{folder}:/call",
         reference, "/call/call.pkl", "/call/out"],
        capture_output=True, text=True, timeout=300,
    )
    outcome = json.loads((folder / "out" / "outcome.json").read_text())
    assert outcome["ok"], (outcome, proc.stderr[-2000:])
    return pickle_load(folder / "out" / "out-0.pkl")


def pickle_load(path: Path):
    import pickle

    return pickle.loads(path.read_bytes())


@pytest.mark.integration
def test_builds_pushes_and_runs_as_uid_1000_without_docker(config, tmp_path):
    logs: list[str] = []
    plan = build(config, ["tqdm==4.66.4"], logs)
    assert any("blobs uploaded" in line and "1 base layers mounted" in line for line in logs), logs
    assert image_exists(plan.reference, config)  # one HEAD, no engine
    assert ensure_image(plan, config, logs.append) is False
    manifest = manifest_of(plan.reference)
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    # base, venv skeleton, tqdm, cloudpickle, runtime: one layer per distribution
    assert len(manifest["layers"]) == 5

    def inspect() -> dict:
        import importlib.util
        import os
        import subprocess
        import sys
        import traceback

        import tqdm
        import tqdm.std

        cached = importlib.util.cache_from_source(tqdm.std.__file__)
        with open(cached, "rb") as pyc:
            flags = int.from_bytes(pyc.read(8)[4:8], "little")
        try:
            tqdm.std.tqdm(total="not a number")
        except Exception:
            frames = [frame.filename for frame in traceback.extract_tb(sys.exc_info()[2])]
        with open(os.path.join(sys.prefix, "bin", "tqdm")) as script:
            shebang = script.readline().strip()
        version = subprocess.run(["tqdm", "--version"], capture_output=True, text=True).stdout.strip()
        return {"uid": os.getuid(), "prefix": sys.prefix, "flags": flags, "frames": frames, "shebang": shebang,
                "code_file": tqdm.std.__spec__.loader.get_code("tqdm.std").co_filename, "version": version,
                "python": sys.version_info[:2], "pyc_exists": os.path.exists(cached)}

    got = run_in_image(plan.reference, inspect, tmp_path)
    site = "/opt/airflow-infra/venv/lib/python3.11/site-packages"
    assert got["uid"] == 1000 and got["prefix"] == "/opt/airflow-infra/venv" and got["python"] == (3, 11)
    assert got["pyc_exists"] and got["flags"] == 0b01  # hash-based, source not checked: valid whatever the mtimes
    assert got["code_file"] == f"{site}/tqdm/std.py"  # compiled with the final path
    assert any(frame.startswith(f"{site}/tqdm/") for frame in got["frames"]), got["frames"]
    assert got["shebang"] == "#!/opt/airflow-infra/venv/bin/python" and got["version"] == "4.66.4"


@pytest.mark.integration
def test_one_added_package_uploads_only_its_layer_and_the_config(config, monkeypatch):
    first = build(config, ["six==1.16.0"])
    uploads = Uploads(monkeypatch)
    second = build(config, ["six==1.16.0", "tqdm==4.66.4"])
    new_layers = set(layer_digests(second.reference)) - set(layer_digests(first.reference))
    assert len(new_layers) == 1  # tqdm's
    config_digest = manifest_of(second.reference)["config"]["digest"]
    assert sorted(uploads.digests) == sorted([*new_layers, config_digest])


@pytest.mark.integration
def test_sibling_environments_share_blobs_and_a_prefix(config, monkeypatch):
    a = build(config, ["tqdm==4.66.4", "six==1.16.0"])
    uploads = Uploads(monkeypatch)
    b = build(config, ["tqdm==4.66.4", "six==1.17.0"])
    layers_a, layers_b = layer_digests(a.reference), layer_digests(b.reference)
    assert layers_a[:3] == layers_b[:3]  # base, venv, tqdm (the largest): one chain on a node
    assert layers_a[-1] == layers_b[-1]  # the runtime
    assert len(set(layers_a) & set(layers_b)) == len(layers_a) - 1  # all but six's
    assert len(uploads.digests) == 2  # six 1.17's layer and the config


@pytest.mark.integration
def test_a_failed_push_leaves_no_tag(config, monkeypatch):
    plan = plan_image(Environment(packages=["tqdm==4.66.4"]), None, config)
    failing = Uploads(monkeypatch, fail=1)
    with pytest.raises(InfraEnvironmentError, match="injected failure"):
        ensure_image(plan, config, lambda _: None)
    assert len(failing.failed) == 1 and failing.digests  # one blob failed, others got through
    assert not image_exists(plan.reference, config)
    uploads = Uploads(monkeypatch)
    assert ensure_image(plan, config, lambda _: None) is True  # a retry completes it
    manifest = manifest_of(plan.reference)
    ours = {layer["digest"] for layer in manifest["layers"][1:]}
    # Only what was missing: the failed blob and those the first attempt never started, and the config.
    assert set(uploads.digests) == (ours - set(failing.digests)) | {manifest["config"]["digest"]}
    assert failing.failed[0] in uploads.digests and len(uploads.digests) == len(set(uploads.digests))
    assert image_exists(plan.reference, config)


@pytest.mark.integration
def test_layer_budget_merges_the_smallest_distributions(config, monkeypatch, tmp_path):
    monkeypatch.setattr(daemonless, "MAX_LAYERS", 5)
    logs: list[str] = []
    uploads = Uploads(monkeypatch)
    plan = build(config, ["tqdm==4.66.4", "six==1.16.0"], logs)  # 3 distributions with cloudpickle
    assert len(layer_digests(plan.reference)) == 5
    assert any("2 smallest distributions share one layer" in line for line in logs)
    # Layers go up as they are written, except when some will be merged: then only the image's.
    manifest = manifest_of(plan.reference)
    assert sorted(uploads.digests) == sorted([*layer_digests(plan.reference)[1:], manifest["config"]["digest"]])

    def imports() -> list[str]:
        import cloudpickle
        import six
        import tqdm

        return [tqdm.__version__, six.__version__, cloudpickle.__name__]

    assert run_in_image(plan.reference, imports, tmp_path)[:2] == ["4.66.4", "1.16.0"]


@pytest.mark.integration
def test_warm_rebuild_is_assembly_only_and_same_digests(config, monkeypatch, tmp_path):
    logs: list[str] = []
    first = build(config, ["tqdm==4.66.4"], logs)
    again = config.model_copy(update={"registry": config.registry + "-again"})
    logs2: list[str] = []
    uploads = Uploads(monkeypatch)
    second = build(again, ["tqdm==4.66.4"], logs2)
    assert any("2 of 2 distribution layers cached" in line for line in logs2), logs2
    assert not any(line.startswith("installed") for line in logs2)
    assert layer_digests(first.reference) == layer_digests(second.reference)
    # Into another repository every blob (the config too: the same image) is mounted from the first.
    assert uploads.digests == [] and any("0 blobs uploaded" in line for line in logs2)
    # An empty layer cache makes the same bytes again.
    monkeypatch.setenv("AIRFLOW__INFRA__LAYER_CACHE_DIR", str(tmp_path / "other-layers"))
    third = build(config.model_copy(update={"registry": config.registry + "-third"}), ["tqdm==4.66.4"])
    assert layer_digests(third.reference) == layer_digests(first.reference)


@pytest.mark.integration
def test_credentials_in_a_package_url_reach_no_layer(config, tmp_path):
    wheel = tmp_path / "wheels" / "infra_probe-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("infra_probe.py", "VALUE = 1\n")
        zf.writestr("infra_probe-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: infra-probe\nVersion: 1.0\n")
        zf.writestr("infra_probe-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("infra_probe-1.0.dist-info/RECORD", "")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(wheel.parent), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://someone:s3cr3t-t0ken@127.0.0.1:{server.server_port}/{wheel.name}"
        with pytest.raises(ValueError, match="credentials in its URL"):  # a declaration never gets this far
            Environment(packages=[f"infra-probe @ {url}"])
        # The builder's own defence, for a requirement that did (a plug-in's, say): built
        # from an unvalidated environment, the credentials still reach no layer.
        plan = plan_image(Environment.model_construct(packages=(f"infra-probe @ {url}",)), None, config)
        assert ensure_image(plan, config, lambda line: None) is True
    finally:
        server.shutdown()
    host, _, rest = plan.reference.partition("/")
    repository = rest.rpartition(":")[0]
    client = RegistryClient(host, None)
    manifest = manifest_of(plan.reference)
    blobs = [client.blob_bytes(repository, manifest["config"]["digest"])]
    blobs += [gzip.decompress(client.blob_bytes(repository, layer["digest"])) for layer in manifest["layers"][1:]]
    assert not any(b"s3cr3t-t0ken" in blob for blob in blobs)
    probe = [blob for blob in blobs if b"infra_probe.py" in blob]
    assert len(probe) == 1 and b"direct_url.json" in probe[0]  # the URL is there, without its credentials
    with tarfile.open(fileobj=io.BytesIO(probe[0])) as tar:
        names = tar.getnames()
        direct = json.load(tar.extractfile(next(n for n in names if n.endswith("direct_url.json"))))
    assert direct["url"] == f"http://127.0.0.1:{server.server_port}/{wheel.name}"


@pytest.mark.integration
def test_clear_errors_for_what_it_cannot_do(config):
    with pytest.raises(InfraEnvironmentError, match="cannot install apt_packages"):
        ensure_image(plan_image(Environment(packages=["six"], apt_packages=["curl"]), None, config), config, print)
    elsewhere = config.model_copy(update={"base_image": "airflow-infra/base:bookworm"})
    with pytest.raises(InfraConfigError, match="base_image 'airflow-infra/base:bookworm' is not there"):
        ensure_image(plan_image(Environment(packages=["six"]), None, elsewhere), elsewhere, print)
    missing = config.model_copy(update={"base_image": "127.0.0.1:5000/airflow-infra/nothing:here"})
    with pytest.raises(InfraEnvironmentError, match="nothing:here does not exist in the registry"):
        ensure_image(plan_image(Environment(packages=["six"]), None, missing), missing, print)


@pytest.mark.integration
def test_a_dag_runs_on_the_docker_target_with_daemonless_images(dags, infra_yaml, base_in_registry):
    registry = f"{base_in_registry}-dldag"
    infra_yaml(f"registry: {registry}\nbuilder: daemonless\nbase_image: {BASE}\ntargets:\n  docker: {{kind: docker}}\n")
    run = dags.test("infra_images", env={"AIRFLOW_INFRA_TARGET": "docker"})
    assert run.succeeded, run.output[-3000:]
    assert [run.result(f"a_{i}") for i in range(3)] == ["1.16.0"] * 3
    assert [run.result(f"b_{i}") for i in range(2)] == ["1.17.0"] * 2
    assert "with the 'daemonless' builder" in run.output


@pytest.mark.integration
def test_daemonless_images_run_as_pods(dags, docker_yaml, moto_s3, fake_kube, base_in_registry):
    """Through the real KubernetesPodOperator against the fake Kubernetes API (a test double
    running pods as Docker containers), with the store on moto's S3 (s3fs in the image)."""
    docker_yaml(
        "  k8s: {kind: kubernetes, namespace: ml, startup_check_interval: 1, pass_credentials: true, startup_timeout: 60}\n"
        f"builder: daemonless\nbase_image: {BASE}\nartifacts: {moto_s3}\nrules:\n  - {{target: k8s}}\n",
        namespace="-dlk8s",
    )
    run = dags.test("infra_images")
    assert run.succeeded, run.output[-5000:]
    stored = Client(moto_s3).run("infra_images", run.run_id)
    assert {stored[f"a_{i}"].target for i in range(3)} == {"k8s"}
    assert [stored[f"a_{i}"].result for i in range(3)] == ["1.16.0"] * 3
    assert [stored[f"b_{i}"].result for i in range(2)] == ["1.17.0"] * 2
    assert "with the 'daemonless' builder" in run.output


@pytest.mark.integration
def test_daemonless_images_run_as_batch_jobs(dags, docker_yaml, moto_s3, batch_queue, base_in_registry):
    """Through the real BatchOperator against moto, whose Batch pulls the daemonless-built
    images from the registry and runs each job as a container of them on the engine."""
    docker_yaml(
        f"  gpu: {{kind: batch, job_queue: {batch_queue}, region: us-east-1, pass_credentials: true, poll_interval: 1}}\n"
        f"builder: daemonless\nbase_image: {BASE}\nartifacts: {moto_s3}\nrules:\n  - {{target: gpu}}\n",
        namespace="-dlbatch",
    )
    run = dags.test("infra_images")
    assert run.succeeded, run.output[-5000:]
    stored = Client(moto_s3).run("infra_images", run.run_id)
    assert {stored[f"a_{i}"].target for i in range(3)} | {stored[f"b_{i}"].target for i in range(2)} == {"gpu"}
    assert [stored[f"a_{i}"].result for i in range(3)] == ["1.16.0"] * 3
    assert [stored[f"b_{i}"].result for i in range(2)] == ["1.17.0"] * 2
    assert "with the 'daemonless' builder" in run.output
    # One job definition per image, registered by its first task and reused by the others.
    assert run.output.count("registered job definition") == 2, run.output[-5000:]


@pytest.mark.integration
def test_two_workers_needing_the_same_missing_image_build_it_once(config, tmp_path):
    """Two processes of this machine (two Celery workers, say) reach ensure_image at once:
    one builds, the other waits on the build lock and then finds the image."""
    code = (
        "import sys; from airflow_infra import Environment; from airflow_infra.config import InfraConfig; "
        "from airflow_infra.images.service import ensure_image, plan_image; "
        f"config = InfraConfig(registry={config.registry!r}, builder='daemonless', base_image={BASE!r}); "
        "plan = plan_image(Environment(packages=['six==1.16.0']), None, config); "
        "print('BUILT' if ensure_image(plan, config, lambda line: None) else 'FOUND')"
    )
    env = {**os.environ, "AIRFLOW__INFRA__LAYER_CACHE_DIR": str(tmp_path / "layers")}
    workers = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    answers = []
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
        answers.append(out.strip().splitlines()[-1])
    assert sorted(answers) == ["BUILT", "FOUND"]


@pytest.mark.integration
def test_airflow_infra_build_with_no_docker_engine(infra_yaml, base_in_registry, tmp_path):
    """The CI/CD step on a runner without an engine: `airflow-infra build` with builder: daemonless."""
    registry = f"{base_in_registry}-dlcli"
    infra_yaml(f"registry: {registry}\nbuilder: daemonless\nbase_image: {BASE}\ntargets:\n  docker: {{kind: docker}}\nrules:\n  - {{target: docker}}\n")
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "AIRFLOW__INFRA__LAYER_CACHE_DIR": str(tmp_path / "layers")}
    dag_file = str(REPO / "tests" / "dags" / "infra_images.py")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "airflow_infra.cli", *args, dag_file], capture_output=True, text=True, timeout=900, env=env)

    first = cli("build")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert "images: 2 built, 0 already present, 0 failed" in first.stdout
    plan = cli("plan")
    assert plan.returncode == 0 and plan.stdout.count("(exists)") == 5, plan.stdout
