"""The two-line use: stream the camera on ws://localhost:8765 until Ctrl+C (or SIGTERM).

``Streamer()`` streams camera 0, or the built-in test pattern if there is no camera. Give a
source to choose: ``python examples/serve_webcam.py test`` (the test pattern), ``0`` (camera 0,
or an error), a video file or a stream URL.
"""

import logging
import sys

from camstream import Streamer

logging.basicConfig(level=logging.INFO)  # camstream logs nothing unless the app asks
streamer = Streamer(sys.argv[1]) if len(sys.argv) > 1 else Streamer()
streamer.serve_forever()
