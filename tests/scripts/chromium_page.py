"""Headless Chromium opens a page and this waits (30 s at most) until a JavaScript
expression on it has the value expected, driving Chromium over the DevTools protocol (its
own WebSocket), so that a check does not depend on how fast the page's network is. With an
SPKI hash, a server certificate with that key is trusted, as a browser trusts a CA.
Usage: chromium_page.py CHROMIUM PAGE_URL EXPRESSION EXPECTED [SPKI_SHA256_BASE64]
(exit 1, printing the last value, unless EXPRESSION's value becomes EXPECTED). With
SCREENSHOT=file.png in the environment, the whole page as it then looks is kept in that file."""
import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import websockets

chromium, page, expression, expected = sys.argv[1:5]
spki = sys.argv[5] if len(sys.argv) > 5 else None
profile = tempfile.mkdtemp()
browser = subprocess.Popen(
    [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
     "--disable-background-networking", "--disable-component-update", "--disable-sync",
     "--user-data-dir=" + profile, "--host-resolver-rules=MAP localhost 127.0.0.1",
     "--remote-debugging-port=0", "--window-size=1024,768"]
    + (["--ignore-certificate-errors-spki-list=" + spki] if spki else []) + ["about:blank"],
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
        value = ""
        while time.time() < deadline:
            result = await call("Runtime.evaluate", expression=expression)
            value = str(result.get("result", {}).get("value", ""))
            if value == expected:
                break
            await asyncio.sleep(0.1)
        if os.environ.get("SCREENSHOT"):
            size = (await call("Page.getLayoutMetrics"))["cssContentSize"]
            shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                              clip={"x": 0, "y": 0, "width": size["width"],
                                    "height": size["height"], "scale": 1})
            with open(os.environ["SCREENSHOT"], "wb") as out:
                out.write(base64.b64decode(shot["data"]))
        return value


try:
    value = asyncio.run(main())
finally:
    browser.terminate()
    try:
        browser.wait(timeout=10)
    except subprocess.TimeoutExpired:
        browser.kill()
    shutil.rmtree(profile, ignore_errors=True)
if value != expected:
    print("FAILED: %s is %r, not %r" % (expression, value, expected), file=sys.stderr)
    sys.exit(1)
