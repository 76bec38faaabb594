"""The `daemonless` builder: images assembled on the host and pushed over the registry's
HTTP API, one layer per installed distribution (builder.py), without a Docker engine.

layers.py          deterministic gzipped (ISA-L) tar layers and their on-disk cache
install.py         uv resolves and installs on the host; files split per distribution by RECORD;
                   modules byte-compiled in memory, handed back per distribution
registry_push.py   the registry's API: blobs (check, mount, upload) and manifests
pushing.py         blobs uploaded while the image is still being built; the manifest last
timing.py          where a build's time went (its log line, the benchmark's breakdown)
builder.py         DaemonlessBuilder: the layer order and budget, the image config, the pipeline
"""
