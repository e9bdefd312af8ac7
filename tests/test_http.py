"""monitor.http against real servers on 127.0.0.1 (see tests/servers.py)."""

from __future__ import annotations

import base64
import contextlib
import errno
import gzip
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest
import requests
import trustme

from monitor import __version__
from monitor import http as monitor_http
from monitor.http import Fetcher, describe_error
from monitor.results import Observation, Reason
from monitor.settings import MAX_REDIRECTS, make_monitor
from tests import servers
from tests.servers import Server, blackhole, redirect, respond, route, send_bytes, serve

# What "within the deadline" allows beyond it: the reaper wakes within milliseconds, the rest
# is scheduling noise on a loaded test machine.
MARGIN = 0.5


@pytest.fixture
def fetcher() -> Iterator[Fetcher]:
    fetcher = Fetcher()
    yield fetcher
    fetcher.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_pem(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def fetch(fetcher: Fetcher, url: str, **fields: Any) -> tuple[Observation, float]:
    """Fetch once; returns the observation and the wall time fetch() took."""
    monitor = make_monitor("test", url=url, **fields)
    started = time.monotonic()
    observation = fetcher.fetch(monitor)
    return observation, time.monotonic() - started


@contextlib.contextmanager
def peak_memory_growth() -> Iterator[Callable[[], int]]:
    """Bytes the process's peak RSS rose above its RSS at the start, while inside.

    Linux resets the high-water mark (VmHWM) on writing 5 to clear_refs, so a short spike is
    caught too, which sampling RSS could miss.
    """
    baseline = psutil.Process().memory_info().rss
    Path("/proc/self/clear_refs").write_text("5")
    peak: list[int] = []
    try:
        yield lambda: peak[0]
    finally:
        status = Path("/proc/self/status").read_text()
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        assert match is not None
        peak.append(int(match.group(1)) * 1024 - baseline)


# What a good response looks like --------------------------------------------------------------


def test_reports_status_phrase_body_and_size(fetcher: Fetcher) -> None:
    with serve(respond(201, "Created Just Now", b"hello")) as server:
        observation, _ = fetch(fetcher, server.url + "path?q=1")
    assert observation.failure is None
    assert (observation.status, observation.phrase) == (201, "Created Just Now")
    assert (observation.body, observation.size, observation.truncated) == (b"hello", 5, False)
    assert observation.url == server.url + "path?q=1"
    assert observation.redirects == 0
    assert 0 < observation.elapsed < 1


def test_phrase_is_the_raw_text(fetcher: Fetcher) -> None:
    with serve(respond(200, "Fine \x1b[31mred\x7f")) as server:
        observation, _ = fetch(fetcher, server.url)
    assert observation.phrase == "Fine \x1b[31mred\x7f"  # escaping is the log's job


def test_chunked_body_is_counted(fetcher: Fetcher) -> None:
    body = bytes(range(256)) * 40
    with serve(respond(body=body, chunked=True, chunk_size=333)) as server:
        observation, _ = fetch(fetcher, server.url)
    assert (observation.size, observation.body, observation.truncated) == (len(body), body, False)


def test_gzip_body_is_counted_decoded(fetcher: Fetcher) -> None:
    body = b"all work and no play " * 5000
    encoded = gzip.compress(body)
    with serve(respond(body=encoded, headers=[("Content-Encoding", "gzip")])) as server:
        observation, _ = fetch(fetcher, server.url)
    assert len(encoded) < len(body) // 10
    assert (observation.size, observation.body) == (len(body), body)


def test_head_has_no_body(fetcher: Fetcher) -> None:
    with serve(respond(body=b"x" * 1000)) as server:
        observation, _ = fetch(fetcher, server.url, method="HEAD")
    assert (observation.status, observation.size, observation.body) == (200, 0, b"")
    assert server.received[0].method == "HEAD"


@pytest.mark.parametrize(
    ("length", "chunked", "size", "truncated"),
    [
        (10_000, False, 1000, True),
        (1000, False, 1000, False),  # exactly the cap, and the end was seen
        (999, False, 999, False),
        (10_000, True, 1000, True),
    ],
)
def test_body_stops_at_the_cap(
    fetcher: Fetcher, length: int, chunked: bool, size: int, truncated: bool
) -> None:
    with serve(respond(body=b"y" * length, chunked=chunked)) as server:
        observation, _ = fetch(fetcher, server.url, max_body_bytes=1000)
    assert observation.failure is None
    assert (observation.size, len(observation.body), observation.truncated) == (
        size,
        size,
        truncated,
    )


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_ten_gib_body_is_capped_in_flat_memory(fetcher: Fetcher, chunked: bool) -> None:
    cap = 4 * 1024 * 1024
    reply = servers.endless_body(servers.TEN_GIB, chunked=chunked)
    with serve(reply) as server, peak_memory_growth() as growth:
        observation, took = fetch(fetcher, server.url, max_body_bytes=cap, timeout=10)
    assert observation.failure is None
    assert (observation.size, len(observation.body), observation.truncated) == (cap, cap, True)
    assert growth() < 50 * 1024 * 1024
    assert took < 5


def test_gzip_bomb_is_capped_in_flat_memory(fetcher: Fetcher) -> None:
    servers.gzip_member()  # built before measuring: it takes 16 MiB to make
    cap = 4 * 1024 * 1024
    with serve(servers.gzip_bomb(servers.TEN_GIB)) as server, peak_memory_growth() as growth:
        observation, _ = fetch(fetcher, server.url, max_body_bytes=cap, timeout=10)
    assert observation.failure is None
    assert (observation.size, observation.truncated) == (cap, True)
    assert observation.body == bytes(cap)
    # Unbounded decompression would expand one 64 KiB read to about 64 MB.
    assert growth() < 50 * 1024 * 1024


# What the request looks like ----------------------------------------------------------------


def test_user_agent_is_ours_by_default(fetcher: Fetcher) -> None:
    with serve(respond()) as server:
        fetch(fetcher, server.url)
    assert server.received[0].values("User-Agent") == [f"monitor/{__version__}"]


def test_user_agent_can_be_overridden_in_any_case(fetcher: Fetcher) -> None:
    with serve(respond()) as server:
        fetch(fetcher, server.url, headers={"user-agent": "probe/2"})
    assert server.received[0].values("User-Agent") == ["probe/2"]


def test_headers_basic_auth_and_body_are_sent(fetcher: Fetcher) -> None:
    with serve(respond()) as server:
        fetch(
            fetcher,
            server.url,
            method="POST",
            headers={"X-Token": "s3cret"},
            body="grüße",
            username="ann",
            password="pässword",
        )
    request = server.received[0]
    assert request.method == "POST"
    assert request.header("X-Token") == "s3cret"
    assert request.body == "grüße".encode()
    assert request.header("Content-Length") == str(len("grüße".encode()))
    token = base64.b64encode("ann:pässword".encode()).decode()
    assert request.header("Authorization") == f"Basic {token}"


def test_header_values_are_trimmed_and_sent_in_utf8(fetcher: Fetcher) -> None:
    with serve(respond()) as server:
        fetch(fetcher, server.url, headers={"X-Name": " Grüße ", "X-Plain": "a b"})
    request = server.received[0]
    assert request.header("X-Name") == "Grüße".encode().decode("latin-1")  # the server's view
    assert request.header("X-Plain") == "a b"


def test_userinfo_is_used_and_never_shown(fetcher: Fetcher) -> None:
    with serve(route({"/a": redirect("/b"), "/b": redirect("/a")})) as server:
        url = server.url.replace("://", "://ann:s3cret@") + "a"
        observation, _ = fetch(fetcher, url)
    token = base64.b64encode(b"ann:s3cret").decode()
    assert [request.header("Authorization") for request in server.received] == [
        f"Basic {token}"
    ] * 2
    assert observation.failure is not None
    assert observation.failure.reason == Reason.REDIRECTS
    assert "s3cret" not in observation.failure.detail
    assert "ann:" in observation.failure.detail


def test_each_check_opens_a_fresh_connection(fetcher: Fetcher) -> None:
    with serve(respond(body=b"ok")) as server:
        for _ in range(5):
            assert fetch(fetcher, server.url)[0].failure is None
    assert (server.connections, server.requests) == (5, 5)


def test_the_server_would_see_a_reused_connection() -> None:
    """The instrument of the test above: a pooling client shows up as fewer connections."""
    with serve(respond(body=b"ok")) as server, requests.Session() as session:
        for _ in range(3):
            session.get(server.url, timeout=5)
    assert (server.connections, server.requests) == (1, 3)


# Failure reasons ----------------------------------------------------------------------------


def test_dns(fetcher: Fetcher) -> None:
    observation, _ = fetch(fetcher, "http://no-such-host.invalid/")
    assert observation.failure is not None
    assert observation.failure.reason == Reason.DNS
    assert "no-such-host.invalid" in observation.failure.detail
    assert observation.status is None


@pytest.mark.parametrize(
    ("host", "detail"),
    [("*.example", "URL has an invalid label"), ("a" * 64 + ".example", "not a valid host name")],
)
def test_dns_for_a_name_that_cannot_exist(fetcher: Fetcher, host: str, detail: str) -> None:
    observation, _ = fetch(fetcher, f"http://{host}/")
    assert observation.failure is not None
    assert observation.failure.reason == Reason.DNS
    assert detail in observation.failure.detail


def test_refused(fetcher: Fetcher) -> None:
    with servers.refused_port() as url:
        observation, _ = fetch(fetcher, url)
    assert observation.failure is not None
    assert observation.failure.reason == Reason.REFUSED
    assert url.removeprefix("http://").rstrip("/") in observation.failure.detail


def test_connect_fails_when_the_network_is_unreachable() -> None:
    # No test may send traffic beyond loopback, so the kernel's answer is handed in directly.
    monitor = make_monitor(url="http://192.0.2.1/")
    check = monitor_http._Check(monitor, monitor.deadline, time.perf_counter, None)  # type: ignore[arg-type]
    check.step = monitor_http._Step.CONNECT
    check.address = "192.0.2.1:80"
    error = OSError(errno.ENETUNREACH, os.strerror(errno.ENETUNREACH))
    failure = describe_error(error, check)
    assert failure is not None
    assert failure.reason == Reason.CONNECT
    assert failure.detail == f"cannot connect to 192.0.2.1:80: {os.strerror(errno.ENETUNREACH)}"


def test_connect_timeout(fetcher: Fetcher) -> None:
    with servers.full_backlog() as url:
        observation, took = fetch(fetcher, url, timeout=1)
    assert observation.failure is not None
    assert observation.failure.reason == Reason.CONNECT_TIMEOUT
    assert "within 1 s" in observation.failure.detail
    assert 1 <= took < 1 + MARGIN


def test_tls_self_signed_fails_verification(fetcher: Fetcher, ca: trustme.CA) -> None:
    with serve(respond(), tls=servers.self_signed_context(ca)) as server:
        observation, _ = fetch(fetcher, server.url)
    assert observation.failure is not None
    assert observation.failure.reason == Reason.TLS
    assert "certificate verify failed: self-signed certificate" in observation.failure.detail


def test_tls_passes_with_the_ca_bundle(fetcher: Fetcher, ca: trustme.CA, ca_pem: Path) -> None:
    with serve(respond(body=b"secure"), tls=servers.tls_context(ca, "127.0.0.1")) as server:
        without, _ = fetch(fetcher, server.url)
        observation, _ = fetch(fetcher, server.url, ca_bundle=ca_pem)
    assert without.failure is not None
    assert without.failure.reason == Reason.TLS
    assert observation.failure is None
    assert (observation.status, observation.body) == (200, b"secure")


def test_tls_with_an_unusable_ca_bundle(fetcher: Fetcher, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("not a certificate\n")
    observation, _ = fetch(fetcher, "https://127.0.0.1:9/", ca_bundle=bundle)
    assert observation.failure is not None
    assert observation.failure.reason == Reason.TLS
    assert observation.failure.detail.startswith("cannot load the CA bundle")


def test_tls_passes_unverified(fetcher: Fetcher, ca: trustme.CA) -> None:
    with serve(respond(body=b"whatever"), tls=servers.self_signed_context(ca)) as server:
        observation, _ = fetch(fetcher, server.url, verify_tls=False)
    assert observation.failure is None
    assert observation.body == b"whatever"


def test_tls_host_name_mismatch(fetcher: Fetcher, ca: trustme.CA, ca_pem: Path) -> None:
    with serve(respond(), tls=servers.tls_context(ca, "other.test")) as server:
        observation, _ = fetch(fetcher, server.url, ca_bundle=ca_pem)
    assert observation.failure is not None
    assert observation.failure.reason == Reason.TLS
    assert "mismatch" in observation.failure.detail


def test_tls_against_plain_http(fetcher: Fetcher) -> None:
    def answer_in_plain_text(peer: servers.Peer) -> None:
        peer.send(servers.head(400, "Bad Request", [("Content-Length", "0")]))

    with Server(answer_in_plain_text) as server:
        observation, _ = fetch(fetcher, server.url.replace("http:", "https:"))
    assert observation.failure is not None
    assert observation.failure.reason == Reason.TLS
    assert "wrong version number" in observation.failure.detail


@pytest.mark.parametrize(
    ("handler", "scheme", "detail"),
    [
        (servers.answering(servers.drip_headers()), "http", "waiting for headers"),
        (servers.answering(servers.drip_body()), "http", "reading the body"),
        (blackhole, "http", "waiting for headers"),
        (blackhole, "https", "in the TLS handshake"),
        (servers.drip_tls(), "https", "in the TLS handshake"),
    ],
    ids=["drip-headers", "drip-body", "blackhole", "tls-stall", "tls-drip"],
)
def test_deadline_holds_whatever_the_target_does(
    fetcher: Fetcher, handler: servers.Handler, scheme: str, detail: str
) -> None:
    with Server(handler) as server:
        url = server.url.replace("http:", f"{scheme}:")
        observation, took = fetch(fetcher, url, timeout=1)
    assert observation.failure is not None
    assert observation.failure.reason == Reason.TIMEOUT
    assert observation.failure.detail.startswith(f"after 1 s {detail}")
    assert 1 <= took < 1 + MARGIN
    assert 1 <= observation.elapsed < 1 + MARGIN


def test_body_timeout_says_what_arrived(fetcher: Fetcher) -> None:
    with serve(servers.drip_body(interval=0.01)) as server:
        observation, _ = fetch(fetcher, server.url, timeout=0.5)
    assert observation.failure is not None
    assert observation.status == 200
    assert observation.size > 5
    assert f"({observation.size} B received)" in observation.failure.detail


CUT_OFF = servers.head(200, "OK", [("Content-Length", "1000")]) + b"x" * 100
CHUNKED = servers.head(200, "OK", [("Transfer-Encoding", "chunked")])


@pytest.mark.parametrize(
    ("reply", "detail"),
    [
        (send_bytes(b"HTTP/1.1 OK fine\r\n\r\n"), "malformed status line 'HTTP/1.1 OK fine"),
        (send_bytes(b"SMTP ready\r\n\r\n"), "malformed status line 'SMTP ready"),
        (send_bytes(b""), "connection closed before the headers were complete"),
        (send_bytes(b"HTTP/1.1 200 OK\r\nContent-Le", then="reset"), "connection reset before"),
        (send_bytes(CUT_OFF, then="reset"), "connection reset after"),
        (send_bytes(CUT_OFF), "connection closed after 100 B of the body"),
        (send_bytes(CHUNKED + b"5\r\nhello\r\n10\r\nabc"), "connection closed after"),
        (send_bytes(CHUNKED + b"zz\r\nhello\r\n"), "invalid chunk size after 0 B"),
        (send_bytes(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n"), "more than 100"),
        (send_bytes(b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70000), "got more than 65536 bytes"),
        (
            respond(body=b"not gzip at all", headers=[("Content-Encoding", "gzip")]),
            "the body does not decode as 'gzip'",
        ),
    ],
    ids=[
        "bad-status",
        "not-http",
        "closed-at-once",
        "reset-in-headers",
        "reset-in-body",
        "closed-in-body",
        "chunked-cut-off",
        "chunk-size-garbage",
        "too-many-headers",
        "header-too-long",
        "bad-gzip",
    ],
)
def test_protocol_failures(fetcher: Fetcher, reply: servers.Reply, detail: str) -> None:
    with serve(reply) as server:
        observation, took = fetch(fetcher, server.url, timeout=5)
    assert observation.failure is not None
    assert observation.failure.reason == Reason.PROTOCOL, observation.failure
    assert detail in observation.failure.detail
    assert took < 1


# Redirects ----------------------------------------------------------------------------------


def test_redirects_are_followed_and_counted(fetcher: Fetcher) -> None:
    with serve(servers.redirect_chain(3)) as server:
        observation, _ = fetch(fetcher, server.url + "0")
    assert observation.failure is None
    assert (observation.status, observation.body) == (200, b"arrived")
    assert (observation.url, observation.redirects) == (server.url + "3", 3)
    assert (server.connections, server.requests) == (4, 4)  # each hop a fresh connection


def test_relative_and_absolute_locations(fetcher: Fetcher) -> None:
    table = {"/a/b": redirect("c"), "/a/c": redirect("../d?x=1"), "/e": respond(body=b"end")}
    with serve(route(table)) as server:
        table["/d"] = redirect(f"//127.0.0.1:{server.port}/e")  # scheme-relative
        observation, _ = fetch(fetcher, server.url + "a/b")
    assert observation.failure is None
    assert (observation.url, observation.redirects) == (server.url + "e", 3)
    assert [request.target for request in server.received] == ["/a/b", "/a/c", "/d?x=1", "/e"]


def test_redirect_loop(fetcher: Fetcher) -> None:
    with serve(servers.redirect_loop()) as server:
        observation, _ = fetch(fetcher, server.url + "a")
    assert observation.failure is not None
    assert observation.failure.reason == Reason.REDIRECTS
    assert observation.failure.detail == f"loop back to {server.url}a"
    assert (observation.status, observation.redirects) == (302, 1)


def test_at_most_max_redirects(fetcher: Fetcher) -> None:
    with serve(servers.redirect_chain(MAX_REDIRECTS)) as server:
        observation, _ = fetch(fetcher, server.url + "0")
    assert observation.failure is None
    assert observation.redirects == MAX_REDIRECTS
    with serve(servers.redirect_chain(MAX_REDIRECTS + 1)) as server:
        observation, _ = fetch(fetcher, server.url + "0")
    assert observation.failure is not None
    assert observation.failure.reason == Reason.REDIRECTS
    assert observation.failure.detail.startswith(f"more than {MAX_REDIRECTS}")
    assert server.requests == MAX_REDIRECTS + 1


def test_redirect_not_followed_when_disabled(fetcher: Fetcher) -> None:
    with serve(servers.redirect_chain(1)) as server:
        observation, _ = fetch(fetcher, server.url + "0", follow_redirects=False)
    assert observation.failure is None
    assert (observation.status, observation.redirects, observation.url) == (
        302,
        0,
        server.url + "0",
    )
    assert server.requests == 1


@pytest.mark.parametrize(
    ("status", "method", "body"),
    [(301, "GET", b""), (302, "GET", b""), (303, "GET", b""), (307, "POST", b"data")],
)
def test_redirect_method_as_browsers(
    fetcher: Fetcher, status: int, method: str, body: bytes
) -> None:
    with serve(route({"/a": redirect("/b", status), "/b": respond()})) as server:
        fetch(fetcher, server.url + "a", method="POST", body="data")
    second = server.received[1]
    assert (second.method, second.body) == (method, body)
    assert (second.header("Content-Length") is not None) == bool(body)


def test_head_stays_head_after_303(fetcher: Fetcher) -> None:
    with serve(route({"/a": redirect("/b", 303), "/b": respond()})) as server:
        fetch(fetcher, server.url + "a", method="HEAD")
    assert [request.method for request in server.received] == ["HEAD", "HEAD"]


def test_credentials_are_not_sent_to_another_host(fetcher: Fetcher) -> None:
    with serve(respond()) as other:
        elsewhere = f"http://localhost:{other.port}/"
        with serve(route({"/away": redirect(elsewhere), "/here": redirect("/x")})) as server:
            fields: dict[str, Any] = {"username": "ann", "password": "pw"}
            fields["headers"] = {"Cookie": "session=1", "X-Other": "kept"}
            fetch(fetcher, server.url + "away", **fields)
            fetch(fetcher, server.url + "here", **fields)
    arrived = other.received[0]
    assert arrived.header("Authorization") is None
    assert arrived.header("Cookie") is None
    assert arrived.header("X-Other") == "kept"
    same_host = server.received[2]
    assert same_host.path == "/x"
    assert same_host.header("Authorization") is not None


def test_redirect_body_is_never_read(fetcher: Fetcher) -> None:
    table = {"/a": redirect("/b", endless=True), "/b": respond(body=b"landed")}
    with serve(route(table)) as server, peak_memory_growth() as growth:
        observation, took = fetch(fetcher, server.url + "a", timeout=5)
    assert observation.failure is None
    assert (observation.body, observation.redirects) == (b"landed", 1)
    assert took < 1
    assert growth() < 20 * 1024 * 1024


def test_unfollowed_redirect_body_is_capped(fetcher: Fetcher) -> None:
    """requests itself would read all of it (to fill Response.next) even without following."""
    with serve(redirect("/b", endless=True)) as server:
        observation, took = fetch(
            fetcher, server.url, follow_redirects=False, max_body_bytes=65536, timeout=5
        )
    assert observation.failure is None
    assert (observation.status, observation.size, observation.truncated) == (302, 65536, True)
    assert took < 1


@pytest.mark.parametrize(
    ("location", "detail"),
    [
        (None, "302 without a Location header"),
        ("ftp://127.0.0.1/file", "Location 'ftp://127.0.0.1/file' is not an http(s) URL"),
        ("javascript:alert(1)", "Location 'javascript:alert(1)' is not an http(s) URL"),
        ("http://127.0.0.1:99999/", "is not a valid URL: Port out of range"),
        ("http://[::1/", "is not a valid URL: Invalid IPv6 URL"),
        ("http://:80/", "Location 'http://:80/' has no host"),
        ("http://*.example/", "cannot follow Location 'http://*.example/'"),
    ],
)
def test_unusable_location(fetcher: Fetcher, location: str | None, detail: str) -> None:
    headers = [] if location is None else [("Location", location)]
    with serve(respond(302, "Found", headers=headers)) as server:
        observation, _ = fetch(fetcher, server.url)
    assert observation.failure is not None
    assert observation.failure.reason == Reason.REDIRECTS
    assert detail in observation.failure.detail
    assert observation.status == 302


def test_redirects_share_one_deadline(fetcher: Fetcher) -> None:
    table = {"/a": redirect("/b"), "/b": servers.drip_headers()}
    with serve(route(table)) as server:
        observation, took = fetch(fetcher, server.url + "a", timeout=1)
    assert observation.failure is not None
    assert observation.failure.detail == "after 1 s waiting for headers (after 1 redirect)"
    assert took < 1 + MARGIN


# Threads, clock, the reaper -----------------------------------------------------------------


def test_many_checks_at_once_on_one_fetcher(fetcher: Fetcher) -> None:
    with serve(respond(body=b"ok" * 100, delay=0.01)) as good, Server(blackhole) as bad:

        def check(n: int) -> tuple[Observation, float]:
            if n % 10 == 0:
                return fetch(fetcher, bad.url, timeout=1)
            return fetch(fetcher, good.url + str(n), timeout=5)

        with ThreadPoolExecutor(max_workers=32) as pool:
            results = list(pool.map(check, range(200)))
    for n, (observation, took) in enumerate(results):
        if n % 10 == 0:
            assert observation.failure is not None
            assert observation.failure.reason == Reason.TIMEOUT
            assert took < 1 + MARGIN
        else:
            assert observation.failure is None, observation.failure
            assert (observation.size, observation.url) == (200, good.url + str(n))
    assert good.connections == good.requests == 180


def test_elapsed_comes_from_the_given_clock() -> None:
    fetcher = Fetcher(clock=lambda: 2 * time.perf_counter())  # a clock running twice as fast
    try:
        with serve(respond(delay=0.2)) as server:
            observation, took = fetch(fetcher, server.url, timeout=5)
    finally:
        fetcher.close()
    assert observation.failure is None
    assert observation.elapsed >= 2 * 0.2
    assert observation.elapsed > 1.5 * took


def test_reaper_wakes_a_blocked_receive() -> None:
    reaper = monitor_http._Reaper(time.perf_counter)
    left, right = socket.socketpair()
    try:
        watch = reaper.watch(left, time.perf_counter() + 0.2)
        started = time.perf_counter()
        assert left.recv(1) == b""  # blocks until the reaper shuts the socket down
        assert 0.2 <= time.perf_counter() - started < 0.2 + MARGIN
        assert reaper.release(watch) is True
    finally:
        reaper.close()
        left.close()
        right.close()


def test_released_watch_does_not_fire() -> None:
    reaper = monitor_http._Reaper(time.perf_counter)
    left, right = socket.socketpair()
    later, other = socket.socketpair()
    try:
        watch = reaper.watch(left, time.perf_counter() + 0.05)
        assert reaper.release(watch) is False
        # The reaper goes by deadline: once a later watch has fired, the released one would
        # have fired before it.
        marker = reaper.watch(later, time.perf_counter() + 0.1)
        servers.wait_until(lambda: marker.fired)
        right.sendall(b"x")
        assert left.recv(1) == b"x"  # still open, not shut down
        assert watch.fired is False
        reaper.release(marker)
    finally:
        reaper.close()
        for sock in (left, right, later, other):
            sock.close()


def test_errors_that_are_bugs_are_not_described() -> None:
    monitor = make_monitor(url="http://x/")
    check = monitor_http._Check(monitor, monitor.deadline, time.perf_counter, None)  # type: ignore[arg-type]
    assert describe_error(KeyError("bug"), check) is None
    assert describe_error(ValueError("bug"), check) is None


def test_a_bug_inside_fetch_propagates(fetcher: Fetcher, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise KeyError("bug")

    monkeypatch.setattr(monitor_http, "build_response", broken)
    with serve(respond()) as server, pytest.raises(KeyError):
        fetch(fetcher, server.url)


def test_a_limit_shortens_the_deadline_but_never_lengthens_it(fetcher: Fetcher) -> None:
    with Server(blackhole) as server:
        monitor = make_monitor("m", url=server.url, interval=5, timeout=2)
        started = time.perf_counter()
        shortened = fetcher.fetch(monitor, limit=0.5)
        took = time.perf_counter() - started
        longer = fetcher.fetch(make_monitor("m", url=server.url, interval=5, timeout=0.3), limit=3)
    assert shortened.failure is not None
    assert shortened.failure.detail.startswith("after 0.5 s waiting for headers")
    assert 0.5 <= took < 0.5 + MARGIN
    assert longer.failure is not None
    assert longer.failure.detail.startswith("after 0.3 s")
    assert longer.elapsed < 0.3 + MARGIN
