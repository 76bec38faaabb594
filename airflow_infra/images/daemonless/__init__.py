"""The `daemonless` builder: images assembled on the host and pushed over the registry's
HTTP API, one layer per installed distribution (builder.py), without a Docker engine.

layers.py          deterministic gzipped tar layers and their on-disk cache
install.py         uv resolves and installs on the host; files split per distribution by RECORD
registry_push.py   the registry's API: blobs (check, mount, upload) and manifests
builder.py         DaemonlessBuilder: the layer order and budget, the image config, the push
"""
