"""Interop: Python's `websockets` client through a WebSocket route to a TCP service (an
asyncio echo server this script starts): payloads go to the service as bytes and come back
as binary messages; the service's end closes the WebSocket with 1000.
Usage: python python_websockets_route.py ws://127.0.0.1:PORT/svc SERVICE_PORT"""
import asyncio
import sys

import websockets


async def main(url, port):
    async def echo_then_end(reader, writer):
        data = await reader.readexactly(12)  # "hello, tcp" + "!!"
        writer.write(data.upper())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo_then_end, "127.0.0.1", port)
    async with server:
        async with websockets.connect(url) as ws:
            await ws.send("hello, tcp")
            await ws.send(b"!!")
            got = b""
            while len(got) < 12:
                message = await ws.recv()
                assert isinstance(message, bytes), "binary messages: %r" % (message,)
                got += message
            assert got == b"HELLO, TCP!!", got
            try:
                await ws.recv()
                raise AssertionError("the service ended: the WebSocket should close")
            except websockets.ConnectionClosedOK:
                pass
        assert ws.close_code == 1000, ws.close_code
    print("route: 3 passed, 0 failed")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
