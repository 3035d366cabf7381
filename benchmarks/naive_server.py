"""The naive baseline: the seed's minimal server, one capture and one encode per client.

Written the way the minimal example at the end of the project's seed protocol document works:
a ``websockets`` asyncio server whose handler, per connection, loops "capture" (here: render the
same stamped test card camstream gets, ``stamp.FrameSource``), ``cv2.imencode``, ``send``,
``sleep(1/30)``. The only changes: the JPEG quality is set to camstream's default (80) instead of
OpenCV's 95, so both servers send the same bytes; ``?fps=`` picks the sleep; and the same stdio
side channel as ``stamped_server.py`` (``READY``, ``stats`` -> ``STATS <json>``, ``quit``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import stat
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

import cv2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stamp import FrameSource  # noqa: E402
from websockets.asyncio.server import serve  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

COUNTERS = {"frames_encoded": 0, "frames_sent": 0, "clients": 0}


async def main_async(args: argparse.Namespace) -> None:
    params = [cv2.IMWRITE_JPEG_QUALITY, args.quality]

    async def serve_webcam(websocket) -> None:  # type: ignore[no-untyped-def]
        query = parse_qs(urlsplit(websocket.request.path).query)
        fps = float(query.get("fps", [args.fps])[0])
        cap = FrameSource(args.width, args.height)  # "cv2.VideoCapture(0)": one per client
        COUNTERS["clients"] += 1
        index = 0
        try:
            while True:
                frame, _ = cap.frame(index, args.fps)
                index += 1
                _, buffer = cv2.imencode(".jpg", frame, params)
                COUNTERS["frames_encoded"] += 1
                await websocket.send(buffer.tobytes())
                COUNTERS["frames_sent"] += 1
                await asyncio.sleep(1 / fps)
        except ConnectionClosed:
            pass
        finally:
            COUNTERS["clients"] -= 1

    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))

    def read_commands() -> None:
        for line in sys.stdin:
            if line.strip() == "stats":
                print("STATS " + json.dumps({**COUNTERS, "t": time.time()}), flush=True)
            elif line.strip() == "quit":
                break
        else:
            if not stat.S_ISFIFO(os.fstat(0).st_mode):
                return  # stdin is /dev/null or a terminal: only signals stop us
        loop.call_soon_threadsafe(lambda: stop.done() or stop.set_result(None))

    # compression=None: the seed's client never offers permessage-deflate anyway; this just
    # keeps the server from ever spending CPU on it.
    async with serve(serve_webcam, "127.0.0.1", args.port, compression=None,
                     max_size=2**20) as server:
        port = server.sockets[0].getsockname()[1]
        threading.Thread(target=read_commands, name="naive-stdin", daemon=True).start()
        print(f"READY ws://127.0.0.1:{port}/ {os.getpid()}", flush=True)
        await stop  # leaving the block closes every connection (1001) and waits for handlers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--quality", type=int, default=80)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
