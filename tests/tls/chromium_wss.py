"""Headless Chromium opens a page that opens wss:// to the daemon, sends a message and
puts the echo in its title; this drives Chromium over the DevTools protocol (its own
WebSocket) and waits for that title, so the check does not depend on how fast the page's
network is. The daemon's certificate is trusted by its key's SPKI hash, as a browser
trusts a CA.
Usage: chromium_wss.py CHROMIUM SPKI_SHA256_BASE64 PAGE_URL [EXPECTED_TITLE]
(exit 1 unless the page's title becomes EXPECTED_TITLE, by default the echo)"""
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import websockets

chromium, spki, page = sys.argv[1:4]
expected = sys.argv[4] if len(sys.argv) > 4 else "echoed: hello from chromium"
profile = tempfile.mkdtemp()
browser = subprocess.Popen(
    [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
     "--disable-background-networking", "--disable-component-update", "--disable-sync",
     "--user-data-dir=" + profile, "--ignore-certificate-errors-spki-list=" + spki,
     "--host-resolver-rules=MAP localhost 127.0.0.1", "--remote-debugging-port=0", "about:blank"],
    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def devtools_port():
    deadline = time.time() + 30
    for line in browser.stderr:
        found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
        if found:
            # Keep reading its log, so that it never blocks writing it.
            threading.Thread(target=lambda: [None for _ in browser.stderr], daemon=True).start()
            return int(found.group(1))
        if time.time() > deadline:
            break
    raise SystemExit("FAILED: Chromium did not start its DevTools endpoint")


async def main():
    port = devtools_port()
    with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port, timeout=10) as answer:
        target = next(t for t in json.load(answer) if t["type"] == "page")
    async with websockets.connect(target["webSocketDebuggerUrl"], max_size=None) as cdp:
        ids = iter(range(1, 1 << 30))

        async def call(method, **params):
            sent = next(ids)
            await cdp.send(json.dumps({"id": sent, "method": method, "params": params}))
            while True:
                message = json.loads(await cdp.recv())
                if message.get("id") == sent:
                    return message.get("result", {})

        await call("Page.navigate", url=page)
        deadline = time.time() + 30
        title = ""
        while time.time() < deadline:
            result = await call("Runtime.evaluate", expression="document.title")
            title = result.get("result", {}).get("value", "")
            if title.startswith("echoed:") or title == "error":
                break
            await asyncio.sleep(0.1)
        return title


try:
    title = asyncio.run(main())
finally:
    browser.terminate()
    try:
        browser.wait(timeout=10)
    except subprocess.TimeoutExpired:
        browser.kill()
    shutil.rmtree(profile, ignore_errors=True)
if title != expected:
    print("FAILED: the page's title is %r" % title, file=sys.stderr)
    sys.exit(1)
