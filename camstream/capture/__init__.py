"""The camera side: what a source is, opening it, reading frames, the newest frame.

:class:`~camstream.capture.camera.CameraThread` reads a source in its own thread and keeps the
newest :class:`~camstream.capture.frame.Frame` under a lock. Around it: ``sources`` (what a
source string names, size and rate checks), ``opener`` (opening a source with the mode asked
for), ``devices`` and ``controls`` (a webcam's format and settings), ``framereader`` (one read
as a frame, the camera's own JPEG kept), ``jpeg`` (header inspection without decoding),
``testpattern``, ``discovery`` (listing cameras), ``states`` (the camera's states and the events
their changes send), ``demand`` (who wants the frames: on-demand capture) and ``report`` (the
camera as stats describe it). Nothing here knows about viewers or sockets.
"""
