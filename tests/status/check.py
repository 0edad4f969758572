"""What tests/status/run.sh checks against the daemon at ADDR: known traffic, then
/metrics through prometheus_client's parser, /status.json, the status page in Chromium,
and the JSON access log.
Usage: check.py ADDR CHROMIUM CHROMIUM_PAGE_PY DAEMON_LOG"""
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import websockets
from prometheus_client.parser import text_string_to_metric_families

addr, chromium, chromium_page, daemon_log = sys.argv[1:5]
HELD = 3
REFUSED = 2


def get(path, host=None):
    request = urllib.request.Request("http://%s%s" % (addr, path))
    if host:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def c_echo():
    """One connection to the C plugin: its greeting, then an echo of 5 bytes."""
    with socket.create_connection(tuple(addr.rsplit(":", 1))) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: c-echo\r\n\r\n")
        s.settimeout(10)
        seen = b""
        while b"buffered=0\n" not in seen:
            seen += s.recv(4096)
        assert b"101 Switching Protocols" in seen and b"hello\n" in seen, seen
        s.sendall(b"12345")
        got = b""
        while len(got) < 5:
            got += s.recv(5 - len(got))
        assert got == b"12345", got


def families():
    """/metrics as Prometheus reads it: {name: family}, its samples by (name, labels)."""
    status, text = get("/metrics")
    assert status == 200, status
    found = {}
    for family in text_string_to_metric_families(text):
        found[family.name] = family
    return found


def value(found, family, sample, **labels):
    for s in found[family].samples:
        if s.name == sample and s.labels == labels:
            return s.value
    raise AssertionError("no %s%s in %s" % (sample, labels, family))


async def main():
    held = [await websockets.connect("ws://%s/chat" % addr) for _ in range(HELD)]
    for ws in held:
        await ws.send("ping")
        assert await ws.recv() == "ping"
    for _ in range(REFUSED):
        try:
            await websockets.connect("ws://%s/down/x" % addr)
            raise AssertionError("a route to a closed port switched")
        except websockets.InvalidStatus as refused:
            assert refused.response.status_code == 502
    c_echo()
    status, _ = get("/db")  # not an upgrade: the tunnel is not asked
    assert status == 426, status

    # /metrics, parsed by Prometheus's client library (rendered at most once a second).
    deadline = time.time() + 10
    while True:
        found = families()
        try:
            assert value(found, "switchyard_websocket_open_connections",
                         "switchyard_websocket_open_connections", route="/") == HELD
            assert value(found, "switchyard_websocket_refused", "switchyard_websocket_refused_total",
                         route="/down", status="502") == REFUSED
            assert value(found, "switchyard_c_echo_connections", "switchyard_c_echo_connections_total") == 1
            break
        except (AssertionError, KeyError):
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    kinds = {
        "switchyard_websocket_connect_seconds": "histogram",
        "switchyard_websocket_bytes": "counter",
        "switchyard_websocket_programs_running": "gauge",
        "switchyard_tunnel_open_tunnels": "gauge",
        "switchyard_h2c_backend_response_seconds": "histogram",
        "switchyard_c_echo_read_bytes": "histogram",
        "switchyard_connections_accepted": "counter",
        "process_cpu_seconds": "counter",
        "process_resident_memory_bytes": "gauge",
        "process_open_fds": "gauge",
        "process_start_time_seconds": "gauge",
    }
    for name, kind in kinds.items():
        assert found[name].type == kind, (name, found[name].type)
    assert value(found, "switchyard_c_echo_read_bytes", "switchyard_c_echo_read_bytes_bucket",
                 le="16") == 1
    assert value(found, "switchyard_c_echo_bytes", "switchyard_c_echo_bytes_total",
                 direction="back") == 5
    assert value(found, "switchyard_websocket_connect_seconds",
                 "switchyard_websocket_connect_seconds_count", route="/down") == REFUSED

    # The page's data.
    status, text = get("/status.json")
    assert status == 200, status
    data = json.loads(text)
    plugins = {p["name"]: p for p in data["plugins"]}
    assert sorted(plugins) == ["c-echo", "echo", "h2c", "tunnel", "websocket"], sorted(plugins)
    assert plugins["websocket"]["open"] == HELD and plugins["websocket"]["switched"] == HELD
    assert plugins["c-echo"]["switched"] == 1
    metric = {(m["plugin"], m["name"], tuple(sorted(m["labels"].items()))): m["value"]
              for m in data["plugin_metrics"]}
    assert metric[("websocket", "refused_total", (("route", "/down"), ("status", "502")))] == REFUSED
    routes = next(s for s in plugins["websocket"]["settings"]
                  if s["name"] == "SWITCHYARD_WEBSOCKET_ROUTES")
    assert routes["value"] == os.environ["SWITCHYARD_WEBSOCKET_ROUTES"], routes

    # Refused to a name another page chose (DNS rebinding).
    assert get("/status", host="rebound.example")[0] == 403

    # A few samples for the charts to draw (one every 2 s).
    while len(json.loads(get("/status.json")[1])["history"]["at"]) < 4:
        time.sleep(0.5)

    # The page in Chromium shows the same numbers as the JSON (they stay put: the held
    # connections stay open and nothing else switches meanwhile).
    expression = " + ',' + ".join([
        "document.querySelector('[data-plugin-open=\"websocket\"]')?.textContent",
        "document.querySelector('[data-plugin-switched=\"websocket\"]')?.textContent",
        "document.querySelector('[data-metric=\"websocket refused_total route=/down status=502\"]')?.textContent",
        "document.querySelector('[data-metric=\"websocket open_connections route=/\"]')?.textContent",
        "document.getElementById('generation').textContent",
        "document.querySelector('[data-setting=\"SWITCHYARD_WEBSOCKET_ROUTES\"]')?.textContent",
        "String(document.querySelector('#chart-open polyline').getAttribute('points').split(' ').length >= 3)",
        "String(/^[0-9]+ [(][0-9]+[)]$/.test(document.getElementById('fds').textContent))",
        "String(document.querySelector('#chart-memory polyline').getAttribute('points').split(' ').length >= 3)",
        "String(/^[0-9.]+ MiB$/.test(document.getElementById('memory').textContent))",
        "String(/^[0-9.]+%$/.test(document.getElementById('cpu-rate').textContent))",
    ])
    expected = ",".join(str(v) for v in [
        plugins["websocket"]["open"],
        plugins["websocket"]["switched"],
        int(metric[("websocket", "refused_total", (("route", "/down"), ("status", "502")))]),
        int(metric[("websocket", "open_connections", (("route", "/"),))]),
        data["generation"],
        routes["value"],
        "true",
        "true",
        "true",
        "true",
        "true",
    ])
    subprocess.run([sys.executable, chromium_page, chromium, "http://%s/status" % addr,
                    expression, expected], check=True)
    for ws in held:
        await ws.close()

    # The access log as JSON: every access line one object; the refusals among them.
    with open(daemon_log) as log:
        lines = [json.loads(line) for line in log if line.startswith("{")]
    refused = [l for l in lines if l["target"] == "/down/x"]
    assert len(refused) == REFUSED and all(l["status"] == 502 for l in refused), refused
    assert any(l["target"] == "/status" and l["status"] == 200 for l in lines)


asyncio.run(main())
print("status: metrics parsed by prometheus_client, /status.json and the page agree")
