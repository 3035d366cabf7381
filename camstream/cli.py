"""The ``camstream`` command. The only place in camstream that configures logging or exits."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import re
import signal
import sys
from typing import NoReturn, Sequence

from . import __version__, logs
from .cameraset import CAMERA_NAME
from .capture.camera import describe_source
from .capture.controls import CONTROLS
from .capture.devices import BACKENDS, PIXEL_FORMATS
from .capture.discovery import format_cameras, list_cameras
from .errors import CamstreamError, ConfigError
from .greeting import start_line
from .opencv_wheels import OPENCV_WHEELS
from .protocol import GODOT_MAX_MESSAGE
from .server import Streamer

logger = logs.get_logger(__name__)

AUTO_SOURCE = "auto"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="camstream",
        # No abbreviations: "--check" must not start a server that "--check-config" would not.
        allow_abbrev=False,
        description="Stream a camera, a video file or stream, or a test pattern over WebSocket "
        "(JSON metadata + binary JPEG frames).",
    )
    parser.add_argument(
        "--source", action="append", metavar="[NAME=]SOURCE",
        help="camera index (0), video file, stream URL, or 'test' for the built-in test "
        "pattern. Default $CAMSTREAM_SOURCE (keeps a URL's token off the command line), else "
        "'auto': camera 0, or the test pattern if there is no camera. Several cameras on one "
        "port: name each, --source front=0 --source rear=/dev/v4l/by-id/... (served at "
        "ws://host:port/front, /front/stream.mjpg, ...; the unnamed paths serve the first; "
        "--list-cameras prints lines to paste)",
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
    camera = parser.add_argument_group("camera")
    camera.add_argument(
        "--list-cameras", action="store_true",
        help="list the cameras (index, name, device paths, formats and rates) and exit",
    )
    camera.add_argument(
        "--pixel-format", default="auto", metavar="FORMAT",
        help=f"camera pixel format: {', '.join(PIXEL_FORMATS)} or a FOURCC (default auto: "
        "MJPEG if the camera has it, passed through without re-encoding)",
    )
    camera.add_argument(
        "--backend", default="auto", choices=["auto", *BACKENDS],
        help="OpenCV backend (default auto: V4L2 on Linux, DirectShow on Windows, AVFoundation "
        "on macOS, FFmpeg for files and URLs)",
    )
    camera.add_argument(
        "--camera-set", action="append", metavar="NAME=VALUE", dest="camera_settings",
        help=f"set a camera control after every open (repeatable): {', '.join(CONTROLS)}",
    )
    camera.add_argument(
        "--on-demand", nargs="?", const=True, type=_grace_seconds, metavar="SECONDS",
        help="open each camera only while someone watches it, and release it SECONDS after "
        "its last viewer leaves (default 10; 0: at once): its light goes off and other "
        "programs may use it",
    )
    camera.add_argument(
        "--camera-option", action="append", metavar="NAME:KEY=VALUE", default=[],
        help="a setting of one named camera (repeatable), for KEY in "
        f"{', '.join(_CAMERA_OPTIONS)}; e.g. --camera-option rear:width=1280 "
        "--camera-option rear:camera-set=exposure=100. The options above are every camera's",
    )
    security = parser.add_argument_group("security")
    security.add_argument(
        "--token", default=os.environ.get("CAMSTREAM_TOKEN") or None,
        help="require this token (?token= or Authorization: Bearer); default $CAMSTREAM_TOKEN",
    )
    security.add_argument("--allow-origin", action="append", metavar="ORIGIN",
                          help="admit browser pages from this origin (repeatable)")
    security.add_argument(
        "--max-clients", type=int, metavar="N",
        help="most viewers at once, WebSocket and MJPEG together (more get 1013 / 503; "
        "default and 0: no limit)",
    )
    security.add_argument(
        "--max-connections-per-address", type=int, default=32, metavar="N",
        help="connections one client address may hold (default 32; IPv6: per /64; 0: no "
        "limit). Through a --trusted-proxy, counted by the forwarded address: raise it when "
        "many viewers share one address (NAT, a test machine)",
    )
    security.add_argument(
        "--max-variants", type=int, default=4, metavar="N",
        help="distinct sizes/qualities encoded at once besides the default (default 4); "
        "a viewer asking for another gets the nearest one in use",
    )
    security.add_argument("--certfile", help="TLS certificate (PEM): serve wss://")
    security.add_argument("--keyfile", help="TLS private key (PEM), if not in --certfile")
    security.add_argument(
        "--trusted-proxy", action="append", metavar="ADDR",
        help="believe X-Forwarded-For/-Proto/-Host (or Forwarded) from this reverse proxy's "
        "address or CIDR network (repeatable), e.g. 127.0.0.1 for nginx on this machine",
    )
    parser.add_argument(
        "--check-config", action="store_true",
        help="check every option and exit (for ExecStartPre): prints OK or one error line, "
        "exit status 0 or 1. Opens no camera, stream or port; a file source must exist.",
    )
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper,
                        help="how much to log on stderr (default INFO: start, stop, clients "
                        "coming and going; DEBUG adds every connection's details)")
    parser.add_argument("--version", action="version", version=f"camstream {__version__}")
    return parser


def _grace_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seconds, not {text!r}") from None
    if not 0 <= seconds <= 86400:
        raise argparse.ArgumentTypeError(f"0 to 86400 seconds, not {text}")
    return seconds


_CAMERA_OPTIONS = {  # --camera-option KEY -> (CameraConfig field, how the value is read)
    "width": ("width", int), "height": ("height", int), "fps": ("fps", float),
    "quality": ("quality", int), "pixel-format": ("pixel_format", str),
    "backend": ("backend", str), "on-demand": ("on_demand", str), "loop": ("loop", str),
    "camera-set": ("camera_settings", str),
}
_OFF_WORDS, _ON_WORDS = ("off", "no", "false", "0"), ("on", "yes", "true", "1")


def _sources(parser: argparse.ArgumentParser, args: argparse.Namespace
             ) -> tuple[str, dict[str, dict[str, object]] | None]:
    """The source, or the named cameras (name -> CameraConfig fields), that ``--source`` (and
    ``--camera-option``) ask for; ``parser.error()`` on a mix of named and unnamed sources."""
    given = args.source or [os.environ.get("CAMSTREAM_SOURCE") or AUTO_SOURCE]
    named = [_named_source(value) for value in given]
    for value in given:
        if _looks_misnamed(value):
            parser.error(
                f"--source {value!r}: {value.partition('=')[0]!r} is no camera name (1 to 32 "
                "letters, digits, '-' or '_') and there is no file of that name"
            )
    if all(name is None for name, _ in named):
        if args.camera_option:
            parser.error("--camera-option is for named cameras: --source NAME=SOURCE")
        return given[-1], None  # a later --source wins, as ever
    if any(name is None for name, _ in named):
        parser.error("name every --source when there are several cameras: --source front=0 "
                     "--source rear=1")
    cameras: dict[str, dict[str, object]] = {}
    for name, value in named:
        assert name is not None
        if name.lower() in (taken.lower() for taken in cameras):
            parser.error(f"two cameras named {name!r} in --source (in any case)")
        cameras[name] = {"source": value}
    for option in args.camera_option:
        _camera_option(parser, cameras, option)
    return AUTO_SOURCE, cameras


def _named_source(value: str) -> tuple[str | None, str]:
    """``front=0`` -> ``("front", "0")``; a source of its own (``0``, ``clip.mp4``, a URL with
    ``=`` in its query, an existing file whose name has one) -> ``(None, value)``."""
    name, equals, source = value.partition("=")
    if not equals or not CAMERA_NAME.fullmatch(name) or os.path.exists(value):
        return None, value
    return name, source


def _looks_misnamed(value: str) -> bool:
    """``front.cam=0``: meant as NAME=SOURCE (no path or URL before the ``=``, something
    after it) with a name that is none, and no file of that name either."""
    name, equals, source = value.partition("=")
    return (
        bool(equals and name and source) and not CAMERA_NAME.fullmatch(name)
        and not any(c in name for c in "/\\:") and not os.path.exists(value)
    )


def _camera_option(parser: argparse.ArgumentParser, cameras: dict[str, dict[str, object]],
                   option: str) -> None:
    name, colon, setting = option.partition(":")
    key, equals, text = setting.partition("=")
    if not colon or not equals:
        parser.error(f"--camera-option {option!r}: use NAME:KEY=VALUE")
    if name not in cameras:
        parser.error(f"--camera-option {option!r}: no camera named {name!r} in --source")
    if key not in _CAMERA_OPTIONS:
        parser.error(f"--camera-option {option!r}: KEY is one of {', '.join(_CAMERA_OPTIONS)}")
    field, kind = _CAMERA_OPTIONS[key]
    value: object
    try:
        value = kind(text)
    except ValueError:
        parser.error(f"--camera-option {option!r}: {key} takes a number")
    if key == "camera-set":
        controls = cameras[name].setdefault("camera_settings", [])
        assert isinstance(controls, list)
        controls.append(text)
        return
    if key in ("on-demand", "loop"):
        value = _switch(parser, option, key, text)
    cameras[name][field] = value


def _switch(parser: argparse.ArgumentParser, option: str, key: str, text: str) -> bool | float:
    """``on-demand`` (seconds, on or off) or ``loop`` (on or off) of ``--camera-option``."""
    word = text.lower()
    if key == "on-demand" and (word not in _OFF_WORDS + _ON_WORDS or word == "0"):
        try:
            return _grace_seconds(text)  # "0" is a grace of 0 s, not "off"
        except argparse.ArgumentTypeError as exc:
            parser.error(f"--camera-option {option!r}: on-demand takes {exc}, on or off")
    if word not in _OFF_WORDS + _ON_WORDS:
        parser.error(f"--camera-option {option!r}: {key} is on or off")
    return word in _ON_WORDS


def _make_streamer(
    args: argparse.Namespace, source: object,
    sources: dict[str, dict[str, object]] | None = None,
) -> Streamer:
    return Streamer(
        source,  # type: ignore[arg-type]
        sources=sources, on_demand=args.on_demand,
        host=args.host, port=args.port, fps=args.fps, width=args.width, height=args.height,
        quality=args.quality, max_bytes=args.max_bytes, loop=not args.no_loop,
        pixel_format=args.pixel_format, backend=args.backend,
        camera_settings=args.camera_settings, token=args.token,
        allowed_origins=args.allow_origin, max_clients=args.max_clients,
        max_connections_per_address=args.max_connections_per_address,
        max_variants=args.max_variants, certfile=args.certfile, keyfile=args.keyfile,
        trusted_proxies=args.trusted_proxy,
    )


def _start(args: argparse.Namespace, source: str,
           sources: dict[str, dict[str, object]] | None) -> Streamer:
    # "auto" (camera 0, else the test pattern) is the library's own default now.
    return _make_streamer(args, source, sources).start()


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


def _check_combinations(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[str, dict[str, dict[str, object]] | None]:
    """What argparse cannot check alone; ``parser.error()`` on a bad combination. Returns the
    source or the named cameras (see :func:`_sources`)."""
    if args.certfile is None and args.keyfile is not None:
        parser.error("--keyfile needs --certfile")
    source, sources = _sources(parser, args)
    given = [source] if sources is None else [str(c["source"]) for c in sources.values()]
    if any(value.strip().lower() == "push" for value in given):
        parser.error(
            "--source push is for programs that hand frames to Streamer('push').publish(); "
            "the command has none to hand. Use a camera index, a video file, a stream URL or "
            "'test'"
        )
    return source, sources


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--check-config" in argv:
        return check_config(parser, argv)
    args = parser.parse_args(argv)
    if args.list_cameras:
        print(format_cameras(list_cameras()), flush=True)
        return 0
    source, sources = _check_combinations(parser, args)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _warn_if_several_opencv_wheels()
    # SIGTERM (service managers, docker stop) stops as cleanly as Ctrl+C.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    streamer = None
    try:
        streamer = _start(args, source, sources)
        print(start_line(streamer), flush=True)
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


class _BadOption(Exception):
    """An option argparse refused, in --check-config mode (one line, no usage text)."""


def check_config(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    """``--check-config``: validate every option as a start would, without starting.

    Builds the Streamer (every range, the token, the TLS files, the trusted proxies) but opens
    no source and binds no port: at boot a camera may still be settling and a relay's upstream
    may be down, and camstream waits for both anyway. A file source must exist and be readable.
    Prints ``camstream: configuration OK`` (exit 0) or one ``camstream: error: ...`` line (1).
    """

    def refuse(message: str) -> NoReturn:
        raise _BadOption(message)

    parser.error = refuse  # type: ignore[method-assign]
    try:
        args = parser.parse_args(argv)
        source, sources = _check_combinations(parser, args)
        source = "test" if source == AUTO_SOURCE and sources is None else source
        _make_streamer(args, source, sources)  # validates; opens nothing until start()
        given = [source] if sources is None else [str(c["source"]) for c in sources.values()]
        for value in given:
            is_file = describe_source(value).startswith("file ")
            if is_file and not (os.path.isfile(value) and os.access(value, os.R_OK)):
                refuse(f"--source {value}: no such readable file")
    except (_BadOption, CamstreamError) as exc:
        message = _with_option_names(str(exc), parser) if isinstance(exc, ConfigError) else exc
        print(f"camstream: error: {' '.join(str(message).split())}", file=sys.stderr)
        return 1
    print("camstream: configuration OK", flush=True)
    return 0
