"""What one check observed and concluded.

This module is a leaf: it imports only the standard library, so every other part of the daemon
(workers, the supervisor, the sinks) can share these values, and they pickle across processes.

The failure reasons form a closed set. Each has a stable code that operators can match on in
logs and alerts; the message beside it says what was observed::

    dns              the name did not resolve
    refused          the target actively refused the connection
    connect          the connection failed in another way (network or host unreachable)
    connect_timeout  no TCP connection within the deadline
    tls              the TLS handshake or certificate verification failed
    timeout          the whole check's deadline passed; the message names the phase
    status           the status code is not one of the expected ones
    body             the body does not contain what was expected
    redirects        too many redirects, or a redirect that cannot be followed
    protocol         the response is not valid HTTP, or the connection broke mid-response
    internal         a bug in monitor itself; the traceback is logged
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class Reason(enum.StrEnum):
    """Why a check failed. The values are stable: they appear in logs and alerts."""

    DNS = "dns"
    REFUSED = "refused"
    CONNECT = "connect"
    CONNECT_TIMEOUT = "connect_timeout"
    TLS = "tls"
    TIMEOUT = "timeout"
    STATUS = "status"
    BODY = "body"
    REDIRECTS = "redirects"
    PROTOCOL = "protocol"
    INTERNAL = "internal"


class Phase(enum.StrEnum):
    """Where in a check the time went when the deadline passed."""

    CONNECT = "connect"
    HEADERS = "headers"
    BODY = "body"


@dataclass(frozen=True, slots=True)
class Failure:
    """A reason code and what was observed, for example ``status``, ``503 not in 200-399``."""

    reason: Reason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason} {self.detail}" if self.detail else str(self.reason)


@dataclass(frozen=True, slots=True)
class Observation:
    """What the network code saw: the facts, not yet judged against any expectation.

    ``status`` is None when no response arrived; ``failure`` then says why. ``body`` holds what
    was read of the final response's body (at most the monitor's byte cap), ``size`` how many
    decoded bytes were received, and ``truncated`` whether reading stopped at the cap.
    """

    status: int | None
    phrase: str
    size: int
    truncated: bool
    elapsed: float
    body: bytes = b""
    url: str = ""
    redirects: int = 0
    failure: Failure | None = None


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check of one monitor: what it saw and whether the monitor is up.

    ``scheduled`` is when the check was due and ``started`` when it began (both UTC);
    ``elapsed`` is measured with a monotonic clock around the whole request and body read.
    """

    monitor: str
    method: str
    url: str
    status: int | None
    size: int
    elapsed: float
    failure: Failure | None
    started: datetime
    scheduled: datetime | None = None
    truncated: bool = False
    phrase: str = ""

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def reason(self) -> str | None:
        """The failure as one line (``timeout after 5.0 s waiting for headers``), or None."""
        return None if self.failure is None else str(self.failure)


_CONTROL_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F)}
_CONTROL_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", ord("\\"): "\\\\"})
# C1 controls (U+0080-U+009F) include CSI (U+009B), which some terminals honour like ESC [.
_CONTROL_ESCAPES.update({i: f"\\u{i:04x}" for i in range(0x80, 0xA0)})
# Line and paragraph separators end a line for some log viewers.
_CONTROL_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape_text(text: str) -> str:
    """Make server-controlled text safe for a one-line log record.

    Control characters (ESC, CR, LF, C1 controls, line separators) and backslashes are written
    as escapes, so a target cannot end a log line early, forge another one, or send commands to
    the terminal of whoever is tailing the log.
    """
    return text.translate(_CONTROL_ESCAPES)
