"""Which camera is which: camstream --list-cameras, its Linux fallback, camera CLI options."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TIMEOUT

from camstream.capture.discovery import CameraDescription, CameraMode, format_cameras, list_cameras

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "camstream", *args], capture_output=True, text=True,
        timeout=TIMEOUT * 3, env=env, stdin=subprocess.DEVNULL,
    )


def fake_linux(tmp_path: Path) -> tuple[Path, Path]:
    """A /sys/class/video4linux and /dev like a laptop with a UVC webcam and a USB camera."""
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    for node, name, index in [
        ("video0", "Integrated Camera: Integrated C", "0"),
        ("video1", "Integrated Camera: Integrated C", "1"),  # its metadata node
        ("video2", "HD Pro Webcam C920", "0"),
        ("media0", "not a video node", "0"),
    ]:
        (sysfs / node).mkdir(parents=True)
        (sysfs / node / "name").write_text(name + "\n")
        (sysfs / node / "index").write_text(index + "\n")
    by_id = dev / "v4l" / "by-id"
    by_id.mkdir(parents=True)
    for node in ("video0", "video1", "video2"):
        (dev / node).touch()
    (by_id / "usb-046d_HD_Pro_Webcam_C920-video-index0").symlink_to(dev / "video2")
    return sysfs, dev


def test_linux_fallback_lists_cameras_from_sysfs(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("the sysfs fallback is Linux only")
    sysfs, dev = fake_linux(tmp_path)
    cameras = list_cameras(use_libraries=False, sysfs=str(sysfs), dev=str(dev))
    assert [(c.index, c.name, c.path) for c in cameras] == [
        (0, "Integrated Camera: Integrated C", "/dev/video0"),
        (2, "HD Pro Webcam C920", "/dev/video2"),
    ]
    assert cameras[1].stable_paths == (
        str(dev / "v4l" / "by-id" / "usb-046d_HD_Pro_Webcam_C920-video-index0"),
    )
    assert cameras[0].stable_paths == ()


def test_no_video4linux_means_no_cameras(tmp_path: Path) -> None:
    assert list_cameras(use_libraries=False, sysfs=str(tmp_path / "none"),
                        dev=str(tmp_path)) == []
    assert format_cameras([]) == "no cameras found"


def test_format_shows_modes_by_pixel_format() -> None:
    camera = CameraDescription(
        2, "HD Pro Webcam C920", "/dev/video2", ("/dev/v4l/by-id/usb-C920-video-index0",),
        (CameraMode("YUYV", 640, 480, 30), CameraMode("YUYV", 1280, 720, 10),
         CameraMode("MJPEG", 640, 480, 30), CameraMode("MJPEG", 1280, 720, 30)),
    )
    assert format_cameras([camera]).splitlines() == [
        "2: HD Pro Webcam C920  /dev/video2",
        "     also /dev/v4l/by-id/usb-C920-video-index0",
        "     YUYV  640x480 30 fps, 1280x720 10 fps",
        "     MJPEG 640x480 30 fps, 1280x720 30 fps",
        "     --source hd-pro-webcam-c920=/dev/v4l/by-id/usb-C920-video-index0",
        "all on one port: camstream --source "
        "hd-pro-webcam-c920=/dev/v4l/by-id/usb-C920-video-index0",
    ]


def test_listed_sources_paste_into_the_command_as_named_cameras(tmp_path: Path) -> None:
    """Issue 21: what --list-cameras prints is what --source NAME=... takes."""
    from camstream.cli import _named_source, _sources, build_parser

    cameras = [
        CameraDescription(0, "Integrated Camera: Integrated C", "/dev/video0"),
        CameraDescription(2, "HD Pro Webcam C920", "/dev/video2", ("/dev/v4l/by-id/c920",)),
        CameraDescription(4, "HD Pro Webcam C920", "/dev/video4"),
        CameraDescription(6, "???", None),
    ]
    lines = format_cameras(cameras).splitlines()
    pasted = [line.split()[-1] for line in lines if line.startswith("     --source ")]
    assert pasted == [
        "integrated-camera-integr=/dev/video0", "hd-pro-webcam-c920=/dev/v4l/by-id/c920",
        "hd-pro-webcam-c920-2=/dev/video4", "camera6=6",
    ]
    assert [_named_source(p)[0] for p in pasted] == [p.split("=")[0] for p in pasted]
    args = build_parser().parse_args(lines[-1].split()[5:])  # after "all on one port: camstream"
    _, sources = _sources(build_parser(), args)
    assert sources is not None and [c["source"] for c in sources.values()] == [
        "/dev/video0", "/dev/v4l/by-id/c920", "/dev/video4", "6"]


def test_list_cameras_cli_exits_0_on_this_cameraless_machine() -> None:
    result = run_cli("--list-cameras")
    assert result.returncode == 0, result.stderr
    expected = format_cameras(list_cameras())
    assert result.stdout.strip() == expected
    if not os.path.isdir("/sys/class/video4linux"):
        assert expected == "no cameras found"


@pytest.mark.parametrize(
    "args, words",
    [
        (["--camera-set", "shutter=3"], ["unknown camera setting 'shutter'", "exposure"]),
        (["--camera-set", "exposure"], ["NAME=VALUE"]),
        (["--camera-set", "gain=inf"], ["gain", "number"]),
        (["--pixel-format", "rgb48x"], ["unknown pixel format"]),
        (["--source", ""], ["source is empty"]),
        (["--width", "40000"], ["width must be 16 to 8192"]),
    ],
)
def test_bad_camera_options_are_one_clear_line(args: list[str], words: list[str]) -> None:
    result = run_cli("--source", "test", "--port", "0", *args)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("camstream: error:"), result.stderr
    for word in words:
        assert word in lines[0]
    assert "Traceback" not in result.stderr
