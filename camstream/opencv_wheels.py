"""The OpenCV wheels camstream can run on: one list for the build and the command.

All four install the same ``cv2`` package, so an environment must hold exactly one of them
(with two, ``cv2`` is a mix of both). ``setup.py`` picks the one camstream requires from here
(``CAMSTREAM_OPENCV``) and the ``camstream`` command warns when several are installed.

This module imports nothing: ``setup.py`` runs it before camstream's dependencies exist.
"""

__all__ = ["OPENCV_WHEELS"]

OPENCV_WHEELS = (
    "opencv-python",
    "opencv-python-headless",
    "opencv-contrib-python",
    "opencv-contrib-python-headless",
)
"""The first is the one a plain build requires (setup.cfg's ``install_requires``)."""
