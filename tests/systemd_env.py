"""A reader of environment files as systemd reads ``EnvironmentFile=``, for tests.

It follows the rules of systemd's env-file parser (src/basic/env-file.c, v254 and later) and the
name check systemd applies before it passes the variables to a service:

- Leading whitespace is skipped; a line whose first non-blank character is ``#`` or ``;`` is a
  comment (a comment never continues onto the next line).
- ``KEY=value``: whitespace after the key and before the value is dropped; a line without ``=``
  is ignored. There is no ``export`` keyword (``export A=1`` has the invalid key ``export A``) and
  no inline comment: ``A=1 # x`` sets ``1 # x``.
- Unquoted: a backslash escapes the next character (and is dropped); a backslash at the end of a
  line joins the next line; trailing whitespace that is not escaped is dropped.
- ``'single'``: everything literal up to the next ``'``, newlines included.
- ``"double"``: a backslash escapes ``"`` ``\\`` ``$`` and backquote; before a newline it joins
  the lines; before anything else it stays, with the character. Quoted parts and unquoted parts
  of one value are joined (``A="a"b`` sets ``ab``); blanks between them are dropped.
- No variable expansion. An unterminated quote runs to the end of the file.
- A key that is not a shell name (``[A-Za-z_][A-Za-z0-9_]*``) is ignored; the last assignment
  of a name wins.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from enum import Enum, auto
from pathlib import Path

WHITESPACE = " \t\n\r"
NEWLINE = "\n\r"
COMMENT_START = "#;"
DOUBLE_QUOTE_ESCAPABLE = '"\\`$'
VALID_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class State(Enum):
    LINE_START = auto()
    KEY = auto()
    VALUE_START = auto()
    BARE = auto()
    BARE_ESCAPE = auto()
    SINGLE = auto()
    DOUBLE = auto()
    DOUBLE_ESCAPE = auto()
    COMMENT = auto()


class Assignment:
    """One ``KEY=value`` being read: the key, the value, and where its trailing blanks begin."""

    def __init__(self) -> None:
        self.key: list[str] = []
        self.value: list[str] = []
        # Index in value where a run of unescaped blanks began; dropped if the value ends there.
        self.blank_from: int | None = None

    def add_bare(self, char: str) -> None:
        if char not in WHITESPACE:
            self.blank_from = None
        elif self.blank_from is None:
            self.blank_from = len(self.value)
        self.value.append(char)

    def finish(self) -> tuple[str, str]:
        end = len(self.value) if self.blank_from is None else self.blank_from
        return "".join(self.key).rstrip(WHITESPACE), "".join(self.value[:end])


def read_systemd_env_file(path: Path) -> dict[str, str]:
    """The variables systemd would set from ``EnvironmentFile=path`` (UTF-8 text)."""
    return parse_systemd_env(path.read_bytes().decode("utf-8"))


def parse_systemd_env(text: str) -> dict[str, str]:
    """The variables systemd would set from an environment file with this text."""
    variables: dict[str, str] = {}
    for key, value in scan_assignments(text):
        if VALID_NAME.fullmatch(key):
            variables[key] = value
    return variables


def scan_assignments(text: str) -> Iterator[tuple[str, str]]:
    """Every ``(key, value)`` in the text, keys unchecked, in order."""
    state = State.LINE_START
    current = Assignment()
    # systemd walks a C string: a NUL ends the file.
    for char in text.split("\0", 1)[0]:
        state, done = step(state, current, char)
        if done:
            yield current.finish()
        if state is State.LINE_START:
            current = Assignment()
    if state not in (State.LINE_START, State.KEY, State.COMMENT):
        yield current.finish()


def step(state: State, current: Assignment, char: str) -> tuple[State, bool]:
    """The state after ``char``, and whether it completed an assignment."""
    if state in (State.VALUE_START, State.BARE):
        return step_value(state, current, char)
    return STEPS[state](current, char), False


def step_line_start(current: Assignment, char: str) -> State:
    if char in COMMENT_START:
        return State.COMMENT
    if char in WHITESPACE:
        return State.LINE_START
    current.key.append(char)
    return State.KEY


def step_key(current: Assignment, char: str) -> State:
    if char in NEWLINE:  # a line without "=" sets nothing
        current.key.clear()
        return State.LINE_START
    if char == "=":
        return State.VALUE_START
    current.key.append(char)
    return State.KEY


def step_value(state: State, current: Assignment, char: str) -> tuple[State, bool]:
    """VALUE_START skips blanks and opens quotes; BARE collects an unquoted run."""
    if char in NEWLINE:
        return State.LINE_START, True
    if char == "\\":
        current.blank_from = None
        return State.BARE_ESCAPE, False
    if state is State.VALUE_START:
        if char == "'":
            return State.SINGLE, False
        if char == '"':
            return State.DOUBLE, False
        if char in WHITESPACE:
            return State.VALUE_START, False
    current.add_bare(char)
    return State.BARE, False


def step_bare_escape(current: Assignment, char: str) -> State:
    if char not in NEWLINE:  # an escaped newline joins the lines
        current.value.append(char)
    return State.BARE


def step_single(current: Assignment, char: str) -> State:
    if char == "'":
        return State.VALUE_START
    current.value.append(char)
    return State.SINGLE


def step_double(current: Assignment, char: str) -> State:
    if char == '"':
        return State.VALUE_START
    if char == "\\":
        return State.DOUBLE_ESCAPE
    current.value.append(char)
    return State.DOUBLE


def step_double_escape(current: Assignment, char: str) -> State:
    if char in DOUBLE_QUOTE_ESCAPABLE:
        current.value.append(char)
    elif char != "\n":  # like a shell: an unknown escape keeps its backslash
        current.value += ["\\", char]
    return State.DOUBLE


def step_comment(current: Assignment, char: str) -> State:
    # Since systemd v254 a backslash at the end of a comment does not continue it.
    return State.LINE_START if char in NEWLINE else State.COMMENT


STEPS: dict[State, Callable[[Assignment, str], State]] = {
    State.LINE_START: step_line_start,
    State.KEY: step_key,
    State.BARE_ESCAPE: step_bare_escape,
    State.SINGLE: step_single,
    State.DOUBLE: step_double,
    State.DOUBLE_ESCAPE: step_double_escape,
    State.COMMENT: step_comment,
}
