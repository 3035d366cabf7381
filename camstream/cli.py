"""The ``camstream`` command. The only place in camstream that configures logging or exits."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import re
import signal
import sys
from typing import Sequence

from . import __version__
from .camera import describe_source
from .errors import CamstreamError, ConfigError, SourceError
from .server import GODOT_MAX_MESSAGE, Streamer

logger = logging.getLogger(__name__)

AUTO_SOURCE = "auto"
# All of them install the same cv2 package; with two, cv2 is a mix of both (setup.py, README).
OPENCV_WHEELS = (
    "opencv-python", "opencv-python-headless", "opencv-contrib-python",
    "opencv-contrib-python-headless",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="camstream",
        description="Stream a camera, a video file or stream, or a test pattern over WebSocket "
        "(JSON metadata + binary JPEG frames).",
    )
    parser.add_argument(
        "--source", default=AUTO_SOURCE,
        help="camera index (0), video file, stream URL, or 'test' for the built-in test "
        "pattern. Default 'auto': camera 0, or the test pattern if there is no camera.",
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0: any)")
    parser.add_argument("--fps", type=float, default=30.0, help="camera frame rate (default 30)")
    parser.add_argument("--width", type=int, help="requested frame width")
    parser.add_argument("--height", type=int, help="requested frame height")
    parser.add_argument("--quality", type=int, default=80, help="JPEG quality 1-100 (default 80)")
    parser.add_argument("--no-loop", action="store_true", help="play a video file only once")
    parser.add_argument(
        "--max-bytes", type=int, default=GODOT_MAX_MESSAGE, metavar="BYTES",
        help="largest JPEG sent to WebSocket clients that do not ask for another limit "
        f"(default {GODOT_MAX_MESSAGE}: what Godot's WebSocketPeer takes by default; "
        "0: no limit). Clients ask with ?max_bytes=; the bundled clients ask for 0",
    )
    security = parser.add_argument_group("security")
    security.add_argument(
        "--token", default=os.environ.get("CAMSTREAM_TOKEN") or None,
        help="require this token (?token= or Authorization: Bearer); default $CAMSTREAM_TOKEN",
    )
    security.add_argument("--allow-origin", action="append", metavar="ORIGIN",
                          help="admit browser pages from this origin (repeatable)")
    security.add_argument("--max-clients", type=int, help="most viewers at once (more get 1013)")
    security.add_argument(
        "--max-variants", type=int, default=4, metavar="N",
        help="distinct sizes/qualities encoded at once besides the default (default 4); "
        "a viewer asking for another gets the nearest one in use",
    )
    security.add_argument("--certfile", help="TLS certificate (PEM): serve wss://")
    security.add_argument("--keyfile", help="TLS private key (PEM), if not in --certfile")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper,
                        help="how much to log on stderr (default INFO: start, stop, clients "
                        "coming and going; DEBUG adds every connection's details)")
    parser.add_argument("--version", action="version", version=f"camstream {__version__}")
    return parser


def _make_streamer(args: argparse.Namespace, source: object) -> Streamer:
    return Streamer(
        source,  # type: ignore[arg-type]
        host=args.host, port=args.port, fps=args.fps, width=args.width, height=args.height,
        quality=args.quality, max_bytes=args.max_bytes, loop=not args.no_loop, token=args.token,
        allowed_origins=args.allow_origin, max_clients=args.max_clients,
        max_variants=args.max_variants, certfile=args.certfile, keyfile=args.keyfile,
    )


def _start(args: argparse.Namespace) -> Streamer:
    if args.source != AUTO_SOURCE:
        return _make_streamer(args, args.source).start()
    try:
        return _make_streamer(args, 0).start()
    except SourceError:
        logger.warning("no camera found at index 0: streaming the built-in test pattern")
        return _make_streamer(args, "test").start()


def _with_option_names(message: str, parser: argparse.ArgumentParser) -> str:
    """The library names its arguments (``max_clients``); say the options (``--max-clients``)."""
    for action in parser._actions:
        flags = [f for f in action.option_strings if f.startswith("--")]
        if flags and action.dest != "help":
            message = re.sub(rf"(?<![\w-]){re.escape(action.dest)}\b", flags[0], message)
    return message


def _warn_if_several_opencv_wheels() -> None:
    installed = []
    for name in OPENCV_WHEELS:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        installed.append(name)
    if len(installed) > 1:
        logger.warning(
            "several OpenCV wheels are installed (%s): they all write the same cv2 module, "
            "which is then a mix of them. Remove them (pip uninstall -y %s), then install one: "
            "opencv-python on a desktop, opencv-python-headless on a server (README: Install)",
            ", ".join(installed), " ".join(installed),
        )


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.certfile is None and args.keyfile is not None:
        parser.error("--keyfile needs --certfile")
    if args.source.strip().lower() == "push":
        parser.error(
            "--source push is for programs that hand frames to Streamer('push').publish(); "
            "the command has none to hand. Use a camera index, a video file, a stream URL or "
            "'test'"
        )
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _warn_if_several_opencv_wheels()
    # SIGTERM (service managers, docker stop) stops as cleanly as Ctrl+C.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    streamer = None
    try:
        streamer = _start(args)
        camera = streamer.camera
        print(
            f"camstream {__version__}: streaming {describe_source(camera.source)} "
            f"{camera.width}x{camera.height} at {camera.fps:g} fps on {streamer.url} "
            f"(Ctrl+C to stop)",
            flush=True,
        )
        streamer.serve_forever()
    except ConfigError as exc:
        print(f"camstream: error: {_with_option_names(str(exc), parser)}", file=sys.stderr)
        return 1
    except CamstreamError as exc:
        print(f"camstream: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before serve_forever() took over Ctrl+C: still stop cleanly
        pass
    finally:
        if streamer is not None:
            streamer.stop()
    return 0
