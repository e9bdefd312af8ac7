"""settings.env: systemd and python-dotenv read it the same way, and it is a valid configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
from dotenv import dotenv_values

from monitor.settings import Monitor, Settings, load_settings, parse_env_file
from tests.systemd_env import parse_systemd_env, read_systemd_env_file

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "settings.env"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("A=1", {"A": "1"}, id="plain"),
        pytest.param("A=1\n", {"A": "1"}, id="newline at end"),
        pytest.param("  \tA = 1  \n", {"A": "1"}, id="blanks around key and value"),
        pytest.param("A=x  y", {"A": "x  y"}, id="inner blanks kept"),
        pytest.param("A=", {"A": ""}, id="empty"),
        pytest.param("A=\nB=2", {"A": "", "B": "2"}, id="empty then more"),
        pytest.param("# A=1\n; B=2\n  # C=3\nD=4", {"D": "4"}, id="comments"),
        pytest.param("A=1 # not a comment", {"A": "1 # not a comment"}, id="no inline comment"),
        pytest.param("A=#x", {"A": "#x"}, id="hash starts value"),
        pytest.param("A=1\nA=2", {"A": "2"}, id="last wins"),
        pytest.param("A\nB=2", {"B": "2"}, id="line without equals"),
        pytest.param("export A=1", {}, id="no export"),
        pytest.param("A B=1\n1A=2\nA-B=3\nA.B=4\n=5", {}, id="invalid keys ignored"),
        pytest.param("_a1=x", {"_a1": "x"}, id="lower-case key"),
        pytest.param("A=${B} $C", {"A": "${B} $C"}, id="no expansion"),
        pytest.param("A='x \\ \"y\" $z'", {"A": 'x \\ "y" $z'}, id="single quotes literal"),
        pytest.param("A='x\ny'", {"A": "x\ny"}, id="single quotes span lines"),
        pytest.param('A="x y"', {"A": "x y"}, id="double quotes"),
        pytest.param('A="a\\"b\\\\c\\$d\\`e"', {"A": 'a"b\\c$d`e'}, id="double-quote escapes"),
        pytest.param('A="a\\nb\\tc"', {"A": "a\\nb\\tc"}, id="other escapes keep backslash"),
        pytest.param('A="a\\\nb"', {"A": "ab"}, id="double-quote continuation"),
        pytest.param('A="a\nb"', {"A": "a\nb"}, id="double quotes span lines"),
        pytest.param('A="a  "', {"A": "a  "}, id="quoted trailing blanks kept"),
        pytest.param('A="a" "b"c', {"A": "abc"}, id="parts joined"),
        pytest.param('A="a"  # c', {"A": "a# c"}, id="hash after quote is value"),
        pytest.param('A=x"y"', {"A": 'x"y"'}, id="quote inside bare value"),
        pytest.param('A=a\\ b\\\\c\\"', {"A": 'a b\\c"'}, id="bare escapes"),
        pytest.param("A=a\\\nb", {"A": "ab"}, id="bare continuation"),
        pytest.param("A=a\\ ", {"A": "a "}, id="escaped trailing blank kept"),
        pytest.param("A=a\\  \t", {"A": "a "}, id="blanks after escaped blank dropped"),
        pytest.param("A=\\\n  b", {"A": "  b"}, id="continuation keeps next line's blanks"),
        pytest.param("A=1\r\nB=2\r\n", {"A": "1", "B": "2"}, id="CRLF"),
        pytest.param("# x \\\nA=1", {"A": "1"}, id="comment does not continue"),
        pytest.param("A='open", {"A": "open"}, id="unterminated single quote"),
        pytest.param('A="open\\', {"A": "open"}, id="unterminated escape"),
        pytest.param("A=1\0B=2", {"A": "1"}, id="NUL ends the file"),
    ],
)
def test_systemd_reader(text: str, expected: dict[str, str]) -> None:
    assert parse_systemd_env(text) == expected


def test_shipped_file_reads_the_same_in_systemd_and_python_dotenv() -> None:
    systemd = read_systemd_env_file(SHIPPED)
    assert systemd  # the reader found the variables at all
    assert dotenv_values(SHIPPED) == systemd
    assert dotenv_values(SHIPPED, interpolate=False) == systemd
    # ...and so does monitor's own reading of it.
    assert parse_env_file(SHIPPED.read_text(encoding="utf-8")).values == systemd


def test_shipped_file_sets_only_known_settings() -> None:
    daemon = {f"MONITOR_{name.upper()}" for name in Settings.model_fields}
    daemon -= {"MONITOR_MONITORS", "MONITOR_ENV_FILE"}  # neither can be set in an env file
    fields = {name.upper() for name in Monitor.model_fields}
    for key in read_systemd_env_file(SHIPPED):
        if key.startswith("MONITOR_MONITORS__"):
            name, field = key.removeprefix("MONITOR_MONITORS__").split("__")
            assert name in {"EXAMPLE", "HTTPBIN"}, key
            assert field in fields, key
        else:
            assert key in daemon, key


def test_shipped_file_sets_every_daemon_setting() -> None:
    keys = set(read_systemd_env_file(SHIPPED))
    daemon = {f"MONITOR_{name.upper()}" for name in Settings.model_fields}
    assert daemon - keys == {"MONITOR_MONITORS", "MONITOR_ENV_FILE"}


def test_shipped_file_loads_with_the_tutorial_monitors() -> None:
    settings = load_settings(environ={}, cwd=REPO)
    assert settings.env_file == SHIPPED
    assert {
        name: (m.method, m.url, m.interval, m.timeout) for name, m in settings.monitors.items()
    } == {
        "example": ("GET", "http://example.com", 5.0, 5.0),
        "httpbin": ("GET", "https://httpbin.org/get", 5.0, 5.0),
    }
    assert settings.warnings() == []


def test_shipped_daemon_settings_are_the_defaults() -> None:
    loaded = load_settings(environ={}, cwd=REPO)
    defaults = Settings(monitors=loaded.monitors)
    for name in Settings.model_fields:
        if name in ("monitors", "env_file"):
            continue
        value, default = getattr(loaded, name), getattr(defaults, name)
        if isinstance(default, Path):
            default = REPO / default  # load_settings anchors relative paths at the working dir
        assert value == default, name
