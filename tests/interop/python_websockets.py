"""Interop: Python's `websockets` client against the daemon's WebSocket plugin.
Usage: python python_websockets.py ws://127.0.0.1:PORT/  (exit 1 on any mismatch)."""
import asyncio
import sys

import websockets


async def main(url):
    checks = 0
    async with websockets.connect(url, compression=None) as ws:
        for message in ["héllo", "", "x" * 70000, b"\x00\xff" * 40000, b""]:
            await ws.send(message)
            echo = await ws.recv()
            assert echo == message and type(echo) is type(message), "echo of %r" % (message[:20],)
            checks += 1
        await (await ws.ping(b"interop"))
        checks += 1
    assert ws.close_code == 1000, ws.close_code
    # A client offering permessage-deflate gets none (not implemented) and still works.
    async with websockets.connect(url) as ws:
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        await ws.send("plain")
        assert await ws.recv() == "plain"
        checks += 1
    print("%d passed, 0 failed" % (checks + 1))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
