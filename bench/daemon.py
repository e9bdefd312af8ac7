"""Benchmark the real daemon against a local target, measured on the target's side.

    python bench/daemon.py --monitors 1000 --interval 5 --duration 30 --workers 2

Runs ``python -m monitor run`` with a generated env file, every monitor on a path of its own of
one local target: nginx (Debian's, if installed; its access log gives each request's time as
``$msec``) or, with ``--target builtin``, a small asyncio server of ours in a separate process.
Reports:

- completion: checks the target saw / checks due (grid points between the moment every worker
  runs and SIGTERM), each arrival matched to the grid point it was due at;
- interval error p50/p99/max: per monitor, |time between consecutive arrivals - interval|;
- lateness p50/p99/max: arrival - due time (nginx stamps to the millisecond, truncated);
- CPU ms per check: user+system time of the supervisor and its workers, over the window;
- peak RSS of that process tree (sampled every 0.2 s);
- time to first check (daemon start to the target's first request) and from SIGTERM to exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import psutil

from monitor.scheduling import grid_anchor, grid_index_at_or_before, grid_point

RUNNING = re.compile(r"^(\S+ \S+) \| INFO +\| - \| worker \d+ \(pid \d+\) running", re.M)
NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    log_format bench '$msec $request_uri';
    access_log {root}/access.log bench;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


@dataclass
class Report:
    target: str
    monitors: int
    interval: float
    duration: float
    workers: int
    checks_due: int
    checks_seen: int
    completion: float
    interval_error_ms: dict[str, float]
    lateness_ms: dict[str, float]
    cpu_ms_per_check: float
    supervisor_cpu_ms_per_check: float
    peak_rss_mb: float
    first_check_s: float
    sigterm_to_exit_s: float
    exit_code: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The builtin target: a separate process, so it never competes with the daemon for our GIL.


def serve_builtin(port: int, out: Path) -> None:
    """Answer every request with 200 "ok" on a fresh connection; on SIGTERM write the arrival
    times (epoch seconds) and paths to ``out``."""
    arrivals: list[tuple[float, str]] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        arrived = time.time()
        while await reader.readline() not in (b"\r\n", b"\n", b""):
            pass
        parts = line.split()
        if len(parts) >= 2:
            arrivals.append((arrived, parts[1].decode("latin-1")))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        await writer.drain()
        writer.close()

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        server = await asyncio.start_server(answer, "127.0.0.1", port, backlog=4096)
        async with server:
            await stop.wait()
        out.write_text("".join(f"{t:.6f} {p}\n" for t, p in arrivals), encoding="utf-8")

    asyncio.run(main())


class Target:
    """nginx or the builtin server on a free port; ``arrivals()`` once stopped."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.root = root
        self.port = free_port()
        self.log = root / "access.log"
        if kind == "nginx":
            (root / "tmp").mkdir()
            conf = root / "nginx.conf"
            conf.write_text(NGINX_CONF.format(root=root, port=self.port), encoding="utf-8")
            command = ["nginx", "-c", str(conf), "-p", str(root)]
        else:
            command = [sys.executable, __file__, "--serve", str(self.port), str(self.log)]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        self._wait_listening()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                time.sleep(0.05)
            else:
                return
        raise SystemExit(f"the {self.kind} target did not start listening")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGQUIT if self.kind == "nginx" else signal.SIGTERM)
        self.process.wait(30)

    def arrivals(self) -> dict[str, list[float]]:
        """Arrival times (epoch seconds) by path."""
        found: dict[str, list[float]] = {}
        for line in self.log.read_text(encoding="utf-8").splitlines():
            stamp, path = line.split(" ", 1)
            found.setdefault(path, []).append(float(stamp))
        for times in found.values():
            times.sort()
        return found


# The daemon and its process tree.


def write_env_file(path: Path, args: argparse.Namespace, url: str, root: Path) -> list[str]:
    names = [f"m{i:05}" for i in range(args.monitors)]
    lines = [
        f"MONITOR_WORKERS={args.workers}",
        f"MONITOR_THREADS={args.threads}",
        f"MONITOR_LOG_FILE={root / 'logs' / 'monitor.log'}",
        "MONITOR_LOG_ROTATION=1 GB",
        f"MONITOR_SHUTDOWN_TIMEOUT={args.interval + 5:g}",
    ]
    for name in names:
        lines.append(f"MONITOR_MONITORS__{name.upper()}__URL={url}{name}")
        lines.append(f"MONITOR_MONITORS__{name.upper()}__INTERVAL={args.interval:g}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return names


def tree(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


class RssSampler(threading.Thread):
    """Samples the summed RSS of the daemon's process tree until stopped; keeps the peak."""

    def __init__(self, process: psutil.Process) -> None:
        super().__init__(daemon=True)
        self.process = process
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            rss = 0
            for member in tree(self.process):
                try:
                    rss += member.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            self.peak = max(self.peak, rss)


def wait_all_running(log: Path, workers: int, timeout: float) -> float:
    """The epoch time at which the last of ``workers`` workers reported running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(encoding="utf-8") if log.exists() else ""
        stamps = RUNNING.findall(text)
        if len(stamps) >= workers:
            last = datetime.strptime(stamps[workers - 1], "%Y-%m-%d %H:%M:%S.%f")
            return last.replace(tzinfo=UTC).timestamp()
        time.sleep(0.05)
    raise SystemExit("the workers did not all report running")


# Measurements.


def quantiles_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(values)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

    return {
        "p50": round(at(0.5), 3),
        "p99": round(at(0.99), 3),
        "max": round(ordered[-1] * 1000, 3),
    }


def measure_schedule(
    names: list[str], interval: float, arrivals: dict[str, list[float]], window: tuple[float, float]
) -> tuple[int, int, list[float], list[float]]:
    """Checks due in ``window``, those seen, interval errors and lateness (seconds)."""
    start, end = (datetime.fromtimestamp(t, UTC) for t in window)
    due = seen = 0
    errors: list[float] = []
    lateness: list[float] = []
    for name in names:
        anchor = grid_anchor(name, interval)
        first = grid_index_at_or_before(anchor, interval, start) + 1
        last = grid_index_at_or_before(anchor, interval, end)
        due += max(0, last - first + 1)
        times = arrivals.get(f"/{name}", [])
        matched = set()
        half = timedelta(seconds=interval / 2)
        for arrived in times:
            # The nearest grid point: nginx's $msec is truncated to the millisecond, so a check
            # that arrived within a millisecond of its due time may be stamped before it.
            when = datetime.fromtimestamp(arrived, UTC)
            index = grid_index_at_or_before(anchor, interval, when + half)
            if first <= index <= last:
                matched.add(index)
                lateness.append((when - grid_point(anchor, interval, index)).total_seconds())
        seen += len(matched)
        inside = [t for t in times if window[0] <= t <= window[1] + interval]
        errors.extend(abs(b - a - interval) for a, b in pairwise(inside))
    return due, seen, errors, lateness


def run(args: argparse.Namespace) -> Report:
    kind = args.target
    if kind == "auto":
        kind = "nginx" if shutil.which("nginx") else "builtin"
    root = Path(tempfile.mkdtemp(prefix="monitor-bench-"))
    target = Target(kind, root)
    try:
        env_file = root / "settings.env"
        names = write_env_file(env_file, args, target.url, root)
        environ = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
        started = time.time()
        daemon = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--env-file", str(env_file)],
            cwd=root,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        supervisor = psutil.Process(daemon.pid)
        sampler = RssSampler(supervisor)
        sampler.start()
        workers = min(args.workers or len(os.sched_getaffinity(0)), args.monitors)
        ready = wait_all_running(root / "logs" / "monitor.log", workers, timeout=60)
        cpu_before = cpu_seconds(tree(supervisor))
        supervisor_before = cpu_seconds([supervisor])
        time.sleep(max(0.0, ready + args.duration - time.time()))
        cpu_used = cpu_seconds(tree(supervisor)) - cpu_before
        supervisor_used = cpu_seconds([supervisor]) - supervisor_before
        stopped = time.time()
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(args.interval + 30)
        sigterm_to_exit = time.time() - stopped
        sampler.done.set()
        sampler.join()
    finally:
        target.stop()
    arrivals = target.arrivals()
    first = min((times[0] for times in arrivals.values()), default=float("nan"))
    due, seen, errors, lateness = measure_schedule(names, args.interval, arrivals, (ready, stopped))
    report = Report(
        target=kind,
        monitors=args.monitors,
        interval=args.interval,
        duration=args.duration,
        workers=workers,
        checks_due=due,
        checks_seen=seen,
        completion=round(seen / due, 5) if due else float("nan"),
        interval_error_ms=quantiles_ms(errors),
        lateness_ms=quantiles_ms(lateness),
        cpu_ms_per_check=round(cpu_used * 1000 / max(seen, 1), 3),
        supervisor_cpu_ms_per_check=round(supervisor_used * 1000 / max(seen, 1), 3),
        peak_rss_mb=round(sampler.peak / 2**20, 1),
        first_check_s=round(first - started, 3),
        sigterm_to_exit_s=round(sigterm_to_exit, 3),
        exit_code=code,
    )
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"kept {root}", file=sys.stderr)
    return report


def print_report(report: Report) -> None:
    rows = [
        ("target", report.target),
        ("monitors x interval", f"{report.monitors} x {report.interval:g} s"),
        ("workers", report.workers),
        ("window", f"{report.duration:g} s"),
        ("completion", f"{report.checks_seen}/{report.checks_due} = {report.completion:.4%}"),
        (
            "interval error p50/p99/max",
            "{p50} / {p99} / {max} ms".format(**report.interval_error_ms),
        ),
        ("lateness p50/p99/max", "{p50} / {p99} / {max} ms".format(**report.lateness_ms)),
        (
            "CPU per check (whole tree)",
            f"{report.cpu_ms_per_check} ms, of which the supervisor"
            f" {report.supervisor_cpu_ms_per_check} ms",
        ),
        ("peak RSS (whole tree)", f"{report.peak_rss_mb} MB"),
        ("time to first check", f"{report.first_check_s} s"),
        ("SIGTERM to exit", f"{report.sigterm_to_exit_s} s (exit code {report.exit_code})"),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--monitors", type=int, default=1000)
    parser.add_argument("-i", "--interval", type=float, default=5.0)
    parser.add_argument("-d", "--duration", type=float, default=30.0)
    parser.add_argument("-w", "--workers", type=int, default=2, help="0: one per CPU")
    parser.add_argument("-t", "--threads", type=int, default=0, help="0: sized from the share")
    parser.add_argument("--target", choices=("auto", "nginx", "builtin"), default="auto")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve_builtin(int(args.serve[0]), Path(args.serve[1]))
        return 0
    report = run(args)
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print_report(report)
    return 0 if report.exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
