#!/usr/bin/env python3
"""HTTP/2 proxying: h2load (nghttp2's load generator) with 50 connections and 10 streams
each (-c50 -m10), HTTP/2 with prior knowledge, through switchyard's h2c plugin, through
HAProxy (one thread, mode http, h2 on both sides, http-reuse always: how its docs proxy
HTTP/2 end to end) and through nginx's grpc_pass (its documented way to proxy HTTP/2 to an
HTTP/2 backend, with upstream keep-alive) to the same backend (nghttpd, nghttp2's server, serving a 64-byte file), and
straight to the backend. Proxies on core 0, backend and load generator on core 1. Rounds
interleave the servers; medians of requests per second and p99 latency (from h2load's
per-request log) are reported, with the proxy's CPU use, and the CPU time the backend and
h2load spend a request: they share core 1, which is the one this load fills, so what a
proxy makes them spend decides its rate (and varies far less from run to run than the
rate does on a shared machine)."""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import cpu_seconds, free_port, stop, wait_listening  # noqa: E402

PROXY_CORE, LOAD_CORE = "0", "1"


def start(command, core, env=None):
    return subprocess.Popen(
        ["taskset", "-c", core] + command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def thread_cpu_ns(pid):
    """CPU time of every thread of `pid`, in nanoseconds (schedstat: exact, where
    /proc/PID/stat counts ticks)."""
    total = 0
    for task in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, task)) as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def children_cpu_seconds():
    """CPU time of this process's children that have ended (h2load's, once it has)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def h2load(port, requests, workdir):
    log = os.path.join(workdir, "h2load.log")
    if os.path.exists(log):
        os.remove(log)  # h2load appends
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "h2load", "-c50", "-m10", "-n", str(requests),
         "--log-file", log, "http://127.0.0.1:%d/index.html" % port],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    line = next(l for l in out.splitlines() if l.startswith("finished in"))
    rate = float(line.split(",")[1].split()[0])
    done = next(l for l in out.splitlines() if l.startswith("requests:"))
    failed = int(done.split(",")[4].split()[0])
    with open(log) as f:
        # start time (us), status, duration (us) per request
        times = sorted(int(l.split()[2]) for l in f if l.strip())
    p99 = times[int(len(times) * 0.99) - 1] / 1000.0
    return rate, p99, failed


def write_haproxy_config(work, port, backend_port, reuse="always", name="haproxy.cfg"):
    """HAProxy as its docs proxy HTTP/2 end to end: one thread, mode http, h2 on both
    sides, http-reuse always (the issue's peer); `work/haproxy.cfg`. With `reuse="never"`
    each client connection gets backend connections of its own, as the relay's do: the
    row that shows what sharing backend connections is worth."""
    with open(os.path.join(work, name), "w") as f:
        f.write(
            "global\n  nbthread 1\n  maxconn 6000\n"
            "defaults\n  mode http\n  timeout connect 5s\n  timeout client 300s\n"
            "  timeout server 300s\n  http-reuse %s\n"
            "frontend h2\n  bind 127.0.0.1:%d proto h2\n  default_backend target\n"
            "backend target\n  server s 127.0.0.1:%d proto h2\n" % (reuse, port, backend_port)
        )


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


def switchyard(args, work, port, backend_port):
    """The daemon's command and environment: the h2c plugin alone, every setting at its
    default but the address and one route to the backend."""
    plugins = os.path.join(work, "plugins")
    os.makedirs(plugins)
    release = os.path.join(args.root, "target", "release")
    os.symlink(os.path.join(release, "libswitchyard_h2c.so"), os.path.join(plugins, "libswitchyard_h2c.so"))
    env = dict(os.environ, SWITCHYARD_LISTEN="127.0.0.1:%d" % port, SWITCHYARD_PLUGIN_DIR=plugins,
               SWITCHYARD_H2C_ROUTES="/=127.0.0.1:%d" % backend_port, RUST_LOG="warn")
    return [os.path.join(release, "switchyard")], env


def many(args):
    """10,000 h2c connections (or --conns), each with a stream as it opens and one every 20
    seconds, through a daemon with every setting at its default but the routes: how many
    stay open and are answered, the daemon's RSS and descriptors while they are."""
    work = tempfile.mkdtemp(prefix="switchyard-h2c-many-")
    os.makedirs(os.path.join(work, "www"))
    with open(os.path.join(work, "www", "index.html"), "wb") as f:
        f.write(b"x" * 64)
    backend_port, port = free_port(), free_port()
    backend = start(["nghttpd", "--no-tls", "-d", os.path.join(work, "www"), str(backend_port)], LOAD_CORE)
    wait_listening(backend_port)
    command, env = switchyard(args, work, port, backend_port)
    daemon = start(command, PROXY_CORE, env)
    try:
        wait_listening(port)
        before = rss_kib(daemon.pid)
        load = subprocess.Popen(
            ["taskset", "-c", LOAD_CORE, os.path.join(args.root, "bench", "target", "release", "loadgen"),
             "h2c-streams", "--addr", "127.0.0.1:%d" % port, "--conns", str(args.conns),
             "--every", "20", "--secs", str(args.secs), "--hold", "5"],
            stdout=subprocess.PIPE, text=True)
        line = load.stdout.readline()
        rss = rss_kib(daemon.pid)
        fds = len(os.listdir("/proc/%d/fd" % daemon.pid))
        load.wait(timeout=60)
    finally:
        stop(daemon)
        stop(backend)
    if not line.startswith("RESULT"):
        raise RuntimeError("the load failed: %r" % line)
    result = dict(kv.split("=") for kv in line.split()[1:])
    print("%s h2c connections, a stream each as it opened and every 20 s for %d s, defaults but the routes:"
          % (args.conns, args.secs))
    print("open %s, streams answered %s, failed %s, p99 %s ms; daemon RSS %d KiB (%.2f KiB a connection "
          "over the idle daemon's %d KiB), %d descriptors"
          % (result["open"], result["streams"], result["failed"], result["p99_ms"], rss,
             (rss - before) / max(1, int(result["open"])), before, fds))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--many", action="store_true", help="the many-quiet-clients load instead")
    parser.add_argument("--conns", type=int, default=10_000)
    parser.add_argument("--secs", type=int, default=60)
    args = parser.parse_args()
    if args.many:
        return many(args)
    work = tempfile.mkdtemp(prefix="switchyard-h2c-bench-")
    os.makedirs(os.path.join(work, "www"))
    with open(os.path.join(work, "www", "index.html"), "wb") as f:
        f.write(b"x" * 64)
    backend_port, nginx_port, switchyard_port = free_port(), free_port(), free_port()
    backend = start(["nghttpd", "--no-tls", "-d", os.path.join(work, "www"), str(backend_port)], LOAD_CORE)
    wait_listening(backend_port)
    with open(os.path.join(work, "nginx.conf"), "w") as f:
        f.write(
            "worker_processes 1; daemon off; pid %s/nginx.pid; error_log stderr error;\n"
            "events { worker_connections 4096; }\n"
            "http { access_log off; keepalive_requests 1000000;\n"
            "  upstream backend { server 127.0.0.1:%d; keepalive 64; keepalive_requests 1000000; }\n"
            "  server { listen 127.0.0.1:%d http2; location / { grpc_pass grpc://backend; } } }\n"
            % (work, backend_port, nginx_port)
        )
    haproxy_port, never_port = free_port(), free_port()
    write_haproxy_config(work, haproxy_port, backend_port)
    write_haproxy_config(work, never_port, backend_port, "never", "haproxy-never.cfg")
    command, env = switchyard(args, work, switchyard_port, backend_port)
    servers = {
        "switchyard": (lambda: start(command, PROXY_CORE, env), switchyard_port),
        "sy-hyper": (lambda: start(command, PROXY_CORE, dict(env, SWITCHYARD_H2C_ENGINE="hyper")),
                     switchyard_port),
        "haproxy": (lambda: start(["haproxy", "-f", os.path.join(work, "haproxy.cfg")], PROXY_CORE), haproxy_port),
        "hap-never": (lambda: start(["haproxy", "-f", os.path.join(work, "haproxy-never.cfg")], PROXY_CORE),
                      never_port),
        "nginx": (lambda: start(["nginx", "-c", os.path.join(work, "nginx.conf"), "-p", work], PROXY_CORE), nginx_port),
        "backend": (None, backend_port),
    }
    results = {name: [] for name in servers}
    try:
        for _ in range(args.rounds):
            for name, (launch, port) in servers.items():
                proxy = launch() if launch else None
                wait_listening(port)
                h2load(port, 20_000, work)  # warm-up: connections pooled, pages touched
                before = cpu_seconds(proxy.pid) if proxy else 0.0
                backend_before, load_before = thread_cpu_ns(backend.pid), children_cpu_seconds()
                rate, p99, failed = h2load(port, args.requests, work)
                used = (cpu_seconds(proxy.pid) - before) if proxy else 0.0
                backend_us = (thread_cpu_ns(backend.pid) - backend_before) / 1000 / args.requests
                load_us = (children_cpu_seconds() - load_before) * 1e6 / args.requests
                if failed:
                    raise RuntimeError("%s: %d requests failed" % (name, failed))
                results[name].append((rate, p99, used * rate / args.requests, backend_us, load_us))
                if proxy:
                    stop(proxy)
    finally:
        stop(backend)
    med = {n: tuple(statistics.median(r[i] for r in rs) for i in range(5)) for n, rs in results.items()}
    print("h2load -c50 -m10, %d requests of a 64-byte file, %d rounds (medians)" % (args.requests, args.rounds))
    print("%-11s %12s %9s %14s %17s %16s" % ("server", "requests/s", "p99 ms", "proxy CPU, s/s",
                                             "backend us a req", "h2load us a req"))
    for name, (rate, p99, cpu, backend_us, load_us) in med.items():
        print("%-11s %12.0f %9.2f %14s %17.2f %16.2f" % (
            name, rate, p99, "-" if name == "backend" else "%.2f" % cpu, backend_us, load_us))
    sw, ng, ha = med["switchyard"], med["nginx"], med["haproxy"]
    print("switchyard / HAProxy: %.2fx requests/s, %.2fx per proxy CPU-second, p99 %.2f ms vs %.2f ms"
          % (sw[0] / ha[0], (sw[0] / sw[2]) / (ha[0] / ha[2]), sw[1], ha[1]))
    print("load core's CPU a request (backend + h2load): switchyard %.2f us, HAProxy %.2f us (%.2fx)"
          % (sw[3] + sw[4], ha[3] + ha[4], (ha[3] + ha[4]) / (sw[3] + sw[4])))
    hn = med["hap-never"]
    print("switchyard / HAProxy with http-reuse never (a backend connection per client "
          "connection, as the relay): %.2fx requests/s" % (sw[0] / hn[0]))
    hy = med["sy-hyper"]
    print("switchyard relay / hyper engine: %.2fx requests/s" % (sw[0] / hy[0]))
    print("switchyard / nginx grpc_pass: %.2fx requests/s, p99 %.2f ms vs %.2f ms" % (sw[0] / ng[0], sw[1], ng[1]))
    print("per round, switchyard / nginx:", " ".join(
        "%.2fx" % (s[0] / n[0]) for s, n in zip(results["switchyard"], results["nginx"])))


if __name__ == "__main__":
    main()
