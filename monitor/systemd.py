"""sd_notify: tell systemd that the daemon is ready, what it is doing, and that it is alive.

A leaf: standard library only. The protocol is one datagram of ``KEY=value`` lines sent to the
AF_UNIX socket named by ``$NOTIFY_SOCKET``: a path, or an abstract name when it starts with
``@``. Without ``NOTIFY_SOCKET`` nothing is sent (``Notifier``, the null notifier).

The supervisor takes the variables out of its own environment at start
(``take_notifier``), so the workers it spawns never see them: a worker must not notify, and
``NotifyAccess=main`` would reject it anyway.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Mapping, MutableMapping

NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """The null notifier: every message is dropped. ``watchdog_interval`` is None: no pings."""

    watchdog_interval: float | None = None

    def send(self, fields: Mapping[str, str]) -> None:
        """Send one message of ``KEY=value`` lines; never raises."""

    def close(self) -> None:
        """Release the socket, if any."""


NULL_NOTIFIER = Notifier()


class SocketNotifier(Notifier):
    """Sends each message as one datagram to ``address`` (a path, or ``@abstract``).

    ``watchdog_interval`` is the seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or
    None when systemd's watchdog is off for this process.
    """

    def __init__(self, address: str, watchdog_interval: float | None = None) -> None:
        # An abstract name starts with a NUL byte on the wire; "@" stands for it in the variable.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval = watchdog_interval
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def send(self, fields: Mapping[str, str]) -> None:
        # systemd going away (or a full queue) must never stop the daemon; the next message
        # carries the current state again.
        with contextlib.suppress(OSError):
            self._socket.sendto(format_message(fields), self.address)

    def close(self) -> None:
        self._socket.close()


def format_message(fields: Mapping[str, str]) -> bytes:
    """``READY=1\\nSTATUS=...`` as bytes; a newline inside a value would start a new key."""
    lines = (f"{key}={' '.join(value.splitlines())}" for key, value in fields.items())
    return "\n".join(lines).encode("utf-8", "replace")


def take_notifier(environ: MutableMapping[str, str], pid: int) -> Notifier:
    """The notifier systemd asked for, removing its variables from ``environ``.

    ``pid`` is this process's: WATCHDOG_PID, when set, names the one process that must ping.
    """
    values = {name: environ.pop(name, None) for name in NOTIFY_VARIABLES}
    address = values["NOTIFY_SOCKET"]
    if not address:
        return NULL_NOTIFIER
    return SocketNotifier(
        address, watchdog_interval(values["WATCHDOG_USEC"], values["WATCHDOG_PID"], pid)
    )


def watchdog_interval(usec: str | None, watchdog_pid: str | None, pid: int) -> float | None:
    """Seconds between pings: half of WATCHDOG_USEC; None if unset, invalid, or not for ``pid``."""
    if watchdog_pid and watchdog_pid.strip() != str(pid):
        return None
    try:
        microseconds = int(usec or "")
    except ValueError:
        return None
    return microseconds / 2_000_000 if microseconds > 0 else None


def reloading_message() -> dict[str, str]:
    """RELOADING=1 with the CLOCK_MONOTONIC time systemd >= 253 uses to match the READY=1."""
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return {"RELOADING": "1", "MONOTONIC_USEC": str(now)}


def without_env_file_values(
    environ: Mapping[str, str], file_values: Mapping[str, str | None], prefix: str = "MONITOR_"
) -> dict[str, str]:
    """``environ`` without the ``prefix`` variables whose value is the env file's for that name.

    Under ``EnvironmentFile=`` systemd copies the file into the environment at start, and the
    environment outranks the env file; a reload would then never see the file change. A value
    equal to the file's came from the file (or says the same), so the env file supplies it.
    """
    return {
        name: value
        for name, value in environ.items()
        if not (name.startswith(prefix) and file_values.get(name) == value)
    }
