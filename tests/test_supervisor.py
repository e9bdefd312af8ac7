"""The supervisor in this process, running real spawned processes whose body is a test double.

The doubles below stand in for ``run_worker`` (they must be importable by the spawned child);
they exercise what the supervisor decides: boot failures and exit code 3, heartbeat loss with
SIGTERM then SIGKILL, restarts with backoff, reload. Signals are real: a helper thread sends
them to this process while the supervisor's loop runs in the main thread.
"""

import io
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from loguru import logger

from monitor.logs import configure_logging
from monitor.results import CheckResult, Failure, Reason
from monitor.settings import ConfigError, Settings, load_settings, make_monitor
from monitor.signals import SignalInbox
from monitor.states import BackoffPolicy
from monitor.supervisor import (
    DAEMON_SIGNALS,
    EXIT_OK,
    EXIT_WORKER_CANNOT_BOOT,
    Recorder,
    Supervisor,
    Timeouts,
    describe_diff,
    describe_exit,
    diff_monitors,
    restart_only_changes,
    summarize_names,
)
from monitor.worker import Heartbeat, LogEntry, WorkerSpec

FAST = BackoffPolicy(initial=0.1, maximum=0.4, reset_after=60.0, max_boot_failures=3)
QUICK = Timeouts(boot=10.0, kill_grace=0.5, poll=0.05, heartbeat=0.6)


# Worker doubles (run in the spawned process).


def exit_at_once(spec: WorkerSpec, conn: Connection, heartbeat: Heartbeat) -> None:
    sys.exit(1)


def never_beat(spec: WorkerSpec, conn: Connection, heartbeat: Heartbeat) -> None:
    time.sleep(60)


def beat_once_then_hang(spec: WorkerSpec, conn: Connection, heartbeat: Heartbeat) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # wedged: only SIGKILL will do
    heartbeat.value = time.monotonic()
    time.sleep(60)


def echo_shares(spec: WorkerSpec, conn: Connection, heartbeat: Heartbeat) -> None:
    """Beats, and reports each share it is given as a log record."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)

    def report(names: list[str]) -> None:
        conn.send([LogEntry("INFO", f"slot {spec.slot} share {','.join(names)}")])

    report([m.name for m in spec.share.monitors])
    while True:
        heartbeat.value = time.monotonic()
        if conn.poll(0.05):
            report([m.name for m in conn.recv().monitors])


# Driving the loop.


def settings_for(tmp_path: Path, names: list[str], **daemon: str) -> Settings:
    environ = {f"MONITOR_MONITORS__{n.upper()}__URL": f"http://127.0.0.1:9/{n}" for n in names}
    environ.update({f"MONITOR_{key.upper()}": value for key, value in daemon.items()})
    return load_settings(environ=environ, cwd=tmp_path)


def wait_for_text(log: io.StringIO, pattern: str, count: int = 1, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(re.findall(pattern, log.getvalue())) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} not logged {count} times in {timeout} s")
        time.sleep(0.02)


def serve_while(supervisor: Supervisor, script: Callable[[], None]) -> tuple[int, list[str]]:
    """Run the loop here, ``script`` in a thread (it signals us); return the exit code and any
    failure of the script. The signal handlers stay installed until the script is done, so a
    late signal never reaches pytest itself."""
    failures: list[str] = []

    def run() -> None:
        try:
            script()
        except AssertionError as error:
            failures.append(str(error))
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    with SignalInbox(DAEMON_SIGNALS) as inbox:
        helper = threading.Thread(target=run)
        helper.start()
        code = supervisor.serve(inbox)
        helper.join(30)
    return code, failures


def test_a_worker_that_cannot_boot_stops_the_supervisor_with_exit_code_3(
    tmp_path: Path, log: io.StringIO
) -> None:
    supervisor = Supervisor(
        settings_for(tmp_path, ["a", "b"], workers="2"),
        load=lambda: pytest.fail("no reload here"),
        target=exit_at_once,
        policy=FAST,
        timeouts=QUICK,
    )
    code, failures = serve_while(supervisor, lambda: None)
    assert (code, failures) == (EXIT_WORKER_CANNOT_BOOT, [])
    text = log.getvalue()
    # Exactly three attempts for the slot that went fatal, not a restart loop.
    fatal = re.search(
        r"worker (\d) \(pid \d+\) exited with code 1; it cannot boot \(3 attempts", text
    )
    assert fatal is not None, text
    assert len(re.findall(rf"worker {fatal[1]} \(pid \d+\) starting", text)) == 3
    assert "stopping (a worker cannot boot)" in text


def test_a_worker_that_never_sends_a_heartbeat_is_a_failed_boot(
    tmp_path: Path, log: io.StringIO
) -> None:
    supervisor = Supervisor(
        settings_for(tmp_path, ["a"]),
        load=lambda: pytest.fail("no reload here"),
        target=never_beat,
        policy=FAST,
        timeouts=Timeouts(boot=0.5, kill_grace=0.5, poll=0.05),
    )
    code, _ = serve_while(supervisor, lambda: None)
    assert code == EXIT_WORKER_CANNOT_BOOT
    assert log.getvalue().count("sent no heartbeat within 0.5 s of starting") == 3


def test_a_wedged_worker_gets_sigterm_then_sigkill_and_is_restarted(
    tmp_path: Path, log: io.StringIO
) -> None:
    supervisor = Supervisor(
        settings_for(tmp_path, ["a"]),
        load=lambda: pytest.fail("no reload here"),
        target=beat_once_then_hang,
        policy=FAST,
        timeouts=QUICK,
    )

    def script() -> None:
        wait_for_text(log, r"worker 0 \(pid \d+\) running", count=2)
        os.kill(os.getpid(), signal.SIGINT)
        wait_for_text(log, "stopping")
        os.kill(os.getpid(), signal.SIGINT)  # the wedged worker ignores SIGTERM: stop at once

    code, failures = serve_while(supervisor, script)
    assert failures == []
    text = log.getvalue()
    assert "made no progress for" in text
    assert "sending SIGTERM, SIGKILL in 0.5 s" in text
    assert "still running: sending SIGKILL" in text
    assert "was killed by SIGKILL while running; its 1 monitors (a) are not checked" in text
    assert code == 130  # the second SIGINT stopped it without waiting


def test_reload_sends_new_shares_and_starts_workers_when_the_count_grows(
    tmp_path: Path, log: io.StringIO
) -> None:
    first = settings_for(tmp_path, ["a", "b"], workers="1")
    second = settings_for(tmp_path, ["a", "b", "c"], workers="2")
    loads = iter([second])
    supervisor = Supervisor(
        first, load=lambda: next(loads), target=echo_shares, policy=FAST, timeouts=QUICK
    )

    def script() -> None:
        wait_for_text(log, "slot 0 share a,b")
        wait_for_text(log, r"worker 0 \(pid \d+\) running")
        os.kill(os.getpid(), signal.SIGHUP)
        wait_for_text(log, r"reload: 1 added \(c\), 0 removed, 0 changed")
        wait_for_text(log, r"slot 0 share \w(,\w)*\n.*slot 1 share|slot 1 share")
        wait_for_text(log, r"worker 1 \(pid \d+\) running")
        os.kill(os.getpid(), signal.SIGTERM)

    code, failures = serve_while(supervisor, script)
    assert (code, failures) == (EXIT_OK, [])
    text = log.getvalue()
    shares = dict(re.findall(r"slot (\d) share ([\w,]+)", text))
    names = sorted(",".join(shares.values()).split(","))
    assert names == ["a", "b", "c"]  # every monitor in exactly one of the two shares
    assert re.search(r"worker 0 \(pid \d+\) stopped: exited with code 0", text)


def test_an_invalid_reload_keeps_the_old_configuration(tmp_path: Path, log: io.StringIO) -> None:
    def invalid() -> Settings:
        raise ConfigError(["MONITOR_MONITORS__A__TIMEOUT: must be > 0, got -1", "second problem"])

    supervisor = Supervisor(
        settings_for(tmp_path, ["a"]), load=invalid, target=echo_shares, policy=FAST, timeouts=QUICK
    )

    def script() -> None:
        wait_for_text(log, r"worker 0 \(pid \d+\) running")
        os.kill(os.getpid(), signal.SIGHUP)
        wait_for_text(log, "still running the previous configuration")
        os.kill(os.getpid(), signal.SIGTERM)

    code, failures = serve_while(supervisor, script)
    assert (code, failures) == (EXIT_OK, [])
    text = log.getvalue()
    assert "reload rejected: MONITOR_MONITORS__A__TIMEOUT: must be > 0, got -1" in text
    assert "reload rejected: second problem" in text
    assert text.count("share a") == 1  # no new share was sent
    assert supervisor.settings.monitors.keys() == {"a"}


# The pure parts.


def test_diff_monitors_names_added_removed_and_changed() -> None:
    old = {n: make_monitor(n, url=f"http://h/{n}") for n in ("a", "b", "c")}
    new = {
        "b": make_monitor("b", url="http://h/b"),
        "c": make_monitor("c", url="http://h/c2"),
        "d": make_monitor("d", url="http://h/d"),
    }
    diff = diff_monitors(old, new)
    assert (diff.added, diff.removed, diff.changed) == (("d",), ("a",), ("c",))
    assert describe_diff(diff) == "1 added (d), 1 removed (a), 1 changed (c)"
    assert describe_diff(diff_monitors(old, old)) == "no monitor changed"


def test_restart_only_changes_lists_what_a_reload_cannot_apply(tmp_path: Path) -> None:
    old = settings_for(tmp_path, ["a"])
    new = settings_for(tmp_path, ["a", "b"], log_level="DEBUG", workers="3", threads="4")
    assert restart_only_changes(old, new) == ["log_level"]


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0, "exited with code 0"),
        (3, "exited with code 3"),
        (-9, "was killed by SIGKILL"),
        (-15, "was killed by SIGTERM"),
        (None, "exited"),
    ],
)
def test_describe_exit(code: int | None, text: str) -> None:
    assert describe_exit(code) == text


def test_summarize_names() -> None:
    assert summarize_names(["a", "b"]) == "a, b"
    assert summarize_names([f"m{i}" for i in range(8)]) == "m0, m1, m2, m3, m4 and 3 more"


def test_the_recorder_writes_results_and_worker_records_in_order() -> None:
    stream = io.StringIO()
    configure_logging(level="INFO", json=True, stream=stream)
    try:
        recorder = Recorder()
        started = datetime(2026, 12, 3, 21, 0, tzinfo=UTC)
        for i in range(50):
            failure = None if i % 2 else Failure(Reason.STATUS, "503 not in 200-399")
            recorder.put(
                CheckResult("api", "GET", "http://h/", 200, i, 0.01, failure, started, started)
            )
        recorder.put(
            LogEntry(
                "WARNING",
                "late {braces} kept",
                extra={"monitor": "api", "worker": 1},
                name="monitor.scheduling",
                function="note_run",
                line=42,
                exception="Traceback (most recent call last):\nValueError: x\n",
            )
        )
        recorder.close()
    finally:
        logger.remove()
        logging.basicConfig(handlers=[], force=True)
    records = [json.loads(line)["record"] for line in stream.getvalue().splitlines()]
    assert [r["extra"]["bytes"] for r in records[:50]] == list(range(50))
    assert {r["level"]["name"] for r in records[:50]} == {"INFO", "WARNING"}
    entry = records[50]
    assert entry["level"]["name"] == "WARNING"
    assert entry["message"].startswith("late {braces} kept\nTraceback")
    assert entry["extra"] == {"monitor": "api", "worker": 1}
    assert (entry["name"], entry["function"], entry["line"]) == (
        "monitor.scheduling",
        "note_run",
        42,
    )
