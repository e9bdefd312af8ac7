"""Run one check: fetch, then judge what was fetched against the monitor's expectations.

``run_check`` is the one wrapper around every check: it owns the timestamps and the last-resort
catch, so every run yields exactly one CheckResult and nothing a target does reaches the caller
as an exception.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from loguru import logger

from monitor.results import CheckResult, Failure, Observation, Reason
from monitor.settings import Monitor


class Fetcher(Protocol):
    """What run_check needs of the network: ``monitor.http.Fetcher`` in production."""

    def fetch(self, monitor: Monitor, *, limit: float | None = None) -> Observation: ...


def utc_now() -> datetime:
    return datetime.now(UTC)


def judge(monitor: Monitor, observation: Observation) -> Failure | None:
    """The first expectation the observation fails, saying what was seen; None if it is up.

    Pure: it looks only at the observation, never at the network.
    """
    if observation.failure is not None:
        return observation.failure
    status = observation.status
    if status not in monitor.expect_status:
        phrase = f" ({observation.phrase})" if observation.phrase else ""
        return Failure(Reason.STATUS, f"{status} not in {monitor.expect_status}{phrase}")
    if monitor.expect_body is not None and monitor.expect_body.encode() not in observation.body:
        return Failure(
            Reason.BODY, f"{monitor.expect_body!r} not found in {_body_extent(observation)}"
        )
    regex = monitor.expect_body_regex
    if regex is not None and not regex.search(observation.body.decode("utf-8", "replace")):
        return Failure(Reason.BODY, f"/{regex.pattern}/ does not match {_body_extent(observation)}")
    return None


def _body_extent(observation: Observation) -> str:
    if observation.truncated:
        return f"the first {observation.size} B (body truncated)"
    return f"the body ({observation.size} B)"


def run_check(
    monitor: Monitor,
    fetcher: Fetcher,
    *,
    scheduled: datetime | None = None,
    limit: float | None = None,
    now: Callable[[], datetime] = utc_now,
) -> CheckResult:
    """Check ``monitor`` once. Never raises: target failures and our own bugs are in the result.

    ``scheduled`` is when the check was due (the scheduler knows; a one-off check has none);
    ``limit``, when given, shortens the monitor's deadline to that many seconds.
    """
    started = now()
    try:
        observation = fetcher.fetch(monitor, limit=limit)
        failure = judge(monitor, observation)
    except Exception as exc:
        logger.bind(monitor=monitor.name).opt(exception=True).error(
            "internal error while checking {}: {}", monitor.name, type(exc).__name__
        )
        observation = Observation(status=None, phrase="", size=0, truncated=False, elapsed=0.0)
        failure = Failure(Reason.INTERNAL, f"{type(exc).__name__}: {exc}")
    return CheckResult(
        monitor=monitor.name,
        method=monitor.method,
        url=monitor.url,
        status=observation.status,
        size=observation.size,
        elapsed=observation.elapsed,
        failure=failure,
        started=started,
        scheduled=scheduled,
        truncated=observation.truncated,
        phrase=observation.phrase,
    )
