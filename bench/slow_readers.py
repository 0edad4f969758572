#!/usr/bin/env python3
"""Downloads taken slowly: N connections from one address (127.0.0.2) each ask for a
200 MB static file and read 64 KiB every 10 s, for 30 s. Prints, every 10 s, the most and
the total the daemon's sockets hold for them (Send-Q, from `ss`) and how much the host's
TCP memory grew (/proc/net/sockstat, pages). What the kernel may hold of a download for a
client that takes little is the daemon's to bound (protocol_api::kernel_share).

    python3 bench/slow_readers.py --root . [--conns 100]"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import free_port, stop, wait_listening  # noqa: E402


def tcp_pages():
    with open("/proc/net/sockstat") as f:
        return next(int(l.split()[-1]) for l in f if l.startswith("TCP:"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--conns", type=int, default=100)
    parser.add_argument("--secs", type=int, default=30)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="switchyard-slow-readers-")
    os.makedirs(os.path.join(work, "www"))
    os.makedirs(os.path.join(work, "plugins"))
    with open(os.path.join(work, "www", "big.bin"), "wb") as f:
        f.truncate(200_000_000)
    port = free_port()
    env = dict(os.environ, SWITCHYARD_LISTEN="127.0.0.1:%d" % port, RUST_LOG="warn",
               SWITCHYARD_PLUGIN_DIR=os.path.join(work, "plugins"),
               SWITCHYARD_STATIC_ROUTES="/files=%s" % os.path.join(work, "www"))
    daemon = subprocess.Popen([os.path.join(args.root, "target", "release", "switchyard")],
                              env=env, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        before = tcp_pages()
        readers = []
        for _ in range(args.conns):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            s.setblocking(False)
            readers.append(s)
        began = time.time()
        while time.time() - began < args.secs:
            time.sleep(10)
            for s in readers:
                try:
                    s.recv(65536)
                except BlockingIOError:
                    pass
            queues = subprocess.run(
                ["ss", "-Htn", "state", "established", "( sport = :%d )" % port],
                capture_output=True, text=True).stdout.split("\n")
            held = [int(l.split()[1]) for l in queues if l.strip()]
            print("%3.0f s: %d connections; the daemon's sockets hold %d KB at most, %d KB in "
                  "all; host TCP memory +%d pages" % (time.time() - began, len(held),
                                                       max(held, default=0) // 1000,
                                                       sum(held) // 1000, tcp_pages() - before))
        for s in readers:
            s.close()
    finally:
        stop(daemon)


if __name__ == "__main__":
    main()
