"""Micro-benchmark of the encode path: what one ``EncodeCache`` call costs, per case, in us.

The cases (one process each, so a checkout's modules never mix with another's):

* ``passthrough``: a JPEG frame for the default variant (the source's bytes, no encode): what
  every viewer of a webcam in MJPEG mode pays per frame.
* ``shared hit``: a pixel frame whose JPEG for the variant is already made: what the 2nd..Nth
  viewer of a variant pays per frame.
* ``made miss``: ``made()`` for a variant nobody made yet (the fan-out's question).
* ``encode 640x480``: a new frame each call, one encode (the 1st viewer of a variant); mostly
  OpenCV's time, shown to put the overhead in proportion.
* ``max_bytes 640x480``: a new noisy frame each call under a 20,000-byte limit (the search).

Best of ``--repeat`` runs of ``--number`` calls (the minimum is the least disturbed figure on
a shared machine). ``--root DIR`` measures another checkout the same way; ``--compare DIR``
measures this checkout and DIR in turn, ``--rounds`` times each, and shows the best of all
rounds side by side (before/after on a busy machine)::

    flock /tmp/camstream-bench.lock python benchmarks/encode_cache.py
    flock /tmp/camstream-bench.lock python benchmarks/encode_cache.py --compare /work/main
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

CASES = ("passthrough", "shared hit", "made miss", "encode 640x480", "max_bytes 640x480")

_CHILD = r"""
import json, sys, timeit
import numpy as np
import cv2
from camstream.capture.frame import Frame
from camstream.delivery.encoder import EncodeCache, Variant

number, repeat = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(1)
smooth = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 3)
noisy = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
jpeg = cv2.imencode(".jpg", smooth, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
results = {}

def best(call, n):
    return min(timeit.repeat(call, number=n, repeat=repeat)) / n * 1e6

cache = EncodeCache(default_max_bytes=65535, max_encodes_per_s=None)
jframe = Frame(1, jpeg=jpeg, width=640, height=480)
default = Variant(max_bytes=65535)
results["passthrough"] = best(lambda: cache.get(jframe, default), number)

pframe = Frame(2, smooth, 0.0, 0.0)
shared = Variant(width=320, quality=70)
cache.get(pframe, shared)
results["shared hit"] = best(lambda: cache.get(pframe, shared), number)
odd = Variant(width=200)
results["made miss"] = best(lambda: cache.made(pframe, odd), number)

seq = [10]
def encode_new(image, variant):
    seq[0] += 1
    cache.get(Frame(seq[0], image, 0.0, 0.0), variant)
n = max(number // 200, 10)
results["encode 640x480"] = best(lambda: encode_new(smooth, Variant(quality=80)), n)
results["max_bytes 640x480"] = best(
    lambda: encode_new(noisy, Variant(quality=80, max_bytes=20_000)), n)
print(json.dumps(results))
"""


def measure(root: str, number: int, repeat: int) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(number), str(repeat)],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": root},
    )
    return json.loads(result.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=REPO, help="the checkout to measure (default this one)")
    parser.add_argument("--compare", metavar="DIR", help="also measure DIR, in turns")
    parser.add_argument("--rounds", type=int, default=5, help="turns each, with --compare")
    parser.add_argument("--number", type=int, default=5_000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=40, help="runs (the best is shown)")
    args = parser.parse_args()
    roots = [os.path.abspath(args.root)]
    if args.compare:
        roots.append(os.path.abspath(args.compare))
    best: dict[str, dict[str, float]] = {root: {} for root in roots}
    for _ in range(args.rounds if args.compare else 1):
        for root in roots:
            for case, value in measure(root, args.number, args.repeat).items():
                best[root][case] = min(value, best[root].get(case, value))
    print(f"EncodeCache.get / made, us per call (best of {args.repeat} runs x "
          f"{args.rounds if args.compare else 1} rounds):")
    print(f"  {'case':<20}" + "".join(f"{root[-28:]:>30}" for root in roots))
    for case in CASES:
        print(f"  {case:<20}" + "".join(f"{best[root][case]:30.2f}" for root in roots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
