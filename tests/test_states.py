"""The worker lifecycle's edges, one by one, on a fake clock (plain floats)."""

import pytest

from monitor.states import (
    BackoffPolicy,
    Lifecycle,
    TransitionError,
    WorkerState,
    became_ready,
    exited,
    has_process,
    kill_due,
    kill_requested,
    next_delay,
    restart_due,
    spawned,
    stop_requested,
)

S = WorkerState
POLICY = BackoffPolicy(initial=1.0, maximum=60.0, reset_after=60.0, max_boot_failures=3)


def life(state: WorkerState, **fields: float | int | None) -> Lifecycle:
    return Lifecycle(state=state, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("state", [S.EXITED, S.BACKOFF])
def test_spawned_starts_the_slot(state: WorkerState) -> None:
    after = spawned(life(state, restart_at=5.0), now=10.0)
    assert after.state is S.STARTING
    assert after.since == 10.0
    assert after.restart_at is None
    assert after.kill_at is None


@pytest.mark.parametrize("state", [S.STARTING, S.RUNNING, S.STOPPING, S.FATAL])
def test_spawned_from_a_slot_with_a_process_or_fatal_is_a_bug(state: WorkerState) -> None:
    with pytest.raises(TransitionError, match="spawned from"):
        spawned(life(state), now=0.0)


def test_became_ready_runs_and_forgives_boot_failures() -> None:
    after = became_ready(life(S.STARTING, boot_failures=2, since=1.0), now=3.0)
    assert (after.state, after.since, after.boot_failures) == (S.RUNNING, 3.0, 0)


@pytest.mark.parametrize("state", [S.RUNNING, S.BACKOFF, S.STOPPING, S.EXITED, S.FATAL])
def test_became_ready_only_from_starting(state: WorkerState) -> None:
    with pytest.raises(TransitionError):
        became_ready(life(state), now=0.0)


@pytest.mark.parametrize(
    ("before", "now", "expected"),
    [
        (life(S.RUNNING, since=0.0, delay=0.0), 5.0, 1.0),  # first failure
        (life(S.RUNNING, since=0.0, delay=1.0), 5.0, 2.0),  # doubles
        (life(S.STARTING, since=0.0, delay=8.0), 1.0, 16.0),  # a failed boot doubles too
        (life(S.RUNNING, since=0.0, delay=32.0), 5.0, 60.0),  # capped
        (life(S.RUNNING, since=0.0, delay=60.0), 5.0, 60.0),
        (life(S.RUNNING, since=0.0, delay=60.0), 59.9, 60.0),  # not healthy long enough
        (life(S.RUNNING, since=0.0, delay=60.0), 60.0, 1.0),  # healthy 60 s: reset
    ],
)
def test_next_delay_doubles_to_the_cap_and_resets_after_a_healthy_run(
    before: Lifecycle, now: float, expected: float
) -> None:
    assert next_delay(before, now, POLICY) == expected


def test_exited_while_running_backs_off() -> None:
    after = exited(life(S.RUNNING, since=0.0, delay=2.0, kill_at=9.0), now=10.0, policy=POLICY)
    assert after.state is S.BACKOFF
    assert after.delay == 4.0
    assert after.restart_at == 14.0
    assert after.kill_at is None
    assert after.boot_failures == 0


def test_exited_while_starting_counts_a_boot_failure() -> None:
    after = exited(life(S.STARTING, boot_failures=1, delay=1.0), now=10.0, policy=POLICY)
    assert (after.state, after.boot_failures, after.restart_at) == (S.BACKOFF, 2, 12.0)


def test_exited_while_starting_too_often_is_fatal() -> None:
    after = exited(life(S.STARTING, boot_failures=2, delay=2.0), now=10.0, policy=POLICY)
    assert after.state is S.FATAL
    assert after.boot_failures == 3
    assert after.restart_at is None
    assert not restart_due(after, now=1e9)


def test_a_crash_after_running_does_not_count_towards_fatal() -> None:
    after = exited(life(S.RUNNING, boot_failures=0, delay=4.0), now=10.0, policy=POLICY)
    assert after.state is S.BACKOFF
    assert after.boot_failures == 0


def test_exited_while_stopping_is_exited() -> None:
    after = exited(life(S.STOPPING, kill_at=5.0), now=3.0, policy=POLICY)
    assert (after.state, after.since, after.kill_at) == (S.EXITED, 3.0, None)


@pytest.mark.parametrize("state", [S.BACKOFF, S.EXITED, S.FATAL])
def test_exited_without_a_process_is_a_bug(state: WorkerState) -> None:
    with pytest.raises(TransitionError):
        exited(life(state), now=0.0, policy=POLICY)


@pytest.mark.parametrize("state", [S.STARTING, S.RUNNING])
def test_stop_requested_stops_with_a_kill_deadline(state: WorkerState) -> None:
    after = stop_requested(life(state), now=10.0, grace=5.0)
    assert (after.state, after.since, after.kill_at) == (S.STOPPING, 10.0, 15.0)


def test_stop_requested_keeps_an_earlier_kill_under_way() -> None:
    killing = kill_requested(life(S.RUNNING), now=10.0, grace=2.0)
    assert stop_requested(killing, now=10.5, grace=30.0).kill_at == 12.0


def test_stop_requested_in_backoff_exits_at_once() -> None:
    after = stop_requested(life(S.BACKOFF, restart_at=12.0), now=10.0, grace=5.0)
    assert (after.state, after.restart_at) == (S.EXITED, None)
    assert not has_process(after)


def test_stop_requested_again_only_brings_the_kill_forward() -> None:
    stopping = stop_requested(life(S.RUNNING), now=10.0, grace=5.0)
    assert stop_requested(stopping, now=11.0, grace=0.0).kill_at == 11.0
    assert stop_requested(stopping, now=11.0, grace=30.0).kill_at == 15.0


@pytest.mark.parametrize("state", [S.EXITED, S.FATAL])
def test_stop_requested_without_a_process_changes_nothing(state: WorkerState) -> None:
    before = life(state)
    assert stop_requested(before, now=1.0, grace=1.0) == before


def test_kill_requested_sets_the_deadline_and_keeps_the_state() -> None:
    after = kill_requested(life(S.RUNNING, since=3.0), now=10.0, grace=2.0)
    assert (after.state, after.since, after.kill_at) == (S.RUNNING, 3.0, 12.0)
    assert not kill_due(after, now=11.9)
    assert kill_due(after, now=12.0)


def test_kill_requested_never_postpones_an_earlier_kill() -> None:
    assert kill_requested(life(S.STOPPING, kill_at=11.0), now=10.0, grace=5.0).kill_at == 11.0


@pytest.mark.parametrize("state", [S.BACKOFF, S.EXITED, S.FATAL])
def test_kill_requested_without_a_process_is_a_bug(state: WorkerState) -> None:
    with pytest.raises(TransitionError):
        kill_requested(life(state), now=0.0, grace=1.0)


def test_restart_due_after_the_backoff_delay() -> None:
    backoff = exited(life(S.RUNNING), now=10.0, policy=POLICY)
    assert not restart_due(backoff, now=10.99)
    assert restart_due(backoff, now=11.0)


def test_a_worker_that_crashes_repeatedly_backs_off_one_two_four_seconds() -> None:
    current, now, delays = Lifecycle(), 0.0, []
    for _ in range(8):
        current = became_ready(spawned(current, now), now)
        now += 0.5  # crashes soon after booting
        current = exited(current, now, POLICY)
        delays.append(current.delay)
        assert current.restart_at is not None
        now = current.restart_at
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
