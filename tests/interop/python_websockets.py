"""Interop: Python's `websockets` client against the daemon's WebSocket plugin.
Usage: python python_websockets.py ws://127.0.0.1:PORT/ [CA_FILE]  (exit 1 on any mismatch);
with a wss:// URL, CA_FILE is the authority its certificate is checked against."""
import asyncio
import ssl
import sys

import websockets


async def main(url, ca=None):
    tls = {"ssl": ssl.create_default_context(cafile=ca)} if ca else {}
    checks = 0
    async with websockets.connect(url, compression=None, **tls) as ws:
        for message in ["héllo", "", "x" * 70000, b"\x00\xff" * 40000, b""]:
            await ws.send(message)
            echo = await ws.recv()
            assert echo == message and type(echo) is type(message), "echo of %r" % (message[:20],)
            checks += 1
        await (await ws.ping(b"interop"))
        checks += 1
    assert ws.close_code == 1000, ws.close_code
    # websockets offers permessage-deflate by default (RFC 7692): agreed, and compressed
    # messages of every size come back whole.
    async with websockets.connect(url, **tls) as ws:
        agreed = ws.response.headers.get("Sec-WebSocket-Extensions") or ""
        assert agreed.startswith("permessage-deflate"), agreed
        for message in ["plain", "é" * 100000, b"\x01" * 300000, ""]:
            await ws.send(message)
            assert await ws.recv() == message, "compressed echo of %r" % (message[:10],)
            checks += 1
    print("%d passed, 0 failed" % (checks + 1))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
