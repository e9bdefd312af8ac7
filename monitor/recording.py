"""Sinks for check results. For now: the log line, one per check."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loguru import logger

from monitor.results import CheckResult
from monitor.settings import display_url

if TYPE_CHECKING:
    from loguru import Record


def describe_result(result: CheckResult) -> str:
    """The log line's message: ``GET http://example.com 200 648 B 0.067 s up``.

    A down check ends with ``down reason=<code> <what was seen>``. Escaping of server-controlled
    text happens in the log formatter, for every record alike.
    """
    status = "-" if result.status is None else str(result.status)
    size = f"{result.size} B (truncated)" if result.truncated else f"{result.size} B"
    head = f"{result.method} {display_url(result.url)} {status} {size} {result.elapsed:.3f} s"
    if result.failure is None:
        return f"{head} up"
    return f"{head} down reason={result.failure}"


def result_fields(result: CheckResult) -> dict[str, Any]:
    """The structured fields of a check's record (``record.extra`` in JSON mode)."""
    return {
        "monitor": result.monitor,
        "method": result.method,
        "url": display_url(result.url),
        "status": result.status,
        "bytes": result.size,
        "truncated": result.truncated,
        "elapsed": round(result.elapsed, 6),
        "ok": result.ok,
        "reason": result.reason,
        "code": None if result.failure is None else str(result.failure.reason),
        "scheduled": None if result.scheduled is None else result.scheduled.isoformat(),
        "started": result.started.isoformat(),
    }


def log_result(result: CheckResult) -> None:
    """Write the check's one line: INFO when up, WARNING when down.

    The line is stamped with the time the check ended, not the time it was written: a worker's
    results reach the supervisor's log a little later, in batches.
    """
    level = "INFO" if result.ok else "WARNING"
    ended = result.started.timestamp() + result.elapsed

    def stamp(record: Record) -> None:
        # Through the record's own class: loguru's datetime knows its format tokens.
        record["time"] = record["time"].fromtimestamp(ended, tz=record["time"].tzinfo)

    logger.bind(**result_fields(result)).patch(stamp).log(level, describe_result(result))
