"""``monitor check`` and ``monitor config`` as an operator runs them: a real subprocess against a
real loopback server."""

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SECRET = "hunter2-do-not-print"


FORGED = (
    "Oops\x1b[2K\r2026-12-03 21:00:00.000 | INFO     | forged | GET http://x/ 200 1 B 0.001 s up"
)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path.startswith("/ok") else 503
        body = b"fine\n" if status == 200 else b"down\n"
        # A reason phrase is the server's to choose: this one tries to rewrite the terminal line
        # and to forge a second log line.
        self.send_response(status, FORGED if self.path == "/forged" else None)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def run_monitor(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("MONITOR_")}
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_check_exits_0_when_every_monitor_is_up(server: str, tmp_path: Path) -> None:
    env = {
        "MONITOR_MONITORS__ONE__URL": f"{server}/ok/1",
        "MONITOR_MONITORS__TWO__URL": f"{server}/ok/2",
    }
    done = run_monitor("check", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    assert {line.split(" | ")[2] for line in lines} == {"one", "two"}
    for line in lines:
        assert re.search(
            r"\| INFO +\| \w+ \| GET http://127\.0\.0\.1:\d+/ok/\d 200 5 B [\d.]+ s up$", line
        )


def test_check_exits_1_when_any_monitor_is_down(server: str, tmp_path: Path) -> None:
    env = {
        "MONITOR_MONITORS__GOOD__URL": f"{server}/ok",
        "MONITOR_MONITORS__BAD__URL": f"{server}/broken",
    }
    done = run_monitor("check", env=env, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    [bad] = [line for line in done.stdout.splitlines() if "| bad |" in line]
    assert "WARNING" in bad
    expected = r" 503 5 B [\d.]+ s down reason=status 503 not in 200-399 \(Service Unavailable\)$"
    assert re.search(expected, bad), bad


def test_check_runs_only_the_named_monitors(server: str, tmp_path: Path) -> None:
    env = {
        "MONITOR_MONITORS__GOOD__URL": f"{server}/ok",
        "MONITOR_MONITORS__BAD__URL": f"{server}/broken",
    }
    done = run_monitor("check", "GOOD", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1
    unknown = run_monitor("check", "nosuch", env=env, cwd=tmp_path)
    assert unknown.returncode == 2
    assert "unknown monitor nosuch; configured: bad, good" in unknown.stderr


def test_bad_configuration_exits_78_naming_the_variable(tmp_path: Path) -> None:
    env = {
        "MONITOR_MONITORS__API__URL": "http://127.0.0.1:9/",
        "MONITOR_MONITORS__API__TIMEOUT": "-1",
    }
    for command in ("check", "config"):
        done = run_monitor(command, env=env, cwd=tmp_path)
        assert done.returncode == 78
        assert done.stdout == ""
        assert "MONITOR_MONITORS__API__TIMEOUT" in done.stderr
        assert "Traceback" not in done.stderr


def test_config_prints_the_effective_configuration_with_secrets_masked(tmp_path: Path) -> None:
    env = {
        "MONITOR_MONITORS__API__URL": f"http://user:{SECRET}@127.0.0.1:9/",
        "MONITOR_MONITORS__API__USERNAME": "ops",
        "MONITOR_MONITORS__API__PASSWORD": SECRET,
        "MONITOR_MONITORS__API__HEADERS": f'{{"Authorization": "Bearer {SECRET}"}}',
    }
    done = run_monitor("config", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "127.0.0.1:9" in done.stdout
    assert SECRET not in done.stdout + done.stderr


def test_secrets_never_reach_the_check_output(server: str, tmp_path: Path) -> None:
    env = {
        "MONITOR_MONITORS__API__URL": f"http://user:{SECRET}@{server.removeprefix('http://')}/x",
        "MONITOR_MONITORS__API__HEADERS": f'{{"X-Token": "{SECRET}"}}',
        "MONITOR_LOG_LEVEL": "DEBUG",
    }
    done = run_monitor("check", env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert "| api |" in done.stdout
    assert SECRET not in done.stdout + done.stderr


def test_the_shipped_settings_env_checks_its_two_monitors() -> None:
    # Offline both report their real reason (exit 1); online both are up (exit 0).
    done = run_monitor("check", env={}, cwd=REPO, timeout=60)
    lines = done.stdout.splitlines()
    assert sorted(line.split(" | ")[2] for line in lines) == ["example", "httpbin"], done.stderr
    for line in lines:
        assert line.endswith(" up") or re.search(r" down reason=[a-z_]+ \S", line), line
    assert done.returncode == (0 if all(line.endswith(" up") for line in lines) else 1)


def test_a_forged_reason_phrase_is_escaped_on_one_line(server: str, tmp_path: Path) -> None:
    done = run_monitor(
        "check", env={"MONITOR_MONITORS__EVIL__URL": f"{server}/forged"}, cwd=tmp_path
    )
    assert done.returncode == 1
    assert done.stdout.count("\n") == 1
    assert "\x1b" not in done.stdout
    assert "\r" not in done.stdout
    assert "(Oops\\x1b[2K\\r2026-12-03 21:00:00.000 | INFO     | forged |" in done.stdout
