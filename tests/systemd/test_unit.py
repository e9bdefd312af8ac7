"""deploy/monitor.service under a real systemd (252, in systemd-nspawn; see container.py).

Opt in: ``RUN_SYSTEMD_TESTS=1`` (``tox -e systemd`` sets it). Needs root, systemd-nspawn, and
debootstrap (or a cached root in $SYSTEMD_TEST_CACHE); otherwise every test skips, saying why.

One container for the module: the project is installed in it from wheels, the unit as shipped
(plus, for the watchdog test only, a drop-in with a short WatchdogSec=), a loopback HTTP server
inside answers the checks. Each test starts from a stopped unit and a good settings.env.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemons import wait_for
from tests.systemd.container import Container, build_wheels, ensure_rootfs, why_not_runnable

PROJECT = Path(__file__).resolve().parents[2]
UNIT = PROJECT / "deploy" / "monitor.service"
CACHE = Path(os.environ.get("SYSTEMD_TEST_CACHE", "/var/tmp/monitor-systemd-tests"))
LOG = "/var/log/monitor/monitor.log"
SETTINGS = "/etc/monitor/settings.env"
WEB = "http://127.0.0.1:8080"
GOOD_SETTINGS = (
    f"MONITOR_MONITORS__WEB__URL={WEB}/\n"
    "MONITOR_MONITORS__WEB__INTERVAL=0.5\n"
    "MONITOR_SHUTDOWN_TIMEOUT=5\n"
)
OTHER_MONITOR = f"MONITOR_MONITORS__OTHER__URL={WEB}/other\nMONITOR_MONITORS__OTHER__INTERVAL=0.5\n"


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    if os.environ.get("RUN_SYSTEMD_TESTS") != "1":
        pytest.skip("opt-in: set RUN_SYSTEMD_TESTS=1 (tox -e systemd)")
    reason = why_not_runnable(CACHE)
    if reason is not None:
        pytest.skip(f"cannot run systemd in a container here: {reason}")
    work = tmp_path_factory.mktemp("systemd")
    root = ensure_rootfs(CACHE)
    wheels = build_wheels(PROJECT, work / "wheels")
    booted = Container(root, binds=[(wheels, "/wheels")], log=work / "console.log")
    try:
        booted.boot()
        install(booted)
        yield booted
    finally:
        booted.shutdown()


def install(box: Container) -> None:
    """As deploy/README.md says: user, virtualenv, settings, unit; and a web server to check."""
    box.sh(
        "useradd --system --user-group --home-dir /var/lib/monitor --shell /usr/sbin/nologin"
        " monitor\n"
        "python3 -m venv /opt/monitor/venv\n"
        "/opt/monitor/venv/bin/pip install -q --no-index --find-links /wheels monitor\n"
        "mkdir -p /srv/www && echo fine > /srv/www/index.html\n"
        "systemd-run --unit=web -p DynamicUser=yes"
        " python3 -m http.server 8080 --bind 127.0.0.1 --directory /srv/www\n",
        timeout=120,
    )
    box.write(SETTINGS, GOOD_SETTINGS, mode="0640", owner="root:monitor")
    box.write("/etc/systemd/system/monitor.service", UNIT.read_text())
    box.run(["systemctl", "daemon-reload"])


def show(box: Container, *names: str) -> dict[str, str]:
    out = box.run(["systemctl", "show", "monitor", *(f"--property={n}" for n in names)]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def unit_processes(box: Container) -> list[str]:
    out = box.run(["pgrep", "-a", "-u", "monitor"], check=False).stdout
    return out.splitlines()


def log_text(box: Container) -> str:
    return box.run(["cat", LOG], check=False).stdout


@pytest.fixture
def box(container: Container) -> Iterator[Container]:
    """The container with the unit stopped, its failure state reset, a good settings.env."""
    container.run(["systemctl", "stop", "monitor"], check=False)
    container.run(["systemctl", "reset-failed", "monitor"], check=False)
    container.sh("rm -rf /etc/systemd/system/monitor.service.d; systemctl daemon-reload")
    container.write(SETTINGS, GOOD_SETTINGS, mode="0640", owner="root:monitor")
    container.sh(f"rm -f {LOG}")
    yield container
    # Shown by pytest when the test failed.
    print(container.run(["journalctl", "-u", "monitor", "-n", "60", "--no-pager"]).stdout)
    print(log_text(container)[-3000:])
    container.run(["systemctl", "stop", "monitor"], check=False)


def test_start_returns_once_ready_and_checks_land_in_the_log(box: Container) -> None:
    box.run(["systemctl", "start", "monitor"])
    state = show(box, "ActiveState", "SubState", "StatusText", "MainPID")
    assert (state["ActiveState"], state["SubState"]) == ("active", "running")
    assert "1 monitors, 1 workers running" in state["StatusText"]
    assert re.search(r"worker 0 \(pid \d+\) running", log_text(box))  # before READY=1
    wait_for(
        lambda: re.search(r"\| web +\| GET http://127\.0\.0\.1:8080/ 200 \d+ B [\d.]+ s up",
                          log_text(box)),
        10,
        "a check line in the log",
    )  # fmt: skip
    owner = box.sh(f"stat -c %U:%G:%a {LOG}").strip()
    assert owner == "monitor:monitor:640"


def test_reload_applies_a_changed_settings_env(box: Container) -> None:
    box.run(["systemctl", "start", "monitor"])
    pid = show(box, "MainPID")["MainPID"]
    # A changed value (which EnvironmentFile= also put in the environment) and a new monitor.
    changed = GOOD_SETTINGS.replace(f"URL={WEB}/\n", f"URL={WEB}/index.html\n")
    box.write(SETTINGS, changed + OTHER_MONITOR, "0640", "root:monitor")
    box.run(["systemctl", "reload", "monitor"])
    wait_for(lambda: "reload: 1 added (other), 0 removed, 1 changed (web)" in log_text(box), 10,
             "the reload")  # fmt: skip
    wait_for(lambda: re.search(r"\| web +\| GET \S+/index.html 200", log_text(box)), 10, "web")
    wait_for(lambda: re.search(r"\| other +\| GET \S+/other 404", log_text(box)), 10, "other")
    assert show(box, "MainPID")["MainPID"] == pid
    wait_for(lambda: "1 up, 1 down" in show(box, "StatusText")["StatusText"], 10, "STATUS")


def test_stop_is_clean_and_leaves_no_process(box: Container) -> None:
    box.run(["systemctl", "start", "monitor"])
    started = time.monotonic()
    box.run(["systemctl", "stop", "monitor"])
    assert time.monotonic() - started < 60  # TimeoutStopSec
    state = show(box, "ActiveState", "Result", "ExecMainStatus")
    assert state == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    assert unit_processes(box) == []
    assert "monitor stopped (exit code 0)" in log_text(box)


def test_sigkill_of_the_main_process_restarts_the_unit(box: Container) -> None:
    box.run(["systemctl", "start", "monitor"])
    before = show(box, "MainPID", "NRestarts")
    box.run(["systemctl", "kill", "--kill-whom=main", "--signal=SIGKILL", "monitor"])
    wait_for(
        lambda: (
            show(box, "NRestarts")["NRestarts"] == str(int(before["NRestarts"]) + 1)
            and show(box, "SubState")["SubState"] == "running"
        ),
        20,
        "a restart",
    )
    assert show(box, "MainPID")["MainPID"] != before["MainPID"]


def test_bad_settings_leave_the_unit_failed_not_restarting(box: Container) -> None:
    box.write(SETTINGS, GOOD_SETTINGS + "MONITOR_WORKRES=2\n", "0640", "root:monitor")
    result = box.run(["systemctl", "start", "monitor"], check=False)
    assert result.returncode != 0
    time.sleep(3)  # longer than RestartSec=
    state = show(box, "ActiveState", "Result", "ExecMainStatus", "NRestarts")
    assert state == {
        "ActiveState": "failed",
        "Result": "exit-code",
        "ExecMainStatus": "78",
        "NRestarts": "0",
    }
    journal = box.run(["journalctl", "-u", "monitor", "--no-pager", "-o", "cat"]).stdout
    assert "MONITOR_WORKRES" in journal


def test_a_stopped_supervisor_is_restarted_by_the_watchdog(box: Container) -> None:
    box.write(
        "/etc/systemd/system/monitor.service.d/watchdog.conf",
        "[Service]\nWatchdogSec=2s\nLimitCORE=0\n",
    )
    box.run(["systemctl", "daemon-reload"])
    box.run(["systemctl", "start", "monitor"])
    time.sleep(3)  # pings keep it alive past WatchdogSec=
    before = show(box, "MainPID", "NRestarts", "SubState")
    assert before["SubState"] == "running"
    box.run(["kill", "-STOP", before["MainPID"]])
    wait_for(
        lambda: (
            show(box, "NRestarts")["NRestarts"] == str(int(before["NRestarts"]) + 1)
            and show(box, "SubState")["SubState"] == "running"
        ),
        30,
        "a restart by the watchdog",
    )
    journal = box.run(["journalctl", "-u", "monitor", "--no-pager", "-o", "cat"]).stdout
    assert "Watchdog timeout" in journal
