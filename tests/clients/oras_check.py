"""Drive pierone with the oras Python SDK: artifacts, chunked uploads, subject and referrers.

Usage: oras_check.py HOST:PORT WORKDIR. Prints "ORAS OK" when every check passed.
"""

import json
import os
import sys

import oras.client
import oras.oci
import oras.provider

host, work = sys.argv[1], sys.argv[2]
os.chdir(work)

client = oras.client.OrasClient(hostname=host, insecure=True)
registry = oras.provider.Registry(hostname=host, insecure=True)

with open("artifact.txt", "w") as f:
    f.write("an artifact pushed by oras\n")
with open("big.bin", "wb") as f:
    f.write(os.urandom(3 * 1024 * 1024 + 17))

# Plain push, then a chunked one.
client.push(files=["artifact.txt"], target=f"{host}/team/artifacts:v1")
registry.push(files=["big.bin"], target=f"{host}/team/artifacts:v2", do_chunked=True, chunk_size=1024 * 1024)

# Pull both back and compare.
os.makedirs("pulled", exist_ok=True)
paths = client.pull(target=f"{host}/team/artifacts:v1", outdir="pulled")
assert open(paths[0]).read() == "an artifact pushed by oras\n", paths
paths = client.pull(target=f"{host}/team/artifacts:v2", outdir="pulled")
assert open(paths[0], "rb").read() == open("big.bin", "rb").read()

# A signature-like artifact whose subject is v1.
subject_manifest = registry.get_manifest(f"{host}/team/artifacts:v1")
subject = oras.oci.Subject.from_manifest(subject_manifest)
with open("signature.txt", "w") as f:
    f.write("signed\n")
# oras-py takes the config from a file; an empty one with our own media type.
with open("config.json", "w") as f:
    f.write("{}")
resp = registry.push(
    files=["signature.txt"],
    target=f"{host}/team/artifacts:v1-sig",
    subject=subject,
    manifest_config="config.json:application/vnd.example.signature.config",
)
assert resp.headers.get("OCI-Subject") == subject.digest, resp.headers

# Referrers: listed, and filterable by artifactType (the config media type here).
base = f"http://{host}/v2/team/artifacts/referrers/{subject.digest}"
r = registry.session.get(base)
assert r.status_code == 200, r.text
index = r.json()
assert index["mediaType"] == "application/vnd.oci.image.index.v1+json", index
types = [m.get("artifactType") for m in index["manifests"]]
assert types == ["application/vnd.example.signature.config"], types
r = registry.session.get(base, params={"artifactType": "application/x-nothing"})
assert r.json()["manifests"] == [] and r.headers.get("OCI-Filters-Applied") == "artifactType"

# Tag listing with pagination (Link headers).
tags = registry.get_tags(f"{host}/team/artifacts", N=2)
assert tags == ["v1", "v1-sig"], tags
assert sorted(registry.get_tags(f"{host}/team/artifacts")) == ["v1", "v1-sig", "v2"]

print("ORAS OK")
