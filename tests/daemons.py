"""The real daemon as the end-to-end tests drive it: ``python -m monitor run`` as a subprocess
with an env file of our making, its log read back, and helpers to wait and to measure.
"""

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from itertools import pairwise
from pathlib import Path

from tests.servers import Peer, Reply, Request

CHECK_LINE = re.compile(
    r"(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \| (?P<level>\w+) +\| (?P<monitor>\S+) \|"
    r" GET http://127\.0\.0\.1:\d+(?P<path>/\S*) (?P<status>\d{3}|-) (?P<bytes>\d+) B"
    r" (?P<elapsed>\d+\.\d{3}) s (?P<verdict>up|down.*)"
)
ANY_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \| \w+ +\| \S+ \| .*")
RUNNING = re.compile(r"worker (\d+) \(pid (\d+)\) running")


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Arrivals:
    """Wraps a reply to note when each request arrived (by path) and when it was served."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.arrived: dict[str, list[float]] = defaultdict(list)
        self.served: dict[str, int] = defaultdict(int)

    def noting(self, reply: Reply) -> Reply:
        def noted(peer: Peer, request: Request) -> None:
            with self._lock:
                self.arrived[request.path].append(time.monotonic())
            reply(peer, request)
            with self._lock:
                self.served[request.path] += 1

        return noted

    def times(self, path: str) -> list[float]:
        with self._lock:
            return list(self.arrived[path])

    def count(self, path: str) -> int:
        with self._lock:
            return len(self.arrived[path])

    def total_served(self) -> int:
        with self._lock:
            return sum(self.served.values())

    def in_flight(self) -> int:
        with self._lock:
            return sum(len(t) for t in self.arrived.values()) - sum(self.served.values())


def interval_errors(times: list[float], interval: float) -> list[float]:
    return [abs(b - a - interval) for a, b in pairwise(times)]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Daemon:
    """``python -m monitor run`` in ``directory``, configured by its env file and environment."""

    def __init__(self, directory: Path, settings: Mapping[str, object], **environ: str) -> None:
        self.directory = directory
        self.env_file = directory / "settings.env"
        self.write_settings(settings)
        clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("MONITOR_")}
        self._stderr = (directory / "stderr.txt").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run"],
            cwd=directory,
            env={**clean, **environ},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            start_new_session=True,  # its own process group, so cleanup can reach every worker
        )
        self.started = time.monotonic()

    def write_settings(self, settings: Mapping[str, object]) -> None:
        text = "".join(f"{key}={value}\n" for key, value in settings.items())
        self.env_file.write_text(text, encoding="utf-8")

    @property
    def log_dir(self) -> Path:
        return self.directory / "logs"

    def log_files(self) -> list[Path]:
        return sorted(self.log_dir.glob("monitor*.log")) if self.log_dir.exists() else []

    def log_text(self) -> str:
        return "".join(path.read_text(encoding="utf-8") for path in self.log_files())

    def check_lines(self) -> list[re.Match[str]]:
        found = (CHECK_LINE.fullmatch(line) for line in self.log_text().splitlines())
        return [match for match in found if match is not None]

    def running_workers(self) -> dict[int, int]:
        """Slot → pid of the latest worker process that reported running."""
        return {int(slot): int(pid) for slot, pid in RUNNING.findall(self.log_text())}

    def wait_running(self, workers: int, timeout: float = 15.0) -> dict[int, int]:
        wait_for(lambda: len(self.running_workers()) >= workers, timeout, f"{workers} workers")
        return self.running_workers()

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        self.signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stderr(self) -> str:
        return (self.directory / "stderr.txt").read_text(encoding="utf-8", errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # any worker left behind
        self._stderr.close()


def monitors(url: str, names: list[str], **fields: object) -> dict[str, object]:
    """Env-file settings for monitors named ``names``, each checking ``url`` + its own path."""
    settings: dict[str, object] = {}
    for name in names:
        prefix = f"MONITOR_MONITORS__{name.upper()}__"
        settings[prefix + "URL"] = f"{url}{name}"
        for field, value in fields.items():
            settings[prefix + field.upper()] = value
    return settings
