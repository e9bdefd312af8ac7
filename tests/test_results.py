import pytest

from monitor.results import Failure, Reason, escape_text


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("Service Unavailable", "Service Unavailable"),
        ("a\nb", "a\\nb"),
        ("a\r\nb", "a\\r\\nb"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("tab\there", "tab\\there"),
        ("back\\slash", "back\\\\slash"),
        ("\x00\x7f", "\\x00\\x7f"),
        ("\u009b2J", "\\u009b2J"),
        ("line\u2028sep", "line\\u2028sep"),
        ("caf\u00e9 \u2603", "caf\u00e9 \u2603"),
    ],
)
def test_escape_text_leaves_no_control_characters(text: str, escaped: str) -> None:
    assert escape_text(text) == escaped


def test_escape_text_is_unambiguous() -> None:
    # A literal backslash-n and a real newline must not log the same.
    assert escape_text("\\n") != escape_text("\n")


def test_failure_reads_as_code_then_detail() -> None:
    assert str(Failure(Reason.STATUS, "503 not in 200-399")) == "status 503 not in 200-399"
    assert str(Failure(Reason.TIMEOUT, "")) == "timeout"
    assert [r.value for r in Reason] == [
        "dns", "refused", "connect", "connect_timeout", "tls", "timeout",
        "status", "body", "redirects", "protocol", "internal",
    ]  # fmt: skip
