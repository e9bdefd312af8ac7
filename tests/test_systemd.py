"""sd_notify (monitor.systemd) and the daemon under a notify socket bound by the test.

The daemon runs for real (``python -m monitor run``, as in test_daemon.py) with NOTIFY_SOCKET
naming an AF_UNIX datagram socket this test bound: a path, or an abstract name (``@...``).
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from monitor.supervisor import reload_environment
from monitor.systemd import (
    NULL_NOTIFIER,
    SocketNotifier,
    format_message,
    take_notifier,
    watchdog_interval,
    without_env_file_values,
)
from tests.daemons import Daemon, monitors, wait_for
from tests.servers import respond, serve

UNIT = Path(__file__).resolve().parents[1] / "deploy" / "monitor.service"
INSTALLED_SCRIPT = "/opt/monitor/venv/bin/monitor"


class Listener:
    """A bound AF_UNIX datagram socket; a thread notes each message and when it arrived."""

    def __init__(self, address: str) -> None:
        self.address = address  # as NOTIFY_SOCKET spells it
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind("\0" + address[1:] if address.startswith("@") else address)
        self._socket.settimeout(0.1)
        self._lock = threading.Lock()
        self._messages: list[tuple[float, dict[str, str]]] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive_all, daemon=True)
        self._thread.start()

    def _receive_all(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._socket.recv(65536)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            with self._lock:
                self._messages.append((time.monotonic(), fields))

    def messages(self) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            return list(self._messages)

    def times(self, key: str, value: str | None = None) -> list[float]:
        """When each message with ``key`` (set to ``value``, if given) arrived."""
        return [
            at
            for at, fields in self.messages()
            if key in fields and (value is None or fields[key] == value)
        ]

    def statuses(self) -> list[str]:
        return [fields["STATUS"] for _, fields in self.messages() if "STATUS" in fields]

    def close(self) -> None:
        self._closed.set()
        self._thread.join()
        self._socket.close()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # A short path: sun_path holds 108 bytes, and pytest's tmp_path can be longer.
    directory = Path(tempfile.mkdtemp(prefix="notify-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory)


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, socket_dir: Path) -> Iterator[Listener]:
    if request.param == "path":
        address = str(socket_dir / "notify")
    else:
        address = f"@monitor-test-{uuid.uuid4().hex}"
    bound = Listener(address)
    yield bound
    bound.close()


def worker_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


# --- The protocol, without a daemon.


def test_message_is_key_value_lines_and_a_value_stays_on_its_line() -> None:
    assert format_message({"READY": "1", "STATUS": "a\nb"}) == b"READY=1\nSTATUS=a b"


@pytest.mark.parametrize(
    ("usec", "watchdog_pid", "expected"),
    [
        ("1000000", None, 0.5),
        ("1000000", "42", 0.5),
        ("1000000", "43", None),  # the watchdog is for another process
        (None, None, None),
        ("0", None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_for_our_pid_only(
    usec: str | None, watchdog_pid: str | None, expected: float | None
) -> None:
    assert watchdog_interval(usec, watchdog_pid, 42) == expected


def test_take_notifier_removes_the_variables_so_workers_cannot_inherit_them() -> None:
    environ = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "7", "A": "1"}
    notifier = take_notifier(environ, 7)
    assert environ == {"A": "1"}
    assert isinstance(notifier, SocketNotifier)
    assert notifier.watchdog_interval == 2.0
    notifier.close()
    assert take_notifier({"A": "1"}, 7) is NULL_NOTIFIER


def test_without_a_listener_sending_is_silent(socket_dir: Path) -> None:
    notifier = SocketNotifier(str(socket_dir / "nobody"))
    notifier.send({"READY": "1"})  # ENOENT, swallowed
    notifier.close()


def test_notifier_reaches_a_path_and_an_abstract_socket(listener: Listener) -> None:
    notifier = SocketNotifier(listener.address)
    notifier.send({"STATUS": "hello"})
    wait_for(lambda: listener.statuses() == ["hello"], 5, "the message")
    notifier.close()


# --- The reload trap: EnvironmentFile= copies the env file into the environment.


def test_variables_equal_to_the_env_file_are_left_to_the_file() -> None:
    environ = {"MONITOR_WORKERS": "2", "MONITOR_THREADS": "4", "PATH": "/bin", "HOME": "/x"}
    file_values: dict[str, str | None] = {"MONITOR_WORKERS": "2", "MONITOR_THREADS": "8"}
    # THREADS was set apart from the file (another value): it still outranks the file.
    assert without_env_file_values(environ, file_values) == {
        "MONITOR_THREADS": "4",
        "PATH": "/bin",
        "HOME": "/x",
    }


def test_reload_environment_reads_the_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "settings.env"
    env_file.write_text("# comment\nMONITOR_WORKERS=2\n", encoding="utf-8")
    environ = {"MONITOR_WORKERS": "2", "MONITOR_LOG_LEVEL": "DEBUG"}
    assert reload_environment(environ, env_file) == {"MONITOR_LOG_LEVEL": "DEBUG"}
    assert reload_environment(environ, None) == environ


# --- The real daemon.


def test_ready_only_when_every_worker_runs_then_status_and_stopping(
    daemons: Callable[..., Daemon], listener: Listener
) -> None:
    with serve(respond(200)) as server:
        daemon = daemons(
            {
                **monitors(server.url, ["alpha", "beta", "gamma"], interval=0.2),
                "MONITOR_WORKERS": 2,
            },
            NOTIFY_SOCKET=listener.address,
        )
        wait_for(lambda: listener.times("READY", "1"), 15, "READY=1")
        assert len(daemon.running_workers()) == 2  # both logged running before READY=1
        ready_at = listener.times("READY", "1")[0]
        before = [f["STATUS"] for at, f in listener.messages() if at < ready_at and "STATUS" in f]
        assert all("of 2 workers running" in status for status in before)
        wait_for(
            lambda: any(
                s.startswith("3 monitors, 2 workers running; 3 up, 0 down")
                for s in listener.statuses()
            ),
            10,
            "STATUS with 3 up",
        )
        for pid in daemon.running_workers().values():
            environ = worker_environ(pid)
            assert "NOTIFY_SOCKET" not in environ
            assert not any(name.startswith("WATCHDOG_") for name in environ)
        assert "NOTIFY_SOCKET" in worker_environ(daemon.process.pid)  # the test passed it
        daemon.signal(signal.SIGTERM)
        wait_for(lambda: listener.times("STOPPING", "1"), 10, "STOPPING=1")
        assert daemon.process.wait(15) == 0, daemon.stderr()
    assert len(listener.times("READY", "1")) == 1


def test_watchdog_pings_at_half_the_timeout(
    daemons: Callable[..., Daemon], listener: Listener
) -> None:
    with serve(respond(200)) as server:
        daemons(
            monitors(server.url, ["alpha"], interval=1),
            NOTIFY_SOCKET=listener.address,
            WATCHDOG_USEC="600000",
        )
        wait_for(lambda: listener.times("READY", "1"), 15, "READY=1")
        wait_for(lambda: len(listener.times("WATCHDOG", "1")) >= 12, 10, "12 pings")
    pings = listener.times("WATCHDOG", "1")
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert all(0.25 <= gap <= 0.45 for gap in gaps[1:]), gaps
    assert 0.28 <= sum(gaps[1:]) / len(gaps[1:]) <= 0.35, gaps


def test_no_watchdog_for_another_pid(daemons: Callable[..., Daemon], listener: Listener) -> None:
    with serve(respond(200)) as server:
        daemons(
            monitors(server.url, ["alpha"], interval=1),
            NOTIFY_SOCKET=listener.address,
            WATCHDOG_USEC="200000",
            WATCHDOG_PID="1",
        )
        wait_for(lambda: listener.times("READY", "1"), 15, "READY=1")
        time.sleep(0.5)  # ten ping intervals: none may come
    assert listener.times("WATCHDOG") == []


def test_no_watchdog_while_a_worker_is_stuck(
    daemons: Callable[..., Daemon], listener: Listener
) -> None:
    with serve(respond(200)) as server:
        daemon = daemons(
            {**monitors(server.url, ["alpha"], interval=0.5), "MONITOR_HEARTBEAT_TIMEOUT": 60},
            NOTIFY_SOCKET=listener.address,
            WATCHDOG_USEC="500000",
        )
        wait_for(lambda: len(listener.times("WATCHDOG", "1")) >= 3, 15, "pings")
        (pid,) = daemon.running_workers().values()
        os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            # Its heartbeat goes stale after 3 s; the supervisor would replace it after 60 s.
            time.sleep(4.0)
            late = [at for at in listener.times("WATCHDOG", "1") if at > stopped + 3.3]
            assert late == []
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed = time.monotonic()
        wait_for(lambda: any(at > resumed for at in listener.times("WATCHDOG", "1")), 5, "pings")
        assert daemon.running_workers() == {0: pid}  # not replaced: it only paused


def test_reload_sends_reloading_then_ready_and_reads_a_changed_env_file(
    daemons: Callable[..., Daemon], listener: Listener
) -> None:
    with serve(respond(200)) as server:
        settings = monitors(server.url, ["alpha"], interval=0.2)
        # As under EnvironmentFile=: the env file's values are in the environment too.
        copied = {key: str(value) for key, value in settings.items()}
        daemon = daemons(settings, NOTIFY_SOCKET=listener.address, **copied)
        wait_for(lambda: listener.times("READY", "1"), 15, "READY=1")
        daemon.write_settings({**settings, "MONITOR_MONITORS__ALPHA__URL": f"{server.url}moved"})
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: len(listener.times("READY", "1")) == 2, 10, "READY=1 after the reload")
        wait_for(lambda: "/moved " in daemon.log_text(), 10, "a check of the moved URL")
        assert daemon.stop() == 0, daemon.stderr()
    reloading = [f for _, f in listener.messages() if f.get("RELOADING") == "1"]
    assert len(reloading) == 1
    sent = int(reloading[0]["MONOTONIC_USEC"])
    assert abs(sent / 1e6 - time.monotonic()) < 60
    assert listener.times("RELOADING")[0] < listener.times("READY", "1")[1]


def test_the_unit_file_passes_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart= exists: point it at this environment's monitor script.
    script = Path(sys.executable).parent / "monitor"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED_SCRIPT, str(script)))
    assert unit.read_text() != UNIT.read_text()
    verify = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, check=False
    )
    problems = [line for line in verify.stderr.splitlines() if unit.name in line]
    assert verify.returncode == 0, verify.stderr
    assert not problems, verify.stderr
    security = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=15", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert security.returncode == 0, security.stdout + security.stderr
