"""The two-line use: stream camera 0 on ws://localhost:8765 until Ctrl+C.

No camera? Run ``python examples/serve_webcam.py test`` for the built-in test pattern.
"""

import logging
import sys

from camstream import Streamer

logging.basicConfig(level=logging.INFO)  # camstream logs nothing unless the app asks
Streamer(sys.argv[1] if len(sys.argv) > 1 else 0).serve_forever()
