"""Real servers on 127.0.0.1 for tests, and the behaviours a monitor has to survive.

    with serve(respond(200, body=b"hi")) as server:   # HTTP: a reply for each request
        fetcher.fetch(make_monitor(url=server.url))
    with Server(blackhole) as server:                 # raw: a handler for each connection
        ...

A Server listens on an ephemeral port, runs its handler for each accepted connection in a
thread of its own, and counts connections and requests (``received`` keeps every request, to
check what a client sent). Leaving it shuts every connection down and joins every thread; it
fails the test if a thread will not stop, or if a handler raised anything other than the client
going away. Nothing here sleeps on a guess: pauses wait on the server's stop event, and
``wait_until`` polls a condition against a deadline.

HTTP replies: ``respond``, ``redirect``, ``redirect_chain``, ``redirect_loop``, ``route``,
``drip_headers``, ``drip_body``, ``endless_body``, ``gzip_bomb``, ``send_bytes`` (malformed or
cut-off responses, then close, reset or hang). Connection handlers: ``blackhole``,
``drip_tls``. Places where nothing serves: ``refused_port``, ``full_backlog``. Certificates:
``tls_context``, ``self_signed_context``.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import selectors
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import trustme

Handler = Callable[["Peer"], None]
Reply = Callable[["Peer", "Request"], None]

TEN_GIB = 10 * 1024**3
_ZEROS = bytes(256 * 1024)
_MAX_LINE = 65536
# A handler blocked on a client that neither reads nor closes gives up after this long, so a
# broken test cannot hang the run (stopping the server unblocks handlers long before).
_SAFETY_TIMEOUT = 30.0
_JOIN_TIMEOUT = 5.0
# Drips stop after this long: a client without a working deadline then fails its test.
_DRIP_LIMIT = 10.0


@dataclass(frozen=True)
class Request:
    """One request as the server read it."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def values(self, name: str) -> list[str]:
        """Every value of the header ``name`` (case-insensitive), in order."""
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        values = self.values(name)
        return values[0] if values else None

    @property
    def wants_close(self) -> bool:
        connection = (self.header("Connection") or "").lower()
        if self.version == "HTTP/1.0":
            return connection != "keep-alive"
        return connection == "close"


class Peer:
    """One accepted connection, as a handler sees it."""

    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.closed = False
        self._reader = sock.makefile("rb")

    def read_request(self) -> Request | None:
        """The next request, or None once the client has closed the connection."""
        line = self._reader.readline(_MAX_LINE)
        if not line:
            return None
        method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        headers = []
        while (line := self._reader.readline(_MAX_LINE)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        request = Request(method, target, version, tuple(headers), b"")
        length = int(request.header("Content-Length") or 0)
        if length:
            request = Request(method, target, version, tuple(headers), self._reader.read(length))
        self.server.record(request)
        return request

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds``; False if the server began stopping meanwhile."""
        return not self.server.stopping.wait(seconds)

    def drain(self) -> None:
        """Read and discard until the client closes (or the server stops): say nothing."""
        while self.sock.recv(65536):
            pass

    def reset(self) -> None:
        """Abort the connection: close with a zero linger time sends RST, not FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def close(self) -> None:
        self.closed = True
        self._reader.close()
        self.sock.close()


class Server:
    """A TCP server on 127.0.0.1 running ``handler(peer)`` per connection, each in a thread.

    With ``tls``, each connection is wrapped (handshake in its thread) before the handler runs;
    a client that rejects the certificate simply ends that connection.
    """

    def __init__(self, handler: Handler, *, tls: ssl.SSLContext | None = None) -> None:
        self._handler = handler
        self._tls = tls
        self.stopping = threading.Event()
        self.connections = 0
        self.received: list[Request] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        # Duplicates of the open connections' sockets, to shut them down when stopping: a
        # duplicate stays valid even after the handler thread closes its own descriptor.
        self._open: set[socket.socket] = set()
        self._listener = socket.socket()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._acceptor = threading.Thread(target=self._accept, name="server-accept")
        self.port = 0

    @property
    def url(self) -> str:
        """The server's root URL, such as ``http://127.0.0.1:40000/``."""
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}/"

    @property
    def requests(self) -> int:
        with self._lock:
            return len(self.received)

    def __enter__(self) -> Server:
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._acceptor.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
        if kind is None and self.errors:
            raise self.errors[0]

    def record(self, request: Request) -> None:
        with self._lock:
            self.received.append(request)

    def stop(self) -> None:
        """Stop accepting, shut every connection down, join every thread."""
        self.stopping.set()
        self._wake_writer.send(b"x")
        self._acceptor.join(_JOIN_TIMEOUT)
        self._listener.close()
        with self._lock:
            for guard in self._open:
                with contextlib.suppress(OSError):  # the client had already gone
                    guard.shutdown(socket.SHUT_RDWR)
            threads = list(self._threads)
        deadline = time.monotonic() + _JOIN_TIMEOUT
        for thread in [self._acceptor, *threads]:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._wake_reader.close()
        self._wake_writer.close()
        stuck = [thread.name for thread in [self._acceptor, *threads] if thread.is_alive()]
        if stuck:
            raise AssertionError(f"server threads did not stop: {stuck}")

    def _accept(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while not self.stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self._wake_reader:
                        return
                    try:
                        sock, _ = self._listener.accept()
                    except BlockingIOError:  # the client gave up between select and accept
                        continue
                    self._start(sock)

    def _start(self, sock: socket.socket) -> None:
        thread = threading.Thread(target=self._serve, args=(sock,), name=f"server-{self.port}")
        with self._lock:
            self.connections += 1
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(_SAFETY_TIMEOUT)
        guard = sock.dup()
        with self._lock:
            self._open.add(guard)
            if self.stopping.is_set():  # accepted as stop() shut the others down
                with contextlib.suppress(OSError):
                    guard.shutdown(socket.SHUT_RDWR)
        peer = None
        try:
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_side=True)
            peer = Peer(self, sock)
            self._handler(peer)
        except OSError:
            pass  # the client went away, reset the connection, or refused our certificate
        except Exception as error:  # a bug in a handler: fail the test that used it
            with self._lock:
                self.errors.append(error)
        finally:
            if peer is not None:
                peer.close()
            else:
                sock.close()
            with self._lock:
                self._open.discard(guard)
            guard.close()


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition still false after {timeout} s")
        time.sleep(0.002)


def serve(reply: Reply, *, tls: ssl.SSLContext | None = None) -> Server:
    """A Server that answers every request with ``reply``."""
    return Server(answering(reply), tls=tls)


def answering(reply: Reply) -> Handler:
    """A connection handler that reads requests and answers each with ``reply``, keeping the
    connection open between them unless the client asks to close it."""

    def handle(peer: Peer) -> None:
        while not peer.closed and (request := peer.read_request()) is not None:
            reply(peer, request)
            if request.wants_close:
                return

    return handle


# HTTP replies -------------------------------------------------------------------------------


def head(status: int, reason: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """A status line and header section."""
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def respond(
    status: int = 200,
    reason: str = "OK",
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
    *,
    chunked: bool = False,
    chunk_size: int = 1000,
    delay: float = 0.0,
) -> Reply:
    """A complete response, with Content-Length or chunked; no body for HEAD."""

    def reply(peer: Peer, request: Request) -> None:
        if delay and not peer.pause(delay):
            return
        framing = (
            ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", f"{len(body)}")
        )
        peer.send(head(status, reason, [*headers, framing]))
        if request.method == "HEAD":
            return
        if not chunked:
            peer.send(body)
            return
        for start in range(0, len(body), chunk_size):
            piece = body[start : start + chunk_size]
            peer.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        peer.send(b"0\r\n\r\n")

    return reply


def redirect(location: str, status: int = 302, *, endless: bool = False) -> Reply:
    """A redirect to ``location``; ``endless`` gives it a 10 GiB body of zeros."""

    def reply(peer: Peer, request: Request) -> None:
        length = TEN_GIB if endless else 0
        peer.send(head(status, "Found", [("Location", location), ("Content-Length", f"{length}")]))
        send_zeros(peer, length)

    return reply


def route(table: Mapping[str, Reply], fallback: Reply | None = None) -> Reply:
    """Answer each request with the reply for its path (404 for paths not in ``table``)."""
    missing = fallback or respond(404, "Not Found")

    def reply(peer: Peer, request: Request) -> None:
        table.get(request.path, missing)(peer, request)

    return reply


def redirect_chain(length: int, final: Reply | None = None) -> Reply:
    """``/0`` redirects to ``/1``, and so on; ``/<length>`` answers with ``final`` (200)."""
    table = {f"/{n}": redirect(f"/{n + 1}") for n in range(length)}
    return route({**table, f"/{length}": final or respond(body=b"arrived")})


def redirect_loop() -> Reply:
    """``/a`` redirects to ``/b``, and ``/b`` back to ``/a``."""
    return route({"/a": redirect("/b"), "/b": redirect("/a")})


def drip_headers(interval: float = 0.05, *, limit: float = _DRIP_LIMIT) -> Reply:
    """A status line, then one byte of an endless header every ``interval`` seconds (for at
    most ``limit`` seconds, so a client that does not give up fails its test, not hangs it)."""

    def reply(peer: Peer, request: Request) -> None:
        peer.send(b"HTTP/1.1 200 OK\r\nX-Drip: ")
        drip(peer, b"a", interval, limit)

    return reply


def drip_body(
    interval: float = 0.05, length: int = 1_000_000, *, limit: float = _DRIP_LIMIT
) -> Reply:
    """Headers promising ``length`` bytes, then one byte every ``interval`` seconds (for at
    most ``limit`` seconds)."""

    def reply(peer: Peer, request: Request) -> None:
        peer.send(head(200, "OK", [("Content-Length", f"{length}")]))
        drip(peer, b"a", interval, limit)

    return reply


def drip(peer: Peer, byte: bytes, interval: float, limit: float) -> None:
    """Send ``byte`` every ``interval`` seconds until ``limit`` seconds have passed."""
    give_up = time.monotonic() + limit
    while time.monotonic() < give_up and peer.pause(interval):
        peer.send(byte)


def endless_body(size: int = TEN_GIB, *, chunked: bool = False) -> Reply:
    """``size`` bytes of zeros, streamed as fast as the client reads (Content-Length or
    chunked); the client is expected to hang up long before the end."""

    def reply(peer: Peer, request: Request) -> None:
        framing = ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", f"{size}")
        peer.send(head(200, "OK", [framing]))
        if chunked:
            chunk = b"%x\r\n%s\r\n" % (len(_ZEROS), _ZEROS)
            for _ in range(size // len(_ZEROS)):
                peer.send(chunk)
        else:
            send_zeros(peer, size)

    return reply


def send_zeros(peer: Peer, size: int) -> None:
    view = memoryview(_ZEROS)
    while size > 0:
        piece = view[: min(size, len(_ZEROS))]
        peer.sock.sendall(piece)
        size -= len(piece)


@functools.cache
def gzip_member(decoded: int = 16 * 1024 * 1024) -> bytes:
    """One gzip member of ``decoded`` zeros (about 1000 times smaller)."""
    return gzip.compress(bytes(decoded), compresslevel=9)


def gzip_bomb(decoded: int = TEN_GIB) -> Reply:
    """A gzip body that decodes to ``decoded`` zeros: copies of one member, which gzip allows
    (about 10 MB on the wire for 10 GiB; one 64 KiB read holds about 64 MB of zeros)."""

    def reply(peer: Peer, request: Request) -> None:
        member = gzip_member()
        count = decoded // (16 * 1024 * 1024)
        headers = [("Content-Encoding", "gzip"), ("Content-Length", f"{len(member) * count}")]
        peer.send(head(200, "OK", headers))
        for _ in range(count):
            peer.send(member)

    return reply


def send_bytes(data: bytes, *, then: Literal["close", "reset", "hang"] = "close") -> Reply:
    """Send ``data`` as the response (malformed, cut off...), then close the connection,
    reset it, or hang (keep it open, silent)."""

    def reply(peer: Peer, request: Request) -> None:
        peer.send(data)
        if then == "reset":
            peer.reset()
        elif then == "hang":
            peer.drain()
        else:
            peer.close()

    return reply


# Connection handlers ------------------------------------------------------------------------


def blackhole(peer: Peer) -> None:
    """Accept and never answer (reads what comes, until the client or the server gives up)."""
    peer.drain()


def drip_tls(interval: float = 0.05, *, limit: float = _DRIP_LIMIT) -> Handler:
    """Take the ClientHello, then send the start of a 16 KiB handshake record a byte every
    ``interval`` seconds (for at most ``limit`` seconds): the handshake never completes."""

    def handle(peer: Peer) -> None:
        peer.sock.recv(65536)
        peer.send(b"\x16\x03\x03\x40\x00")
        drip(peer, b"\x02", interval, limit)

    return handle


# Places where nothing serves ----------------------------------------------------------------


@contextlib.contextmanager
def refused_port() -> Iterator[str]:
    """The URL of a port that refuses connections: bound, so nothing else takes it, but not
    listening, so the kernel answers a SYN with RST."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"


@contextlib.contextmanager
def full_backlog() -> Iterator[str]:
    """The URL of a listener whose accept queue is full: Linux then drops further SYNs, so a
    TCP connect never completes (until the client's timeout)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        with contextlib.ExitStack() as fillers:
            for _ in range(8):
                filler = fillers.enter_context(socket.socket())
                filler.settimeout(0.2)
                try:
                    filler.connect(address)
                except TimeoutError:
                    break  # this SYN was dropped: the queue is full
            else:
                raise AssertionError("the accept queue did not fill")
            yield f"http://127.0.0.1:{address[1]}/"


# Certificates -------------------------------------------------------------------------------


def tls_context(ca: trustme.CA, *hosts: str) -> ssl.SSLContext:
    """A server context with a certificate for ``hosts`` issued by ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*hosts).configure_cert(context)
    return context


def self_signed_context(ca: trustme.CA) -> ssl.SSLContext:
    """A server context presenting the CA's own certificate: self-signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as directory:
        pem = Path(directory) / "self-signed.pem"
        pem.write_bytes(ca.private_key_pem.bytes() + ca.cert_pem.bytes())
        context.load_cert_chain(pem)
    return context
