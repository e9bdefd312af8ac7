"""The worker lifecycle: its states and the named edges between them.

A leaf: standard library only. Every edge is a pure function of the current lifecycle and the
time (a ``time.monotonic()`` reading the caller passes in), so each can be tested with a fake
clock. The supervisor performs the side effects (spawn, signal, log) around these edges::

                     ┌───────────────── spawned ──────────────┐
                     ▼                                        │
    EXITED ─spawned─► STARTING ─became_ready─► RUNNING        │
      ▲                 │                        │            │
      │                 │ exited                 │ exited     │
      │                 ├───────────────────► BACKOFF ────────┘
      │                 │ (the boot failed       │
      │                 ▼  too often)            │ stop_requested
      │               FATAL                      │
      ├──────────────────────────────────────────┘
      │
      └─exited─ STOPPING ◄─stop_requested─ STARTING, RUNNING

``kill_requested`` is not a state change: it sets the deadline after which the supervisor
escalates from SIGTERM to SIGKILL, in whatever state the worker is in. The process is then
reaped through the ordinary ``exited`` edge, so a killed worker backs off like a crashed one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


class WorkerState(enum.Enum):
    """Where a worker slot is in its life. The values appear in the supervisor's log lines."""

    STARTING = "starting"  # spawned; has not yet proved it runs (first heartbeat)
    RUNNING = "running"  # booted; its share is being checked
    BACKOFF = "backoff"  # exited unexpectedly; waiting to be spawned again
    STOPPING = "stopping"  # asked to stop; in-flight checks finishing
    EXITED = "exited"  # no process, and none wanted (never started, or stopped)
    FATAL = "fatal"  # cannot boot; the supervisor gives up (exit code 3)


class TransitionError(RuntimeError):
    """An edge was taken from a state that has no such edge: a bug in the supervisor."""


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """How long to wait before spawning a worker again, and when to give up.

    The delay starts at ``initial`` and doubles on each consecutive failure up to ``maximum``;
    a worker that ran for ``reset_after`` seconds before exiting starts again at ``initial``.
    ``max_boot_failures`` consecutive exits before becoming ready make the slot FATAL.
    """

    initial: float = 1.0
    maximum: float = 60.0
    reset_after: float = 60.0
    max_boot_failures: int = 3


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """One slot's lifecycle: its state, since when, and the timers that drive its next edge.

    ``delay`` is the backoff last waited (0 before any failure); ``restart_at`` is set in
    BACKOFF; ``kill_at`` is when SIGKILL follows SIGTERM, set by stop and kill requests.
    """

    state: WorkerState = WorkerState.EXITED
    since: float = 0.0
    delay: float = 0.0
    boot_failures: int = 0
    restart_at: float | None = None
    kill_at: float | None = None


def _require(life: Lifecycle, edge: str, *states: WorkerState) -> None:
    if life.state not in states:
        raise TransitionError(f"{edge} from {life.state.value}")


def spawned(life: Lifecycle, now: float) -> Lifecycle:
    """A process was started for the slot: EXITED or BACKOFF → STARTING."""
    _require(life, "spawned", WorkerState.EXITED, WorkerState.BACKOFF)
    return replace(life, state=WorkerState.STARTING, since=now, restart_at=None, kill_at=None)


def became_ready(life: Lifecycle, now: float) -> Lifecycle:
    """The worker's first heartbeat arrived: STARTING → RUNNING; boot failures are forgiven."""
    _require(life, "became_ready", WorkerState.STARTING)
    return replace(life, state=WorkerState.RUNNING, since=now, boot_failures=0)


def next_delay(life: Lifecycle, now: float, policy: BackoffPolicy) -> float:
    """The backoff before the next spawn if the worker exited now.

    Doubles from ``policy.initial`` to ``policy.maximum``; a worker that was RUNNING for at
    least ``policy.reset_after`` seconds earned a fresh start at ``policy.initial``.
    """
    healthy = life.state is WorkerState.RUNNING and now - life.since >= policy.reset_after
    if healthy or life.delay == 0.0:
        return policy.initial
    return min(life.delay * 2, policy.maximum)


def exited(life: Lifecycle, now: float, policy: BackoffPolicy) -> Lifecycle:
    """The slot's process exited (and was reaped).

    STOPPING → EXITED: it was asked to. RUNNING → BACKOFF: a crash (or a kill for lack of
    progress). STARTING → BACKOFF, or FATAL once ``policy.max_boot_failures`` consecutive
    boots have failed.
    """
    _require(life, "exited", WorkerState.STARTING, WorkerState.RUNNING, WorkerState.STOPPING)
    if life.state is WorkerState.STOPPING:
        return replace(life, state=WorkerState.EXITED, since=now, kill_at=None)
    failures = life.boot_failures + (1 if life.state is WorkerState.STARTING else 0)
    if failures >= policy.max_boot_failures:
        return replace(
            life, state=WorkerState.FATAL, since=now, boot_failures=failures, kill_at=None
        )
    delay = next_delay(life, now, policy)
    return Lifecycle(
        state=WorkerState.BACKOFF,
        since=now,
        delay=delay,
        boot_failures=failures,
        restart_at=now + delay,
    )


def stop_requested(life: Lifecycle, now: float, grace: float) -> Lifecycle:
    """The slot is to stop for good, its process within ``grace`` seconds (then SIGKILL).

    STARTING, RUNNING → STOPPING. BACKOFF → EXITED (there is no process to stop). STOPPING stays.
    The kill deadline is never postponed: the earlier one wins (a second Ctrl-C passes a grace
    of 0). EXITED and FATAL stay as they are.
    """
    if life.state in (WorkerState.STARTING, WorkerState.RUNNING):
        # A kill already under way (the worker stopped making progress) keeps its deadline.
        stopping = replace(life, state=WorkerState.STOPPING, since=now)
        return kill_requested(stopping, now, grace)
    if life.state is WorkerState.BACKOFF:
        return replace(life, state=WorkerState.EXITED, since=now, restart_at=None)
    if life.state is WorkerState.STOPPING:
        return kill_requested(life, now, grace)
    return life


def kill_requested(life: Lifecycle, now: float, grace: float) -> Lifecycle:
    """SIGTERM was sent; SIGKILL follows after ``grace`` seconds unless an earlier kill is due.

    Only a slot with a process (STARTING, RUNNING, STOPPING) can be killed.
    """
    _require(
        life, "kill_requested", WorkerState.STARTING, WorkerState.RUNNING, WorkerState.STOPPING
    )
    deadline = now + grace if life.kill_at is None else min(life.kill_at, now + grace)
    return replace(life, kill_at=deadline)


def has_process(life: Lifecycle) -> bool:
    """Whether the slot has (or should have) a live process to watch and reap."""
    return life.state in (WorkerState.STARTING, WorkerState.RUNNING, WorkerState.STOPPING)


def restart_due(life: Lifecycle, now: float) -> bool:
    """Whether a slot in BACKOFF has waited long enough to be spawned again."""
    return (
        life.state is WorkerState.BACKOFF and life.restart_at is not None and now >= life.restart_at
    )


def kill_due(life: Lifecycle, now: float) -> bool:
    """Whether the slot's process has outlived its SIGTERM grace and must get SIGKILL."""
    return has_process(life) and life.kill_at is not None and now >= life.kill_at
