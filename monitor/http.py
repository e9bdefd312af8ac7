"""HTTP for checks: the only module that imports requests and urllib3.

``Fetcher.fetch(monitor)`` requests a monitor's URL once and returns an Observation of what it
saw. It measures and reports; ``checks.py`` judges. Nothing a target or the network does makes
it raise: each failure becomes a reason (see ``describe_error``, the one place where exceptions
of requests, urllib3, http.client, ssl and socket are translated).

The deadline
------------
requests' timeouts apply to each socket operation, so a target that sends a byte a second, or
an endless body, never trips them. Each check therefore carries an absolute deadline
(``_Check``), enforced three ways:

1. Every blocking socket operation is given the time that remains as its timeout (TCP connect,
   TLS handshake, sending, each read), so a silent target fails on its own, on time.
2. A target that keeps sending something (headers, body or TLS records a byte at a time) resets
   those timeouts. For it, the ``_Reaper`` thread shuts the check's socket down at the deadline:
   ``shutdown()`` makes a ``recv`` blocked in another thread return at once (``close()`` would
   not). The reaper holds a duplicate of the socket's descriptor, so a number the check has
   already closed, and the kernel has handed to another socket, can never be shut down.
3. Name resolution (``getaddrinfo``) cannot be given a timeout or interrupted: a hanging
   resolver delays the check by the resolver's own timeout (``resolv.conf``), and the check then
   reports a timeout while resolving.

Connections
-----------
Each request goes out on a new connection (DNS, TCP connect and TLS are part of what users
see), which is closed when the request is done: the adapter below has no pool at all. Redirects
are followed here, not by requests: its ``resolve_redirects`` reads each redirect's whole body
into memory, even with ``allow_redirects=False`` (to fill ``Response.next``), and a hostile
target can send a 302 with an endless body.
"""

from __future__ import annotations

import base64
import contextlib
import heapq
import http.client
import itertools
import math
import re
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from http.cookiejar import Cookie
from typing import Any, Final
from urllib.parse import urljoin, urlsplit
from urllib.request import Request as CookieRequest

import requests
import urllib3.connection
import urllib3.exceptions
import urllib3.response
from requests.adapters import BaseAdapter
from requests.cookies import RequestsCookieJar
from requests.models import PreparedRequest, Response
from requests.structures import CaseInsensitiveDict
from requests.utils import DEFAULT_ACCEPT_ENCODING

from monitor import __version__
from monitor.results import Failure, Observation, Reason
from monitor.settings import MAX_REDIRECTS, Monitor, display_url

USER_AGENT: Final = f"monitor/{__version__}"
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})

# Decoded bytes asked for per read: one recv's worth on a fast link, and the most that one
# step of decompression may produce (urllib3 >= 2.6 bounds it), so a gzip bomb stays small.
_READ_SIZE: Final = 64 * 1024
# Server-controlled text quoted in a failure's detail is cut to this many characters.
_QUOTE_LIMIT: Final = 200
# Headers that carry credentials or name the host; not sent on to another origin.
_ORIGIN_HEADERS: Final = ("Authorization", "Proxy-Authorization", "Cookie", "Host")
# Headers that describe a request body; dropped when a redirect turns the request into a GET.
_BODY_HEADERS: Final = ("Content-Length", "Content-Type", "Transfer-Encoding")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_NO_PROXIES: Final[dict[str, str]] = {}
_SSL_SOURCE = re.compile(r"\s*\(_ssl\.c:\d+\)$")


class Fetcher:
    """Owns the requests Session (``trust_env=False``: no proxies or netrc from the environment)
    and the reaper thread that keeps deadlines. One per process; thread-safe: many checks call
    ``fetch()`` at once.

    ``clock`` is a monotonic clock in seconds; it times checks (``Observation.elapsed``) and
    sets their deadlines, so it must advance with real time: the reaper sleeps towards it.
    ``Observation.url`` is the URL as requested, userinfo included: show it with
    ``settings.display_url``.
    """

    def __init__(self, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._reaper = _Reaper(clock)
        self._session = make_session()
        # Keyed by id(): a Monitor is not hashable (it holds dicts). The weak reference both
        # guards against a reused id and drops the entry when the Monitor goes away (a reload).
        self._prepared: dict[int, tuple[weakref.ref[Monitor], PreparedRequest, bool | str]] = {}

    def fetch(self, monitor: Monitor, *, limit: float | None = None) -> Observation:
        """Request ``monitor.url`` once, on fresh connections, within ``monitor.deadline``, or
        within ``limit`` seconds when that is sooner (the scheduler's: the next check is due).

        Returns within the deadline plus a few milliseconds (DNS aside, see the module
        docstring). Never raises for anything the target or the network does: the failure is
        on the Observation. An exception means a bug.
        """
        budget = monitor.deadline if limit is None else min(limit, monitor.deadline)
        check = _Check(monitor, budget, self._clock, self._reaper)
        try:
            self._follow(check)
        except _TARGET_ERRORS as error:
            failure = describe_error(error, check)
            if failure is None:
                raise
            check.fail(failure)
        finally:
            check.end_connection()
        return check.observe()

    def close(self) -> None:
        """Stop the reaper and release the session. Call once no fetch is running: a fetch
        still in flight has its socket shut down now and reports a timeout."""
        self._reaper.close()
        self._session.close()

    def _follow(self, check: _Check) -> None:
        """Send the monitor's request, follow redirects as configured, read the final body."""
        request, verify = self._request_for(check.monitor)
        visited = {(request.method, request.url)}
        while True:
            raw = self._exchange(check, request, verify)
            if not (check.monitor.follow_redirects and raw.status in REDIRECT_STATUSES):
                check.read_body(raw)
                return
            location = raw.headers.get("Location")
            if check.end_connection():  # so the redirect's body is never read
                return  # the deadline passed as the redirect arrived
            target = check.redirect(request, raw.status, location, visited)
            if isinstance(target, Failure):
                check.fail(target)
                return
            request = target

    def _exchange(
        self, check: _Check, request: PreparedRequest, verify: bool | str
    ) -> urllib3.response.HTTPResponse:
        """One request and its response headers, on a connection of its own."""
        check.begin_request(request)
        response = self._session.send(
            request,
            stream=True,
            allow_redirects=False,
            verify=verify,
            proxies=_NO_PROXIES,
            check=check,
        )
        raw: urllib3.response.HTTPResponse = response.raw
        check.status = raw.status
        check.phrase = raw.reason or ""
        return raw

    def _request_for(self, monitor: Monitor) -> tuple[PreparedRequest, bool | str]:
        """A copy of the monitor's prepared request (built once), and its TLS verification."""
        key = id(monitor)
        entry = self._prepared.get(key)
        if entry is None or entry[0]() is not monitor:
            prepared = prepare_request(self._session, monitor)
            forget = self._prepared.pop
            reference = weakref.ref(monitor, lambda _: forget(key, None))
            entry = (reference, prepared, tls_verification(monitor))
            self._prepared[key] = entry
        return copy_request(entry[1]), entry[2]


class _Expired(Exception):  # noqa: N818  (a state, not an error of ours)
    """The check's deadline passed before the next blocking step could begin."""


# What fetch() hands to describe_error; anything else raised inside fetch is a bug.
_TARGET_ERRORS: Final = (
    OSError,  # socket and ssl errors, timeouts
    http.client.HTTPException,
    urllib3.exceptions.HTTPError,
    requests.RequestException,
    UnicodeError,  # a host name the IDNA codec rejects
    _Expired,
)


class _Step:
    """Where a check is; decides what an exception means and what a timeout message says."""

    PREPARE: Final = "prepare"  # building a request (the monitor's, or a redirect's)
    RESOLVE: Final = "resolve"
    CONNECT: Final = "connect"  # TCP
    TLS: Final = "tls"
    REQUEST: Final = "request"  # sending it
    HEADERS: Final = "headers"  # waiting for the status line and headers
    BODY: Final = "body"


class _Check:
    """One check in progress: its deadline, its current connection, what it has seen so far."""

    __slots__ = (
        "address",
        "budget",
        "clock",
        "conn",
        "ended",
        "expires",
        "failure",
        "host",
        "location",
        "method",
        "monitor",
        "parts",
        "phrase",
        "raw",
        "reaper",
        "redirects",
        "size",
        "sock",
        "started",
        "status",
        "step",
        "truncated",
        "url",
        "watch",
    )

    def __init__(
        self, monitor: Monitor, budget: float, clock: Callable[[], float], reaper: _Reaper
    ) -> None:
        self.monitor = monitor
        self.budget = budget
        self.clock = clock
        self.reaper = reaper
        self.started = clock()
        self.expires = self.started + budget
        self.ended: float | None = None
        self.step = _Step.PREPARE
        self.method: str = monitor.method
        self.url = monitor.url
        self.host = ""
        self.address = ""
        self.location: str | None = None
        self.conn: urllib3.connection.HTTPConnection | None = None
        self.sock: socket.socket | None = None
        self.raw: urllib3.response.HTTPResponse | None = None
        self.watch: _Watch | None = None
        self.status: int | None = None
        self.phrase = ""
        self.redirects = 0
        self.parts: list[bytes] = []
        self.size = 0
        self.truncated = False
        self.failure: Failure | None = None

    def remaining(self) -> float:
        """Seconds left before the deadline, always > 0 (a socket timeout of 0 would make the
        socket non-blocking); raises _Expired when none are left."""
        left = self.expires - self.clock()
        if left <= 0:
            raise _Expired
        return left

    def begin_request(self, request: PreparedRequest) -> None:
        self.step = _Step.PREPARE
        self.method = request.method or ""
        self.url = request.url or ""
        self.status = None
        self.phrase = ""

    def open_socket(self, host: str, port: int, *, tls: bool) -> socket.socket:
        """Resolve ``host`` and connect to its addresses in turn, each attempt given the time
        that remains. The socket is watched by the reaper from the moment it is connected,
        before any TLS handshake."""
        self.step = _Step.RESOLVE
        self.host = host
        self.remaining()  # redirects may have used the time up
        # getaddrinfo blocks inside the C library: no timeout, no interruption (and no socket
        # yet for the reaper). A hanging resolver overruns the deadline by its own timeout.
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        timeout = self.remaining()
        self.step = _Step.CONNECT
        error: OSError = OSError(f"{host} resolved to no address")
        for family, kind, proto, _, address in addresses:
            self.address = format_address(address)
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(timeout)
                sock.connect(address)
            except TimeoutError:
                sock.close()
                raise  # no time left to try another address
            except OSError as refusal:
                sock.close()
                error = refusal
                timeout = self.remaining()
                continue
            try:
                sock.settimeout(self.remaining())
                self.watch = self.reaper.watch(sock, self.expires)
            except BaseException:
                sock.close()
                raise
            self.step = _Step.TLS if tls else _Step.REQUEST
            return sock
        raise error

    def redirect(
        self,
        request: PreparedRequest,
        status: int,
        location: str | None,
        visited: set[tuple[str | None, str | None]],
    ) -> PreparedRequest | Failure:
        """The next request of a redirect chain, or why there is none."""
        self.step = _Step.PREPARE
        self.location = location
        target = build_redirect(request, status, location)
        if isinstance(target, Failure):
            return target
        shown = display_url(target.url or "")  # a relative Location keeps our userinfo
        if (target.method, target.url) in visited:
            return Failure(Reason.REDIRECTS, f"loop back to {shown}")
        if self.redirects == MAX_REDIRECTS:
            return Failure(Reason.REDIRECTS, f"more than {MAX_REDIRECTS}, the last to {shown}")
        visited.add((target.method, target.url))
        self.redirects += 1
        return target

    def connected(self, conn: urllib3.connection.HTTPConnection) -> None:
        """The connection is up (TLS included): keep its socket for per-read timeouts."""
        self.conn = conn
        self.sock = conn.sock
        self.step = _Step.REQUEST

    def read_body(self, raw: urllib3.response.HTTPResponse) -> None:
        """Read the decoded body up to the monitor's byte cap; the rest is not read."""
        self.step = _Step.BODY
        cap = self.monitor.max_body_bytes
        if self.method != "HEAD":
            while self.size < cap:
                # Once the response is closed (http.client closes the socket with it), what is
                # left sits in urllib3's decoder and reading it does not touch the network.
                if self.sock is not None and not raw.isclosed():
                    self.sock.settimeout(self.remaining())
                # read1: whatever one recv brings, so what a slow target sent is counted.
                chunk = raw.read1(min(_READ_SIZE, cap - self.size), decode_content=True)
                if not chunk:
                    break
                self.parts.append(chunk)
                self.size += len(chunk)
            self.truncated = self.size >= cap and has_more(raw)
        self.ended = self.clock()

    def end_connection(self) -> bool:
        """Close the current connection and stop watching it. Returns whether the reaper had
        fired; if so and nothing else failed, the check timed out."""
        if self.raw is not None:
            self.raw.close()
            self.raw = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.sock = None
        watch, self.watch = self.watch, None
        if watch is None or not self.reaper.release(watch):
            return False
        if self.failure is None:
            self.fail(self.timeout_failure())
        return True

    def fired(self) -> bool:
        return self.watch is not None and self.watch.fired

    def fail(self, failure: Failure) -> None:
        self.failure = failure
        self.ended = self.clock()

    def timeout_failure(self) -> Failure:
        """The deadline passed: say where the check was."""
        after = f"after {self.budget:g} s"
        if self.step == _Step.CONNECT:
            detail = f"no TCP connection to {self.address} within {self.budget:g} s"
            return Failure(Reason.CONNECT_TIMEOUT, detail + self._hops())
        doing = {
            _Step.PREPARE: "preparing the request",
            _Step.RESOLVE: f"resolving {self.host}",
            _Step.TLS: f"in the TLS handshake with {self.address}",
            _Step.REQUEST: "sending the request",
            _Step.HEADERS: "waiting for headers",
            _Step.BODY: f"reading the body ({self.size} B received)",
        }[self.step]
        return Failure(Reason.TIMEOUT, f"{after} {doing}{self._hops()}")

    def _hops(self) -> str:
        if not self.redirects:
            return ""
        return f" (after {self.redirects} redirect{'s' if self.redirects > 1 else ''})"

    def observe(self) -> Observation:
        ended = self.clock() if self.ended is None else self.ended
        return Observation(
            status=self.status,
            phrase=self.phrase,
            size=self.size,
            truncated=self.truncated,
            elapsed=ended - self.started,
            body=b"".join(self.parts),
            url=self.url,
            redirects=self.redirects,
            failure=self.failure,
        )


def has_more(raw: urllib3.response.HTTPResponse) -> bool:
    """Whether a body read up to the cap may go on. While the connection may still deliver,
    assume so (finding out could block until the deadline). Once it cannot, what is left is in
    urllib3's decoder, and asking for one more byte does not touch the network."""
    return not raw.isclosed() or bool(raw.read1(1, decode_content=True))


class _Watch:
    """A socket the reaper shuts down at ``expires``; ``sock`` is the reaper's own duplicate."""

    __slots__ = ("expires", "fired", "sock")

    def __init__(self, expires: float, sock: socket.socket) -> None:
        self.expires = expires
        self.sock: socket.socket | None = sock
        self.fired = False


class _Reaper:
    """One thread that shuts down the sockets of checks whose deadline has passed.

    A heap of watches ordered by deadline; a released watch stays in the heap (marked by
    ``sock is None``) until it reaches the top, where ``release`` or the thread drops it.

    Waking the thread costs more than everything else a watch does (a thread switch and the
    GIL handed over and back, about a third of a check's CPU), so ``watch`` wakes it only for a
    deadline earlier than the one it already sleeps towards. A thread that wakes for a released
    watch finds nothing to do and sleeps towards the next one.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._wakeup = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, _Watch]] = []
        self._order = itertools.count()  # ties on the deadline never compare watches
        self._closed = False
        self._wake_at = math.inf  # when the thread's current wait ends
        self._thread = threading.Thread(target=self._run, name="monitor-reaper", daemon=True)
        self._thread.start()

    def watch(self, sock: socket.socket, expires: float) -> _Watch:
        """Shut ``sock`` down at ``expires`` unless released before."""
        if self._closed:
            raise RuntimeError("the Fetcher is closed")
        watch = _Watch(expires, sock.dup())
        entry = (expires, next(self._order), watch)
        with self._wakeup:
            heapq.heappush(self._heap, entry)
            if expires < self._wake_at:
                self._wake_at = expires
                self._wakeup.notify()
        return watch

    def release(self, watch: _Watch) -> bool:
        """Stop watching; returns whether the deadline had fired."""
        with self._wakeup:
            sock, watch.sock = watch.sock, None
            while self._heap and self._heap[0][2].sock is None:
                heapq.heappop(self._heap)
        # Closed outside the lock: with watch.sock cleared, the thread no longer touches it.
        if sock is not None:
            sock.close()
        return watch.fired

    def close(self) -> None:
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()
        self._thread.join()

    def _run(self) -> None:
        with self._wakeup:
            while not self._closed:
                now = self._clock()
                heap = self._heap
                while heap and (heap[0][0] <= now or heap[0][2].sock is None):
                    _reap(heapq.heappop(heap)[2])
                self._wake_at = heap[0][0] if heap else math.inf
                self._wakeup.wait(self._wake_at - now if heap else None)
            for _, _, watch in self._heap:
                _reap(watch)
            self._heap.clear()


def _reap(watch: _Watch) -> None:
    """Shut the socket down in both directions, waking whatever blocks on it. Runs under the
    reaper's lock, so the check cannot close the duplicate meanwhile."""
    if watch.sock is None:
        return
    watch.fired = True
    # OSError: the peer has already gone (ENOTCONN), so nothing blocks on the socket any more.
    with contextlib.suppress(OSError):
        watch.sock.shutdown(socket.SHUT_RDWR)


class _Connection(urllib3.connection.HTTPConnection):
    """A plain connection whose socket belongs to one check."""

    def __init__(self, host: str, port: int, check: _Check) -> None:
        super().__init__(host, port)
        self.check = check

    def _new_conn(self) -> socket.socket:
        return self.check.open_socket(self._dns_host, self.port, tls=False)


class _TLSConnection(urllib3.connection.HTTPSConnection):
    """A TLS connection whose socket belongs to one check; urllib3 does the handshake."""

    def __init__(self, host: str, port: int, check: _Check, context: ssl.SSLContext) -> None:
        super().__init__(host, port, ssl_context=context)
        self.check = check

    def _new_conn(self) -> socket.socket:
        return self.check.open_socket(self._dns_host, self.port, tls=True)


class _FreshConnectionAdapter(BaseAdapter):
    """A transport adapter without a pool: each request opens a connection of its own, which
    the check closes when it is done with the response.

    ``send`` takes the check from requests' adapter keyword arguments (``Session.send`` passes
    unknown keywords on). TLS contexts are built once per verification setting: loading CA
    certificates costs milliseconds.
    """

    def __init__(self) -> None:
        super().__init__()
        self._contexts: dict[bool | str, ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def send(  # noqa: PLR0917  (positional as in BaseAdapter.send)
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: object = None,
        verify: bool | str = True,
        cert: object = None,
        proxies: Mapping[str, str] | None = None,
        *,
        check: _Check | None = None,
    ) -> Response:
        if check is None:
            raise TypeError("this adapter sends requests for Fetcher checks only")
        conn = self._open_connection(request.url or "", verify, check)
        check.conn = conn
        conn.connect()
        check.connected(conn)
        conn.timeout = check.remaining()
        conn.request(
            request.method or "GET",
            request.path_url,
            body=request.body,
            headers=request.headers,
            preload_content=False,
            decode_content=True,
        )
        check.step = _Step.HEADERS
        conn.timeout = check.remaining()
        raw = conn.getresponse()
        check.raw = raw
        if check.fired():
            # The reaper's shutdown reads as end of input, which http.client takes for the end
            # of the header section: what it parsed may be a fragment.
            raise _Expired
        return build_response(request, raw)

    def close(self) -> None:
        """Nothing is pooled, so nothing is left to close."""

    def _open_connection(
        self, url: str, verify: bool | str, check: _Check
    ) -> urllib3.connection.HTTPConnection:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
        if parts.scheme == "https":
            return _TLSConnection(host, port, check, self._context_for(verify))
        return _Connection(host, port, check)

    def _context_for(self, verify: bool | str) -> ssl.SSLContext:
        context = self._contexts.get(verify)
        if context is None:
            with self._lock:
                context = self._contexts.get(verify)
                if context is None:
                    context = self._contexts[verify] = make_ssl_context(verify)
        return context


def make_ssl_context(verify: bool | str) -> ssl.SSLContext:
    """A client context: verify against the system's CAs (True), a PEM bundle (a path), or not
    at all (False). Built directly rather than by ``ssl.create_default_context`` or urllib3,
    which read ``SSLKEYLOGFILE`` from the environment."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    if verify is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif isinstance(verify, str):
        context.load_verify_locations(cafile=verify)
    else:
        context.load_default_certs()
    return context


def build_response(request: PreparedRequest, raw: urllib3.response.HTTPResponse) -> Response:
    """The requests Response around a urllib3 one, without the cookie and encoding work that
    ``HTTPAdapter.build_response`` does (checks keep no cookies and read ``raw`` themselves)."""
    response = Response()
    response.status_code = raw.status
    response.reason = raw.reason or ""
    response.headers = CaseInsensitiveDict(raw.headers)
    response.raw = raw
    response.url = request.url or ""
    response.request = request
    return response


class _Session(requests.Session):
    """A Session that never follows redirects itself (the Fetcher does, without reading
    redirect bodies; see the module docstring)."""

    def get_redirect_target(self, resp: Response) -> str | None:
        return None


class _NoCookies(RequestsCookieJar):
    """A cookie jar that keeps nothing: a cookie one check received must not be sent by the
    next check, or by another monitor's."""

    def set_cookie(self, cookie: Cookie, *args: Any, **kwargs: Any) -> None:
        return None

    def extract_cookies(self, response: Any, request: CookieRequest) -> None:
        return None


def make_session() -> requests.Session:
    """A Session for checks: nothing from the environment, our headers, no cookies, and
    fresh-connection adapters for http and https."""
    session = _Session()
    session.trust_env = False  # no proxies, netrc or CA bundle from the environment
    session.headers = CaseInsensitiveDict(
        {
            "User-Agent": USER_AGENT,
            "Accept-Encoding": DEFAULT_ACCEPT_ENCODING,
            "Accept": "*/*",
            # The connection is not reused: asking the server to close it lets the server hold
            # the TIME_WAIT state rather than this host, which opens thousands of connections.
            "Connection": "close",
        }
    )
    session.cookies = _NoCookies()
    for adapter in session.adapters.values():
        adapter.close()
    adapter = _FreshConnectionAdapter()
    session.adapters.clear()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def prepare_request(session: requests.Session, monitor: Monitor) -> PreparedRequest:
    """The monitor's request, prepared once: URL normalised, headers merged, body encoded."""
    headers: CaseInsensitiveDict[str | bytes] = CaseInsensitiveDict(
        {name: header_value(value.get_secret_value()) for name, value in monitor.headers.items()}
    )
    if monitor.username is not None:
        password = monitor.password.get_secret_value() if monitor.password is not None else ""
        headers["Authorization"] = basic_authorization(monitor.username, password)
    body = monitor.body.encode("utf-8") if monitor.body is not None else None
    request = requests.Request(monitor.method, monitor.url, headers=headers, data=body)
    return session.prepare_request(request)


def header_value(text: str) -> str | bytes:
    """A configured header value as sent: without surrounding whitespace (which is not part of
    a field value, and which requests rejects), and in UTF-8 when not ASCII (http.client would
    encode Latin-1 and fail on other characters)."""
    text = text.strip()
    return text if text.isascii() else text.encode("utf-8")


def basic_authorization(username: str, password: str) -> str:
    """The Basic credentials header value, in UTF-8 (RFC 7617; requests would use Latin-1 and
    fail on other characters)."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def tls_verification(monitor: Monitor) -> bool | str:
    """requests' ``verify``: False, True (the system's CAs) or the path of a PEM bundle."""
    if not monitor.verify_tls:
        return False
    return str(monitor.ca_bundle) if monitor.ca_bundle is not None else True


def copy_request(prepared: PreparedRequest) -> PreparedRequest:
    """A copy that a check may change; cheaper than ``PreparedRequest.copy`` (which also
    copies a cookie jar that checks do not use)."""
    copy = PreparedRequest()
    copy.method = prepared.method
    copy.url = prepared.url
    copy.headers = prepared.headers.copy()
    copy.body = prepared.body
    copy.hooks = prepared.hooks
    return copy


def build_redirect(
    request: PreparedRequest, status: int, location: str | None
) -> PreparedRequest | Failure:
    """The request a redirect asks for, as browsers make it, or why it cannot be followed.

    303 turns anything but HEAD into GET, and 301/302 turn POST into GET (dropping the body);
    307/308 keep method and body. Credentials and Host are not sent on to another origin.
    May raise requests' InvalidURL for a Location it cannot normalise.
    """
    if location is None:
        return Failure(Reason.REDIRECTS, f"{status} without a Location header")
    target = resolve_location(request.url or "", location)
    if isinstance(target, Failure):
        return target
    redirected = PreparedRequest()
    redirected.prepare_url(target, None)  # IDNA host, percent-encoding, as for the first URL
    redirected.method = redirect_method(request.method or "GET", status)
    redirected.headers = request.headers.copy()
    redirected.body = request.body
    redirected.hooks = request.hooks
    if redirected.method != request.method:
        redirected.body = None
        for name in _BODY_HEADERS:
            redirected.headers.pop(name, None)
    if crosses_origin(request.url or "", redirected.url or ""):
        for name in _ORIGIN_HEADERS:
            redirected.headers.pop(name, None)
    return redirected


def resolve_location(base: str, location: str) -> str | Failure:
    """The absolute http(s) URL a Location header names, relative to ``base``."""
    # http.client decodes header bytes as Latin-1; UTF-8 is what servers mean in practice.
    try:
        text = location.encode("latin-1").decode("utf-8").strip()
    except UnicodeError:
        text = location.strip()
    try:
        target = urljoin(base, text)
        parts = urlsplit(target)
        parts.port  # noqa: B018  (parses the port)
    except ValueError as error:  # Invalid IPv6 URL, Port out of range
        detail = f"Location {quote_text(location)} is not a valid URL: {error}"
        return Failure(Reason.REDIRECTS, detail)
    if parts.scheme not in _DEFAULT_PORTS:
        return Failure(Reason.REDIRECTS, f"Location {quote_text(location)} is not an http(s) URL")
    if not parts.hostname:
        return Failure(Reason.REDIRECTS, f"Location {quote_text(location)} has no host")
    return target


def redirect_method(method: str, status: int) -> str:
    if status == 303 and method != "HEAD":
        return "GET"
    if status in (301, 302) and method == "POST":
        return "GET"
    return method


def crosses_origin(old: str, new: str) -> bool:
    """Whether credentials for ``old`` must not go to ``new``: another host, or another
    scheme or port, except the upgrade from http to https on the default ports."""
    before, after = urlsplit(old), urlsplit(new)
    if before.hostname != after.hostname:
        return True
    old_port = before.port or _DEFAULT_PORTS.get(before.scheme)
    new_port = after.port or _DEFAULT_PORTS.get(after.scheme)
    if (before.scheme, old_port) == (after.scheme, new_port):
        return False
    return (before.scheme, old_port, after.scheme, new_port) != ("http", 80, "https", 443)


def describe_error(error: BaseException, check: _Check) -> Failure | None:
    """The Failure for an exception raised during a check, or None when it is not something a
    target or the network can cause (a bug: the caller lets it propagate).

    The one place where exceptions of requests, urllib3, http.client, ssl and socket become
    reasons. The check's step says what a bare OSError or timeout means. Once the reaper has
    fired, whatever the library raised afterwards is the deadline's doing.
    """
    if not isinstance(error, _TARGET_ERRORS):
        return None
    if isinstance(error, _Expired) or check.fired() or is_timeout(error):
        return check.timeout_failure()
    describe = _DESCRIBE_BY_STEP.get(check.step, describe_protocol_error)
    return describe(error, check)


def is_timeout(error: BaseException) -> bool:
    """A socket timeout (TimeoutError, also the TLS handshake's), or urllib3 wrapping one."""
    return isinstance(error, TimeoutError | urllib3.exceptions.TimeoutError)


def describe_prepare_error(error: BaseException, check: _Check) -> Failure | None:
    if isinstance(error, requests.exceptions.InvalidURL):  # a bad host label
        message = str(error).replace(check.url, display_url(check.url))
        if check.location is not None:
            detail = f"cannot follow Location {quote_text(check.location)}: {message}"
            return Failure(Reason.REDIRECTS, detail)
        return Failure(Reason.DNS, f"{display_url(check.url)}: {message}")
    if isinstance(error, OSError) and not isinstance(error, requests.RequestException):
        # The TLS context is built here: its CA bundle cannot be read or parsed.
        return Failure(Reason.TLS, f"cannot load the CA bundle: {os_text(error)}")
    return None


def describe_resolve_error(error: BaseException, check: _Check) -> Failure | None:
    if isinstance(error, socket.gaierror):
        return Failure(Reason.DNS, f"{check.host} did not resolve: {os_text(error)}")
    if isinstance(error, UnicodeError):
        return Failure(Reason.DNS, f"{check.host} is not a valid host name: {error}")
    if isinstance(error, OSError):
        return Failure(Reason.DNS, f"{check.host}: {os_text(error)}")
    return None


def describe_connect_error(error: BaseException, check: _Check) -> Failure | None:
    if isinstance(error, ConnectionRefusedError):
        return Failure(Reason.REFUSED, f"{check.address} refused the connection")
    if isinstance(error, OSError):  # unreachable network or host, no route
        return Failure(Reason.CONNECT, f"cannot connect to {check.address}: {os_text(error)}")
    return None


def describe_tls_error(error: BaseException, check: _Check) -> Failure | None:
    if isinstance(error, ssl.SSLCertVerificationError):
        message = error.verify_message or os_text(error)
        return Failure(Reason.TLS, f"certificate verify failed: {message} ({check.address})")
    if isinstance(error, ConnectionResetError | BrokenPipeError):
        return Failure(Reason.TLS, f"{check.address} reset the connection during the handshake")
    if isinstance(error, OSError):  # ssl.SSLError included
        return Failure(Reason.TLS, f"handshake with {check.address} failed: {os_text(error)}")
    return None


def describe_protocol_error(error: BaseException, check: _Check) -> Failure | None:
    """What broke while sending the request or receiving the response, and where."""
    if isinstance(error, UnicodeError):
        return None  # only the resolver's IDNA codec raises one because of a target
    where = {
        _Step.REQUEST: "while sending the request",
        _Step.HEADERS: "before the headers were complete",
        _Step.BODY: f"after {check.size} B of the body",
    }.get(check.step, "")
    cause = unwrap(error)
    if isinstance(cause, http.client.BadStatusLine) and not isinstance(
        cause, http.client.RemoteDisconnected
    ):
        return Failure(Reason.PROTOCOL, f"malformed status line {quote_text(str(cause))}")
    if isinstance(cause, http.client.IncompleteRead) and isinstance(cause.__context__, ValueError):
        what = "invalid chunk size"  # http.client turns the int() error into IncompleteRead
    elif isinstance(cause, http.client.RemoteDisconnected | http.client.IncompleteRead):
        what = "connection closed"
    elif isinstance(cause, urllib3.exceptions.DecodeError):
        encoding = check.raw.headers.get("Content-Encoding", "") if check.raw else ""
        what = f"the body does not decode as {quote_text(encoding)}"
    elif isinstance(cause, ConnectionResetError):
        what = "connection reset"
    elif isinstance(cause, ssl.SSLError):
        what = f"TLS error ({os_text(cause)})"
    elif isinstance(cause, OSError):
        what = os_text(cause)
    else:  # LineTooLong, too many headers, conflicting Content-Length values
        what = quote_text(str(cause))
    return Failure(Reason.PROTOCOL, f"{what} {where}".rstrip())


_DESCRIBE_BY_STEP: Final[dict[str, Callable[[BaseException, _Check], Failure | None]]] = {
    _Step.PREPARE: describe_prepare_error,
    _Step.RESOLVE: describe_resolve_error,
    _Step.CONNECT: describe_connect_error,
    _Step.TLS: describe_tls_error,
}


def unwrap(error: BaseException) -> BaseException:
    """The exception urllib3 wrapped (``ProtocolError("Connection broken: ...", cause)``)."""
    while isinstance(error, urllib3.exceptions.ProtocolError | urllib3.exceptions.SSLError):
        if error.__cause__ is None:
            break
        error = error.__cause__
    return error


def os_text(error: BaseException) -> str:
    """An OSError's message without errno prefix or OpenSSL source line."""
    if isinstance(error, ssl.SSLError):
        return _SSL_SOURCE.sub("", str(error.args[1] if len(error.args) > 1 else error))
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def quote_text(text: str) -> str:
    """Server-controlled text for a failure's detail: cut short, a URL's password masked
    (escaping is the log's job)."""
    text = display_url(text)
    if len(text) > _QUOTE_LIMIT:
        text = text[:_QUOTE_LIMIT] + "..."
    return f"'{text}'"


def format_address(address: tuple[Any, ...]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
