"""Checks the OCI image layout deploy/image/build.py wrote and unpacks its file system:
every blob's digest and size as its descriptor says, a config that runs as a non-root
user, and files no one but root may write (so the daemon's user cannot change the code it
runs: its plugin folder check passes).
Usage: image.py OCI_LAYOUT_FOLDER ROOTFS_FOLDER"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

layout, rootfs = sys.argv[1:3]


def blob(descriptor):
    algorithm, digest = descriptor["digest"].split(":")
    with open(os.path.join(layout, "blobs", algorithm, digest), "rb") as f:
        data = f.read()
    assert hashlib.sha256(data).hexdigest() == digest, descriptor
    assert len(data) == descriptor["size"], descriptor
    return data


with open(os.path.join(layout, "oci-layout")) as f:
    assert json.load(f)["imageLayoutVersion"] == "1.0.0"
with open(os.path.join(layout, "index.json")) as f:
    index = json.load(f)
(entry,) = index["manifests"]
manifest = json.loads(blob(entry))
assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
config = json.loads(blob(manifest["config"]))
(layer_descriptor,) = manifest["layers"]
layer = gzip.decompress(blob(layer_descriptor))
assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
assert config["config"]["User"] == "65532:65532", config["config"]
assert config["config"]["Entrypoint"] == ["/usr/local/bin/switchyard"]
names = []
with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
    for member in tar.getmembers():
        names.append(member.name)
        assert member.uid == 0 and member.gid == 0, member.name
        writable = member.mode & 0o022
        assert not writable or member.name == "tmp", "%s is mode %o" % (member.name, member.mode)
    tar.extractall(rootfs, filter="tar")
for needed in ["usr/local/bin/switchyard", "etc/passwd",
               "usr/lib/switchyard/plugins/libswitchyard_websocket.so"]:
    assert needed in names, needed
assert not any(n.endswith("/sh") or n == "bin/sh" for n in names), "no shell in the image"
print("image: %s, %d files, %d KiB compressed; layout, digests and owners checked"
      % (entry["digest"][:19], len(names), layer_descriptor["size"] // 1024))
