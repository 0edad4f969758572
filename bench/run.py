#!/usr/bin/env python3
"""Runs every load against every server, one server at a time, pinned: server on core 0,
load generator on core 1. Rounds interleave the servers; the median of the rounds is
reported, with the server's CPU use (from /proc/PID/stat) and the work per server
CPU-second. A row whose server was under 90% busy measured the load generator as much as
the server, and is marked with '*'. Ratios are switchyard's figure over the peer's, from
the same run (for memory, the peer's over switchyard's): above 1, switchyard wins."""
import argparse
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

SERVER_CORE, LOAD_CORE = "0", "1"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("nothing listening on %d" % port)


def tree(pid):
    """pid and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir("/proc/%d/task" % p):
                with open("/proc/%d/task/%s/children" % (p, task)) as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return pids


def cpu_seconds(pid):
    total = 0
    for p in tree(pid):
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / TICKS


def rss_kib(pid):
    total = 0
    for p in tree(pid):
        try:
            with open("/proc/%d/status" % p) as f:
                total += int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
        except (OSError, AttributeError):
            pass
    return total


class Servers:
    def __init__(self, root, workdir, uws=None):
        self.root, self.workdir = root, workdir
        # uWebSockets' examples/EchoServer.cpp, built by the user (its sources are not the
        # project's) with the port as its one argument: a WebSocket peer when given.
        self.uws = uws
        self.bench = os.path.join(root, "bench", "target", "release")
        self.plugins = os.path.join(workdir, "plugins")
        os.makedirs(self.plugins, exist_ok=True)
        for name in ("echo", "websocket", "tunnel", "h2c"):
            lib = "libswitchyard_%s.so" % name
            shutil.copy(os.path.join(root, "target", "release", lib), self.plugins)
        self.sink_port = free_port()
        self.echo_port = free_port()

    def command(self, name, port, settings=None):
        addr = "127.0.0.1:%d" % port
        env = dict(os.environ)
        if name == "switchyard":
            # Every setting at its default but the address, the folder, the tunnel's route
            # and what a load names itself (`settings`).
            env.update(
                SWITCHYARD_LISTEN=addr,
                SWITCHYARD_PLUGIN_DIR=self.plugins,
                SWITCHYARD_TUNNEL_ROUTES="/sink=127.0.0.1:%d,/echo=127.0.0.1:%d"
                % (self.sink_port, self.echo_port),
                # Prior-knowledge connections for the idle row; no stream is ever opened.
                SWITCHYARD_H2C_ROUTES="/=127.0.0.1:%d" % self.echo_port,
                RUST_LOG="warn",
            )
            env.update(settings or {})
            return [os.path.join(self.root, "target", "release", "switchyard")], env
        if name == "nginx":
            conf = os.path.join(self.workdir, "nginx.conf")
            with open(conf, "w") as f:
                f.write(
                    "worker_processes 1; daemon off; pid %s/nginx.pid; error_log stderr error;\n"
                    "events { worker_connections 4096; }\n"
                    "http { access_log off; server { listen %s; location / { return 200 \"ok\\n\"; } } }\n"
                    % (self.workdir, addr)
                )
            return ["nginx", "-c", conf, "-p", self.workdir], env
        if name == "haproxy":
            # HAProxy as its docs advise for a TCP relay: mode tcp, one thread (the server
            # core), splicing where it pays (option splice-auto). The backend is the load's:
            # the sink or the echo server (`settings`).
            target = self.echo_port if (settings or {}).get("BENCH_TUNNEL_TO") == "echo" else self.sink_port
            conf = os.path.join(self.workdir, "haproxy.cfg")
            with open(conf, "w") as f:
                f.write(
                    "global\n  nbthread 1\n  maxconn 6000\n"
                    "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 300s\n"
                    "  timeout server 300s\n  option splice-auto\n"
                    "frontend tunnel\n  bind %s\n  default_backend target\n"
                    "backend target\n  server s 127.0.0.1:%d\n" % (addr, target)
                )
            return ["haproxy", "-f", conf], env
        if name == "uwebsockets":
            return [self.uws, str(port)], env
        binary = {"tokio-tungstenite": "peer-tokio-tungstenite", "tungstenite-threads": "peer-tungstenite-threads",
                  "raw-tcp-echo": "peer-tcp-echo", "sink": "peer-tcp-echo"}[name]
        extra = ["--sink"] if name == "sink" else []
        return [os.path.join(self.bench, binary), addr] + extra, env

    def start(self, name, port=None, settings=None):
        port = port or free_port()
        command, env = self.command(name, port, settings)
        process = subprocess.Popen(["taskset", "-c", SERVER_CORE] + command, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(port)
        return process, port


def stop(process):
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def loadgen(root, mode, args, timeout=300):
    command = ["taskset", "-c", LOAD_CORE, os.path.join(root, "bench", "target", "release", "loadgen"), mode] + args
    out = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError("loadgen %s failed: %s" % (mode, out.stderr[-2000:]))
    return dict(kv.split("=") for kv in line.split()[1:])


def measure(servers, server, run_load, settings=None):
    """Starts `server`, runs the load, returns (figure dict, server busy fraction)."""
    backends = []
    if server in ("switchyard", "haproxy"):
        # Fresh ports each time: a fixed one may still be held by the thousands of
        # ephemeral ports the idle rows just used. The tunnel's backends: a sink, an echo.
        servers.sink_port, servers.echo_port = free_port(), free_port()
        backends.append(servers.start("sink", servers.sink_port)[0])
        backends.append(servers.start("raw-tcp-echo", servers.echo_port)[0])
    process, port = servers.start(server, settings=settings)
    try:
        cpu0, t0 = cpu_seconds(process.pid), time.time()
        result = run_load(port, process)
        busy = (cpu_seconds(process.pid) - cpu0) / (time.time() - t0)
        return result, busy
    finally:
        stop(process)
        for backend in backends:
            stop(backend)


def echo_load(root, mode, args, secs):
    def run(port, _process):
        return loadgen(root, mode, ["--addr", "127.0.0.1:%d" % port, "--secs", str(secs), "--warmup", "1"] + args)
    return run


def wrk_load(secs):
    def run(port, _process):
        out = subprocess.run(["taskset", "-c", LOAD_CORE, "wrk", "-t1", "-c50", "-d%ds" % secs,
                              "http://127.0.0.1:%d/healthz" % port], capture_output=True, text=True)
        match = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
        if not match:
            raise RuntimeError("wrk failed: " + out.stdout + out.stderr)
        return {"requests_per_s": match.group(1)}
    return run


def bulk_load(root, servers, mib, through_tunnel):
    def run(port, _process):
        if through_tunnel:
            args = ["--addr", "127.0.0.1:%d" % port, "--upgrade", "tcp", "--path", "/sink"]
        else:
            args = ["--addr", "127.0.0.1:%d" % port]
        return loadgen(root, "bulk", args + ["--mib", str(mib)])
    return run


def idle_load(root, conns, through=None):
    """WebSockets, or with `through` TCP connections: "tunnel" through `Upgrade: tcp` to
    the echo route, "plain" straight to the server (a TCP proxy)."""
    upgrade = {None: [], "tunnel": ["--upgrade", "tcp", "--path", "/echo"], "plain": [], "h2c": []}[through]
    hold_as = {None: [], "tunnel": upgrade, "plain": ["--upgrade", "none"],
               "h2c": ["--upgrade", "h2-prior-knowledge"]}[through]

    def run(port, process):
        # Warm the server up first (its allocator, its loop threads' buffers), so that the
        # difference below is what the idle connections themselves cost.
        loadgen(root, "ws-echo" if through in (None, "h2c") else "tcp-echo",
                ["--addr", "127.0.0.1:%d" % port, "--secs", "0.5", "--warmup", "0",
                 "--conns", "20", "--size", "64"] + upgrade)
        time.sleep(0.5)
        before = rss_kib(process.pid)
        command = ["taskset", "-c", LOAD_CORE, os.path.join(root, "bench", "target", "release", "loadgen"),
                   "idle", "--addr", "127.0.0.1:%d" % port, "--conns", str(conns), "--hold", "30"]
        command += hold_as
        holder = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            line = holder.stdout.readline()
            if not line.startswith("RESULT open="):
                raise RuntimeError("idle load failed")
            time.sleep(2)
            after = rss_kib(process.pid)
        finally:
            holder.kill()
            holder.wait()
        return {"kib_per_conn": "%.2f" % ((after - before) / conns), "rss_before_kib": str(before),
                "rss_after_kib": str(after)}
    return run


def raise_open_files(wanted=65536):
    """Descriptors for this process and every server and load it starts (they inherit the
    limit): 10,000 tunnels are 20,000 in the daemon and as many in the load and the echo
    server. A service gets as many from its unit (contrib/systemd: LimitNOFILE=1048576);
    here the hard limit is raised where this user may (root), and left where not.
    Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# The most tunnels the machine lets the daemon hold: two descriptors each.
OPEN_FILES = raise_open_files()
TUNNELS_HELD = 10000 if OPEN_FILES >= 20200 else (OPEN_FILES - 200) // 200 * 100


def loads(root, servers, quick):
    """(key, title, figure, unit, servers, load, switchyard settings)"""
    secs = 2 if quick else 3
    ws = ["switchyard", "tokio-tungstenite", "tungstenite-threads"] + (["uwebsockets"] if servers.uws else [])

    def echo(conns, size, inflight=1):
        args = ["--conns", str(conns), "--size", str(size), "--inflight", str(inflight)]
        return lambda s: echo_load(root, "tcp-echo" if s == "raw-tcp-echo" else "ws-echo", args, secs)

    out = [
        ("ws-echo-64x50", "WebSocket echo 64 B, 50 conns, 1 in flight", "msgs_per_s", "msg/s",
         ws + ["raw-tcp-echo"], echo(50, 64), None),
        ("ws-echo-64x500", "WebSocket echo 64 B, 500 conns, 1 in flight", "msgs_per_s", "msg/s",
         ws + ["raw-tcp-echo"], echo(500, 64), None),
        ("ws-echo-16kx50", "WebSocket echo 16 KiB, 50 conns, 1 in flight", "mb_per_s", "MB/s",
         ws + ["raw-tcp-echo"], echo(50, 16384), None),
        ("ws-echo-16kx500", "WebSocket echo 16 KiB, 500 conns, 1 in flight", "mb_per_s", "MB/s",
         ws + ["raw-tcp-echo"], echo(500, 16384), None),
        ("ws-echo-64x50x8", "WebSocket echo 64 B, 50 conns, 8 in flight", "msgs_per_s", "msg/s",
         ws + ["raw-tcp-echo"], echo(50, 64, 8), None),
        ("ws-handshake-50", "WebSocket connect + 101 + close, 50 at once", "handshakes_per_s", "hs/s",
         ws, lambda s: echo_load(root, "ws-handshake", ["--conns", "50"], secs), None),
        ("healthz-wrk", "GET /healthz, wrk -t1 -c50", "requests_per_s", "req/s",
         ["switchyard", "nginx"], lambda s: wrk_load(secs), None),
        ("tcp-echo-64x50", "blocking plugin: raw TCP echo 64 B, 50 conns, Upgrade: echo vs a plain echo server",
         "msgs_per_s", "msg/s", ["switchyard", "raw-tcp-echo"],
         lambda s: echo_load(root, "tcp-echo", (["--upgrade", "echo"] if s == "switchyard" else [])
                             + ["--conns", "50", "--size", "64"], secs), None),
        ("tunnel-1g", "1 GiB through Upgrade: tcp vs HAProxy mode tcp vs straight to the sink", "mib_per_s",
         "MiB/s", ["switchyard", "haproxy", "sink"],
         lambda s: bulk_load(root, servers, 256 if quick else 1024, s == "switchyard"), None),
        ("tunnel-echo-64x50", "TCP echo 64 B, 50 conns, through Upgrade: tcp vs HAProxy mode tcp", "msgs_per_s",
         "msg/s", ["switchyard", "haproxy"],
         lambda s: echo_load(root, "tcp-echo", (["--upgrade", "tcp", "--path", "/echo"] if s == "switchyard" else [])
                             + ["--conns", "50", "--size", "64"], secs),
         {"BENCH_TUNNEL_TO": "echo"}),
        # 2 descriptors a tunnel on each side of the daemon (more while bytes flow: a pipe
        # each way), and the machine allows 20,000 per process: 5,000 tunnels.
        ("idle-tunnels-5k", "idle tunnels (Upgrade: tcp to an echo server) vs HAProxy mode tcp: server RSS per connection at 5,000",
         "kib_per_conn", "KiB", ["switchyard", "haproxy"],
         lambda s: idle_load(root, 1000 if quick else 5000, "tunnel" if s == "switchyard" else "plain"),
         {"BENCH_TUNNEL_TO": "echo", "SWITCHYARD_MAX_CONNECTIONS_PER_CLIENT": "10000"}),
        # 10,000 tunnels, every setting at its default but the per-client limit (all come
        # from one address), where the machine allows the descriptors (TUNNELS_HELD): no
        # thread or worker per tunnel. HAProxy is measured at 5,000 above.
        ("idle-tunnels-10k", "idle tunnels (Upgrade: tcp to an echo server): server RSS per connection at %s" % format(TUNNELS_HELD, ","),
         "kib_per_conn", "KiB", ["switchyard"],
         lambda s: idle_load(root, 1000 if quick else TUNNELS_HELD, "tunnel"),
         {"BENCH_TUNNEL_TO": "echo", "SWITCHYARD_MAX_CONNECTIONS_PER_CLIENT": "10000"}),
        # h2c with prior knowledge, no stream: what a quiet gRPC client's connection costs.
        # One descriptor each in the daemon on the relay (a backend connection is made for
        # a stream and closed 5 s after the last), so 10,000 fit the machine's 20,000.
        ("idle-h2c-10k", "idle h2c connections (prior knowledge, no stream): server RSS per connection at 10,000",
         "kib_per_conn", "KiB", ["switchyard"], lambda s: idle_load(root, 2000 if quick else 10000, "h2c"),
         {"SWITCHYARD_MAX_CONNECTIONS_PER_CLIENT": "10000"}),
        # Every connection comes from 127.0.0.1: one client address, which by default may
        # hold a quarter of SWITCHYARD_MAX_CONNECTIONS.
        ("idle-10k", "idle WebSocket connections, every setting at its default but the per-client limit: server RSS per connection at 10,000",
         "kib_per_conn", "KiB", ws, lambda s: idle_load(root, 2000 if quick else 10000),
         {"SWITCHYARD_MAX_CONNECTIONS_PER_CLIENT": "10000"}),
        # The machine allows 20,000 descriptors per process; a thread per connection does
        # not reach 19,000 here (the thread limit), so that peer sits this row out.
        ("idle-19k", "idle WebSocket connections: server RSS per connection at 19,000", "kib_per_conn", "KiB",
         ["switchyard", "tokio-tungstenite"], lambda s: idle_load(root, 4000 if quick else 19000),
         {"SWITCHYARD_MAX_CONNECTIONS": "20000", "SWITCHYARD_MAX_CONNECTIONS_PER_CLIENT": "20000"}),
    ]
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", action="append")
    parser.add_argument("--uws", help="uWebSockets' EchoServer example, built with the port as its argument")
    options = parser.parse_args()
    rounds = 1 if options.quick else options.rounds
    workdir = tempfile.mkdtemp(prefix="switchyard-bench-")
    servers = Servers(options.root, workdir, options.uws)
    started = time.time()
    selected = [l for l in loads(options.root, servers, options.quick) if not options.only or l[0] in options.only]
    results = {}
    once = ("idle-10k", "idle-19k", "tunnel-1g", "idle-tunnels-5k", "idle-tunnels-10k", "idle-h2c-10k")
    # The rounds first; then, once, memory and the long bulk transfer (the idle rows leave
    # thousands of ports in TIME_WAIT, which would disturb the rows after them).
    plan = [(r, load) for r in range(rounds) for load in selected if load[0] not in once]
    plan += [(0, load) for load in selected if load[0] in once]
    for r, (key, _title, figure, _unit, names, make, settings) in plan:
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            server = "sink" if name == "sink" else name
            try:
                result, busy = measure(servers, server, make(name),
                                       settings if server in ("switchyard", "haproxy") else None)
                results.setdefault((key, name), []).append((float(result[figure]), busy, result))
            except Exception as e:  # a failed row is reported, the run goes on
                print("! %s on %s: %s" % (key, name, e), file=sys.stderr)
        print("round %d: %s done (%.0fs)" % (r + 1, key, time.time() - started), file=sys.stderr)
    print_table(selected, results, rounds, time.time() - started)
    shutil.rmtree(workdir, ignore_errors=True)


def print_table(selected, results, rounds, elapsed):
    print()
    print("switchyard benchmark: server pinned to core %s, load generator to core %s (taskset); "
          "median of %d round(s); %.0fs" % (SERVER_CORE, LOAD_CORE, rounds, elapsed))
    print()
    print("| load | server | figure | unit | p99 µs | server CPU | per server CPU-s | switchyard / peer |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    for key, title, figure, unit, names, _make, _settings in selected:
        rows = {}
        for name in names:
            samples = results.get((key, name))
            if samples:
                value = statistics.median(s[0] for s in samples)
                busy = statistics.median(s[1] for s in samples)
                p99 = [float(s[2]["p99_us"]) for s in samples if "p99_us" in s[2]]
                rows[name] = (value, busy, "%.0f" % statistics.median(p99) if p99 else "")
        ours = rows.get("switchyard")
        for name in names:
            if name not in rows:
                print("| %s | %s | failed | | | | | |" % (title, name))
                continue
            value, busy, p99 = rows[name]
            lower_is_better = key.startswith("idle-")
            per_cpu = "" if lower_is_better or busy <= 0 else "%.0f" % (value / busy)
            mark = "" if lower_is_better or busy >= 0.9 else " *"
            if ours is None or name == "switchyard":
                ratio = "1.00" if name == "switchyard" else ""
            elif lower_is_better:
                ratio = "%.2f" % (value / ours[0]) if ours[0] else ""
            else:
                ratio = "%.2f" % (ours[0] / value) if value else ""
            print("| %s | %s | %s | %s | %s | %.0f%%%s | %s | %s |" % (
                title, name, ("%.2f" % value) if value < 10 else ("%.1f" % value) if value < 100 else "%.0f" % value, unit, p99, busy * 100, mark, per_cpu,
                ratio))
    print()
    print("* the server was under 90% busy: the row measured the load generator as much as the server.")


if __name__ == "__main__":
    main()
