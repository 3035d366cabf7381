"""Passthrough frames without Huffman tables, decoded by the real clients.

Many UVC webcams send MJPEG frames with no DHT segment: the decoder is expected to use the
standard tables of the JPEG spec (Annex K), as the MJPEG convention says. camstream passes such
frames through untouched, so every client must cope: real OpenCV, real Chromium (the viewer page
and an ``<img>``) and a real headless Godot 4 (``Image.load_jpg_from_buffer``) decode them here.

The DHT-less files are made from ``cv2.imencode`` output by cutting out its DHT segments;
OpenCV's libjpeg writes the standard tables (no ``optimize``), which the first test checks.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from conftest import TIMEOUT
from helpers import decode_jpeg
from test_browser import browser, page, wait_for  # noqa: F401 - fixtures
from test_godot import godot, godot_home, project, run_example, run_godot  # noqa: F401
from test_passthrough import Viewer, publishing, webcam_like_jpeg

_DHT = 0xC4
# JPEG spec Annex K.3, table K.3 (DC luminance): code counts per length, then the symbols.
_STANDARD_DC_LUMINANCE = bytes([0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, *range(12)])


def segments(jpeg: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, offset, length) of each marker segment before the scan."""
    pos = 2
    while True:
        marker = jpeg[pos + 1]
        (length,) = struct.unpack_from("!H", jpeg, pos + 2)
        yield marker, pos, length
        if marker == 0xDA:
            return
        pos += 2 + length


def without_huffman_tables(jpeg: bytes) -> bytes:
    """The same JPEG with its DHT segments cut out, as many UVC cameras send them."""
    out = bytearray(jpeg)
    for marker, pos, length in reversed(list(segments(jpeg))):
        if marker == _DHT:
            del out[pos : pos + 2 + length]
    assert _DHT not in [m for m, _, _ in segments(bytes(out))]
    return bytes(out)


@pytest.fixture(scope="module")
def sources() -> list[tuple[bytes, bytes]]:
    """(with DHT, without DHT) pairs of webcam-like 640x480 frames."""
    return [(jpeg, without_huffman_tables(jpeg)) for jpeg in map(webcam_like_jpeg, range(4))]


def test_opencv_writes_the_standard_tables_so_cutting_them_out_keeps_the_picture(
    sources,
) -> None:
    for with_dht, without_dht in sources:
        dht = [(pos, length) for marker, pos, length in segments(with_dht) if marker == _DHT]
        first_pos, first_length = dht[0]
        table = with_dht[first_pos + 5 : first_pos + 2 + first_length]
        assert with_dht[first_pos + 4] == 0x00 and table == _STANDARD_DC_LUMINANCE
        assert len(without_dht) < len(with_dht)
        assert np.array_equal(decode_jpeg(without_dht), decode_jpeg(with_dht))


def test_dht_less_frames_pass_through_untouched_and_decode_in_opencv(
    streamer_factory, sources
) -> None:
    streamer = streamer_factory("push", fps=30)
    with Viewer(streamer) as viewer:
        for with_dht, without_dht in sources:
            assert streamer.publish_jpeg(without_dht) is not None
            got = viewer.next_frame()
            assert got == without_dht
            assert np.array_equal(decode_jpeg(got), decode_jpeg(with_dht))
        # Re-encoding (another size) decodes them too.
        viewer.ws.send('{"type": "config", "width": 320}')
        assert viewer.next_text("metadata")["width"] == 320
        streamer.publish_jpeg(sources[0][1])
        assert decode_jpeg(viewer.next_frame()).shape == (240, 320, 3)
    assert streamer.stats()["frames_dropped_corrupt"] == 0


BROWSER_DECODE = """async () => {
    const response = await fetch("/snapshot.jpg");
    const blob = await response.blob();
    const bitmap = await createImageBitmap(blob);
    const img = new Image();
    img.src = URL.createObjectURL(blob);
    await img.decode();
    const canvas = document.createElement("canvas");
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    const context = canvas.getContext("2d");
    context.drawImage(img, 0, 0);
    const pixel = Array.from(context.getImageData(320, 240, 1, 1).data.slice(0, 3));
    return {bytes: blob.size, bitmap: [bitmap.width, bitmap.height],
            img: [img.naturalWidth, img.naturalHeight], pixel};
}"""


def test_dht_less_frames_decode_in_chromium(streamer_factory, sources, page: Any) -> None:  # noqa: F811
    streamer = streamer_factory("push", fps=30)
    with_dht, without_dht = sources[0]
    with publishing(streamer, [without_dht]):
        page.goto(f"http://127.0.0.1:{streamer.port}/", timeout=TIMEOUT * 3000)
        # The viewer page draws streamed frames (createImageBitmap on each binary message).
        wait_for(page, "() => camstreamStats.frames >= 10")
        assert (page.evaluate("() => [camstreamStats.width, camstreamStats.height]")) == [640, 480]
        seen = page.evaluate(BROWSER_DECODE)
    assert seen["bytes"] == len(without_dht)  # the snapshot is the frame as published
    assert seen["bitmap"] == seen["img"] == [640, 480]
    expected = decode_jpeg(with_dht)[240, 320][::-1]  # BGR -> RGB
    assert np.abs(np.array(seen["pixel"], int) - expected.astype(int)).max() <= 8, seen
    assert streamer.camera.decodes == 0 and streamer.stats()["encodes"] == 0


GODOT_SCRIPT = """\
extends SceneTree
# Seed-style WebSocketPeer client: decodes binary messages with Image.load_jpg_from_buffer and
# prints one DHT line per frame: byte count, error code, size, the centre pixel as 0-255 RGB.

var ws := WebSocketPeer.new()
var frames := 0


func _initialize() -> void:
	ws.connect_to_url(OS.get_cmdline_user_args()[0])


func _process(_delta: float) -> bool:
	ws.poll()
	while ws.get_available_packet_count() > 0:
		var data: PackedByteArray = ws.get_packet()
		if ws.was_string_packet():
			continue
		var image := Image.new()
		var err := image.load_jpg_from_buffer(data)
		var c := image.get_pixel(320, 240) if err == OK else Color()
		print("DHT bytes=%d err=%d size=%dx%d pixel=%d,%d,%d" % [
			data.size(), err, image.get_width(), image.get_height(),
			roundi(c.r * 255), roundi(c.g * 255), roundi(c.b * 255)])
		frames += 1
	return frames >= 5 or ws.get_ready_state() == WebSocketPeer.STATE_CLOSED
"""


def test_dht_less_frames_decode_in_godot(
    streamer_factory, sources, godot: str, godot_home: dict, project: Path  # noqa: F811
) -> None:
    script = project / "dht_test.gd"
    script.write_text(GODOT_SCRIPT)
    streamer = streamer_factory("push", fps=30)
    with_dht, without_dht = sources[1]
    with publishing(streamer, [without_dht]):
        result = run_godot(
            godot, godot_home,
            ["--path", str(project), "--script", "res://dht_test.gd", "--", streamer.url],
        )
    lines = re.findall(
        r"^DHT bytes=(\d+) err=(\d+) size=(\d+)x(\d+) pixel=(\d+),(\d+),(\d+)$",
        result.stdout, re.MULTILINE,
    )
    assert len(lines) == 5, result.stdout
    expected = decode_jpeg(with_dht)[240, 320][::-1].astype(int)
    for size, err, width, height, *pixel in lines:
        assert (int(size), int(err), int(width), int(height)) == (len(without_dht), 0, 640, 480)
        assert np.abs(np.array(pixel, int) - expected).max() <= 8, (pixel, expected)
    assert streamer.camera.decodes == 0 and streamer.stats()["encodes"] == 0


def test_the_godot_example_streams_passthrough_frames(
    streamer_factory, sources, godot: str, godot_home: dict, project: Path  # noqa: F811
) -> None:
    """The example project, unchanged, on untouched DHT-less frames (metadata quality null)."""
    streamer = streamer_factory("push", fps=30)
    with publishing(streamer, [without for _, without in sources]):
        result, outcome, fields = run_example(
            godot, godot_home, project, streamer.url, "--quit-after-frames=30"
        )
    assert "SCRIPT ERROR" not in result.stdout, result.stdout
    assert result.returncode == 0 and outcome == "OK", result.stdout
    assert fields["size"] == "640x480" and fields["decode_errors"] == "0", result.stdout
    assert '"quality":null' in result.stdout, result.stdout
    assert streamer.camera.decodes == 0
