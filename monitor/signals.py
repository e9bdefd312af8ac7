"""Signals recorded by handlers that do nothing, for a loop to act on.

``signal.set_wakeup_fd`` makes the interpreter's C-level handler write each signal's number to a
socket; the Python-level handlers installed here do nothing at all. So a handler never logs,
locks or shuts anything down (gunicorn's reentrant-logging deadlock), and a loop waiting in
``select`` on ``fileno()`` wakes at once, which a flag set by a handler would not do: PEP 475
retries the interrupted wait.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterable
from types import FrameType, TracebackType


def _record_only(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: the number was already written to the wakeup socket."""


class SignalInbox:
    """While entered, the given signals are queued as numbers to read with ``drain()``.

    Use in the main thread only (a Python rule for signal handlers). ``ignore`` lists signals
    to ignore meanwhile (a worker ignores SIGINT: the terminal's Ctrl-C reaches the whole process
    group, and the supervisor decides). Leaving restores the previous handlers.
    """

    def __init__(self, signals: Iterable[int], *, ignore: Iterable[int] = ()) -> None:
        self._signals = tuple(signals)
        self._ignore = tuple(ignore)
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._previous: dict[int, signal._HANDLER] = {}
        self._previous_fd = -1

    def __enter__(self) -> SignalInbox:
        for signum in self._ignore:
            self._previous[signum] = signal.signal(signum, signal.SIG_IGN)
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for signum in self._signals:
            self._previous[signum] = signal.signal(signum, _record_only)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd)
        self._reader.close()
        self._writer.close()

    def fileno(self) -> int:
        """Readable when a signal has arrived: for ``select`` or ``connection.wait``."""
        return self._reader.fileno()

    def drain(self) -> list[int]:
        """The signals received since the last call, oldest first (never blocks)."""
        received: list[int] = []
        while True:
            try:
                chunk = self._reader.recv(4096)
            except BlockingIOError:
                return received
            if not chunk:
                return received
            received.extend(signum for signum in chunk if signum in self._signals)
