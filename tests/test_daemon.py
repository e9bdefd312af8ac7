"""The real daemon end to end: ``python -m monitor run`` as a subprocess, real signals, real
files, real loopback servers (tests/servers.py) that note when each request arrived.

Each monitor gets a path of its own, so the server's arrival times give each monitor's real
intervals. Waits poll a condition against a deadline; nothing sleeps and hopes.
"""

import json
import os
import re
import signal
import time
from collections.abc import Callable
from datetime import datetime
from itertools import pairwise

import psutil
import pytest

from tests.daemons import (
    ANY_LINE,
    Arrivals,
    Daemon,
    interval_errors,
    monitors,
    percentile,
    wait_for,
)
from tests.servers import Server, blackhole, respond, serve


def test_monitors_are_checked_on_schedule_one_json_line_per_check(
    daemons: Callable[..., Daemon],
) -> None:
    arrivals = Arrivals()
    with serve(arrivals.noting(respond(200, body=b"fine"))) as server:
        names = ["alpha", "beta", "gamma"]
        daemon = daemons(
            {**monitors(server.url, names, interval=0.3), "MONITOR_WORKERS": 2},
            MONITOR_LOG_JSON="true",
        )
        wait_for(lambda: all(arrivals.count(f"/{n}") >= 5 for n in names), 15, "5 checks each")
        assert daemon.stop() == 0, daemon.stderr()
        served = server.requests
    records = [json.loads(line)["record"] for line in daemon.log_text().splitlines()]
    checks = [r["extra"] for r in records if "ok" in r["extra"]]
    assert len(checks) == served  # one line per check, no more, no less
    for name in names:
        mine = [c for c in checks if c["monitor"] == name]
        assert len(mine) == arrivals.count(f"/{name}")
        for check in mine:
            assert check["method"] == "GET"
            assert check["url"] == f"{server.url}{name}"
            assert (check["status"], check["bytes"], check["ok"], check["reason"]) == (
                200,
                4,
                True,
                None,
            )
            assert 0 < check["elapsed"] < 0.3
        scheduled = [datetime.fromisoformat(c["scheduled"]) for c in mine]
        started = [datetime.fromisoformat(c["started"]) for c in mine]
        steps = [(b - a).total_seconds() for a, b in pairwise(scheduled)]
        assert steps == pytest.approx([0.3] * len(steps), abs=1e-5)  # on the grid, no drift
        assert all(
            0 <= (s - d).total_seconds() < 0.25 for s, d in zip(started, scheduled, strict=True)
        )


def test_a_killed_worker_is_restarted_after_its_backoff_and_checks_resume(
    daemons: Callable[..., Daemon],
) -> None:
    arrivals = Arrivals()
    with serve(arrivals.noting(respond(200))) as server:
        daemon = daemons(
            {**monitors(server.url, ["one", "two"], interval=0.2), "MONITOR_WORKERS": 2}
        )
        pids = daemon.wait_running(2)
        wait_for(lambda: arrivals.count("/one") >= 2 and arrivals.count("/two") >= 2, 10, "checks")
        killed_at = time.monotonic()
        os.kill(pids[0], signal.SIGKILL)
        wait_for(lambda: daemon.running_workers()[0] != pids[0], 10, "a new worker 0")
        back = time.monotonic()
        wait_for(
            lambda: all(max(arrivals.times(p)) > back for p in ("/one", "/two")),
            5,
            "checks of both monitors after the restart",
        )
        assert daemon.stop() == 0, daemon.stderr()
    assert back - killed_at >= 1.0  # the backoff: 1 s after the first crash
    gaps = {p: max(b - a for a, b in pairwise(t)) for p, t in arrivals.arrived.items()}
    # One monitor went unchecked while its worker was down; the other never paused.
    assert sorted(gaps.values())[0] < 0.35, gaps
    assert 1.0 <= sorted(gaps.values())[1] < 5.0, gaps
    text = daemon.log_text()
    assert f"worker 0 (pid {pids[0]}) was killed by SIGKILL while running" in text
    assert "are not checked until it restarts in 1 s" in text


HEARTBEAT_TIMEOUT = 2


def test_a_stopped_worker_is_detected_killed_and_replaced(daemons: Callable[..., Daemon]) -> None:
    arrivals = Arrivals()
    with serve(arrivals.noting(respond(200))) as server:
        daemon = daemons(
            {
                **monitors(server.url, ["one", "two"], interval=0.2),
                "MONITOR_WORKERS": 2,
                "MONITOR_HEARTBEAT_TIMEOUT": HEARTBEAT_TIMEOUT,
            }
        )
        pids = daemon.wait_running(2)
        stopped_at = time.monotonic()
        os.kill(pids[1], signal.SIGSTOP)
        limit = HEARTBEAT_TIMEOUT + 5
        wait_for(lambda: "made no progress" in daemon.log_text(), limit, "the stall noticed")
        noticed = time.monotonic()
        wait_for(lambda: daemon.running_workers()[1] != pids[1], 10, "a new worker 1")
        back = time.monotonic()
        wait_for(
            lambda: all(max(arrivals.times(p)) > back for p in ("/one", "/two")),
            5,
            "checks of both monitors after the replacement",
        )
        assert daemon.stop() == 0, daemon.stderr()
    assert HEARTBEAT_TIMEOUT - 1 <= noticed - stopped_at <= HEARTBEAT_TIMEOUT + 1.5
    wait_for(lambda: not psutil.pid_exists(pids[1]), 2, "the stopped worker reaped")
    text = daemon.log_text()
    assert f"worker 1 (pid {pids[1]}) made no progress for" in text
    assert f"worker 1 (pid {pids[1]}) was killed by SIGKILL" in text


def test_no_worker_outlives_a_killed_supervisor_by_2_s(daemons: Callable[..., Daemon]) -> None:
    arrivals = Arrivals()
    with serve(arrivals.noting(respond(200))) as server:
        daemon = daemons(
            {**monitors(server.url, ["one", "two"], interval=0.2), "MONITOR_WORKERS": 2}
        )
        pids = daemon.wait_running(2)
        workers = [psutil.Process(pid) for pid in pids.values()]
        # A stopped worker runs no code of its own: only the kernel (PR_SET_PDEATHSIG) can end it.
        os.kill(pids[1], signal.SIGSTOP)
        wait_for(lambda: workers[1].status() == psutil.STATUS_STOPPED, 5, "worker 1 stopped")
        daemon.process.kill()
        killed = time.monotonic()
        daemon.process.wait(5)

        def all_gone() -> bool:
            return all(not w.is_running() or w.status() == psutil.STATUS_ZOMBIE for w in workers)

        wait_for(all_gone, 5, "the workers to exit")
        assert time.monotonic() - killed < 2.0


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_a_graceful_stop_lets_checks_in_flight_finish_and_logs_them(
    daemons: Callable[..., Daemon], how: str
) -> None:
    arrivals = Arrivals()
    with serve(arrivals.noting(respond(200, body=b"late", delay=1.5))) as server:
        names = [f"s{i}" for i in range(8)]  # about four in flight at any time
        daemon = daemons(
            {
                **monitors(server.url, names, interval=3, timeout=2.5),
                "MONITOR_WORKERS": 2,
                "MONITOR_SHUTDOWN_TIMEOUT": 5,
            }
        )
        daemon.wait_running(2)
        wait_for(lambda: arrivals.in_flight() >= 3, 15, "three checks in flight")
        asked = time.monotonic()
        if how == "SIGTERM":
            daemon.signal(signal.SIGTERM)
        else:  # a terminal's Ctrl-C reaches the whole process group: the workers ignore it
            os.killpg(daemon.process.pid, signal.SIGINT)
        code = daemon.process.wait(10)
        took = time.monotonic() - asked
        served = arrivals.total_served()
    assert code == 0, daemon.stderr()
    assert took < 5.0
    lines = daemon.check_lines()
    assert len(lines) == served >= 3
    for line in lines:
        assert (line["status"], line["verdict"]) == ("200", "up")
        assert float(line["elapsed"]) >= 1.4
    assert (
        len(re.findall(r"worker \d \(pid \d+\) stopped: exited with code 0", daemon.log_text()))
        == 2
    )
    assert "KeyboardInterrupt" not in daemon.stderr()


def test_a_second_sigint_stops_at_once(daemons: Callable[..., Daemon]) -> None:
    arrivals = Arrivals()
    with serve(arrivals.noting(respond(200, delay=8))) as server:
        daemon = daemons(
            {
                **monitors(server.url, [f"slow{i}" for i in range(5)], interval=5, timeout=5),
                "MONITOR_SHUTDOWN_TIMEOUT": 20,
            }
        )
        wait_for(lambda: arrivals.in_flight() >= 1, 15, "a check in flight")
        daemon.signal(signal.SIGINT)
        wait_for(lambda: "stopping (SIGINT received)" in daemon.log_text(), 5, "the stop")
        again = time.monotonic()
        daemon.signal(signal.SIGINT)
        code = daemon.process.wait(10)
        assert time.monotonic() - again < 2.0
    assert code == 130
    assert "stopping at once (SIGINT received again)" in daemon.log_text()


@pytest.mark.slow
def test_rotation_with_three_workers_loses_and_tears_no_line(
    daemons: Callable[..., Daemon],
) -> None:
    arrivals = Arrivals()
    with serve(arrivals.noting(respond(200, body=b"ok"))) as server:
        names = [f"m{i:02}" for i in range(60)]
        daemon = daemons(
            {
                **monitors(server.url, names, interval=0.2),
                "MONITOR_WORKERS": 3,
                "MONITOR_LOG_ROTATION": "100 KB",
                "MONITOR_LOG_RETENTION": 1000,
            }
        )
        daemon.wait_running(3)
        begun = time.monotonic()
        wait_for(lambda: time.monotonic() - begun >= 10, 11, "ten seconds of checks")
        assert daemon.stop() == 0, daemon.stderr()
        served = server.requests
    files = daemon.log_files()
    live = [path for path in files if path.name == "monitor.log"]
    rotated = [path for path in files if path.name != "monitor.log"]
    assert len(live) == 1
    assert len(rotated) >= 2, [path.name for path in files]
    assert all(
        re.fullmatch(r"monitor\.\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{6}\.log", p.name) for p in rotated
    )
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert text.endswith("\n")
        for line in text.splitlines():
            assert ANY_LINE.fullmatch(line), f"torn or partial line in {path.name}: {line!r}"
    lines = daemon.check_lines()
    assert served > 2000  # 300 checks a second were due
    assert len(lines) == served
    for name in names:
        assert sum(1 for line in lines if line["monitor"] == name) == arrivals.count(f"/{name}")


@pytest.mark.slow
def test_a_blackholed_majority_does_not_delay_the_healthy_monitors(
    daemons: Callable[..., Daemon],
) -> None:
    arrivals = Arrivals()
    healthy = [f"ok{i:02}" for i in range(20)]
    with Server(blackhole) as hole, serve(arrivals.noting(respond(200))) as server:
        dead = (
            {f"MONITOR_MONITORS__HOLE{i:03}__URL": f"{hole.url}h{i}" for i in range(200)}
            | {f"MONITOR_MONITORS__HOLE{i:03}__INTERVAL": 2 for i in range(200)}
            | {f"MONITOR_MONITORS__HOLE{i:03}__TIMEOUT": 2 for i in range(200)}
        )
        daemon = daemons({**dead, **monitors(server.url, healthy, interval=1)})
        wait_for(
            lambda: all(arrivals.count(f"/{n}") >= 8 for n in healthy), 30, "8 healthy checks each"
        )
        assert daemon.stop() == 0, daemon.stderr()
    errors = [e for n in healthy for e in interval_errors(arrivals.times(f"/{n}"), 1.0)]
    assert len(errors) >= 140
    assert percentile(errors, 0.99) < 0.1, sorted(errors)[-10:]
    timeouts = [line for line in daemon.check_lines() if "reason=timeout" in line["verdict"]]
    assert len(timeouts) >= 200  # the blackholed monitors were checked, and timed out


def test_sighup_applies_a_valid_change_without_a_pause(daemons: Callable[..., Daemon]) -> None:
    arrivals = Arrivals()
    with serve(arrivals.noting(respond(200))) as server:
        before = monitors(server.url, ["keep", "gone", "moved"], interval=0.3)
        daemon = daemons({**before, "MONITOR_WORKERS": 2})
        daemon.wait_running(2)
        wait_for(lambda: arrivals.count("/moved") >= 2, 10, "checks before the reload")
        after = monitors(server.url, ["keep", "added"], interval=0.3)
        after["MONITOR_MONITORS__MOVED__URL"] = f"{server.url}moved-here"
        after["MONITOR_MONITORS__MOVED__INTERVAL"] = 0.3
        daemon.write_settings({**after, "MONITOR_WORKERS": 2})
        reloaded = time.monotonic()
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: arrivals.count("/added") >= 3, 10, "the added monitor checked")
        wait_for(lambda: arrivals.count("/moved-here") >= 3, 10, "the changed monitor checked")
        applied = time.monotonic()
        assert daemon.stop() == 0, daemon.stderr()
    assert "reload: 1 added (added), 1 removed (gone), 1 changed (moved)" in daemon.log_text()
    assert not [t for t in arrivals.times("/gone") if t > applied]
    assert not [t for t in arrivals.times("/moved") if t > applied]
    keep = arrivals.times("/keep")
    around = [t for t in keep if reloaded - 1 <= t <= applied]
    assert max(b - a for a, b in pairwise(around)) < 0.45  # never paused


def test_sighup_with_an_invalid_change_keeps_the_old_configuration(
    daemons: Callable[..., Daemon],
) -> None:
    arrivals = Arrivals()
    with serve(arrivals.noting(respond(200))) as server:
        good = monitors(server.url, ["one"], interval=0.2)
        daemon = daemons(good)
        daemon.wait_running(1)
        daemon.write_settings({**good, "MONITOR_MONITORS__ONE__TIMEOUT": -1, "MONITOR_TYPO": 1})
        daemon.signal(signal.SIGHUP)
        wait_for(
            lambda: "still running the previous configuration" in daemon.log_text(), 10, "rejection"
        )
        rejected = time.monotonic()
        wait_for(
            lambda: len([t for t in arrivals.times("/one") if t > rejected]) >= 3, 5, "checks after"
        )
        assert daemon.process.poll() is None
        assert daemon.stop() == 0, daemon.stderr()
    text = daemon.log_text()
    assert re.search(r"reload rejected: .*MONITOR_MONITORS__ONE__TIMEOUT.*", text), text
    assert re.search(r"reload rejected: .*MONITOR_TYPO", text), text
