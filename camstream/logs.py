"""What camstream's log lines carry: which Streamer they are about, and client text made safe.

**Labels.** With several Streamers (or cameras) in one process, each line names the one it is
about: ``[:8766] client 3 connected``. A label belongs to threads: a component that starts a
thread wraps its target with :func:`thread_target` where it is made, inside the Streamer's
:func:`bound` label, and the thread runs with that label. Module loggers come from
:func:`get_logger`, whose filter puts the label in front of the message, but only while more
than one label is active (one Streamer alone logs as before) or when the label was named
explicitly.

**Client text.** Anything a client sent that goes into a log line (a request target, a header,
an Origin, a JSON value, a close reason) goes through :func:`printable` first: control and
invisible characters are escaped and the length is capped, so a client can neither forge a log
line nor send terminal escape sequences to whoever reads the log.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = [
    "Label", "adopt", "bound", "current", "get_logger", "printable", "thread_target",
]

_T = TypeVar("_T")

_local = threading.local()
_active_lock = threading.Lock()
_active = 0  # labels activated (running Streamers)


class Label:
    """The name a Streamer's log lines carry; its text may be set once the port is known.

    Thread-safe: the text is one reference, replaced whole.
    """

    def __init__(self, text: str = "", *, explicit: bool = False) -> None:
        self.text = text
        self.explicit = explicit  # named by the user: always shown
        self._active = False

    def set(self, text: str) -> None:
        """Set the text (unless it was named explicitly)."""
        if not self.explicit:
            self.text = text

    def activate(self) -> None:
        """This Streamer runs: count it (idempotent)."""
        global _active
        with _active_lock:
            if not self._active:
                self._active = True
                _active += 1

    def deactivate(self) -> None:
        """This Streamer stopped (idempotent)."""
        global _active
        with _active_lock:
            if self._active:
                self._active = False
                _active -= 1

    @property
    def shown(self) -> bool:
        """Whether log lines show it: named, or more than one Streamer runs."""
        return bool(self.text) and (self.explicit or _active > 1)

    def __repr__(self) -> str:
        return f"<Label {self.text!r}>"


def current() -> Label | None:
    """The label of the calling thread, or None."""
    label: Label | None = getattr(_local, "label", None)
    return label


@contextlib.contextmanager
def bound(label: Label | None) -> Iterator[None]:
    """Run the block with ``label`` as the calling thread's label (restored after)."""
    previous = current()
    _local.label = label
    try:
        yield
    finally:
        _local.label = previous


def adopt(label: Label | None) -> None:
    """Make ``label`` the calling thread's label from now on (a connection's handler thread,
    once it knows which camera the connection watches: every later line of it names it)."""
    _local.label = label


def thread_target(target: Callable[..., _T]) -> Callable[..., _T]:
    """``target``, run with the label current *now* (call it where the thread is made)."""
    label = current()
    if label is None:
        return target

    def run(*args: Any, **kwargs: Any) -> _T:
        _local.label = label
        return target(*args, **kwargs)

    return run


class _LabelFilter(logging.Filter):
    """Puts the thread's label in front of a record's message (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        label = current()
        if label is not None and label.shown and not hasattr(record, "camstream_label"):
            record.camstream_label = label.text
            if isinstance(record.msg, str):
                record.msg = f"[{label.text.replace('%', '%%')}] {record.msg}"
            else:
                record.msg = f"[{label.text.replace('%', '%%')}] {record.msg!s}"
        return True


_FILTER = _LabelFilter()


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with the label filter attached (once). Use for every
    module logger of camstream: ``logger = get_logger(__name__)``."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


_LIMIT = 200  # characters of client text kept in a log line


def printable(value: object, limit: int = _LIMIT) -> str:
    """``value`` (text or bytes a client sent) as safe log text: control, format and other
    invisible characters escaped (``\\r``, ``\\x1b``, ``\\u202e``), at most ``limit``
    characters kept (the rest counted). Never raises."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = bytes(value).decode("latin-1")
    else:
        try:
            text = str(value)
        except Exception:  # a hostile object's __str__: say what it is instead
            text = f"<{type(value).__name__}>"
    cut = len(text) - limit
    if cut > 0:
        text = text[:limit]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else _escape(c) for c in text)
    return f"{text}...(+{cut} chars)" if cut > 0 else text


def _escape(char: str) -> str:
    code = ord(char)
    if char in "\t\n\r":
        return {"\t": "\\t", "\n": "\\n", "\r": "\\r"}[char]
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
