#!/usr/bin/env python3
"""What the access log costs: one connection pipelining `GET /healthz` (100 requests a
write) for 5 s, with the access log on (RUST_LOG=info, stderr to a file) and off
(`switchyard::access=off`), alternating; answers a second and the daemon's CPU a request.

    python3 bench/log_cost.py --root . [--rounds 2]"""
import argparse
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import cpu_seconds, free_port, stop, wait_listening  # noqa: E402

REQUESTS = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 100


def flood(port, pid, secs):
    s = socket.create_connection(("127.0.0.1", port))
    s.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    cpu, began, answers, pending = cpu_seconds(pid), time.time(), 0, b""
    while time.time() - began < secs:
        for _, events in sel.select(0.1):
            if events & selectors.EVENT_READ:
                answers += s.recv(1 << 20).count(b"HTTP/1.1 200")
            if events & selectors.EVENT_WRITE:
                pending = pending or REQUESTS
                try:
                    pending = pending[s.send(pending):]
                except BlockingIOError:
                    pass
    took, used = time.time() - began, cpu_seconds(pid) - cpu
    s.close()
    return answers / took, used / answers * 1e6


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--secs", type=int, default=5)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="switchyard-log-cost-")
    os.makedirs(os.path.join(work, "plugins"))
    for _ in range(args.rounds):
        for name, log in [("access log on", "info"), ("access log off", "info,switchyard::access=off")]:
            port = free_port()
            env = dict(os.environ, SWITCHYARD_LISTEN="127.0.0.1:%d" % port, RUST_LOG=log,
                       SWITCHYARD_PLUGIN_DIR=os.path.join(work, "plugins"))
            with open(os.path.join(work, "stderr.log"), "wb") as stderr:
                daemon = subprocess.Popen(
                    [os.path.join(args.root, "target", "release", "switchyard")], env=env,
                    stderr=stderr)
                try:
                    wait_listening(port)
                    rate, per = flood(port, daemon.pid, args.secs)
                finally:
                    stop(daemon)
            print("%-15s %9.0f answers/s  %5.2f us of daemon CPU a request" % (name, rate, per))


if __name__ == "__main__":
    main()
