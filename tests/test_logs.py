import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from loguru import logger

from monitor.logs import FileOptions, configure_logging
from monitor.recording import describe_result, log_result
from monitor.results import CheckResult, Failure, Reason

STARTED = datetime(2026, 12, 3, 21, 0, 0, 123000, tzinfo=UTC)
LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \| (?P<level>\w+) *\| (?P<monitor>\S+) \| (?P<msg>.*)"
)


@pytest.fixture(autouse=True)
def _reset_loguru() -> Iterator[None]:
    yield
    logger.remove()
    logging.basicConfig(handlers=[], force=True)


def make_result(**fields: object) -> CheckResult:
    values: dict[str, object] = {
        "monitor": "example",
        "method": "GET",
        "url": "http://example.com",
        "status": 200,
        "size": 648,
        "elapsed": 0.0671,
        "failure": None,
        "started": STARTED,
    }
    values.update(fields)
    return CheckResult(**values)  # type: ignore[arg-type]


def test_an_up_check_reads_as_in_the_design() -> None:
    stream = io.StringIO()
    configure_logging(level="INFO", json=False, stream=stream)
    log_result(make_result())
    match = LINE.fullmatch(stream.getvalue().rstrip("\n"))
    assert match is not None, stream.getvalue()
    assert match["level"] == "INFO"
    assert match["monitor"] == "example"
    assert match["msg"] == "GET http://example.com 200 648 B 0.067 s up"
    # Stamped when the check ended (started + elapsed), not when the line was written.
    assert stream.getvalue().startswith("2026-12-03 21:00:00.190 | INFO")


def test_a_down_check_logs_a_warning_with_its_reason() -> None:
    stream = io.StringIO()
    configure_logging(level="INFO", json=False, stream=stream)
    failure = Failure(Reason.TIMEOUT, "after 5 s waiting for headers")
    log_result(make_result(status=None, size=0, elapsed=5.0004, failure=failure))
    match = LINE.fullmatch(stream.getvalue().rstrip("\n"))
    assert match is not None
    assert match["level"] == "WARNING"
    assert match["msg"] == (
        "GET http://example.com - 0 B 5.000 s down reason=timeout after 5 s waiting for headers"
    )


def test_a_truncated_body_says_so() -> None:
    text = describe_result(make_result(size=1048576, truncated=True))
    assert "1048576 B (truncated)" in text


def test_server_text_cannot_forge_a_line_or_reach_the_terminal() -> None:
    phrase = "Oops\x1b[2K\r2026-12-03 21:00:00.000 | INFO     | example | GET / 200 1 B 0.001 s up"
    failure = Failure(Reason.STATUS, f"503 not in 200-399 ({phrase})")
    stream = io.StringIO()
    configure_logging(level="INFO", json=False, stream=stream)
    log_result(make_result(status=503, failure=failure, phrase=phrase))
    output = stream.getvalue()
    assert output.count("\n") == 1
    assert "\x1b" not in output
    assert "\r" not in output
    assert "Oops\\x1b[2K\\r2026-12-03" in output


def test_json_mode_carries_the_fields_in_record_extra() -> None:
    stream = io.StringIO()
    configure_logging(level="INFO", json=True, stream=stream)
    scheduled = datetime(2026, 12, 3, 21, 0, tzinfo=UTC)
    failure = Failure(Reason.STATUS, "503 not in 200-399")
    log_result(make_result(status=503, failure=failure, scheduled=scheduled))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])["record"]
    extra = record["extra"]
    assert record["level"]["name"] == "WARNING"
    assert extra == {
        "monitor": "example",
        "method": "GET",
        "url": "http://example.com",
        "status": 503,
        "bytes": 648,
        "truncated": False,
        "elapsed": 0.0671,
        "ok": False,
        "reason": "status 503 not in 200-399",
        "code": "status",
        "scheduled": "2026-12-03T21:00:00+00:00",
        "started": "2026-12-03T21:00:00.123000+00:00",
    }


def test_json_mode_escapes_control_characters() -> None:
    stream = io.StringIO()
    configure_logging(level="INFO", json=True, stream=stream)
    failure = Failure(Reason.STATUS, "503 not in 200-399 (a\nb\x1b)")
    log_result(make_result(status=503, failure=failure))
    output = stream.getvalue()
    assert output.count("\n") == 1
    assert "\x1b" not in output
    assert json.loads(output)["record"]["extra"]["reason"].endswith("(a\nb\x1b)")


def test_check_lines_and_other_records_can_go_to_separate_streams() -> None:
    checks, others = io.StringIO(), io.StringIO()
    configure_logging(level="INFO", json=False, stream=others, check_stream=checks)
    log_result(make_result())
    logger.warning("verify_tls is off for example")
    assert "200 648 B" in checks.getvalue()
    assert "verify_tls" not in checks.getvalue()
    assert "verify_tls is off" in others.getvalue()
    assert "200 648 B" not in others.getvalue()


def test_stdlib_logging_is_routed_into_loguru() -> None:
    stream = io.StringIO()
    configure_logging(level="INFO", json=False, stream=stream)
    logging.getLogger("apscheduler.scheduler").warning("Run time of job was missed by 0:00:01")
    logging.getLogger("urllib3.connectionpool").info("debug chatter that costs per check")
    output = stream.getvalue()
    assert "WARNING  | - | Run time of job was missed by 0:00:01" in output
    assert "chatter" not in output


def test_the_level_filters(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging(level="WARNING", json=False, stream=stream)
    log_result(make_result())
    assert stream.getvalue() == ""


def test_the_file_sink_writes_the_same_line(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "monitor.log"
    options = FileOptions(path=path, rotation="1 MB", retention=3, compression="")
    configure_logging(level="INFO", json=False, file=options)
    log_result(make_result())
    logger.remove()
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("| example | GET http://example.com 200 648 B 0.067 s up")


def test_a_traceback_in_the_log_file_shows_no_local_values(tmp_path: Path) -> None:
    path = tmp_path / "monitor.log"
    options = FileOptions(path=path, rotation="1 MB", retention=3, compression="")
    configure_logging(level="INFO", json=False, file=options)
    authorization = "Basic c2VjcmV0LXBhc3N3b3Jk"
    try:
        # With loguru's diagnose on, this line would be shown with the variable's value.
        raise RuntimeError("a bug" if authorization else "")
    except RuntimeError:
        logger.exception("internal error with {} bytes of credentials", len(authorization))
    logger.remove()
    text = path.read_text()
    assert "RuntimeError: a bug" in text
    assert authorization not in text
