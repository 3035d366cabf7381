"""The stamped test source shared by the benchmark servers and the load generator.

Every frame carries its capture time (Unix time in 0.1 ms ticks, 48 bits) plus a 16-bit check,
drawn as 4 rows x 16 columns of black/white blocks in a band over the top quarter of the
picture. The blocks are big (1/16 of the width, 1/16 of the height), so the stamp survives JPEG
at any usual quality and decoding at reduced size (``cv2.IMREAD_REDUCED_GRAYSCALE_4`` / ``_8``) or a
client variant scaled down to 1/4. The rest of the picture is camstream's own moving test card
with a fixed noise texture added, so JPEG sizes and encode costs are close to a real webcam's.

Also here: tiny readers of ``/proc/<pid>/...`` (CPU time, RSS, threads, fds) used by the
benchmark driver, the load generator and the soak test.
"""

from __future__ import annotations

import os
import time

import cv2
import numpy as np

from camstream.capture.testpattern import TestPattern

ROWS, COLS = 4, 16
BITS = ROWS * COLS  # 48 bits of time + 16 bits of check
_TIME_BITS = 48
_NOISE_AMPLITUDE = 28  # gives ~35 KB / ~100 KB / ~200 KB JPEGs at 480p / 720p / 1080p, q80


def _check(ticks: int) -> int:
    return (ticks ^ (ticks >> 16) ^ (ticks >> 32) ^ 0x5A5A) & 0xFFFF


def band_height(height: int) -> int:
    return height // 4


TICKS_PER_S = 10_000  # the stamp counts 0.1 ms ticks: 2**48 of them last ~890 years


def stamp(image: np.ndarray, ticks: int) -> None:
    """Draw ``ticks`` (Unix time in ticks, see TICKS_PER_S) into the top band of ``image``."""
    word = ((ticks & ((1 << _TIME_BITS) - 1)) << 16) | _check(ticks)
    height, width = image.shape[:2]
    for r in range(ROWS):
        y0, y1 = r * height // (4 * ROWS), (r + 1) * height // (4 * ROWS)
        for c in range(COLS):
            bit = (word >> (BITS - 1 - (r * COLS + c))) & 1
            x0, x1 = c * width // COLS, (c + 1) * width // COLS
            image[y0:y1, x0:x1] = 255 if bit else 0


def read_stamp(gray: np.ndarray) -> int | None:
    """The stamp (ticks) of a (possibly reduced-size) grayscale decode, or None if unreadable.

    Samples the centre 3x3 pixels of each block; positions are fractions of the image size,
    so any decode scale works as long as a block is a few pixels across.
    """
    height, width = gray.shape[:2]
    word = 0
    for r in range(ROWS):
        y = int((r + 0.5) * height / (4 * ROWS))
        for c in range(COLS):
            x = int((c + 0.5) * width / COLS)
            patch = gray[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2]
            word = (word << 1) | (1 if float(patch.mean()) >= 128 else 0)
    ticks, check = word >> 16, word & 0xFFFF
    if _check(ticks) != check:
        return None
    return ticks


def decode_stamp(jpeg: bytes | memoryview, reduce: int = 4) -> float | None:
    """The capture time (Unix seconds) stamped in one JPEG file, decoded at 1/``reduce`` size."""
    flag = {2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
            8: cv2.IMREAD_REDUCED_GRAYSCALE_8}[reduce]
    gray = cv2.imdecode(np.frombuffer(jpeg, np.uint8), flag)
    if gray is None:
        return None
    ticks = read_stamp(gray)
    return None if ticks is None else ticks / TICKS_PER_S


class FrameSource:
    """Stamped frames of a moving test card: ``frame(i)`` returns a new BGR array.

    The stamp is the wall-clock time taken just before it is drawn, i.e. the "capture time";
    everything slow (card, noise) is drawn before that. Cost per frame: ~1 ms at 640x480,
    ~3 ms at 1920x1080 (one copy, one add, a few small drawings).
    """

    def __init__(self, width: int, height: int, noise: int = _NOISE_AMPLITUDE) -> None:
        self.width, self.height = width, height
        self._pattern = TestPattern(width, height)
        rng = np.random.default_rng(12345)
        self._noise = (
            rng.integers(0, noise + 1, (height, width, 3), dtype=np.uint8) if noise else None
        )

    def frame(self, index: int, fps: float) -> tuple[np.ndarray, float]:
        """Frame ``index`` and its stamped capture time (``time.time()`` seconds)."""
        image = self._pattern.render(index, fps)
        if self._noise is not None:
            cv2.add(image, self._noise, dst=image)
        captured = time.time()
        stamp(image, int(captured * TICKS_PER_S))
        return image, captured


# -- /proc readers -----------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of ``pid`` so far, in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (kB) and Threads of ``pid`` from /proc/<pid>/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM", "Threads"):
                out[name] = int(value.split()[0])
    return out


def system_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, all cores (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return busy / CLOCK_TICKS, steal / CLOCK_TICKS


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
