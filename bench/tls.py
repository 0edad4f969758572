#!/usr/bin/env python3
"""TLS handshakes per server CPU-second: switchyard (rustls with aws-lc-rs, its default, and with *ring*)
against nginx on the same certificate and key, ECDSA P-256 and RSA 2048. Each server has
one core (core 0: one event loop, one nginx worker), the load generator the other (8
threads, each: connect, a full handshake with no resumption, GET /healthz with
Connection: close, read to the end). Rounds interleave the servers; medians reported."""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import cpu_seconds, free_port, loadgen, stop, wait_listening  # noqa: E402

SERVER_CORE = "0"


def openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True)


def make_pki(work):
    """A CA, and a localhost pair of each key type signed by it (chain: leaf then CA)."""
    ca_key, ca = os.path.join(work, "ca.key"), os.path.join(work, "ca.pem")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-days", "2", "-subj", "/CN=bench CA", "-keyout", ca_key, "-out", ca)
    ext = os.path.join(work, "san.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost\n")
    pairs = {}
    for kind, spec in [("ecdsa-p256", ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]), ("rsa-2048", ["rsa:2048"])]:
        key, csr, leaf, chain = (os.path.join(work, "%s.%s" % (kind, s)) for s in ("key", "csr", "leaf", "pem"))
        openssl("req", "-newkey", *spec, "-nodes", "-subj", "/CN=localhost", "-keyout", key, "-out", csr)
        openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
                "-extfile", ext, "-out", leaf)
        with open(chain, "w") as out, open(leaf) as a, open(ca) as b:
            out.write(a.read() + b.read())
        pairs[kind] = (chain, key)
    return ca, pairs


def start(command, env=None):
    return subprocess.Popen(["taskset", "-c", SERVER_CORE] + command, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--secs", type=float, default=5)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="switchyard-tls-bench-")
    ca, pairs = make_pki(work)
    plugins = os.path.join(work, "plugins")
    os.makedirs(plugins)  # none: /healthz is the daemon's own
    builds = {
        "switchyard-aws-lc-rs": os.path.join(args.root, "target", "release", "switchyard"),
        "switchyard-ring": os.path.join(args.root, "target", "ring", "release", "switchyard"),
    }

    def server(name, kind, port):
        cert, key = pairs[kind]
        if name in builds:
            env = dict(os.environ, SWITCHYARD_LISTEN="127.0.0.1:%d" % port, SWITCHYARD_PLUGIN_DIR=plugins,
                       SWITCHYARD_IO_THREADS="1", SWITCHYARD_TLS_CERT=cert, SWITCHYARD_TLS_KEY=key,
                       # Every handshake comes from one address here; nginx has no such
                       # limit either.
                       SWITCHYARD_TLS_HANDSHAKES_PER_CLIENT="0",
                       RUST_LOG="warn")
            return start([builds[name]], env)
        conf = os.path.join(work, "nginx-%d.conf" % port)
        with open(conf, "w") as f:
            # As nginx's "Configuring HTTPS servers" advises (the session cache is for
            # resumption, which this load never asks for).
            f.write(
                "worker_processes 1; daemon off; pid %s/nginx-%d.pid; error_log stderr error;\n"
                "events { worker_connections 4096; }\n"
                "http { access_log off; ssl_session_cache shared:SSL:10m; ssl_session_timeout 10m;\n"
                "  server { listen 127.0.0.1:%d ssl; server_name localhost;\n"
                "    ssl_certificate %s; ssl_certificate_key %s; ssl_protocols TLSv1.2 TLSv1.3;\n"
                "    location = /healthz { return 200 \"ok\\n\"; } } }\n" % (work, port, port, cert, key))
        return start(["nginx", "-c", conf, "-p", work])

    names = ["switchyard-aws-lc-rs", "switchyard-ring", "nginx"]
    results = {(n, k): [] for n in names for k in pairs}
    for _ in range(args.rounds):
        for kind in pairs:
            for name in names:
                port = free_port()
                process = server(name, kind, port)
                try:
                    wait_listening(port)
                    time.sleep(0.2)
                    before = cpu_seconds(process.pid)
                    result = loadgen(args.root, "tls-handshake",
                                     ["--addr", "127.0.0.1:%d" % port, "--ca", ca, "--conns", "8",
                                      "--secs", str(args.secs), "--warmup", "0"])
                    cpu = cpu_seconds(process.pid) - before
                finally:
                    stop(process)
                count = int(result["handshakes"])
                results[(name, kind)].append((float(result["handshakes_per_s"]), count / cpu if cpu else 0.0,
                                              int(result["p99_us"])))
    print("TLS handshakes (full, no resumption; GET /healthz each), server on one core, medians of %d rounds:"
          % args.rounds)
    for kind in pairs:
        med = {n: tuple(statistics.median(r[i] for r in results[(n, kind)]) for i in range(3)) for n in names}
        for name in names:
            rate, per_cpu, p99 = med[name]
            print("  %-10s %-22s %7.0f handshakes/s  %7.0f per server CPU-second  p99 %5.1f ms"
                  % (kind, name, rate, per_cpu, p99 / 1000))
        for name in names[:2]:
            print("  %-10s %s / nginx: %.2fx per CPU-second, %.2fx handshakes/s"
                  % (kind, name, med[name][1] / med["nginx"][1], med[name][0] / med["nginx"][0]))


if __name__ == "__main__":
    main()
