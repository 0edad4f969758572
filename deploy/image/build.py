#!/usr/bin/env python3
"""Builds switchyard's OCI image from the release build, with no base image and no
container runtime: an OCI image layout (a folder, and the same as a tar) written here.

    cargo build --release
    python3 deploy/image/build.py [--out target/image]

The image holds the daemon (/usr/local/bin/switchyard), the reference plugins
(/usr/lib/switchyard/plugins, owned by root and read-only to the daemon's user), the
shared libraries they link to (as `ldd` finds them, nothing else: no shell, no package
manager), and /etc/passwd and /etc/group naming the non-root user it runs as (65532).
Everything is owned by root and written with fixed times, so the same build makes the
same image, byte for byte.

Load it into a runtime or push it with the OCI tools:
    podman load -i target/image/switchyard-oci.tar
    skopeo copy oci:target/image/switchyard-oci:0.1.0 docker://registry.example/switchyard:0.1.0
(deploy/image/Containerfile builds the same image with `docker build` or `podman build`.)
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
USER = 65532
PLUGINS = ["websocket", "tunnel", "h2c", "echo"]
PLUGIN_DIR = "usr/lib/switchyard/plugins"
EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def version():
    with open(os.path.join(ROOT, "Cargo.toml")) as manifest:
        return re.search(r'^version\s*=\s*"([^"]+)"', manifest.read(), re.M).group(1)


def libraries(paths):
    """The shared libraries `paths` load, as the dynamic loader finds them here."""
    found = set()
    for path in paths:
        out = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if match:
                found.add(match.group(1))
    return sorted(found)


def files(release):
    """(path in the image, mode, bytes or None for a folder), sorted."""
    daemon = os.path.join(release, "switchyard")
    plugins = [os.path.join(release, "libswitchyard_%s.so" % p) for p in PLUGINS]
    for path in [daemon] + plugins:
        if not os.path.exists(path):
            raise SystemExit("%s is missing: run `cargo build --release` first" % path)
    entries = {}

    def folder(path):
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            entries.setdefault("/".join(parts[:i]), (0o755, None))

    def add(path, mode, data):
        folder(os.path.dirname(path))
        entries[path] = (mode, data)

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    def stripped(path):
        """The file without its debug sections (line tables: a fifth of the size), its
        symbols kept so that a backtrace still names functions; as it is without strip."""
        if not shutil.which("strip"):
            return read(path)
        out = path + ".image"
        subprocess.run(["strip", "--strip-debug", "-o", out, path], check=True)
        try:
            return read(out)
        finally:
            os.remove(out)

    add("usr/local/bin/switchyard", 0o755, stripped(daemon))
    for source in plugins:
        add("%s/%s" % (PLUGIN_DIR, os.path.basename(source)), 0o644, stripped(source))
    for library in libraries([daemon] + plugins):
        # The file itself under the name the loader asks for (links resolved).
        add(library.lstrip("/"), 0o755, read(os.path.realpath(library)))
    add("etc/passwd", 0o644,
        b"root:x:0:0:root:/root:/sbin/nologin\n"
        b"switchyard:x:%d:%d:switchyard:/nonexistent:/sbin/nologin\n" % (USER, USER))
    add("etc/group", 0o644, b"root:x:0:\nswitchyard:x:%d:\n" % USER)
    add("etc/nsswitch.conf", 0o644, b"hosts: files dns\n")
    folder("tmp")
    entries["tmp"] = (0o1777, None)
    return sorted(entries.items())


def layer(entries):
    """The root file system as a tar (uncompressed), every entry root's with fixed times."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, (mode, data) in entries:
            info = tarfile.TarInfo(path)
            info.mode, info.mtime, info.uid, info.gid = mode, EPOCH, 0, 0
            info.uname = info.gname = "root"
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def blob(out, data, media_type):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(os.path.join(out, "blobs", "sha256", digest[7:]), "wb") as f:
        f.write(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def build(release, out):
    tag = version()
    layout = os.path.join(out, "switchyard-oci")
    shutil.rmtree(layout, ignore_errors=True)
    os.makedirs(os.path.join(layout, "blobs", "sha256"))
    tar = layer(files(release))
    compressed = io.BytesIO()
    with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=EPOCH, compresslevel=9) as gz:
        gz.write(tar)
    layer_descriptor = blob(layout, compressed.getvalue(),
                            "application/vnd.oci.image.layer.v1.tar+gzip")
    created = "1970-01-01T00:00:00Z" if EPOCH == 0 else None
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": "%d:%d" % (USER, USER),
            "Entrypoint": ["/usr/local/bin/switchyard"],
            "Env": [
                "SWITCHYARD_PLUGIN_DIR=/" + PLUGIN_DIR,
                "SWITCHYARD_LISTEN=0.0.0.0:8080",
            ],
            "ExposedPorts": {"8080/tcp": {}},
            "StopSignal": "SIGTERM",
            "Labels": {
                "org.opencontainers.image.title": "switchyard",
                "org.opencontainers.image.version": tag,
                "org.opencontainers.image.description":
                    "An HTTP/1.1 daemon that switches connections to protocols served by plugins",
            },
        },
        "rootfs": {"type": "layers",
                   "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
        "history": [{"created_by": "deploy/image/build.py"}],
    }
    if created:
        config["created"] = created
    config_descriptor = blob(layout, json.dumps(config, sort_keys=True).encode(),
                             "application/vnd.oci.image.config.v1+json")
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_descriptor,
        "layers": [layer_descriptor],
    }
    manifest_descriptor = blob(layout, json.dumps(manifest, sort_keys=True).encode(),
                               "application/vnd.oci.image.manifest.v1+json")
    manifest_descriptor["annotations"] = {"org.opencontainers.image.ref.name": tag}
    manifest_descriptor["platform"] = {"architecture": "amd64", "os": "linux"}
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": [manifest_descriptor]}, f, sort_keys=True)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    archive = os.path.join(out, "switchyard-oci.tar")
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as t:
        for folder, _, names in sorted(os.walk(layout)):
            for name in sorted(names):
                path = os.path.join(folder, name)
                info = t.gettarinfo(path, os.path.relpath(path, layout))
                info.mtime, info.uid, info.gid, info.uname, info.gname = EPOCH, 0, 0, "root", "root"
                with open(path, "rb") as f:
                    t.addfile(info, f)
    size = len(compressed.getvalue())
    print("image switchyard:%s: %s (%d KiB compressed), %s" % (
        tag, manifest_descriptor["digest"], size // 1024, layout))
    return layout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default=os.path.join(ROOT, "target", "release"))
    parser.add_argument("--out", default=os.path.join(ROOT, "target", "image"))
    parser.add_argument("--rootfs", help="also unpack the image's files into this folder "
                        "(for Containerfile's COPY; run as root to keep root the owner)")
    options = parser.parse_args()
    os.makedirs(options.out, exist_ok=True)
    build(options.release, options.out)
    if options.rootfs:
        with tarfile.open(fileobj=io.BytesIO(layer(files(options.release)))) as tar:
            tar.extractall(options.rootfs, filter="tar")


if __name__ == "__main__":
    main()
