"""CPU cost of one check: monitor's Fetcher against plain requests.get and http.client.

    python bench/check_cost.py [--checks 2000] [--rounds 5] [--profile]

A minimal HTTP server runs in a separate process (so its CPU is not counted): one thread,
accept, read the request head, send a fixed 2-byte response with ``Connection: close``, close.
Each client then makes ``--checks`` sequential requests on fresh connections, and the CPU time
of this process (``time.process_time``: all its threads, the Fetcher's reaper included) is
divided by the number of checks. The table shows the median and the range over ``--rounds``.
``--profile`` prints where a Fetcher's CPU goes instead (cProfile, sorted by own time).
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import multiprocessing
import pstats
import socket
import statistics
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

import requests

from monitor.http import Fetcher
from monitor.settings import make_monitor

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def run_server(ready: Connection) -> None:
    """Serve RESPONSE to every connection until the parent closes its end of ``ready``."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        listener.settimeout(0.5)
        ready.send(listener.getsockname()[1])
        while not ready.poll():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                serve_one(conn)


def serve_one(conn: socket.socket) -> None:
    conn.settimeout(5)
    received = b""
    try:
        while b"\r\n\r\n" not in received:
            data = conn.recv(65536)
            if not data:
                return
            received += data
        conn.sendall(RESPONSE)
    except OSError:
        return


def fetcher_check(url: str) -> tuple[Callable[[], None], Callable[[], None]]:
    fetcher = Fetcher()
    monitor = make_monitor("bench", url=url, timeout=5)

    def check() -> None:
        observation = fetcher.fetch(monitor)
        assert observation.failure is None, observation.failure

    return check, fetcher.close


def requests_check(url: str) -> tuple[Callable[[], None], Callable[[], None]]:
    def check() -> None:
        assert requests.get(url, timeout=5).content == b"ok"

    return check, lambda: None


def http_client_check(url: str) -> tuple[Callable[[], None], Callable[[], None]]:
    port = int(url.rsplit(":", 1)[1].rstrip("/"))

    def check() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"ok"
        conn.close()

    return check, lambda: None


CLIENTS = {
    "http.client": http_client_check,
    "requests.get": requests_check,
    "monitor Fetcher": fetcher_check,
}


def measure(check: Callable[[], None], checks: int) -> tuple[float, float]:
    """CPU and wall milliseconds per check over ``checks`` sequential checks."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(checks):
        check()
    return (
        (time.process_time() - cpu) * 1000 / checks,
        (time.perf_counter() - wall) * 1000 / checks,
    )


def benchmark(url: str, checks: int, rounds: int) -> None:
    print(f"{checks} sequential checks per round, {rounds} rounds, fresh connection each")
    print(f"{'client':<16} {'CPU ms/check':>13} {'(min-max)':>13} {'wall ms/check':>14}")
    for name, make in CLIENTS.items():
        check, close = make(url)
        try:
            measure(check, min(checks, 200))  # warm up: imports, caches, TLS-free paths
            results = [measure(check, checks) for _ in range(rounds)]
        finally:
            close()
        cpu = [result[0] for result in results]
        wall = statistics.median(result[1] for result in results)
        spread = f"{min(cpu):.3f}-{max(cpu):.3f}"
        print(f"{name:<16} {statistics.median(cpu):>13.3f} {spread:>13} {wall:>14.3f}")


def profile(url: str, checks: int) -> None:
    check, close = fetcher_check(url)
    try:
        measure(check, 200)
        profiler = cProfile.Profile()
        profiler.runcall(measure, check, checks)
    finally:
        close()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(target=run_server, args=(child,), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{parent.recv()}/"
        if args.profile:
            profile(url, args.checks)
        else:
            benchmark(url, args.checks, args.rounds)
    finally:
        parent.send("stop")
        server.join(5)


if __name__ == "__main__":
    main()
