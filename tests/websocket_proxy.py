#!/usr/bin/env python3
"""A generic WebSocket client as ssh's ProxyCommand, to show that a worker needs no evosync binary for the tunnel:
the `websockets` package (Debian's python3-websockets, or PyPI) and these few lines do what `evosync tunnel` does.

    ProxyCommand python3 websocket_proxy.py wss://HOST/api/sync/ssh API_KEY_FILE [CA_FILE]
"""
import asyncio
import os
import ssl
import sys

import websockets


async def main():
    url, key_file = sys.argv[1], sys.argv[2]
    with open(key_file) as f:
        key = f.read().strip()
    context = ssl.create_default_context(cafile=sys.argv[3] if len(sys.argv) > 3 else None)
    headers = {"X-Sync-API-Key": key}
    # websockets 14 renamed extra_headers to additional_headers.
    major = int(websockets.__version__.split(".")[0])
    header_arg = "additional_headers" if major >= 14 else "extra_headers"
    ws = await websockets.connect(url, ssl=context if url.startswith("wss:") else None, max_size=1 << 20,
                                  **{header_arg: headers})
    loop = asyncio.get_running_loop()

    async def upstream():
        while True:
            data = await loop.run_in_executor(None, os.read, 0, 65536)
            if not data:
                await ws.close()
                return
            await ws.send(data)

    async def downstream():
        async for message in ws:
            sys.stdout.buffer.write(message)
            sys.stdout.buffer.flush()

    tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)


try:
    asyncio.run(main())
except Exception as error:  # one readable line for ssh to show
    print(f"websocket_proxy: {error}", file=sys.stderr)
    os._exit(1)
# The executor's thread may still be blocked reading stdin.
os._exit(0)
