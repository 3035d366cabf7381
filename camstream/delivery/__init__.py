"""The viewer side: from the newest frame to each viewer's bytes.

``viewer`` (:class:`~camstream.delivery.viewer.ViewerLoop`, one per viewer, with its
``pacing``), ``fanout`` (the fast path that sends each frame to idle viewers from one thread),
``encoder`` (one encode per frame and variant, shared), and the two outputs: ``session``
(a WebSocket viewer) and ``mjpeg`` (a multipart stream); ``registry`` counts them. It reads
frames from ``camstream.capture`` and writes through ``camstream.ws``.
"""
