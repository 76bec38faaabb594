"""`builder: daemonless`: the image assembled on the host and pushed over the registry's API.

No Docker engine: the base image is read from the registry (its manifest and config only;
its layers are mounted from its repository or already there, never downloaded), the
packages are installed with uv on the host, and the image is

    base layers | venv skeleton | one layer per distribution, largest first | runtime

so an environment that adds one package uploads that package's layer and a new config
and manifest, and environments sharing their large packages share a layer prefix (what a
node already pulled for a sibling it does not pull again). Each finished layer is cached
on disk under a key of everything that decides its bytes; a build of cached packages is
assembly and upload only. Blobs go first, the manifest (which makes the tag exist) last,
so a failed push never leaves a tag pointing at a partial image.

A cold build is a pipeline: modules compile largest distribution first, and each
distribution's layer is written, then uploaded, while the next ones compile (on two cores,
compilation was most of the time; compression and upload now hide behind it).
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from airflow_infra.envbuild import RECIPE_VERSION
from airflow_infra.errors import InfraConfigError, InfraEnvironmentError
from airflow_infra.images.daemonless import install
from airflow_infra.images.daemonless.layers import COMPRESSION, Entry, Layer, LayerCache, read_entries
from airflow_infra.images.daemonless.pushing import BlobPusher, finish_push, mount_base
from airflow_infra.images.daemonless.registry_push import DOCKER_MANIFEST, OCI_MANIFEST, Blob, RegistryClient
from airflow_infra.images.daemonless.timing import Stopwatch
from airflow_infra.images.recipe import RUNTIME_PATH, VENV, ImageRecipe
from airflow_infra.images.registry import Credentials, ImageRef

Log = Callable[[str], None]

# Bump when the bytes of a layer change for the same inputs (paths, modes, compression, ...).
LAYOUT_VERSION = "2"
# Layers of the whole image, the base's included. overlay2 refuses images above 125
# (apache-airflow alone resolves to 130 distributions): beyond this, the smallest
# distributions share one layer.
MAX_LAYERS = 100
EPOCH = "1970-01-01T00:00:00Z"
LABEL = "org.airflow-infra.content-hash"
MEDIA = {
    DOCKER_MANIFEST: ("application/vnd.docker.container.image.v1+json", "application/vnd.docker.image.rootfs.diff.tar.gzip"),
    OCI_MANIFEST: ("application/vnd.oci.image.config.v1+json", "application/vnd.oci.image.layer.v1.tar+gzip"),
}
# Layers written at once: ISA-L and hashing release the GIL, tarfile's bookkeeping does not.
LAYER_THREADS = 2


def layer_key(*parts: object) -> str:
    blob = json.dumps([LAYOUT_VERSION, RECIPE_VERSION, COMPRESSION, VENV, *parts], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class DaemonlessBuilder:
    def __init__(self, cache_dir: Path | None = None):
        if cache_dir is None:
            from airflow_infra.config import layer_cache_dir

            cache_dir = layer_cache_dir()
        self.cache = LayerCache(cache_dir)

    def publish(self, recipe: ImageRecipe, reference: str, log: Log, *, registry: bool, credentials: Credentials | None) -> None:
        if not registry:
            raise InfraConfigError("builder 'daemonless' pushes straight to a registry: set `registry` in infra.yaml")
        if recipe.apt_packages:
            raise InfraEnvironmentError(
                f"builder 'daemonless' cannot install apt_packages {list(recipe.apt_packages)} (that needs a container "
                "to run apt in): use builder: docker, or a base_image that already has them"
            )
        target = ImageRef.parse(reference)
        base = _base_ref(recipe.base_image, target.host)
        client = RegistryClient(target.host, credentials)
        started = time.monotonic()
        base_manifest, media_type = client.manifest(base.repository, base.tag)
        if media_type not in MEDIA:
            raise InfraEnvironmentError(f"{recipe.base_image} has a manifest of type {media_type!r}, which this builder cannot extend")
        base_config = json.loads(client.blob_bytes(base.repository, base_manifest["config"]["digest"]))
        _check_base_python(base_config, recipe)
        own_budget = MAX_LAYERS - len(base_manifest["layers"])
        watch = Stopwatch()
        with BlobPusher(client, target, self.cache, watch) as pusher:
            mounted = mount_base(client, base, base_manifest, target.repository)
            layers = self.layers(recipe, own_budget, log, watch, ready=pusher.submit_layer)
            config_blob, manifest = image_manifest(extend_config(base_config, recipe, layers), base_manifest, media_type, layers)
            log(f"assembled {len(layers)} layers on {len(base_manifest['layers'])} of the base in {time.monotonic() - started:.1f}s")
            with watch.phase("push"):
                finish_push(pusher, layers, config_blob, manifest, mounted, log)
        log(f"timings: {watch.summary()}")

    def layers(
        self, recipe: ImageRecipe, own_budget: int, log: Log, watch: Stopwatch, ready: Callable[[Layer], None] | None = None
    ) -> list[Layer]:
        """The skeleton, the distributions' layers (cached or made now) and the runtime's.
        `ready` gets each distribution's layer as soon as it is there (to upload it)."""
        python_exe = install.interpreter(recipe.python)
        with watch.phase("resolve"):
            pins = install.resolve(recipe.requirements, python_exe, log)
        budget = own_budget - 2  # the skeleton and the runtime
        if budget < 1:
            raise InfraEnvironmentError(f"the base image has {MAX_LAYERS - own_budget} layers: no room left under {MAX_LAYERS}")
        if len(pins) > budget:
            ready = None  # the smallest will share a layer: send only the layers the image holds
        platform = sysconfig.get_platform()
        keys = {pin.name: layer_key("dist", recipe.python, platform, pin.line, pin.hashes) for pin in pins}
        cached = {pin.name: self.cache.get(keys[pin.name]) for pin in pins}
        missing = {pin.name: pin for pin in pins if cached[pin.name] is None}
        log(f"{len(pins) - len(missing)} of {len(pins)} distribution layers cached")
        for layer in cached.values():
            if layer is not None and ready is not None:
                ready(layer)
        if missing:
            cached.update(self._made(missing, keys, recipe.python, python_exe, log, watch, ready))
        dist_layers = sorted((layer for layer in cached.values() if layer is not None), key=lambda l: (-l.size, l.name))
        if len(dist_layers) > budget:
            kept, small = dist_layers[: budget - 1], dist_layers[budget - 1 :]
            dist_layers = [*kept, self._merged(small)]
            log(f"{len(small)} smallest distributions share one layer (at most {MAX_LAYERS} layers per image)")
        return [self._skeleton(recipe.python), *dist_layers, self._runtime(recipe)]

    def _made(
        self,
        missing: dict[str, install.Pin],
        keys: dict[str, str],
        python: str,
        python_exe: str,
        log: Log,
        watch: Stopwatch,
        ready: Callable[[Layer], None] | None,
    ) -> dict[str, Layer]:
        """Install the missing distributions; each one's layer is written (and handed to
        `ready`) while the next ones byte-compile, largest first."""

        def make(dist: install.Dist) -> Layer:
            layer = self._dist_layer(missing[dist.name], dist, keys[dist.name], watch)
            dist.entries.clear()  # its .pyc bytes are held until its layer is written, no longer
            if ready is not None:
                ready(layer)
            return layer

        staging = tempfile.TemporaryDirectory(prefix="airflow-infra-stage-")
        try:
            dists = install.install(list(missing.values()), python, python_exe, Path(staging.name), log, watch)
            largest_first = sorted(dists.values(), key=lambda dist: (-dist.unpacked, dist.name))
            with ThreadPoolExecutor(LAYER_THREADS, thread_name_prefix="layer") as pool:
                with watch.phase("compile"):
                    made = {dist.name: pool.submit(make, dist) for dist in install.compiled(python_exe, largest_first)}
                with watch.phase("layers"):  # what is left to write once everything compiled
                    return {name: future.result() for name, future in made.items()}
        finally:
            # Unlinking thousands of staged files takes about a second on a busy disk, and the
            # image does not wait for it: it goes on in the background (a non-daemon thread:
            # the interpreter lets it finish before it exits).
            threading.Thread(target=staging.cleanup, name="staging-cleanup").start()

    def _dist_layer(self, pin: install.Pin, dist: install.Dist, key: str, watch: Stopwatch) -> Layer:
        # The name goes into the image's history: never a URL (it may carry credentials).
        name = pin.line if "@" not in pin.line and len(pin.line) < 100 else pin.name
        # A pin without hashes (a local path or URL) may change under the same name: not reused.
        cache = self.cache if pin.hashes else LayerCache(self.cache.root / "uncached")
        return cache.put(key, dist.entries, name, watch)

    def _merged(self, layers: list[Layer]) -> Layer:
        key = layer_key("merged", [layer.digest for layer in layers])
        found = self.cache.get(key)
        if found:
            return found
        entries = {entry.path: entry for layer in layers for entry in read_entries(layer)}
        return self.cache.put(key, entries.values(), "+".join(sorted(layer.name.split("==")[0] for layer in layers)))

    def _skeleton(self, python: str) -> Layer:
        """The venv itself: its interpreter links to the base's /usr/bin/python3."""
        key = layer_key("skeleton", python)
        found = self.cache.get(key)
        if found:
            return found
        cfg = f"home = /usr/bin\nimplementation = CPython\nversion_info = {python}\ninclude-system-site-packages = false\n"
        entries = [
            Entry(f"{VENV}/pyvenv.cfg", data=cfg.encode()),
            Entry(f"{VENV}/bin/python", symlink="/usr/bin/python3"),
            Entry(f"{VENV}/bin/python3", symlink="python"),
            Entry(f"{VENV}/bin/python{python}", symlink="python"),
            Entry(f"{VENV}/lib64", symlink="lib"),
            Entry(install.site_packages(python), directory=True),
        ]
        return self.cache.put(key, entries, "venv")

    def _runtime(self, recipe: ImageRecipe) -> Layer:
        """Last: the runtime (and the extra CA certificates), the same for every environment."""
        runtime = Path(recipe.files["runtime.py"]).read_bytes()
        entries = [Entry(RUNTIME_PATH, data=runtime)]
        if recipe.ca_certificates:
            entries.append(Entry("/usr/local/share/ca-certificates/airflow-infra-extra.crt", data=recipe.ca_certificates))
        key = layer_key("runtime", hashlib.sha256(runtime).hexdigest(), hashlib.sha256(recipe.ca_certificates).hexdigest())
        return self.cache.get(key) or self.cache.put(key, entries, "runtime")


def extend_config(base: dict, recipe: ImageRecipe, layers: list[Layer]) -> dict:
    """The base's image config with what the docker recipe's ENV/ENTRYPOINT/LABEL lines set."""
    config = {k: v for k, v in base.items() if k not in ("container", "container_config", "docker_version")}
    run = dict(config.get("config") or {})
    env = dict(item.split("=", 1) for item in run.get("Env") or [])
    env.update(
        {
            "DEBIAN_FRONTEND": "noninteractive",
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
            "PATH": f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        }
    )
    run["Env"] = [f"{k}={v}" for k, v in env.items()]
    run["Entrypoint"] = [f"{VENV}/bin/python", "-u", "-P", RUNTIME_PATH]
    run["Cmd"] = None  # as in a Dockerfile: a new ENTRYPOINT drops the base's CMD
    run["Labels"] = {**(run.get("Labels") or {}), LABEL: recipe.content_hash}
    config["config"] = run
    config["created"] = EPOCH
    config["rootfs"] = {"type": "layers", "diff_ids": [*base["rootfs"]["diff_ids"], *(l.diff_id for l in layers)]}
    config["history"] = [
        *(base.get("history") or []),
        *({"created": EPOCH, "created_by": f"airflow-infra daemonless: {layer.name}"} for layer in layers),
    ]
    return config


def image_manifest(config: dict, base_manifest: dict, media_type: str, layers: list[Layer]) -> tuple[Blob, dict]:
    """The config as a blob, and the manifest: the base's layers, then ours."""
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_media, layer_media = MEDIA[media_type]
    config_blob = Blob("sha256:" + hashlib.sha256(config_bytes).hexdigest(), len(config_bytes), data=config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_media, "size": config_blob.size, "digest": config_blob.digest},
        "layers": [*base_manifest["layers"], *({"mediaType": layer_media, "size": l.size, "digest": l.digest} for l in layers)],
    }
    return config_blob, manifest


def _base_ref(base_image: str, host: str) -> ImageRef:
    try:
        base = ImageRef.parse(base_image)
    except ValueError:
        base = None
    if base is None or base.host != host:
        raise InfraConfigError(
            f"builder 'daemonless' reads the base image from the registry it pushes to ({host}); base_image "
            f"{base_image!r} is not there. Push it (e.g. `docker tag` + `docker push`; dev/push-base-image.sh) "
            f"and set base_image: {host}/<repository>:<tag>"
        )
    return base


def _check_base_python(base_config: dict, recipe: ImageRecipe) -> None:
    """The builder cannot run the base's interpreter; an image that states its version is checked."""
    env = dict(item.split("=", 1) for item in (base_config.get("config") or {}).get("Env") or [])
    stated = env.get("PYTHON_VERSION")
    if stated and ".".join(stated.split(".")[:2]) != recipe.python:
        raise InfraEnvironmentError(f"base image {recipe.base_image} has Python {stated}, the workers run {recipe.python}")
