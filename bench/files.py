#!/usr/bin/env python3
"""Static files: switchyard's SWITCHYARD_STATIC_ROUTES against nginx (`sendfile on`, as its
docs advise for static files) serving the same folder, each on one core (core 0: one event
loop, one nginx worker), wrk -t1 -c50 on the other, for a 4 KiB page, a 64 KiB script and a
1 MiB file. Rounds interleave the servers; medians of requests/s and the server's CPU."""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import LOAD_CORE, cpu_seconds, free_port, stop, wait_listening  # noqa: E402

SERVER_CORE = "0"
FILES = [("page.html", 4 * 1024), ("app.js", 64 * 1024), ("big.bin", 1024 * 1024)]


def wrk(port, name, secs):
    out = subprocess.run(["taskset", "-c", LOAD_CORE, "wrk", "-t1", "-c50", "-d%ds" % secs,
                          "http://127.0.0.1:%d/%s" % (port, name)], capture_output=True, text=True)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    if not rate or errors:
        raise RuntimeError("wrk failed: " + out.stdout + out.stderr)
    return float(rate.group(1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--secs", type=int, default=4)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="switchyard-files-bench-")
    os.chmod(work, 0o755)  # nginx's worker runs as another user
    site = os.path.join(work, "site")
    os.makedirs(site)
    for name, size in FILES:
        with open(os.path.join(site, name), "wb") as f:
            f.write(bytes((i * 7) % 251 for i in range(size)))
        os.chmod(os.path.join(site, name), 0o644)
    plugins = os.path.join(work, "plugins")
    os.makedirs(plugins)

    def start(name, port):
        if name == "switchyard":
            env = dict(os.environ, SWITCHYARD_LISTEN="127.0.0.1:%d" % port, SWITCHYARD_PLUGIN_DIR=plugins,
                       SWITCHYARD_IO_THREADS="1", SWITCHYARD_STATIC_ROUTES="/=%s" % site, RUST_LOG="warn")
            command = [os.path.join(args.root, "target", "release", "switchyard")]
        else:
            conf = os.path.join(work, "nginx-%d.conf" % port)
            with open(conf, "w") as f:
                f.write("worker_processes 1; daemon off; pid %s/nginx-%d.pid; error_log stderr error;\n"
                        "events { worker_connections 1024; }\n"
                        "http { access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;\n"
                        "  server { listen 127.0.0.1:%d; root %s; } }\n" % (work, port, port, site))
            command = ["nginx", "-c", conf, "-p", work]
        return subprocess.Popen(["taskset", "-c", SERVER_CORE] + command, env=env if name == "switchyard" else None,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    names = ["switchyard", "nginx"]
    results = {(n, f): [] for n in names for f, _ in FILES}
    for _ in range(args.rounds):
        for file, _ in FILES:
            for name in names:
                port = free_port()
                process = start(name, port)
                try:
                    wait_listening(port)
                    time.sleep(0.2)
                    before = cpu_seconds(process.pid)
                    rate = wrk(port, file, args.secs)
                    cpu = (cpu_seconds(process.pid) - before) / args.secs
                finally:
                    stop(process)
                results[(name, file)].append((rate, cpu))
    print("Static files, wrk -t1 -c50 keep-alive, server on one core, medians of %d rounds:" % args.rounds)
    for file, size in FILES:
        med = {n: (statistics.median(r[0] for r in results[(n, file)]),
                   statistics.median(r[1] for r in results[(n, file)])) for n in names}
        for name in names:
            rate, cpu = med[name]
            print("  %-9s %-10s %9.0f req/s  %8.1f MiB/s  server CPU %.2f" % (
                file, name, rate, rate * size / 1048576, cpu))
        print("  %-9s switchyard / nginx: %.2fx requests/s" % (file, med["switchyard"][0] / med["nginx"][0]))


if __name__ == "__main__":
    main()
