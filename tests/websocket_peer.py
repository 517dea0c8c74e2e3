"""
A real WebSocket server (the ``websockets`` package) for the tunnel tests: ``python websocket_peer.py PORT``.
Every message is echoed back; ``/close`` closes from the server's side with code 4001 after its first message.
A plain HTTP request (no upgrade) gets websockets' own 426/400 answer.
"""

import asyncio
import sys

from websockets.asyncio.server import serve


async def handler(ws):
    async for message in ws:
        await ws.send(message)
        if ws.request.path == "/close":
            await ws.close(4001, "server closes")
            return


async def main(port):
    async with serve(handler, "127.0.0.1", port, max_size=None, compression=None):
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
