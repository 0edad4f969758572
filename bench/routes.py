#!/usr/bin/env python3
"""WebSocket routes against the tools people use for the job, same run, same backend:
- `tcp://` route to a TCP echo service (bench's peer-tcp-echo) against websockify (PyPI),
  64 B and 16 KiB messages, 50 connections, one message in flight each;
- `exec:` route running `cat` per connection against websocketd (Debian) running `cat`,
  64 B text messages (lines), 50 connections.
Servers on core 0 (with the programs they start), the echo service and the load generator
on core 1. Rounds interleave the servers; medians of messages per second and p99 are
reported. The load generator counts payload bytes (frames=1): a service's bytes come back
cut into frames wherever reads cut them."""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import free_port, loadgen, stop, wait_listening  # noqa: E402

SERVER_CORE, LOAD_CORE = "0", "1"


def start(command, core, env=None):
    return subprocess.Popen(["taskset", "-c", core] + command, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--websockify", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--secs", type=int, default=5)
    args = parser.parse_args()
    release = os.path.join(args.root, "target", "release")
    bench_bin = os.path.join(args.root, "bench", "target", "release")
    work = tempfile.mkdtemp(prefix="switchyard-routes-bench-")
    plugins = os.path.join(work, "plugins")
    os.makedirs(plugins)
    os.symlink(os.path.join(release, "libswitchyard_websocket.so"),
               os.path.join(plugins, "libswitchyard_websocket.so"))
    echo_port = free_port()
    echo = start([os.path.join(bench_bin, "peer-tcp-echo"), "127.0.0.1:%d" % echo_port], LOAD_CORE)
    wait_listening(echo_port)

    def switchyard(port):
        env = dict(os.environ, SWITCHYARD_LISTEN="127.0.0.1:%d" % port, SWITCHYARD_PLUGIN_DIR=plugins,
                   SWITCHYARD_WEBSOCKET_ROUTES="/svc=tcp://127.0.0.1:%d,/cat=exec:/bin/cat" % echo_port,
                   SWITCHYARD_WEBSOCKET_DEFLATE="off", RUST_LOG="warn")
        return start([os.path.join(release, "switchyard")], SERVER_CORE, env)

    def websockify(port):
        return start([args.websockify, "127.0.0.1:%d" % port, "127.0.0.1:%d" % echo_port], SERVER_CORE)

    def websocketd(port):
        return start(["websocketd", "--address=127.0.0.1", "--port=%d" % port, "/bin/cat"], SERVER_CORE)

    loads = [
        ("tcp route, 64 B x 50", ["--size", "64"], "/svc", {"switchyard": switchyard, "websockify": websockify}),
        ("tcp route, 16 KiB x 50", ["--size", "16384"], "/svc", {"switchyard": switchyard, "websockify": websockify}),
        ("exec cat, 64 B lines x 50", ["--size", "64", "--text", "1"], "/cat",
         {"switchyard": switchyard, "websocketd": websocketd}),
    ]
    results = {}
    try:
        for _ in range(args.rounds):
            for name, extra, path, servers in loads:
                for server, launch in servers.items():
                    port = free_port()
                    process = launch(port)
                    try:
                        wait_listening(port)
                        result = loadgen(args.root, "ws-echo", [
                            "--addr", "127.0.0.1:%d" % port, "--secs", str(args.secs), "--warmup", "1",
                            "--conns", "50", "--frames", "1", "--path", path if server == "switchyard" else "/",
                        ] + extra)
                    finally:
                        stop(process)
                    results.setdefault((name, server), []).append(
                        (float(result["msgs_per_s"]), float(result["p99_us"])))
    finally:
        stop(echo)
    print("WebSocket routes, %d rounds of %d s (medians)" % (args.rounds, args.secs))
    print("| load | server | msg/s | p99 µs | switchyard / peer |")
    print("|---|---|---:|---:|---:|")
    for name, _, _, servers in loads:
        ours = statistics.median(r[0] for r in results[(name, "switchyard")])
        for server in servers:
            rows = results[(name, server)]
            rate = statistics.median(r[0] for r in rows)
            p99 = statistics.median(r[1] for r in rows)
            print("| %s | %s | %.0f | %.0f | %.2f |" % (name, server, rate, p99, ours / rate))
        peer = [s for s in servers if s != "switchyard"][0]
        per_round = [a[0] / b[0] for a, b in zip(results[(name, "switchyard")], results[(name, peer)])]
        print("|  | rounds |  |  | %s |" % " ".join("%.2fx" % r for r in per_round))


if __name__ == "__main__":
    main()
