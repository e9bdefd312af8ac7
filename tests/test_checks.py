import re
from datetime import UTC, datetime

import pytest

from monitor.checks import judge, run_check
from monitor.results import Failure, Observation, Reason
from monitor.settings import Monitor, make_monitor


def observe(status: int | None = 200, body: bytes = b"", **fields: object) -> Observation:
    values: dict[str, object] = {
        "status": status,
        "phrase": "OK",
        "size": len(body),
        "truncated": False,
        "elapsed": 0.01,
        "body": body,
    }
    values.update(fields)
    return Observation(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "observation", "expected"),
    [
        ({}, observe(200), None),
        ({}, observe(399), None),
        ({}, observe(404, phrase="Not Found"), "status 404 not in 200-399 (Not Found)"),
        ({}, observe(503, phrase=""), "status 503 not in 200-399"),
        ({"expect_status": "200,204"}, observe(204), None),
        (
            {"expect_status": "200,204"},
            observe(302, phrase="Found"),
            "status 302 not in 200,204 (Found)",
        ),
        ({"expect_status": "500-599"}, observe(503), None),
        ({"expect_body": "healthy"}, observe(200, b"all healthy here"), None),
        (
            {"expect_body": "healthy"},
            observe(200, b"degraded"),
            "body 'healthy' not found in the body (8 B)",
        ),
        (
            {"expect_body": "healthy"},
            observe(200, b"xxxx", truncated=True),
            "body 'healthy' not found in the first 4 B (body truncated)",
        ),
        ({"expect_body_regex": r"version \d+"}, observe(200, b"version 42"), None),
        (
            {"expect_body_regex": r"^ok$"},
            observe(200, b"not ok"),
            "body /^ok$/ does not match the body (6 B)",
        ),
        ({"expect_body": "h\u00e9"}, observe(200, "h\u00e9".encode()), None),
        # A status failure is reported before a body failure: it is the first thing wrong.
        ({"expect_body": "x"}, observe(500, b""), "status 500 not in 200-399 (OK)"),
    ],
)
def test_judge_reports_the_first_failed_expectation(
    fields: dict[str, object], observation: Observation, expected: str | None
) -> None:
    monitor = make_monitor("m", url="http://127.0.0.1/", **fields)
    failure = judge(monitor, observation)
    assert (None if failure is None else str(failure)) == expected


def test_judge_passes_a_network_failure_through() -> None:
    failure = Failure(Reason.REFUSED, "connection refused by 127.0.0.1:1")
    monitor = make_monitor("m", url="http://127.0.0.1:1/", expect_body="x")
    observation = observe(None, failure=failure)
    assert judge(monitor, observation) is failure


class FakeFetcher:
    def __init__(self, observation: Observation | None = None, error: Exception | None = None):
        self.observation = observation
        self.error = error
        self.calls: list[Monitor] = []
        self.limits: list[float | None] = []

    def fetch(self, monitor: Monitor, *, limit: float | None = None) -> Observation:
        self.calls.append(monitor)
        self.limits.append(limit)
        if self.error is not None:
            raise self.error
        assert self.observation is not None
        return self.observation


FIXED = datetime(2026, 12, 3, 21, 0, tzinfo=UTC)


def test_run_check_builds_the_result_from_the_observation() -> None:
    monitor = make_monitor("api", url="http://127.0.0.1:9/health", method="HEAD")
    fetcher = FakeFetcher(observe(204, b"", phrase="No Content", elapsed=0.25))
    result = run_check(monitor, fetcher, scheduled=FIXED, now=lambda: FIXED)
    assert fetcher.calls == [monitor]
    assert (result.monitor, result.method, result.url) == ("api", "HEAD", monitor.url)
    assert (result.status, result.size, result.elapsed, result.ok) == (204, 0, 0.25, True)
    assert (result.scheduled, result.started, result.reason) == (FIXED, FIXED, None)


def test_run_check_turns_a_bug_into_an_internal_failure() -> None:
    monitor = make_monitor("api", url="http://127.0.0.1:9/")
    result = run_check(monitor, FakeFetcher(error=KeyError("boom")), now=lambda: FIXED)
    assert not result.ok
    assert result.failure is not None
    assert result.failure.reason is Reason.INTERNAL
    assert re.fullmatch(r"internal KeyError: 'boom'", str(result.failure))
