"""Configuration: every field from every source, precedence, and one clear line per problem."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from monitor.settings import (
    MASK,
    REFERENCE_END,
    REFERENCE_START,
    ConfigError,
    Monitor,
    Settings,
    StatusSet,
    display_url,
    load_settings,
    main,
    make_monitor,
    reference_markdown,
    reference_section,
    render_config,
    replace_reference,
)

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-Zq9xW-never-shown"
URL = "http://example.com"
BASE = {"MONITOR_MONITORS__API__URL": URL}


def load(
    cwd: Path,
    environ: dict[str, str] | None = None,
    env_text: str | None = None,
    toml_text: str | None = None,
    env_file: Path | None = None,
) -> Settings:
    """load_settings in ``cwd``, with ./settings.env and ./monitors.toml written if given."""
    environ = dict(environ or {})
    if env_text is not None:
        (cwd / "settings.env").write_text(env_text, encoding="utf-8")
    if toml_text is not None:
        (cwd / "monitors.toml").write_text(toml_text, encoding="utf-8")
        environ.setdefault("MONITOR_MONITORS_FILE", "monitors.toml")
    return load_settings(environ=environ, cwd=cwd, env_file=env_file)


def problems(cwd: Path, **sources: object) -> list[str]:
    """The problems loading reports (it must fail), each checked to be one clean line."""
    with pytest.raises(ConfigError) as info:
        load(cwd, **sources)  # type: ignore[arg-type]
    found = info.value.problems
    assert found
    assert str(info.value) == "\n".join(found)
    for line in found:
        assert "\n" not in line
        assert "Value error" not in line
        assert "errors.pydantic.dev" not in line
        assert "For further information" not in line
        assert "Traceback" not in line
    return found


def toml_table(name: str = "api", **fields: str) -> str:
    """A ``[monitors.NAME]`` table of TOML literals, with a url unless one is given."""
    fields = {"url": f'"{URL}"', **fields}
    return f"[monitors.{name}]\n" + "".join(f"{key} = {value}\n" for key, value in fields.items())


def observe(value: object, cwd: Path) -> object:
    """A setting's value in a form a table can state."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {key: observe(item, cwd) for key, item in value.items()}
    if isinstance(value, re.Pattern):
        return value.pattern
    if isinstance(value, StatusSet):
        return str(value)
    if isinstance(value, Path):
        return value.relative_to(cwd).as_posix()
    return value


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    (tmp_path / "ca.pem").write_text("not checked here\n")
    (tmp_path / "m.toml").write_text("")
    return tmp_path


# --- Every field through every source.

# (field, value in a variable, the same as a TOML literal, the value loaded)
MONITOR_FIELDS = [
    ("url", "https://example.org/x", '"https://example.org/x"', "https://example.org/x"),
    ("method", "post", '"post"', "POST"),
    ("interval", "7.5", "7.5", 7.5),
    ("timeout", "2", "2", 2.0),
    ("expect_status", "204,300-302", '"204,300-302"', "204,300-302"),
    ("expect_body", "all good", '"all good"', "all good"),
    ("expect_body_regex", "^o+k$", "'^o+k$'", "^o+k$"),
    ("headers", '{"Accept": "text/html"}', '{ Accept = "text/html" }', {"Accept": "text/html"}),
    ("body", '{"q": 1}', """'{"q": 1}'""", '{"q": 1}'),
    ("username", "alice", '"alice"', "alice"),
    ("password", SECRET, f'"{SECRET}"', SECRET),
    ("follow_redirects", "false", "false", False),
    ("verify_tls", "false", "false", False),
    ("ca_bundle", "ca.pem", '"ca.pem"', "ca.pem"),
    ("max_body_bytes", "1024", "1024", 1024),
]
# What a field needs beside it (password needs a username).
COMPANIONS = {"password": ("username", "alice", '"alice"')}

# (field, value in a variable, the value loaded)
DAEMON_FIELDS = [
    ("log_file", "var/log/m.log", "var/log/m.log"),
    ("log_level", "debug", "DEBUG"),
    ("log_rotation", "1 day", "1 day"),
    ("log_retention", "10 days", "10 days"),
    ("log_retention", "3", 3),
    ("log_compression", "gz", "gz"),
    ("log_json", "true", True),
    ("workers", "2", 2),
    ("threads", "4", 4),
    ("shutdown_timeout", "2.5", 2.5),
    ("heartbeat_timeout", "4", 4.0),
    ("state_dir", "var/state", "var/state"),
    ("monitors_file", "m.toml", "m.toml"),
]


def test_tables_cover_every_field() -> None:
    assert {case[0] for case in MONITOR_FIELDS} == set(Monitor.model_fields)
    daemon = set(Settings.model_fields) - {"monitors", "env_file"}  # both tested on their own
    assert {case[0] for case in DAEMON_FIELDS} == daemon


def monitor_variables(field: str, value: str) -> dict[str, str]:
    variables = {**BASE, f"MONITOR_MONITORS__API__{field.upper()}": value}
    if field in COMPANIONS:
        other, other_value, _ = COMPANIONS[field]
        variables[f"MONITOR_MONITORS__API__{other.upper()}"] = other_value
    return variables


def env_lines(variables: dict[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in variables.items())


@pytest.mark.parametrize(("field", "value", "literal", "expected"), MONITOR_FIELDS)
def test_monitor_field_from_environment(
    cwd: Path, field: str, value: str, literal: str, expected: object
) -> None:
    monitor = load(cwd, monitor_variables(field, value)).monitors["api"]
    assert observe(getattr(monitor, field), cwd) == expected


@pytest.mark.parametrize(("field", "value", "literal", "expected"), MONITOR_FIELDS)
def test_monitor_field_from_env_file(
    cwd: Path, field: str, value: str, literal: str, expected: object
) -> None:
    monitor = load(cwd, env_text=env_lines(monitor_variables(field, value))).monitors["api"]
    assert observe(getattr(monitor, field), cwd) == expected


@pytest.mark.parametrize(("field", "value", "literal", "expected"), MONITOR_FIELDS)
def test_monitor_field_from_monitors_file(
    cwd: Path, field: str, value: str, literal: str, expected: object
) -> None:
    fields = {field: literal}
    if field in COMPANIONS:
        other, _, other_literal = COMPANIONS[field]
        fields[other] = other_literal
    monitor = load(cwd, toml_text=toml_table(**fields)).monitors["api"]
    assert observe(getattr(monitor, field), cwd) == expected


@pytest.mark.parametrize(("field", "value", "expected"), DAEMON_FIELDS)
def test_daemon_field_from_environment(cwd: Path, field: str, value: str, expected: object) -> None:
    settings = load(cwd, {**BASE, f"MONITOR_{field.upper()}": value})
    assert observe(getattr(settings, field), cwd) == expected


@pytest.mark.parametrize(("field", "value", "expected"), DAEMON_FIELDS)
def test_daemon_field_from_env_file(cwd: Path, field: str, value: str, expected: object) -> None:
    settings = load(cwd, env_text=env_lines({**BASE, f"MONITOR_{field.upper()}": value}))
    assert observe(getattr(settings, field), cwd) == expected


def test_defaults(cwd: Path) -> None:
    settings = load(cwd, BASE)
    monitor = settings.monitors["api"]
    assert (monitor.name, monitor.url, monitor.method, monitor.interval) == (
        "api",
        URL,
        "GET",
        60.0,
    )
    assert monitor.timeout == monitor.deadline == 10.0
    assert str(monitor.expect_status) == "200-399"
    assert monitor.headers == {}
    assert (monitor.follow_redirects, monitor.verify_tls, monitor.max_body_bytes) == (
        True,
        True,
        1024 * 1024,
    )
    assert settings.log_file == cwd / "logs/monitor.log"
    assert settings.state_dir == cwd / "state"
    assert (settings.log_level, settings.log_rotation, settings.log_retention) == (
        "INFO",
        "50 MB",
        10,
    )
    assert (settings.log_compression, settings.log_json) == ("", False)
    assert (settings.workers, settings.threads, settings.shutdown_timeout) == (0, 0, 30.0)
    assert settings.monitors_file is None
    assert settings.env_file is None


def test_default_timeout_stays_below_a_short_interval(cwd: Path) -> None:
    monitor = load(cwd, {**BASE, "MONITOR_MONITORS__API__INTERVAL": "5"}).monitors["api"]
    assert monitor.timeout == 4.0


def test_timeout_may_equal_the_interval(cwd: Path) -> None:
    environ = {
        **BASE,
        "MONITOR_MONITORS__API__INTERVAL": "5",
        "MONITOR_MONITORS__API__TIMEOUT": "5",
    }
    assert load(cwd, environ).monitors["api"].timeout == 5.0


def test_expect_status_as_a_toml_list(cwd: Path) -> None:
    settings = load(cwd, toml_text=toml_table(expect_status="[204, 200, 300]"))
    assert str(settings.monitors["api"].expect_status) == "200,204,300"


def test_names_are_case_insensitive_and_given_to_monitors(cwd: Path) -> None:
    settings = load(
        cwd,
        {"MONITOR_MONITORS__Api__URL": URL, "monitor_monitors__web__url": URL},
        toml_text=toml_table("Db"),
    )
    assert sorted(settings.monitors) == ["api", "db", "web"]
    assert {name: monitor.name for name, monitor in settings.monitors.items()} == {
        "api": "api",
        "web": "web",
        "db": "db",
    }


def test_variable_names_are_case_insensitive(cwd: Path) -> None:
    settings = load(cwd, {**BASE, "monitor_Log_Level": "error"})
    assert settings.log_level == "ERROR"


def test_other_variables_are_ignored(cwd: Path) -> None:
    environ = {**BASE, "PATH": "/bin", "MONITORING": "x", "MONITOR": "y", "LANG": "C"}
    settings = load(cwd, environ, env_text="HOME=/root\nSOMETHING_ELSE=1\n")
    assert list(settings.monitors) == ["api"]


def test_empty_value_is_the_same_as_unset(cwd: Path) -> None:
    settings = load(cwd, {**BASE, "MONITOR_LOG_LEVEL": "", "MONITOR_MONITORS__API__BODY": ""})
    assert settings.log_level == "INFO"
    assert settings.monitors["api"].body is None


def test_settings_are_frozen(cwd: Path) -> None:
    settings = load(cwd, BASE)
    with pytest.raises(ValidationError):
        settings.log_level = "DEBUG"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.monitors["api"].interval = 1  # type: ignore[misc]


# --- Precedence: environment > env file > monitors file > defaults, field by field.


@pytest.mark.parametrize(
    ("in_environment", "in_env_file", "in_toml", "expected"),
    [
        (True, True, True, 1.0),
        (False, True, True, 2.0),
        (False, False, True, 3.0),
        (False, False, False, 10.0),
    ],
)
def test_precedence_of_a_monitor_field(
    cwd: Path, in_environment: bool, in_env_file: bool, in_toml: bool, expected: float
) -> None:
    environ = {"MONITOR_MONITORS__API__TIMEOUT": "1"} if in_environment else {}
    env_text = "MONITOR_MONITORS__API__TIMEOUT=2\n" if in_env_file else ""
    toml = toml_table(timeout="3") if in_toml else toml_table()
    settings = load(cwd, environ, env_text=env_text, toml_text=toml)
    assert settings.monitors["api"].timeout == expected


@pytest.mark.parametrize(
    ("in_environment", "in_env_file", "expected"),
    [(True, True, "ERROR"), (False, True, "WARNING"), (False, False, "INFO")],
)
def test_precedence_of_a_daemon_field(
    cwd: Path, in_environment: bool, in_env_file: bool, expected: str
) -> None:
    environ = {**BASE, **({"MONITOR_LOG_LEVEL": "error"} if in_environment else {})}
    env_text = "MONITOR_LOG_LEVEL=warning\n" if in_env_file else ""
    assert load(cwd, environ, env_text=env_text).log_level == expected


def test_deep_merge_overrides_only_the_field_given(cwd: Path) -> None:
    toml = toml_table("API", interval="30", timeout="20", expect_status='"200"', method='"HEAD"')
    settings = load(
        cwd,
        {"MONITOR_MONITORS__api__TIMEOUT": "5"},
        env_text="MONITOR_MONITORS__API__METHOD=POST\n",
        toml_text=toml,
    )
    monitor = settings.monitors["api"]
    assert (monitor.url, monitor.interval, str(monitor.expect_status)) == (URL, 30.0, "200")
    assert (monitor.timeout, monitor.method) == (5.0, "POST")


def test_headers_are_replaced_whole_not_merged(cwd: Path) -> None:
    toml = toml_table(headers='{ A = "1", B = "2" }')
    settings = load(cwd, {"MONITOR_MONITORS__API__HEADERS": '{"C": "3"}'}, toml_text=toml)
    assert observe(settings.monitors["api"].headers, cwd) == {"C": "3"}


def test_monitors_from_every_source_are_combined(cwd: Path) -> None:
    settings = load(
        cwd,
        {"MONITOR_MONITORS__ONE__URL": URL},
        env_text=f"MONITOR_MONITORS__TWO__URL={URL}\n",
        toml_text=toml_table("three"),
    )
    assert sorted(settings.monitors) == ["one", "three", "two"]


def test_only_the_winning_value_is_validated(cwd: Path) -> None:
    settings = load(
        cwd, {"MONITOR_MONITORS__API__TIMEOUT": "2"}, toml_text=toml_table(timeout="-1")
    )
    assert settings.monitors["api"].timeout == 2.0


def test_monitors_file_named_in_env_file_relative_to_working_directory(cwd: Path) -> None:
    (cwd / "conf").mkdir()
    (cwd / "conf" / "many.toml").write_text(toml_table("db"))
    settings = load(cwd, env_text="MONITOR_MONITORS_FILE=conf/many.toml\n")
    assert list(settings.monitors) == ["db"]
    assert settings.monitors_file == cwd / "conf" / "many.toml"


def test_environment_names_the_monitors_file_over_the_env_file(cwd: Path) -> None:
    (cwd / "a.toml").write_text(toml_table("a"))
    (cwd / "b.toml").write_text(toml_table("b"))
    settings = load(
        cwd, {"MONITOR_MONITORS_FILE": "a.toml"}, env_text="MONITOR_MONITORS_FILE=b.toml\n"
    )
    assert list(settings.monitors) == ["a"]


def test_env_file_default_is_settings_env_in_the_working_directory(cwd: Path) -> None:
    settings = load(cwd, env_text=env_lines(BASE))
    assert settings.env_file == cwd / "settings.env"


def test_env_file_absent_by_default_is_fine(cwd: Path) -> None:
    assert load(cwd, BASE).env_file is None


def test_env_file_named_by_variable(cwd: Path) -> None:
    (cwd / "prod.env").write_text("MONITOR_MONITORS__PROD__URL=http://prod.example\n")
    settings = load(cwd, {"MONITOR_ENV_FILE": "prod.env"}, env_text=env_lines(BASE))
    assert list(settings.monitors) == ["prod"]  # ./settings.env is not read as well
    assert settings.env_file == cwd / "prod.env"


def test_env_file_argument_beats_variable(cwd: Path) -> None:
    (cwd / "a.env").write_text("MONITOR_MONITORS__A__URL=http://a.example\n")
    (cwd / "b.env").write_text("MONITOR_MONITORS__B__URL=http://b.example\n")
    settings = load(cwd, {"MONITOR_ENV_FILE": "b.env"}, env_file=Path("a.env"))
    assert list(settings.monitors) == ["a"]


def test_process_environment_and_directory_are_not_read(tmp_path: Path) -> None:
    # A real child process, its environment and working directory full of traps.
    (tmp_path / "settings.env").write_text("MONITOR_BOGUS=1\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from monitor.settings import Settings, load_settings\n"
        "print(Settings(monitors={'a': {'url': 'http://a.example'}}).log_level)\n"
        "environ = {'MONITOR_MONITORS__A__URL': 'http://a'}\n"
        "s = load_settings(environ=environ, cwd=Path(sys.argv[1]))\n"
        "print(s.log_level, s.env_file, sorted(s.monitors))\n"
    )
    environ = {"MONITOR_LOG_LEVEL": "DEBUG", "MONITOR_BOGUS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(empty)],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["INFO", "INFO None ['a']"]


# --- Every invalid value: one line naming the variable, the value, and what is allowed.

# (variable after MONITOR_, value, what the message says, the value as shown or None)
INVALID = [
    (
        "MONITORS__API__URL",
        "ftp://example.com",
        "must start with http:// or https://",
        "ftp://example.com",
    ),
    ("MONITORS__API__URL", "http://", "has no host", "http://"),
    (
        "MONITORS__API__URL",
        "http://example.com:99999",
        "has an invalid port",
        "http://example.com:99999",
    ),
    ("MONITORS__API__URL", "http://exa mple.com", "must not contain spaces", "http://exa mple.com"),
    (
        "MONITORS__API__METHOD",
        "FETCH",
        "must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
        "FETCH",
    ),
    ("MONITORS__API__INTERVAL", "0", "must be > 0", "0"),
    ("MONITORS__API__INTERVAL", "-5", "must be > 0", "-5"),
    ("MONITORS__API__INTERVAL", "soon", "must be a number", "soon"),
    ("MONITORS__API__INTERVAL", "inf", "must be a finite number", "inf"),
    ("MONITORS__API__TIMEOUT", "0", "must be > 0", "0"),
    ("MONITORS__API__TIMEOUT", "-1", "must be > 0", "-1"),
    ("MONITORS__API__TIMEOUT", "61", "must not exceed the interval (60 s)", "61"),
    ("MONITORS__API__EXPECT_STATUS", "ok", "expected status codes such as 200,204,300-399", "ok"),
    ("MONITORS__API__EXPECT_STATUS", "600", "status codes must lie within 100-599", "600"),
    ("MONITORS__API__EXPECT_STATUS", "99", "expected status codes", "99"),
    (
        "MONITORS__API__EXPECT_STATUS",
        "399-200",
        "status codes must lie within 100-599, ranges low to high",
        "399-200",
    ),
    ("MONITORS__API__EXPECT_STATUS", "200,2xx", "'2xx': expected status codes", "200,2xx"),
    ("MONITORS__API__EXPECT_BODY_REGEX", "(", "not a valid regular expression: missing )", "("),
    ("MONITORS__API__HEADERS", "{bad", "is not valid JSON (Expecting property name", None),
    ("MONITORS__API__HEADERS", '["Accept"]', "must be a JSON object", None),
    (
        "MONITORS__API__HEADERS",
        '{"Bad Name": "x"}',
        "header name 'Bad Name' is not a valid HTTP token",
        MASK,
    ),
    ("MONITORS__API__HEADERS", '{"X-A": "a\\r\\nB: c"}', "header 'X-A' has a line break", MASK),
    ("MONITORS__API__HEADERS", '{"X-A": 1}', "must be a string", MASK),
    ("MONITORS__API__CA_BUNDLE", "missing.pem", "no such file", "missing.pem"),
    ("MONITORS__API__CA_BUNDLE", ".", "is not a file", "."),
    ("MONITORS__API__MAX_BODY_BYTES", "0", "must be > 0", "0"),
    ("MONITORS__API__MAX_BODY_BYTES", "1.5", "must be a whole number", "1.5"),
    ("MONITORS__API__FOLLOW_REDIRECTS", "sometimes", "must be true or false", "sometimes"),
    ("MONITORS__API__VERIFY_TLS", "sometimes", "must be true or false", "sometimes"),
    ("MONITORS__API__PASSWORD", SECRET, "is set but username is not", MASK),
    (
        "LOG_LEVEL",
        "LOUD",
        "must be one of TRACE, DEBUG, INFO, SUCCESS, WARNING, ERROR, CRITICAL",
        "LOUD",
    ),
    ("LOG_ROTATION", "sometimes", "loguru does not accept this; use a size (50 MB)", "sometimes"),
    ("LOG_RETENTION", "forever", "loguru does not accept this; use a count of files", "forever"),
    ("LOG_RETENTION", "0", "a count of files to keep must be >= 1", "0"),
    ("LOG_COMPRESSION", "rar", "loguru does not accept this; use gz, bz2", "rar"),
    ("LOG_JSON", "maybe", "must be true or false", "maybe"),
    ("WORKERS", "-1", "must be >= 0", "-1"),
    ("WORKERS", "two", "must be a whole number", "two"),
    ("THREADS", "-1", "must be >= 0", "-1"),
    ("SHUTDOWN_TIMEOUT", "0", "must be > 0", "0"),
    ("SHUTDOWN_TIMEOUT", "nan", "must be a finite number", "nan"),
    ("HEARTBEAT_TIMEOUT", "1", "must be >= 2", "1"),
]
# Fields that take any string or path: nothing to reject.
ANY_VALUE = {
    "expect_body",
    "body",
    "username",
    "log_file",
    "state_dir",
    "monitors_file",
    "env_file",
}


def test_invalid_table_covers_every_field() -> None:
    covered = {variable.split("__")[-1].lower() for variable, *_ in INVALID}
    every = (set(Monitor.model_fields) | set(Settings.model_fields)) - {"monitors"}
    assert covered == every - ANY_VALUE


def expected_line(label: str, message: str, shown: str | None) -> re.Pattern[str]:
    tail = f".*, got {re.escape(shown)}$" if shown is not None else "(?!.*, got )"
    return re.compile(f"{re.escape(label)}: {re.escape(message)}{tail}")


@pytest.mark.parametrize(("variable", "value", "message", "shown"), INVALID)
def test_invalid_in_environment(
    cwd: Path, variable: str, value: str, message: str, shown: str | None
) -> None:
    found = problems(cwd, environ={**BASE, f"MONITOR_{variable}": value})
    assert len(found) == 1, found
    assert expected_line(f"MONITOR_{variable}", message, shown).match(found[0]), found[0]


@pytest.mark.parametrize(("variable", "value", "message", "shown"), INVALID)
def test_invalid_in_env_file(
    cwd: Path, variable: str, value: str, message: str, shown: str | None
) -> None:
    text = f"# settings\n{env_lines(BASE)}\nMONITOR_{variable}={value}\n"
    found = problems(cwd, env_text=text)
    assert len(found) == 1, found
    assert expected_line(f"settings.env:4: MONITOR_{variable}", message, shown).match(found[0]), (
        found[0]
    )


# (field, TOML literal, what the message says, the value as shown)
TOML_INVALID = [
    ("url", '"ftp://example.com"', "must start with http:// or https://", "ftp://example.com"),
    ("url", "42", "must be a string", "42"),
    ("method", '"FETCH"', "must be one of GET, HEAD", "FETCH"),
    ("interval", "0", "must be > 0", "0"),
    ("interval", '"soon"', "must be a number", "soon"),
    ("timeout", "-1", "must be > 0", "-1"),
    ("timeout", "61", "must not exceed the interval (60 s)", "61"),
    ("expect_status", "[200, 700]", "'700': status codes must lie within 100-599", "[200, 700]"),
    ("expect_status", "true", "expected status codes", "true"),
    ("expect_body", "42", "must be a string", "42"),
    ("expect_body_regex", '"("', "not a valid regular expression", "("),
    ("headers", '"Accept: text/html"', "must be a mapping of names to values", MASK),
    ("headers", '{ "Bad Name" = "x" }', "header name 'Bad Name' is not a valid HTTP token", MASK),
    ("headers", "{ X-Token = 5 }", "must be a string", MASK),
    ("password", f'"{SECRET}"', "is set but username is not", MASK),
    ("password", "123", "must be a string", MASK),
    ("follow_redirects", '"sometimes"', "must be true or false", "sometimes"),
    ("verify_tls", "1.5", "must be true or false", "1.5"),
    ("ca_bundle", '"missing.pem"', "no such file", "missing.pem"),
    ("max_body_bytes", "1.5", "must be a whole number", "1.5"),
    ("max_body_bytes", "0", "must be > 0", "0"),
]


@pytest.mark.parametrize(("field", "literal", "message", "shown"), TOML_INVALID)
def test_invalid_in_monitors_file(
    cwd: Path, field: str, literal: str, message: str, shown: str
) -> None:
    found = problems(cwd, toml_text=toml_table(**{field: literal}))
    assert len(found) == 1, found
    assert expected_line(f"monitors.toml: [monitors.api] {field}", message, shown).match(
        found[0]
    ), found[0]


def test_error_names_the_variable_as_written(cwd: Path) -> None:
    found = problems(cwd, environ={**BASE, "MONITOR_MONITORS__Api__TIMEOUT": "-1"})
    assert found == ["MONITOR_MONITORS__Api__TIMEOUT: must be > 0, got -1"]


def test_error_names_the_winning_source(cwd: Path) -> None:
    found = problems(
        cwd,
        environ={"MONITOR_MONITORS__API__TIMEOUT": "-1"},
        env_text="MONITOR_MONITORS__API__TIMEOUT=-2\n",
        toml_text=toml_table(timeout="-3"),
    )
    assert found == ["MONITOR_MONITORS__API__TIMEOUT: must be > 0, got -1"]
    found = problems(
        cwd, env_text="\n\nMONITOR_MONITORS__API__TIMEOUT=-2\n", toml_text=toml_table(timeout="-3")
    )
    assert found == ["settings.env:3: MONITOR_MONITORS__API__TIMEOUT: must be > 0, got -2"]
    found = problems(cwd, env_text="", toml_text=toml_table(timeout="-3"))
    assert found == ["monitors.toml: [monitors.api] timeout: must be > 0, got -3"]


def test_cross_field_error_names_the_field_that_breaks_the_rule(cwd: Path) -> None:
    found = problems(
        cwd, environ={"MONITOR_MONITORS__API__TIMEOUT": "9"}, toml_text=toml_table(interval="8")
    )
    assert found == ["MONITOR_MONITORS__API__TIMEOUT: must not exceed the interval (8 s), got 9"]


def test_missing_url_is_named_in_the_syntax_of_its_monitor(cwd: Path) -> None:
    found = problems(cwd, environ={"MONITOR_MONITORS__Web__TIMEOUT": "1"})
    assert found == ["MONITOR_MONITORS__Web__URL: is required"]
    found = problems(cwd, env_text="MONITOR_MONITORS__WEB__TIMEOUT=1\n")
    assert found == ["settings.env: MONITOR_MONITORS__WEB__URL: is required"]
    found = problems(cwd, env_text="", toml_text="[monitors.Web]\ntimeout = 1\n")
    assert found == ["monitors.toml: [monitors.Web] url: is required"]


def test_every_problem_is_reported_at_once(cwd: Path) -> None:
    found = problems(
        cwd,
        environ={**BASE, "MONITOR_LOG_LEVL": "x", "MONITOR_WORKERS": "-1"},
        env_text="MONITOR_MONITORS__API__TIMEOUT=0\n",
    )
    assert found == [
        "MONITOR_LOG_LEVL: unknown setting; did you mean MONITOR_LOG_LEVEL?",
        "settings.env:1: MONITOR_MONITORS__API__TIMEOUT: must be > 0, got 0",
        "MONITOR_WORKERS: must be >= 0, got -1",
    ]


def test_no_monitors(cwd: Path) -> None:
    found = problems(cwd, environ={"MONITOR_LOG_LEVEL": "debug"})
    assert len(found) == 1
    assert found[0].startswith("MONITOR_MONITORS: at least one monitor is required: set ")
    assert "MONITOR_MONITORS_FILE" in found[0]


def test_no_monitors_when_constructed_directly() -> None:
    with pytest.raises(ValidationError, match="at least one monitor is required"):
        Settings()


# --- Unknown names, malformed files.


@pytest.mark.parametrize(
    ("variable", "problem"),
    [
        ("MONITOR_LOG_LEVL", "unknown setting; did you mean MONITOR_LOG_LEVEL?"),
        ("MONITOR_log_levl", "unknown setting; did you mean MONITOR_LOG_LEVEL?"),
        ("MONITOR_WORKER", "unknown setting; did you mean MONITOR_WORKERS?"),
        ("MONITOR_NONSENSE", "unknown setting"),
        ("MONITOR_", "unknown setting"),
        ("MONITOR_LOG__LEVEL", "unknown setting; did you mean MONITOR_LOG_LEVEL?"),
        ("MONITOR_MONITORS__API__TIMEUOT", "unknown setting; did you mean TIMEOUT?"),
        ("MONITOR_MONITORS__API__verfy_tls", "unknown setting; did you mean VERIFY_TLS?"),
        ("MONITOR_MONITORS__API__COLOUR", "unknown setting"),
        ("MONITOR_MONITORS__API__HEADERS__ACCEPT", "unknown setting; did you mean HEADERS?"),
        ("MONITOR_MONITOR__API__URL", "unknown setting; did you mean MONITOR_MONITORS__API__URL?"),
        (
            "MONITOR_MONITORS",
            "set monitors one field per variable, as MONITOR_MONITORS__NAME__FIELD",
        ),
        ("MONITOR_MONITORS__API", "names a monitor but no field; set one field each, such as"),
        ("MONITOR_MONITORS__-API__URL", "monitor name '-api' is not allowed"),
        ("MONITOR_MONITORS____URL", "monitor name '' is not allowed"),
        ("MONITOR_MONITORS__A.B__URL", "monitor name 'a.b' is not allowed"),
    ],
)
def test_unknown_variable(cwd: Path, variable: str, problem: str) -> None:
    found = problems(cwd, environ={**BASE, variable: "1"})
    assert len(found) == 1, found
    assert found[0].startswith(f"{variable}: {problem}"), found[0]
    if problem == "unknown setting":
        assert found[0] == f"{variable}: unknown setting"


def test_names_cannot_forge_lines(cwd: Path) -> None:
    found = problems(
        cwd,
        environ={**BASE, "MONITOR_X\nMONITOR_FAKE: ok": "1"},
        toml_text='"c\\nd" = 1\n' + toml_table(**{'"a\\nb"': "1"}),
    )
    assert found == [
        '"MONITOR_X\\nMONITOR_FAKE: ok": unknown setting',
        'monitors.toml: "c\\nd": unknown setting; only [monitors.NAME] tables belong here',
        'monitors.toml: [monitors.api] "a\\nb": unknown setting',
    ]


def test_unknown_variable_in_env_file_has_its_line(cwd: Path) -> None:
    found = problems(cwd, env_text=f"{env_lines(BASE)}MONITOR_LOG_LEVL=debug\n")
    assert found == [
        "settings.env:2: MONITOR_LOG_LEVL: unknown setting; did you mean MONITOR_LOG_LEVEL?"
    ]


def test_unknown_variable_with_empty_value_is_still_an_error(cwd: Path) -> None:
    assert problems(cwd, environ={**BASE, "MONITOR_LOG_LEVL": ""}) == [
        "MONITOR_LOG_LEVL: unknown setting; did you mean MONITOR_LOG_LEVEL?"
    ]


def test_two_spellings_of_one_variable(cwd: Path) -> None:
    found = problems(
        cwd, environ={**BASE, "MONITOR_LOG_LEVEL": "debug", "monitor_log_level": "info"}
    )
    assert found == [
        "monitor_log_level: sets the same setting as MONITOR_LOG_LEVEL"
        " (names are case-insensitive); keep one"
    ]


def test_env_file_cannot_name_an_env_file(cwd: Path) -> None:
    found = problems(cwd, env_text=f"{env_lines(BASE)}MONITOR_ENV_FILE=other.env\n")
    assert found == [
        "settings.env:2: MONITOR_ENV_FILE: cannot be set in an env file; set it in the environment,"
        " or use --env-file"
    ]


def test_env_file_line_that_cannot_be_parsed(cwd: Path) -> None:
    found = problems(cwd, env_text=f"{env_lines(BASE)}MONITOR_LOG_LEVEL='debug\n")
    assert found == ["settings.env:2: cannot parse this line; write NAME=value"]


def test_env_file_variable_without_value(cwd: Path) -> None:
    found = problems(cwd, env_text=f"# x\n{env_lines(BASE)}MONITOR_LOG_LEVEL\nOTHER\n")
    assert found == ["settings.env:3: MONITOR_LOG_LEVEL: has no value; write NAME=value"]


def test_explicit_env_file_must_exist(cwd: Path) -> None:
    found = problems(cwd, environ=BASE, env_file=Path("conf/missing.env"))
    assert found == ["--env-file: cannot read conf/missing.env: No such file or directory"]
    found = problems(cwd, environ={**BASE, "MONITOR_ENV_FILE": "missing.env"})
    assert found == ["MONITOR_ENV_FILE: cannot read missing.env: No such file or directory"]


def test_env_file_that_is_not_utf8(cwd: Path) -> None:
    (cwd / "settings.env").write_bytes(b"MONITOR_LOG_LEVEL=\xff\n")
    assert problems(cwd, environ=BASE) == [
        "settings.env: cannot read settings.env: not UTF-8 text (byte 19)"
    ]


def test_monitors_file_must_exist(cwd: Path) -> None:
    found = problems(cwd, environ={"MONITOR_MONITORS_FILE": "nope.toml"})
    assert found == ["MONITOR_MONITORS_FILE: cannot read nope.toml: No such file or directory"]
    found = problems(cwd, env_text="\nMONITOR_MONITORS_FILE=nope.toml\n")
    assert found == [
        "settings.env:2: MONITOR_MONITORS_FILE: cannot read nope.toml: No such file or directory"
    ]


def test_malformed_toml(cwd: Path) -> None:
    found = problems(cwd, toml_text='[monitors.api]\nurl = "http://example.com\n')
    assert len(found) == 1
    assert re.fullmatch(
        r"monitors\.toml: not valid TOML: .+ \(at line 2, column \d+\)", found[0]
    ), found[0]


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        (
            'log_level = "debug"\n',
            "monitors.toml: log_level: only [monitors.NAME] tables belong in this file;"
            " set MONITOR_LOG_LEVEL in the environment or the env file",
        ),
        (
            '[monitor.api]\nurl = "http://x"\n',
            "monitors.toml: monitor: unknown setting; did you mean monitors?",
        ),
        (
            'title = "x"\n[monitors.api]\nurl = "http://x"\n',
            "monitors.toml: title: unknown setting; only [monitors.NAME] tables belong here",
        ),
        (
            'monitors = "api"\n',
            "monitors.toml: monitors: must be a table of [monitors.NAME] tables",
        ),
        (
            "[monitors]\napi = 1\n",
            "monitors.toml: [monitors.api]: must be a table of monitor fields",
        ),
        (
            '[monitors.api]\nurl = "http://x"\ntimeuot = 1\n',
            "monitors.toml: [monitors.api] timeuot: unknown setting; did you mean timeout?",
        ),
        (
            '[monitors.api]\nurl = "http://x"\nTimeout = 1\n',
            "monitors.toml: [monitors.api] Timeout: unknown setting; did you mean timeout?",
        ),
        (
            '[monitors.API]\nurl = "http://x"\n[monitors.api]\nurl = "http://y"\n',
            "monitors.toml: [monitors.api]: the same monitor as [monitors.API]"
            " (names are case-insensitive)",
        ),
        (
            '[monitors."a.b"]\nurl = "http://x"\n',
            "monitors.toml: [monitors.\"a.b\"]: monitor name 'a.b' is not allowed",
        ),
    ],
)
def test_monitors_file_shape(cwd: Path, toml: str, problem: str) -> None:
    found = problems(cwd, environ=BASE, toml_text=toml)
    assert len(found) == 1, found
    assert found[0].startswith(problem), found[0]


# --- Secrets never appear.


def secret_settings(cwd: Path) -> Settings:
    return load(
        cwd,
        {
            "MONITOR_MONITORS__API__URL": f"https://user:{SECRET}@example.com/path",
            "MONITOR_MONITORS__API__USERNAME": "alice",
            "MONITOR_MONITORS__API__PASSWORD": SECRET,
            "MONITOR_MONITORS__API__HEADERS": f'{{"Authorization": "Bearer {SECRET}"}}',
        },
        toml_text=toml_table("db", headers=f'{{ X-Token = "{SECRET}" }}'),
    )


def test_secrets_are_not_in_reprs_or_rendering(cwd: Path) -> None:
    settings = secret_settings(cwd)
    monitor = settings.monitors["api"]
    assert monitor.password is not None
    assert monitor.password.get_secret_value() == SECRET  # present, only hidden
    assert SECRET in monitor.url
    for text in (repr(settings), str(settings), repr(monitor), render_config(settings)):
        assert SECRET not in text
        assert MASK in text


@pytest.mark.parametrize(
    "environ",
    [
        {**BASE, "MONITOR_MONITORS__API__HEADERS": f'{{"Bad Name": "{SECRET}"}}'},
        {**BASE, "MONITOR_MONITORS__API__HEADERS": f'{{"A": "{SECRET}\\n"}}'},
        {**BASE, "MONITOR_MONITORS__API__HEADERS": f'{{"A": "{SECRET}"'},
        {**BASE, "MONITOR_MONITORS__API__HEADERS": f'["{SECRET}"]'},
        {**BASE, "MONITOR_MONITORS__API__PASSWORD": SECRET},
        {**BASE, "MONITOR_MONITORS__API__PASSWROD": SECRET},
        {"MONITOR_MONITORS__API__URL": f"ftp://user:{SECRET}@example.com"},
        {"MONITOR_MONITORS__API__URL": f"https://user:{SECRET}@example.com:99999"},
    ],
)
def test_secrets_are_not_in_errors(cwd: Path, environ: dict[str, str]) -> None:
    found = problems(cwd, environ=environ)
    assert SECRET not in "\n".join(found)


def test_secret_of_wrong_type_in_toml_is_masked(cwd: Path) -> None:
    found = problems(cwd, toml_text=toml_table(username='"u"', password="20240101"))
    assert found == ["monitors.toml: [monitors.api] password: must be a string, got **********"]


def test_url_password_is_masked_in_errors(cwd: Path) -> None:
    found = problems(cwd, environ={"MONITOR_MONITORS__API__URL": f"ftp://u:{SECRET}@host/x"})
    assert found == [
        "MONITOR_MONITORS__API__URL: must start with http:// or https://,"
        " got ftp://u:**********@host/x"
    ]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://example.com/x", "http://example.com/x"),
        ("http://user@example.com/", "http://user@example.com/"),
        ("http://user:pw@example.com/", "http://user:**********@example.com/"),
        ("https://user:p:w@host:8443/p?q=1#f", "https://user:**********@host:8443/p?q=1#f"),
        ("http://user:p@w@host/", "http://user:**********@host/"),
        ("http://user:@host/", "http://user:**********@host/"),
        ("http://host/path@x:y", "http://host/path@x:y"),
        ("http://host?a=b:c@d", "http://host?a=b:c@d"),
        ("http://u:pw@[::1]:80/", "http://u:**********@[::1]:80/"),
        ("user:pw@host", "user:pw@host"),
        ("", ""),
    ],
)
def test_display_url(url: str, shown: str) -> None:
    assert display_url(url) == shown


# --- render_config: the effective configuration.


def rendered_variables(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    pairs = [line.split("=", 1) for line in lines]
    assert len({key for key, _ in pairs}) == len(pairs)  # each setting once
    return dict(pairs)


def test_render_config_shows_every_setting_and_every_field(cwd: Path) -> None:
    settings = load(cwd, {**BASE, "MONITOR_MONITORS__WEB__URL": URL})
    variables = rendered_variables(render_config(settings))
    daemon = {f"MONITOR_{name.upper()}" for name in Settings.model_fields} - {
        "MONITOR_MONITORS",
        "MONITOR_ENV_FILE",
    }
    fields = {
        f"MONITOR_MONITORS__{name}__{field.upper()}"
        for name in ("API", "WEB")
        for field in Monitor.model_fields
    }
    assert set(variables) == daemon | fields
    assert variables["MONITOR_LOG_LEVEL"] == "INFO"
    assert variables["MONITOR_LOG_FILE"] == str(cwd / "logs/monitor.log")
    assert variables["MONITOR_LOG_COMPRESSION"] == ""
    assert variables["MONITOR_MONITORS__API__TIMEOUT"] == "10"
    assert variables["MONITOR_MONITORS__API__EXPECT_STATUS"] == "200-399"
    assert variables["MONITOR_MONITORS__API__BODY"] == ""
    assert variables["MONITOR_MONITORS__API__FOLLOW_REDIRECTS"] == "true"


def test_render_config_masks_secrets_but_shows_they_are_set(cwd: Path) -> None:
    variables = rendered_variables(render_config(secret_settings(cwd)))
    assert variables["MONITOR_MONITORS__API__PASSWORD"] == MASK
    assert variables["MONITOR_MONITORS__API__HEADERS"] == '{"Authorization": "**********"}'
    assert variables["MONITOR_MONITORS__API__URL"] == "https://user:**********@example.com/path"
    assert variables["MONITOR_MONITORS__DB__HEADERS"] == '{"X-Token": "**********"}'
    assert variables["MONITOR_MONITORS__DB__PASSWORD"] == ""


def test_render_config_quotes_values_that_would_not_survive(cwd: Path) -> None:
    toml = toml_table(body='"line one\\nline two"', expect_body='" padded "')
    variables = rendered_variables(render_config(load(cwd, toml_text=toml)))
    assert variables["MONITOR_MONITORS__API__BODY"] == '"line one\\nline two"'
    assert variables["MONITOR_MONITORS__API__EXPECT_BODY"] == '" padded "'


def test_render_config_reads_back_as_the_same_settings(cwd: Path) -> None:
    settings = load(
        cwd,
        {
            **BASE,
            "MONITOR_MONITORS__API__INTERVAL": "2.5",
            "MONITOR_MONITORS__API__EXPECT_STATUS": "200,204",
            "MONITOR_MONITORS__API__EXPECT_BODY_REGEX": "^ok",
            "MONITOR_MONITORS__API__CA_BUNDLE": "ca.pem",
            "MONITOR_LOG_RETENTION": "1 week",
            "MONITOR_LOG_JSON": "true",
        },
    )
    (cwd / "rendered.env").write_text(render_config(settings))
    again = load_settings(environ={}, cwd=cwd, env_file=Path("rendered.env"))
    assert again.model_copy(update={"env_file": None}) == settings


# --- warnings(), worker_count().


def test_warnings(cwd: Path) -> None:
    settings = load(
        cwd,
        {
            "MONITOR_MONITORS__API__URL": "https://example.com",
            "MONITOR_MONITORS__API__VERIFY_TLS": "false",
            "MONITOR_MONITORS__API__CA_BUNDLE": "ca.pem",
            "MONITOR_MONITORS__PLAIN__URL": "http://example.com",
            "MONITOR_MONITORS__PLAIN__USERNAME": "u",
            "MONITOR_MONITORS__PLAIN__PASSWORD": SECRET,
            "MONITOR_WORKERS": "3",
        },
    )
    assert settings.warnings() == [
        "MONITOR_MONITORS__API__VERIFY_TLS=false: the server's certificate and host name are not"
        " checked",
        "MONITOR_MONITORS__API__CA_BUNDLE is ignored, because VERIFY_TLS is false",
        "MONITOR_MONITORS__PLAIN__PASSWORD is sent unencrypted: the URL is http://, not https://",
        "MONITOR_WORKERS=3, but there are only 2 monitors: running 2 workers",
    ]


def test_no_warnings_for_defaults(cwd: Path) -> None:
    assert load(cwd, BASE).warnings() == []


@pytest.mark.parametrize(
    ("workers", "monitors", "cpus", "expected"),
    [(0, 3, 8, 3), (0, 10, 4, 4), (2, 10, 8, 2), (5, 3, 8, 3), (0, 1, 1, 1)],
)
def test_worker_count(workers: int, monitors: int, cpus: int, expected: int) -> None:
    tables = {f"m{i}": {"url": URL} for i in range(monitors)}
    assert Settings(monitors=tables, workers=workers).worker_count(cpus) == expected


# --- The model used directly.


def test_make_monitor_names_it() -> None:
    monitor = make_monitor("web", url=URL, interval=5)
    assert (monitor.name, monitor.timeout) == ("web", 4.0)


def test_settings_direct_construction_lowers_and_checks_names() -> None:
    settings = Settings(monitors={"Web": {"url": URL}})
    assert list(settings.monitors) == ["web"]
    assert settings.monitors["web"].name == "web"
    with pytest.raises(ValidationError, match="names are case-insensitive"):
        Settings(monitors={"Web": {"url": URL}, "WEB": {"url": URL}})
    with pytest.raises(ValidationError, match="monitor name 'a b' is not allowed"):
        Settings(monitors={"a b": {"url": URL}})


@pytest.mark.parametrize(
    ("text", "ranges"),
    [
        ("200-399", ((200, 399),)),
        ("204, 200 - 202", ((200, 202), (204, 204))),
        (404, ((404, 404),)),
        ([301, "302-303"], ((301, 301), (302, 303))),
    ],
)
def test_status_set_parse(text: object, ranges: tuple[tuple[int, int], ...]) -> None:
    assert StatusSet.parse(text).ranges == ranges


def test_status_set_membership() -> None:
    statuses = StatusSet.parse("200,300-302")
    assert [code in statuses for code in (199, 200, 201, 300, 302, 303)] == [
        False,
        True,
        False,
        True,
        True,
        False,
    ]


# --- The reference, generated from the models.


def test_reference_lists_every_variable_with_its_description() -> None:
    reference = reference_markdown()
    for name, info in Settings.model_fields.items():
        if name != "monitors":
            assert f"| `MONITOR_{name.upper()}` |" in reference
            assert info.description is not None
            assert info.description.replace("|", "\\|") in reference
    for name, info in Monitor.model_fields.items():
        assert f"| `MONITOR_MONITORS__<NAME>__{name.upper()}` | `{name}` |" in reference
        assert info.description is not None
        assert info.description in reference
    assert "| `MONITOR_LOG_ROTATION` | `50 MB` |" in reference
    assert "| `MONITOR_MONITORS__<NAME>__URL` | `url` | required |" in reference
    assert (
        "| `MONITOR_MONITORS__<NAME>__EXPECT_STATUS` | `expect_status` | `200-399` |" in reference
    )


def test_replace_reference() -> None:
    text = f"# Title\n\n{REFERENCE_START}\nold\n{REFERENCE_END}\n\nAfter.\n"
    updated = replace_reference(text)
    assert updated.startswith(f"# Title\n\n{REFERENCE_START}\n")
    assert updated.endswith(f"{REFERENCE_END}\n\nAfter.\n")
    assert reference_section(updated) == reference_markdown()
    assert reference_section("no markers") is None
    with pytest.raises(ValueError, match="markers"):
        replace_reference("no markers")


def test_main_prints_or_rewrites_the_reference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([]) == 0
    printed = capsys.readouterr().out
    assert reference_section(printed) == reference_markdown()
    readme = tmp_path / "README.md"
    readme.write_text(f"Intro\n{REFERENCE_START}\n{REFERENCE_END}\n")
    assert main([str(readme)]) == 0
    assert reference_section(readme.read_text()) == reference_markdown()


def test_readme_reference_is_current() -> None:
    readme = REPO / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.exists() else ""
    how = "run: python -m monitor.settings README.md"
    section = reference_section(text)
    assert section is not None, (
        f"README.md has no {REFERENCE_START} ... {REFERENCE_END} section;"
        f" add the two markers, then {how}"
    )
    assert section == reference_markdown(), (
        f"README.md's configuration reference is out of date; {how}"
    )
