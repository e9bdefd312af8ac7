"""Configuration: the models, where values come from, and errors written for the operator.

Parsed once, at the edge, strictly, then frozen: nothing after loading reads ``os.environ``.

Sources, highest precedence first: the process environment (passed in as a mapping), the env file
(``settings.env``), the monitors file (TOML), then the defaults in the models. Each source is
screened before validation (unknown names, malformed files), its values are loaded through a
pydantic-settings source, and each validation error is traced back to the source whose value won,
so that every problem is one line naming the variable as the operator wrote it.
"""

from __future__ import annotations

import difflib
import functools
import io
import json
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple, get_args
from urllib.parse import urlsplit

from dotenv.parser import parse_stream
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from monitor.logs import check_file_options

if TYPE_CHECKING:
    from pydantic_settings.sources.types import Traversable

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
MAX_REDIRECTS = 10
DEFAULT_TIMEOUT = 10.0
# A timeout left to its default stays this far below the interval, so a check that hits its
# deadline still ends before the next one is due.
DEFAULT_TIMEOUT_SHARE = 0.8

ENV_PREFIX = "MONITOR_"
DELIMITER = "__"
MASK = "**********"
DEFAULT_ENV_FILE = "settings.env"
MONITOR_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
REFERENCE_START = "<!-- config-reference:start -->"
REFERENCE_END = "<!-- config-reference:end -->"

Loc = tuple[str, ...]
"""A path into the settings: ``("log_level",)`` or ``("monitors", "api", "timeout")``."""


def display_url(url: str) -> str:
    """The URL with the password of its userinfo (``http://user:pw@host``) masked; never raises.

    Splits as ``urllib.parse.urlsplit`` does: the authority ends at the first ``/``, ``?`` or
    ``#``; the userinfo ends at its last ``@``; the password follows the userinfo's first ``:``.
    """
    scheme, sep, rest = url.partition("://")
    end = re.search(r"[/?#]", rest)
    authority, tail = (rest[: end.start()], rest[end.start() :]) if end else (rest, "")
    userinfo, at, host = authority.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if not sep or not at or not colon:
        return url
    return f"{scheme}://{user}:{MASK}@{host}{tail}"


def check_monitor_name(name: str) -> str | None:
    """Why ``name`` (already lower-cased) cannot name a monitor, or None if it can."""
    if MONITOR_NAME.fullmatch(name):
        return None
    return (
        f"monitor name {name!r} is not allowed: use letters, digits, _ and -,"
        " starting with a letter or digit"
    )


def _upper(value: object) -> object:
    """Before validation: a name given in any case (GET, get; info, INFO)."""
    return value.upper() if isinstance(value, str) else value


class StatusSet:
    """The expected status codes, parsed from ``200-399`` or ``200,204,300-399``."""

    __slots__ = ("ranges",)

    def __init__(self, ranges: tuple[tuple[int, int], ...]) -> None:
        self.ranges = ranges

    @classmethod
    def parse(cls, value: object) -> StatusSet:
        """A StatusSet from a string, an int or a list of them; ValueError says what is wrong."""
        if isinstance(value, StatusSet):
            return value
        if isinstance(value, bool):
            raise ValueError("expected status codes such as 200,204,300-399")
        if isinstance(value, int):
            parts: list[str] = [str(value)]
        elif isinstance(value, str):
            parts = [p.strip() for p in value.split(",")]
        elif isinstance(value, list | tuple):
            parts = [str(p).strip() for p in value]
        else:
            raise ValueError("expected status codes such as 200,204,300-399")
        if not parts:
            raise ValueError("expected at least one status code")
        return cls(tuple(sorted(_parse_status_part(part, len(parts) > 1) for part in parts)))

    def __contains__(self, status: object) -> bool:
        return isinstance(status, int) and any(lo <= status <= hi for lo, hi in self.ranges)

    def __str__(self) -> str:
        return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.ranges)

    def __repr__(self) -> str:
        return f"StatusSet({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StatusSet) and self.ranges == other.ranges

    def __hash__(self) -> int:
        return hash(self.ranges)


_STATUS_RANGE = re.compile(r"(\d{3})(?:\s*-\s*(\d{3}))?")


def _parse_status_part(part: str, name_part: bool) -> tuple[int, int]:
    """One ``200`` or ``200-399`` of a list; the error names the part if there are several."""
    where = f"{part!r}: " if name_part else ""
    match = _STATUS_RANGE.fullmatch(part)
    if match is None:
        raise ValueError(f"{where}expected status codes such as 200,204,300-399")
    lo = int(match.group(1))
    hi = int(match.group(2) or lo)
    if not 100 <= lo <= hi <= 599:
        raise ValueError(f"{where}status codes must lie within 100-599, ranges low to high")
    return lo, hi


ExpectStatus = Annotated[StatusSet, BeforeValidator(StatusSet.parse)]


def _compile_regex(value: object) -> object:
    if not isinstance(value, str):
        return value
    try:
        return re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None


BodyRegex = Annotated[re.Pattern[str], BeforeValidator(_compile_regex)]

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class Monitor(BaseModel):
    """One configured target: what to request, how often, and what counts as up."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        arbitrary_types_allowed=True,
        validate_default=True,
        hide_input_in_errors=True,
    )

    url: str = Field(description="The URL to check: http:// or https://, with a host.")
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = Field(
        "GET", description="HTTP method: GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS."
    )
    interval: float = Field(
        60.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds from the start of one check to the start of the next.",
    )
    timeout: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Seconds: the deadline for the whole check (connect, TLS, headers and body)."
            f" Default: {DEFAULT_TIMEOUT:g} s or {DEFAULT_TIMEOUT_SHARE:.0%} of the interval,"
            " whichever is less. Must not exceed the interval."
        ),
    )
    expect_status: ExpectStatus = Field(
        StatusSet(((200, 399),)),
        description="Status codes that count as up: codes and ranges, such as 200,204,300-399.",
    )
    expect_body: str | None = Field(
        None, description="Text the body must contain (searched in the first max_body_bytes)."
    )
    expect_body_regex: BodyRegex | None = Field(
        None, description="A regular expression the body must match (Python syntax)."
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description=(
            'Request headers as a JSON object, such as {"Accept": "text/html"}'
            " (in TOML: a table). Values are secret."
        ),
    )
    body: str | None = Field(None, description="Request body, sent as UTF-8.")
    username: str | None = Field(None, description="User name for HTTP basic authentication.")
    password: SecretStr | None = Field(
        None, description="Password for HTTP basic authentication (secret); needs username."
    )
    follow_redirects: bool = Field(
        True,
        description=f"Follow redirects, at most {MAX_REDIRECTS}; the last response is judged.",
    )
    verify_tls: bool = Field(
        True,
        description="Verify the server's certificate and host name. false logs a warning at start.",
    )
    ca_bundle: Path | None = Field(
        None,
        description=(
            "A PEM file of CA certificates to trust instead of the system's;"
            " relative to the working directory."
        ),
    )
    max_body_bytes: int = Field(
        1024 * 1024,
        gt=0,
        description="Read at most this many bytes of body (decoded); the rest is not read.",
    )

    _name: str = PrivateAttr(default="")

    @property
    def name(self) -> str:
        return self._name

    @property
    def deadline(self) -> float:
        """The whole check's deadline in seconds (the timeout, or its default)."""
        assert self.timeout is not None  # filled by _default_timeout
        return self.timeout

    _upper_method = field_validator("method", mode="before")(_upper)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        # Messages leave the value out: the caller shows it, with any password masked.
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError("must not contain spaces or control characters")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValueError("must start with http:// or https://")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("has an invalid port") from None
        if not parts.hostname:
            raise ValueError("has no host")
        if port == 0:
            raise ValueError("has an invalid port")
        return value

    @field_validator("timeout")
    @classmethod
    def _check_timeout(cls, value: float | None, info: ValidationInfo) -> float | None:
        interval = info.data.get("interval")
        if value is not None and interval is not None and value > interval:
            raise ValueError(f"must not exceed the interval ({interval:g} s)")
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, secret in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP token")
            if any(c in secret.get_secret_value() for c in "\r\n\0"):
                raise ValueError(f"header {name!r} has a line break or NUL in its value")
        return value

    @field_validator("password")
    @classmethod
    def _check_password(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None and "username" in info.data and info.data["username"] is None:
            raise ValueError("is set but username is not")
        return value

    @field_validator("ca_bundle")
    @classmethod
    def _check_ca_bundle(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError("is not a file" if value.exists() else "no such file")
        return value

    @model_validator(mode="after")
    def _default_timeout(self) -> Monitor:
        if self.timeout is None:
            timeout = min(DEFAULT_TIMEOUT, self.interval * DEFAULT_TIMEOUT_SHARE)
            object.__setattr__(self, "timeout", timeout)
        return self

    def with_name(self, name: str) -> Monitor:
        copy = self.model_copy()
        copy._name = name
        return copy

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield "name", self._name
        for key, value in super().__repr_args__():
            yield key, display_url(value) if key == "url" else value


def make_monitor(name: str = "test", **fields: Any) -> Monitor:
    """A validated, named Monitor from keyword fields, as if read from configuration."""
    return Monitor.model_validate(fields).with_name(name)


LogLevel = Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"]

NO_MONITORS = (
    "at least one monitor is required: set MONITOR_MONITORS__NAME__URL (in the environment or"
    " the env file), or name a TOML file of [monitors.NAME] tables in MONITOR_MONITORS_FILE"
)


class Settings(BaseSettings):
    """The daemon's whole configuration, frozen.

    Build it with ``load_settings``. ``Settings(...)`` itself reads nothing but its arguments (no
    environment, no env file), so tests and reloads get exactly what they pass.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=DELIMITER,
        case_sensitive=False,
        env_ignore_empty=True,
        frozen=True,
        extra="forbid",
        hide_input_in_errors=True,
        validate_default=True,
    )

    monitors: dict[str, Monitor] = Field(
        default_factory=dict,
        description="The monitors by name (case-insensitive); at least one is required.",
    )
    log_file: Path = Field(
        Path("logs/monitor.log"),
        description="The log file, rotated as configured; relative to the working directory.",
    )
    log_level: LogLevel = Field(
        "INFO",
        description=(
            "The least severe level logged: TRACE, DEBUG, INFO, SUCCESS, WARNING, ERROR or"
            " CRITICAL (any case)."
        ),
    )
    log_rotation: str = Field(
        "50 MB",
        description=(
            "When to start a new log file, in loguru's syntax: a size (50 MB), an interval"
            " (1 week) or a time of day (00:00)."
        ),
    )
    log_retention: int | str = Field(
        10,
        description=(
            "Which rotated log files to keep, in loguru's syntax: a count (10) or an age (10 days)."
        ),
    )
    log_compression: str = Field(
        "",
        description=(
            "Compress rotated log files: gz, bz2, xz, lzma, tar, tar.gz, tar.bz2, tar.xz or zip;"
            " empty for none."
        ),
    )
    log_json: bool = Field(
        False, description="Write the log file as one JSON object per line instead of text."
    )
    workers: int = Field(
        0,
        ge=0,
        description="Worker processes: 0 for one per CPU. Never more than there are monitors.",
    )
    threads: int = Field(
        0,
        ge=0,
        description="Check threads in each worker: 0 to size them from the worker's share.",
    )
    shutdown_timeout: float = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds a graceful stop (SIGTERM, SIGINT) may take in all.",
    )
    heartbeat_timeout: float = Field(
        10.0,
        ge=2.0,
        allow_inf_nan=False,
        description=(
            "Seconds a worker may go without proof of progress (a check finished, or its"
            " scheduler's tick, every second) before it is killed and restarted."
        ),
    )
    state_dir: Path = Field(
        Path("state"),
        description=(
            "Directory for what survives restarts (up/down state, history); relative to the"
            " working directory."
        ),
    )
    monitors_file: Path | None = Field(
        None,
        description=(
            "A TOML file of [monitors.NAME] tables, for many monitors; relative to the working"
            " directory. The environment and the env file override it field by field."
        ),
    )
    env_file: Path | None = Field(
        None,
        description=(
            f"The env file: {DEFAULT_ENV_FILE} in the working directory if it exists, or the file"
            " named by --env-file or by this variable (environment only), which must exist."
        ),
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the arguments: load_settings runs the other sources, with their inputs given."""
        return (init_settings,)

    @field_validator("monitors", mode="before")
    @classmethod
    def _lower_monitor_names(cls, value: object) -> object:
        if not isinstance(value, dict):
            return value
        lowered: dict[str, object] = {}
        for name, monitor in value.items():
            key = str(name).lower()
            problem = check_monitor_name(key)
            if problem is not None:
                raise ValueError(problem)
            if key in lowered:
                raise ValueError(f"two monitors are named {key!r}: names are case-insensitive")
            lowered[key] = monitor
        return lowered

    @field_validator("monitors")
    @classmethod
    def _name_monitors(cls, value: dict[str, Monitor]) -> dict[str, Monitor]:
        if not value:
            raise ValueError(NO_MONITORS)
        return {name: monitor.with_name(name) for name, monitor in value.items()}

    _upper_log_level = field_validator("log_level", mode="before")(_upper)

    @field_validator("log_rotation")
    @classmethod
    def _check_rotation(cls, value: str) -> str:
        _check_loguru(value, "", "", "a size (50 MB), an interval (1 week) or a time (00:00)")
        return value

    @field_validator("log_retention", mode="before")
    @classmethod
    def _count_retention(cls, value: object) -> object:
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value

    @field_validator("log_retention")
    @classmethod
    def _check_retention(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("a count of files to keep must be >= 1")
        _check_loguru("", value, "", "a count of files (10) or an age (10 days)")
        return value

    @field_validator("log_compression")
    @classmethod
    def _check_compression(cls, value: str) -> str:
        allowed = "gz, bz2, xz, lzma, tar, tar.gz, tar.bz2, tar.xz, zip, or empty for none"
        _check_loguru("", "", value, allowed)
        return value

    def worker_count(self, cpus: int) -> int:
        """How many workers to run on ``cpus`` CPUs: ``workers`` or one per CPU, at most one per
        monitor, at least one."""
        return max(1, min(self.workers or cpus, len(self.monitors)))

    def warnings(self) -> list[str]:
        """What an operator should hear about at start; none of it stops the daemon."""
        found: list[str] = []
        for name, monitor in self.monitors.items():
            found.extend(_monitor_warnings(name, monitor))
        if self.workers > len(self.monitors):
            found.append(
                f"MONITOR_WORKERS={self.workers}, but there are only {len(self.monitors)}"
                f" monitors: running {len(self.monitors)} workers"
            )
        return found


def _check_loguru(rotation: str, retention: int | str, compression: str, allowed: str) -> None:
    if not _loguru_accepts(rotation, retention, compression):
        raise ValueError(f"loguru does not accept this; use {allowed}")


@functools.lru_cache(maxsize=64)
def _loguru_accepts(rotation: str, retention: int | str, compression: str) -> bool:
    # Cached: asking loguru costs milliseconds (it adds a sink), and the values rarely change.
    try:
        check_file_options(rotation, retention, compression)
    except ValueError:
        return False
    return True


def _monitor_warnings(name: str, monitor: Monitor) -> Iterator[str]:
    prefix = f"{ENV_PREFIX}MONITORS{DELIMITER}{name.upper()}{DELIMITER}"
    if not monitor.verify_tls:
        yield f"{prefix}VERIFY_TLS=false: the server's certificate and host name are not checked"
        if monitor.ca_bundle is not None:
            yield f"{prefix}CA_BUNDLE is ignored, because VERIFY_TLS is false"
    if monitor.password is not None and urlsplit(monitor.url).scheme == "http":
        yield f"{prefix}PASSWORD is sent unencrypted: the URL is http://, not https://"


class ConfigError(Exception):
    """Invalid configuration: one line per problem, each naming the variable as written."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(*problems)
        self.problems = problems

    def __str__(self) -> str:
        return "\n".join(self.problems)


# ---------------------------------------------------------------------------------------------
# Loading: screen each source, load it through pydantic-settings, merge, validate, explain.


@dataclass(frozen=True)
class _Written:
    """One value as a source supplied it: how the operator wrote its name, and the raw value."""

    label: str
    raw: object


@dataclass
class _Input:
    """One source after screening: what to load, where each value came from, what is wrong.

    ``values`` is the variables (name as written to value) for the environment and the env file,
    or the normalized ``{"monitors": ...}`` table for the monitors file.
    """

    where: str  # "" for the environment; else the file as the operator named it
    toml: bool = False
    path: Path | None = None
    values: dict[str, Any] = field(default_factory=dict)
    written: dict[Loc, _Written] = field(default_factory=dict)
    monitor_names: dict[str, str] = field(default_factory=dict)  # lower-case -> as written
    problems: list[str] = field(default_factory=list)
    fatal: bool = False  # the source could not be read at all

    def label_for(self, loc: Loc) -> str:
        """How this source's syntax names ``loc``, spelling its monitor as the operator did."""
        if self.toml:
            name = self.monitor_names.get(loc[1], loc[1]) if len(loc) > 1 else ""
            return _table_label(self.where, name) + "".join(f" {part}" for part in loc[2:])
        parts = [part.upper() for part in loc]
        if len(loc) > 1:
            parts[1] = self.monitor_names.get(loc[1], parts[1])
        variable = ENV_PREFIX + DELIMITER.join(parts)
        return f"{self.where}: {variable}" if self.where else variable


class _Inputs(NamedTuple):
    """The screened sources, highest precedence first."""

    environment: _Input
    env_file: _Input
    monitors_file: _Input


class MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' EnvSettingsSource over given variables instead of ``os.environ``.

    Used for the env file too: it is read once, by python-dotenv's parser without interpolation
    (DotEnvSettingsSource would expand ``${VAR}`` from ``os.environ``, which systemd does not),
    and screened before loading.
    """

    def __init__(self, settings_cls: type[BaseSettings], variables: Mapping[str, str]) -> None:
        self._variables = variables
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {
            self._apply_case_sensitive(name): value
            for name, value in self._variables.items()
            if not (self.env_ignore_empty and value == "")
        }


class MonitorsFileSource(TomlConfigSettingsSource):
    """pydantic-settings' TomlConfigSettingsSource over a monitors file parsed and screened
    already (names lower-cased, unknown keys dropped), so it is read once."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path, data: dict[str, Any]) -> None:
        self._data = data
        super().__init__(settings_cls, toml_file=path)

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        return self._data


def load_settings(
    *, environ: Mapping[str, str], cwd: Path, env_file: Path | None = None
) -> Settings:
    """The validated, frozen Settings from ``environ``, the env file and the monitors file.

    ``env_file`` is ``--env-file``; without it ``MONITOR_ENV_FILE`` names the env file, and
    without that ``settings.env`` in ``cwd`` is read if it exists. Relative paths are relative to
    ``cwd``. Reads only the files named; raises ConfigError listing every problem found.
    """
    environment = _screen_variables(environ, where="")
    env_input = _read_env_file(cwd, env_file, environment)
    inputs = _Inputs(environment, env_input, _read_monitors_file(cwd, environment, env_input))
    problems = [problem for source in inputs for problem in source.problems]
    if any(source.fatal for source in inputs):
        raise ConfigError(problems)
    settings, invalid = _validate(inputs, cwd)
    if problems or settings is None:
        raise ConfigError(problems + invalid)
    return settings


def _validate(inputs: _Inputs, cwd: Path) -> tuple[Settings | None, list[str]]:
    """Settings from the screened sources, or None and one line per validation error."""
    try:
        values = _anchor_paths(_collect_values(inputs), cwd)
        values["env_file"] = inputs.env_file.path
        return Settings.model_validate(values), []
    except ValidationError as exc:
        return None, [_describe_error(error, inputs) for error in exc.errors()]
    except SettingsError as exc:  # a value the sources could not decode; screening should stop it
        return None, [str(exc)]


def _collect_values(inputs: _Inputs) -> dict[str, Any]:
    """Each source loaded by pydantic-settings, merged by precedence."""
    values = _load_monitors_file(inputs.monitors_file)
    for source in (inputs.env_file, inputs.environment):
        loaded = MappingEnvSource(Settings, source.values)()
        values = _merge(loaded, values)
    return values


def _load_monitors_file(source: _Input) -> dict[str, Any]:
    if source.path is None:
        return {}
    return MonitorsFileSource(Settings, source.path, source.values)()


def _merge(high: dict[str, Any], low: dict[str, Any]) -> dict[str, Any]:
    """``high`` over ``low``; monitors merge field by field, and a field is replaced whole."""
    merged = {**low, **high}
    low_monitors, high_monitors = low.get("monitors", {}), high.get("monitors", {})
    if low_monitors or high_monitors:
        merged["monitors"] = {
            name: {**low_monitors.get(name, {}), **high_monitors.get(name, {})}
            for name in {**low_monitors, **high_monitors}
        }
    return merged


def _anchor_paths(values: dict[str, Any], cwd: Path) -> dict[str, Any]:
    """Relative paths made relative to ``cwd`` (not to the process's working directory)."""
    for key in ("log_file", "state_dir", "monitors_file"):
        value = values.get(key, Settings.model_fields[key].default)
        if isinstance(value, str | Path):
            values[key] = cwd / value
    for table in values.get("monitors", {}).values():
        if isinstance(table, dict) and isinstance(table.get("ca_bundle"), str | Path):
            table["ca_bundle"] = cwd / table["ca_bundle"]
    return values


# --- The environment and the env file: MONITOR_* variables.


def _screen_variables(
    variables: Mapping[str, str | None], where: str, lines: Mapping[str, int] | None = None
) -> _Input:
    """The MONITOR_* variables checked by name; others are ignored (an EnvironmentFile may
    hold them). Only known, non-empty variables are kept to load."""
    screened = _Input(where=where)
    seen: dict[Loc, str] = {}
    for name, value in variables.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        label = _variable_label(name, where, (lines or {}).get(name))
        loc, problem = _locate_variable(name)
        problem = problem or _check_variable(loc, value, where, seen.get(loc))
        if problem is not None:
            screened.problems.append(f"{label}: {problem}")
        elif value:  # an empty value is the same as not setting the variable
            seen[loc] = name
            _keep_variable(screened, name, value, loc, label)
    return screened


def _variable_label(name: str, where: str, line: int | None) -> str:
    name = _quote_if_needed(name)  # a name with a line break must not start a line of its own
    if not where:
        return name
    return f"{where}:{line}: {name}" if line else f"{where}: {name}"


def _check_variable(loc: Loc, value: str | None, where: str, earlier: str | None) -> str | None:
    """Why a variable naming a known setting still cannot be used, or None."""
    if value is None:
        return "has no value; write NAME=value"
    if earlier is not None:
        return f"sets the same setting as {earlier} (names are case-insensitive); keep one"
    if loc == ("env_file",) and where:
        return "cannot be set in an env file; set it in the environment, or use --env-file"
    if loc[-1] == "headers" and value:
        return _check_headers_json(value)
    return None


def _keep_variable(screened: _Input, name: str, value: str, loc: Loc, label: str) -> None:
    screened.written[loc] = _Written(label, value)
    if loc[0] == "monitors":
        written_name = name[len(ENV_PREFIX) :].split(DELIMITER)[1]
        screened.monitor_names.setdefault(loc[1], written_name)
    if loc != ("env_file",):  # load_settings resolves the env file itself
        screened.values[name] = value


def _locate_variable(name: str) -> tuple[Loc, str | None]:
    """The settings path a MONITOR_* variable names, or why it names none."""
    parts = name[len(ENV_PREFIX) :].lower().split(DELIMITER)
    if len(parts) == 1:
        return _locate_daemon_variable(parts[0])
    if parts[0] != "monitors":
        return (), _unknown_variable(parts)
    if len(parts) == 2:
        return (), f"names a monitor but no field; set one field each, such as {name}__URL"
    monitor, key = parts[1], DELIMITER.join(parts[2:])
    problem = check_monitor_name(monitor)
    if problem is not None:
        return (), problem
    if key not in Monitor.model_fields:
        head = parts[2]  # HEADERS__ACCEPT: a field's value cannot be split into variables
        guess = head if len(parts) > 3 and head in Monitor.model_fields else key
        return (), _unknown(guess.upper(), [f.upper() for f in Monitor.model_fields])
    return ("monitors", monitor, key), None


def _locate_daemon_variable(key: str) -> tuple[Loc, str | None]:
    if key == "monitors":
        return (), "set monitors one field per variable, as MONITOR_MONITORS__NAME__FIELD"
    if key in Settings.model_fields:
        return (key,), None
    return (), _unknown(key.upper(), [f.upper() for f in _daemon_fields()], prefix=ENV_PREFIX)


def _unknown_variable(parts: list[str]) -> str:
    """An unknown name with a delimiter in it: a misspelt MONITORS, or a misplaced ``__``."""
    if difflib.get_close_matches(parts[0], ["monitors"], cutoff=0.75):
        rest = DELIMITER.join(parts[1:]).upper()
        return f"unknown setting; did you mean {ENV_PREFIX}MONITORS{DELIMITER}{rest}?"
    key = DELIMITER.join(parts).upper()
    return _unknown(key, [f.upper() for f in _daemon_fields()], prefix=ENV_PREFIX)


def _unknown(key: str, known: Sequence[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.7)
    return f"unknown setting; did you mean {prefix}{close[0]}?" if close else "unknown setting"


def _daemon_fields() -> list[str]:
    return [name for name in Settings.model_fields if name != "monitors"]


_HEADERS_EXAMPLE = '{"Accept": "text/html"}'


def _check_headers_json(value: str) -> str | None:
    # The value is never quoted back: header values are secret.
    try:
        decoded = json.loads(value)
    except json.JSONDecodeError as exc:
        return f"is not valid JSON ({exc.msg} at character {exc.pos + 1}); write {_HEADERS_EXAMPLE}"
    if not isinstance(decoded, dict):
        return f"must be a JSON object, such as {_HEADERS_EXAMPLE}"
    return None


@dataclass(frozen=True)
class EnvFileContent:
    """An env file as python-dotenv reads it (``dotenv_values(..., interpolate=False)``), with
    the line of each variable's last assignment and the lines it could not parse."""

    values: dict[str, str | None]
    lines: dict[str, int]
    unparsed: tuple[int, ...]


def parse_env_file(text: str) -> EnvFileContent:
    """Parse env-file text with python-dotenv's parser, keeping line numbers; never raises."""
    values: dict[str, str | None] = {}
    lines: dict[str, int] = {}
    unparsed: list[int] = []
    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.line + _leading_line_breaks(binding.original.string)
        if binding.error:
            unparsed.append(line)
        elif binding.key is not None:
            values[binding.key] = binding.value
            lines[binding.key] = line
    return EnvFileContent(values, lines, tuple(unparsed))


def _leading_line_breaks(text: str) -> int:
    # A binding starts with the blank lines before it; its key is on the line after them.
    blank = text[: len(text) - len(text.lstrip())]
    return len(re.findall(r"\r\n|\r|\n", blank))


def _read_env_file(cwd: Path, env_file: Path | None, environment: _Input) -> _Input:
    """The env file screened: the one named (which must exist), else settings.env if present."""
    named = environment.written.get(("env_file",))
    if env_file is not None:
        where, label = str(env_file), "--env-file"
    elif named is not None:
        where, label = str(named.raw), named.label
    elif (cwd / DEFAULT_ENV_FILE).exists():
        where, label = DEFAULT_ENV_FILE, DEFAULT_ENV_FILE
    else:
        return _Input(where=DEFAULT_ENV_FILE)
    path = cwd / where
    text, problem = _read_text(path)
    if text is None:
        return _Input(
            where=where, problems=[f"{label}: cannot read {where}: {problem}"], fatal=True
        )
    content = parse_env_file(text)
    screened = _screen_variables(content.values, where, content.lines)
    screened.path = path
    screened.problems[:0] = [
        f"{where}:{line}: cannot parse this line; write NAME=value" for line in content.unparsed
    ]
    return screened


def _read_text(path: Path) -> tuple[str | None, str]:
    """The file's UTF-8 text, or None and why it cannot be read."""
    try:
        return path.read_bytes().decode("utf-8"), ""
    except OSError as exc:
        return None, exc.strerror or type(exc).__name__
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text (byte {exc.start + 1})"


# --- The monitors file: [monitors.NAME] tables in TOML.


_FILE_LOC: Loc = ("monitors_file",)


def _read_monitors_file(cwd: Path, *sources: _Input) -> _Input:
    """The monitors file named by MONITOR_MONITORS_FILE (environment first), screened."""
    named = next((s.written[_FILE_LOC] for s in sources if _FILE_LOC in s.written), None)
    if named is None:
        return _Input(where="", toml=True)
    where = str(named.raw)
    text, problem = _read_text(cwd / where)
    if text is None:
        return _failed_input(where, f"{named.label}: cannot read {where}: {problem}")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return _failed_input(where, f"{where}: not valid TOML: {exc}")
    screened = _screen_monitors_table(data, where)
    screened.path = cwd / where
    return screened


def _failed_input(where: str, problem: str) -> _Input:
    return _Input(where=where, toml=True, problems=[problem], fatal=True)


def _screen_monitors_table(data: dict[str, Any], where: str) -> _Input:
    """Only ``[monitors.NAME]`` tables of known fields; names lower-cased, each once."""
    screened = _Input(where=where, toml=True)
    for key in data:
        if key != "monitors":
            screened.problems.append(
                f"{where}: {_quote_if_needed(key)}: {_misplaced_toml_key(key)}"
            )
    tables = data.get("monitors", {})
    if not isinstance(tables, dict):
        screened.problems.append(f"{where}: monitors: must be a table of [monitors.NAME] tables")
        return screened
    monitors: dict[str, dict[str, Any]] = {}
    for name, table in tables.items():
        fields = _screen_monitor_table(screened, name, table)
        if fields is not None:
            monitors[name.lower()] = fields
    screened.values = {"monitors": monitors} if monitors else {}
    return screened


def _table_label(where: str, name: str) -> str:
    """``monitors.toml: [monitors.api]``."""
    return f"{where}: {_table_header(name)}"


def _table_header(name: str) -> str:
    """``[monitors.api]``, the name quoted if TOML needs it quoted."""
    key = name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)
    return f"[monitors.{key}]"


def _misplaced_toml_key(key: str) -> str:
    if key.lower() in Settings.model_fields:
        return (
            "only [monitors.NAME] tables belong in this file;"
            f" set {ENV_PREFIX}{key.upper()} in the environment or the env file"
        )
    unknown = _unknown(key, ["monitors"])
    return unknown if "?" in unknown else f"{unknown}; only [monitors.NAME] tables belong here"


def _screen_monitor_table(screened: _Input, name: str, table: object) -> dict[str, Any] | None:
    """The known fields of one ``[monitors.NAME]`` table, or None if the table is unusable."""
    key, label = name.lower(), _table_label(screened.where, name)
    if key in screened.monitor_names:
        other = screened.monitor_names[key]
        screened.problems.append(
            f"{label}: the same monitor as {_table_header(other)} (names are case-insensitive)"
        )
        return None
    problem = check_monitor_name(key)
    if problem is None and isinstance(table, dict):
        screened.monitor_names[key] = name
        return _screen_monitor_fields(screened, key, label, table)
    screened.problems.append(f"{label}: {problem or 'must be a table of monitor fields'}")
    return None


def _screen_monitor_fields(
    screened: _Input, key: str, label: str, table: dict[str, Any]
) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for field_name, value in table.items():
        if field_name in Monitor.model_fields:
            fields[field_name] = value
            written = _Written(f"{label} {field_name}", value)
            screened.written[("monitors", key, field_name)] = written
        else:
            unknown = _unknown(field_name, list(Monitor.model_fields))
            screened.problems.append(f"{label} {_quote_if_needed(field_name)}: {unknown}")
    return fields


# --- Validation errors, traced back to the source whose value won.


def _describe_error(error: ErrorDetails, inputs: _Inputs) -> str:
    """One line: the variable as written, what is wrong, the value (masked if secret)."""
    loc = _setting_loc(tuple(str(part) for part in error["loc"]))
    label, written = _locate_error(loc, inputs)
    message = _explain(error)
    if written is not None and error["type"] != "missing":
        message += f", got {_show_value(written.raw, loc)}"
    return f"{label}: {message}"


def _setting_loc(loc: Loc) -> Loc:
    """The setting an error is about: ``("monitors", name, field)`` or a daemon field."""
    return loc[:3] if loc[:1] == ("monitors",) else loc[:1]


def _locate_error(loc: Loc, inputs: _Inputs) -> tuple[str, _Written | None]:
    for source in inputs:
        if loc in source.written:
            return source.written[loc].label, source.written[loc]
    if len(loc) >= 2:  # a monitor's missing field: named in the syntax that introduced it
        for source in inputs:
            if loc[1] in source.monitor_names:
                return source.label_for(loc), None
    return _Input(where="").label_for(loc) if loc else ENV_PREFIX + "MONITORS", None


_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "unknown setting",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "string_type": "must be a string",
    "path_type": "must be a path",
    "dict_type": "must be a mapping of names to values (a JSON object, or in TOML a table)",
    "model_type": "must be a table of monitor fields",
}


def _explain(error: ErrorDetails) -> str:
    """What is wrong and what is allowed, in our words (no "Value error," and no URL)."""
    kind, ctx = error["type"], error.get("ctx", {})
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind == "greater_than":
        return f"must be > {_render_value(ctx['gt'])}"
    if kind == "greater_than_equal":
        return f"must be >= {_render_value(ctx['ge'])}"
    if kind == "literal_error":
        expected = str(ctx["expected"]).replace("'", "").replace(" or ", ", ")
        return f"must be one of {expected}"
    return _MESSAGES.get(kind, error["msg"])


def _show_value(raw: object, loc: Loc) -> str:
    """A raw value for an error line: masked if secret, a URL's password masked, one line."""
    if _is_secret(loc):
        return MASK
    text = _render_value(raw)
    if loc[-1:] == ("url",):
        text = display_url(text)
    if len(text) > 80:
        text = text[:77] + "..."
    return _quote_if_needed(text) if text else '""'


def _is_secret(loc: Loc) -> bool:
    """Whether the setting at ``loc`` holds a secret (a SecretStr anywhere in its type)."""
    info = _field_info(loc)
    return info is not None and _has_secret(info.annotation)


def _field_info(loc: Loc) -> FieldInfo | None:
    if loc[:1] == ("monitors",):
        return Monitor.model_fields.get(loc[2]) if len(loc) > 2 else None
    return Settings.model_fields.get(loc[0]) if loc else None


def _has_secret(annotation: object) -> bool:
    return annotation is SecretStr or any(_has_secret(arg) for arg in get_args(annotation))


def _quote_if_needed(text: str) -> str:
    """The text as is if it reads unambiguously on one line, else as a JSON string (which
    escapes control characters, so no value can forge a line or drive a terminal)."""
    plain = text.isprintable() and text == text.strip()
    return text if plain and text[:1] not in ('"', "'") else json.dumps(text)


# ---------------------------------------------------------------------------------------------
# Rendering: the effective configuration, and the reference.


def render_config(settings: Settings) -> str:
    """The effective configuration as ``MONITOR_*=value`` lines, one per setting: every daemon
    setting, then every field of every monitor (by name). Secrets show as ``**********``, URL
    passwords are masked, an empty value means "not set", and a value that would not survive as
    a bare ``NAME=value`` line is shown as a JSON string.
    """
    env_file = settings.env_file if settings.env_file is not None else "none"
    lines = [
        "# monitor: the effective configuration; secrets are shown as " + MASK,
        "# an empty value means not set; values in double quotes are JSON strings",
        f"# env file read: {env_file}",
    ]
    for name in _daemon_fields():
        if name != "env_file":  # not settable in an env file: shown above as a comment
            lines.append(_render_line(ENV_PREFIX + name.upper(), getattr(settings, name), name))
    for monitor_name, monitor in sorted(settings.monitors.items()):
        lines += ["", f"# monitor {monitor_name}"]
        prefix = f"{ENV_PREFIX}MONITORS{DELIMITER}{monitor_name.upper()}{DELIMITER}"
        for name in Monitor.model_fields:
            lines.append(_render_line(prefix + name.upper(), getattr(monitor, name), name))
    return "\n".join(lines) + "\n"


def _render_line(variable: str, value: object, name: str) -> str:
    text = _render_value(value)
    if name == "url":
        text = display_url(text)
    return f"{variable}={_quote_if_needed(text) if text else ''}"


def _render_value(value: object) -> str:
    """A setting's value as an operator would write it; secrets masked."""
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, dict):
        return json.dumps({key: _render_value(item) for key, item in value.items()})
    if isinstance(value, re.Pattern):
        return str(value.pattern)
    return _render_scalar(value)


def _render_scalar(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _format_number(value)
    return str(value)


def _format_number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


# Defaults the models cannot state as a value.
_REFERENCE_DEFAULTS = {
    "env_file": f"`{DEFAULT_ENV_FILE}`",
    "timeout": f"`{DEFAULT_TIMEOUT:g}` or {DEFAULT_TIMEOUT_SHARE:.0%} of `interval`",
}


def reference_markdown() -> str:
    """The configuration reference, generated from the models' fields and descriptions: a
    table of the daemon's variables and a table of each monitor's fields, in Markdown."""
    lines = [
        "**Daemon settings**, in the environment or the env file (`settings.env`). Names are"
        " case-insensitive; an empty value is the same as not setting the variable; relative"
        " paths are relative to the working directory.",
        "",
        "| Variable | Default | Meaning |",
        "| --- | --- | --- |",
    ]
    for name in _daemon_fields():
        info = Settings.model_fields[name]
        lines.append(
            f"| `{ENV_PREFIX}{name.upper()}` | {_default_cell(name, info)} | {_cell(info)} |"
        )
    lines += [
        "",
        "**Monitor fields**, one variable each as `MONITOR_MONITORS__<NAME>__<FIELD>`, or as keys"
        " of a `[monitors.<name>]` table in the monitors file. A name is letters, digits, `_`"
        " and `-`, case-insensitive; the environment overrides the env file, which overrides the"
        " monitors file, field by field.",
        "",
        "| Variable | TOML key | Default | Meaning |",
        "| --- | --- | --- | --- |",
    ]
    for name, info in Monitor.model_fields.items():
        variable = f"`{ENV_PREFIX}MONITORS{DELIMITER}<NAME>{DELIMITER}{name.upper()}`"
        lines.append(f"| {variable} | `{name}` | {_default_cell(name, info)} | {_cell(info)} |")
    return "\n".join(lines) + "\n"


def _default_cell(name: str, info: FieldInfo) -> str:
    if name in _REFERENCE_DEFAULTS:
        return _REFERENCE_DEFAULTS[name]
    if info.is_required():
        return "required"
    default = info.get_default(call_default_factory=True)
    if default is None:
        return "not set"
    text = _render_value(default)
    return f"`{text}`" if text else "empty"


def _cell(info: FieldInfo) -> str:
    text = info.description or ""
    return text.replace("|", "\\|").replace("<", "&lt;")


def reference_section(text: str) -> str | None:
    """The part of ``text`` between the reference markers, or None if it has no markers."""
    start, end = text.find(REFERENCE_START), text.find(REFERENCE_END)
    if start == -1 or end < start:
        return None
    return text[start + len(REFERENCE_START) : end].strip("\n") + "\n"


def replace_reference(text: str) -> str:
    """``text`` with its reference section replaced by reference_markdown(); ValueError if it
    has no markers."""
    start, end = text.find(REFERENCE_START), text.find(REFERENCE_END)
    if start == -1 or end < start:
        raise ValueError(f"no {REFERENCE_START} ... {REFERENCE_END} markers")
    head, tail = text[: start + len(REFERENCE_START)], text[end:]
    return f"{head}\n\n{reference_markdown()}\n{tail}"


def main(argv: Sequence[str]) -> int:
    """``python -m monitor.settings [FILE]``: print the reference between its markers, or
    rewrite that section of FILE (such as README.md) in place."""
    if not argv:
        sys.stdout.write(f"{REFERENCE_START}\n\n{reference_markdown()}\n{REFERENCE_END}\n")
        return 0
    path = Path(argv[0])
    path.write_text(replace_reference(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
