#!/usr/bin/env python3
"""Where an h2c request costs the other core: bench/h2c.py's load (h2load -c50 -m10,
64-byte answers from nghttpd) through switchyard and through HAProxy, each on core 0,
with nghttpd and h2load on core 1; per request, the CPU of nghttpd, of h2load and of the
proxy, and nghttpd's write calls (/proc/PID/io); and the backend connections still open
after the run (switchyard's close with their clients' connections, one each). With the
proxy's core not the limit, what it makes nghttpd and h2load spend is the rate.

    python3 bench/h2c_core1.py --root . [--rounds 3]"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import h2c  # noqa: E402
from run import cpu_seconds, free_port, stop, wait_listening  # noqa: E402

REQUESTS = 200_000


def writes(pid):
    with open("/proc/%d/io" % pid) as f:
        return next(int(l.split()[1]) for l in f if l.startswith("syscw:"))


def backend_connections(port):
    out = subprocess.run(["ss", "-Htn", "state", "established", "( dport = :%d )" % port],
                         capture_output=True, text=True).stdout
    return len([l for l in out.splitlines() if l.strip()])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="switchyard-h2c-core1-")
    os.makedirs(os.path.join(work, "www"))
    with open(os.path.join(work, "www", "index.html"), "wb") as f:
        f.write(b"x" * 64)
    backend_port, haproxy_port, switchyard_port = free_port(), free_port(), free_port()
    backend = h2c.start(["nghttpd", "--no-tls", "-d", os.path.join(work, "www"),
                         str(backend_port)], h2c.LOAD_CORE)
    wait_listening(backend_port)
    h2c.write_haproxy_config(work, haproxy_port, backend_port)
    command, env = h2c.switchyard(args, work, switchyard_port, backend_port)
    proxies = {
        "switchyard": (lambda: h2c.start(command, h2c.PROXY_CORE, env), switchyard_port),
        "haproxy": (lambda: h2c.start(["haproxy", "-f", os.path.join(work, "haproxy.cfg")],
                                      h2c.PROXY_CORE), haproxy_port),
    }
    print("%-11s %10s %13s %12s %12s %15s %9s" % ("proxy", "requests/s", "nghttpd us", "h2load us",
                                                 "proxy us", "nghttpd writes", "backends"))
    try:
        for _ in range(args.rounds):
            for name, (launch, port) in proxies.items():
                proxy = launch()
                try:
                    wait_listening(port)
                    h2c.h2load(port, 20_000, work)  # warm-up
                    backend_cpu, proxy_cpu = cpu_seconds(backend.pid), cpu_seconds(proxy.pid)
                    backend_writes = writes(backend.pid)
                    load = resource.getrusage(resource.RUSAGE_CHILDREN)
                    rate, _, failed = h2c.h2load(port, REQUESTS, work)
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    if failed:
                        raise RuntimeError("%s: %d requests failed" % (name, failed))
                    per = lambda seconds: seconds / REQUESTS * 1e6  # noqa: E731
                    print("%-11s %10.0f %13.2f %12.2f %12.2f %15.3f %9d" % (
                        name, rate, per(cpu_seconds(backend.pid) - backend_cpu),
                        per(after.ru_utime + after.ru_stime - load.ru_utime - load.ru_stime),
                        per(cpu_seconds(proxy.pid) - proxy_cpu),
                        (writes(backend.pid) - backend_writes) / REQUESTS,
                        backend_connections(backend_port)))
                finally:
                    stop(proxy)
    finally:
        stop(backend)


if __name__ == "__main__":
    main()
