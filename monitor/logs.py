"""Loguru sinks: stderr, stdout and the rotating log file, as text or JSON.

The only module that calls ``logger.add``. Every text record passes through one formatter that
escapes its message, so text a target controls (reason phrases, error messages, redirect URLs)
can never end a line early, forge another record, or reach a terminal as an escape sequence.
JSON records are escaped by the JSON encoder.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from loguru import logger

from monitor.results import escape_text

if TYPE_CHECKING:
    from loguru import Message, Record

TEXT_FORMAT = (
    "{time:YYYY-MM-DD HH:mm:ss.SSS!UTC} | {level: <8} | {extra[monitor]} | {extra[_safe]}\n"
)
NO_MONITOR = "-"
# Libraries whose DEBUG records would cost more than the check they describe.
QUIET_LIBRARIES = {"urllib3": logging.WARNING, "apscheduler": logging.INFO}


@dataclass(frozen=True, slots=True)
class FileOptions:
    """Where the log file goes and how loguru rotates, retains and compresses it."""

    path: Path
    rotation: str
    retention: str | int
    compression: str


def format_text(record: Record) -> str:
    """Loguru format function: the one-line text layout, with the message escaped."""
    record["extra"]["_safe"] = escape_text(record["message"])
    record["extra"].setdefault("monitor", NO_MONITOR)
    if record["exception"] is not None:
        return TEXT_FORMAT + "{exception}\n"
    return TEXT_FORMAT


def format_json(record: Record) -> str:
    """Loguru format function for JSON mode: the ``text`` field holds just the message."""
    record["extra"].setdefault("monitor", NO_MONITOR)
    return "{message}\n"


def is_check_record(record: Record) -> bool:
    return "ok" in record["extra"]


def is_other_record(record: Record) -> bool:
    return "ok" not in record["extra"]


def is_not_up_check(record: Record) -> bool:
    return record["extra"].get("ok") is not True


def check_file_options(rotation: str, retention: str | int, compression: str) -> None:
    """Raise ValueError (loguru's own message) if loguru would refuse these file-sink options.

    Validated by loguru itself, so our configuration accepts exactly loguru's syntax. The sink is
    added with ``delay=True`` to a path that is never opened, and removed at once.
    """
    path = Path(tempfile.gettempdir()) / f"monitor-validate-{os.getpid()}.log"
    sink_id = logger.add(
        path,
        rotation=rotation or None,
        retention=retention or None,
        compression=compression or None,
        delay=True,
        catch=False,
    )
    logger.remove(sink_id)


def configure_logging(
    *,
    level: str,
    json: bool,
    stream: TextIO | None = None,
    check_stream: TextIO | None = None,
    file: FileOptions | None = None,
    forward: Callable[[Message], None] | None = None,
    stream_up_checks: bool = True,
) -> None:
    """Replace every loguru sink with ours and route stdlib logging into loguru.

    ``stream`` receives every record (the daemon's stderr), except the lines of checks that were
    up when ``stream_up_checks`` is false (the journal then carries what needs attention, the
    log file everything); ``check_stream``, when given, receives the check lines instead of
    ``stream`` (``monitor check`` prints them on stdout); ``file`` adds the rotating log file,
    which receives every record; ``forward`` receives every record as loguru's message, with
    ``.record`` attached (a worker hands them to the supervisor).
    """
    logger.remove()
    logger.configure(extra={"monitor": NO_MONITOR})
    if stream is not None:
        if check_stream is not None:
            stream_filter: Callable[[Record], bool] | None = is_other_record
        elif not stream_up_checks:
            stream_filter = is_not_up_check
        else:
            stream_filter = None
        logger.add(stream, filter=stream_filter, **_sink_options(level, json))
    if check_stream is not None:
        logger.add(check_stream, filter=is_check_record, **_sink_options(level, json))
    if file is not None:
        file.path.parent.mkdir(parents=True, exist_ok=True)
        logger.add(
            file.path,
            rotation=file.rotation or None,
            retention=file.retention or None,
            compression=file.compression or None,
            encoding="utf-8",
            **_sink_options(level, json),
        )
    if forward is not None:
        logger.add(forward, level=level, format="{message}", colorize=False, catch=False)
    route_stdlib_logging()


def _sink_options(level: str, json: bool) -> dict[str, Any]:
    """What every sink of ours shares. ``diagnose=False``: loguru would otherwise print the
    values of local variables in tracebacks, and a local may hold a password or a header."""
    return {
        "level": level,
        "format": format_json if json else format_text,
        "serialize": json,
        "colorize": False,
        "backtrace": False,
        "diagnose": False,
    }


class _ToLoguru(logging.Handler):
    """Hands stdlib records (urllib3, APScheduler) to loguru, keeping level and origin."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        frame: FrameType | None = sys._getframe(1)
        depth = 1
        while frame is not None and frame.f_code.co_filename == logging.__file__:
            frame = frame.f_back
            depth += 1
        logger.opt(depth=depth, exception=record.exc_info).log(level, record.getMessage())


def route_stdlib_logging() -> None:
    logging.basicConfig(handlers=[_ToLoguru()], level=logging.NOTSET, force=True)
    for name, library_level in QUIET_LIBRARIES.items():
        logging.getLogger(name).setLevel(library_level)
