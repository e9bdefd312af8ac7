"""The grid, the pool size, and a share's schedule on a real BackgroundScheduler."""

import io
import threading
import time
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from monitor.scheduling import (
    GRID_EPOCH,
    NEXT_DUE_GUARD,
    GridTrigger,
    Schedule,
    check_limit,
    count_missed,
    grid_anchor,
    grid_index_at_or_before,
    grid_offset,
    grid_point,
    make_trigger,
    pool_size,
)
from monitor.settings import Monitor, make_monitor

NOW = datetime(2026, 12, 3, 21, 0, 0, tzinfo=UTC)


def monitor(name: str, interval: float = 0.2, **fields: object) -> Monitor:
    return make_monitor(name, url=f"http://127.0.0.1:9/{name}", interval=interval, **fields)


def wait_for(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition still false at the deadline"
        time.sleep(0.01)


class Recorder:
    """A check that records (name, scheduled, started) and can be held until released."""

    def __init__(self, hold: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.runs: list[tuple[str, datetime, datetime]] = []
        self.finished: list[tuple[str, datetime]] = []
        self.hold = hold
        self.release = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, monitor: Monitor, scheduled: datetime) -> None:
        with self.lock:
            self.runs.append((monitor.name, scheduled, datetime.now(UTC)))
        if monitor.name in self.hold:
            self.release.wait(10)
        with self.lock:
            self.finished.append((monitor.name, scheduled))

    def due_times(self, name: str) -> list[datetime]:
        with self.lock:
            return [due for who, due, _ in self.runs if who == name]


# The grid.


def test_the_offset_is_stable_and_within_the_interval() -> None:
    assert grid_offset("api", 30.0) == grid_offset("api", 30.0)
    assert grid_offset("api", 30.0) != grid_offset("web", 30.0)
    for name in ("a", "b", "api", "x" * 200, "ünïcode"):
        assert 0.0 <= grid_offset(name, 7.5) < 7.5


def test_a_thousand_first_runs_are_spread_over_the_interval() -> None:
    offsets = sorted(grid_offset(f"monitor{i}", 5.0) for i in range(1000))
    gaps = [b - a for a, b in pairwise(offsets)]
    # Uniform offsets leave a largest gap of about ln(1000)/1000 of the interval (0.7 %).
    assert max(gaps) < 0.02 * 5.0
    assert offsets[0] < 0.02 * 5.0
    assert offsets[-1] > 0.98 * 5.0


@pytest.mark.parametrize("interval", [0.2, 1.0, 1 / 3, 5.0, 86400.0])
def test_grid_index_at_or_before_is_exact_at_and_around_grid_points(interval: float) -> None:
    anchor = grid_anchor("m", interval)
    index = grid_index_at_or_before(anchor, interval, NOW)
    point = grid_point(anchor, interval, index)
    assert point <= NOW < grid_point(anchor, interval, index + 1)
    assert grid_index_at_or_before(anchor, interval, point) == index
    assert grid_index_at_or_before(anchor, interval, point - timedelta(microseconds=1)) == index - 1


@pytest.mark.parametrize("interval", [0.2, 1 / 3, 5.0, 7.7])
def test_the_first_fire_time_is_the_next_grid_point(interval: float) -> None:
    trigger = GridTrigger(interval, grid_anchor("m", interval))
    first = trigger.get_next_fire_time(None, NOW)
    assert NOW <= first < NOW + timedelta(seconds=interval)
    assert first == grid_point(
        trigger.anchor, interval, grid_index_at_or_before(trigger.anchor, interval, first)
    )


def test_fire_times_do_not_drift_over_a_million_intervals() -> None:
    interval = 1 / 3  # not a whole number of microseconds: adding it up would drift
    trigger = GridTrigger(interval, grid_anchor("m", interval))
    fire = trigger.get_next_fire_time(None, NOW)
    start = grid_index_at_or_before(trigger.anchor, interval, fire)
    for _ in range(1000):
        fire = trigger.get_next_fire_time(fire, fire)
    assert fire == grid_point(trigger.anchor, interval, start + 1000)
    far = grid_point(trigger.anchor, interval, start + 1_000_000)
    assert trigger.get_next_fire_time(far, far) == grid_point(
        trigger.anchor, interval, start + 1_000_001
    )
    expected = GRID_EPOCH + timedelta(
        seconds=grid_offset("m", interval) + (start + 1_000_001) * interval
    )
    assert abs((trigger.get_next_fire_time(far, far) - expected).total_seconds()) < 1e-5


def test_the_grid_is_the_same_for_a_trigger_made_later() -> None:
    first = make_trigger(monitor("m", interval=5.0))
    later = make_trigger(monitor("m", interval=5.0))
    a = first.get_next_fire_time(None, NOW)
    b = later.get_next_fire_time(None, NOW + timedelta(hours=7, seconds=1.234))
    assert (b - a).total_seconds() % 5.0 == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("gap", "missed"), [(1.0, 0), (2.0, 1), (5.0, 4), (0.0, 0), (2.0000004, 1)]
)
def test_count_missed(gap: float, missed: int) -> None:
    assert count_missed(NOW, NOW + timedelta(seconds=gap), 1.0) == missed


# The pool.


def test_pool_size_override_wins() -> None:
    assert pool_size([monitor("a")], override=7) == 7


def test_pool_size_of_an_empty_share_is_one() -> None:
    assert pool_size([]) == 1


def test_pool_size_never_exceeds_one_thread_per_monitor() -> None:
    share = [monitor(f"m{i}", interval=1.0, timeout=1.0) for i in range(50)]
    assert pool_size(share) == 50


def test_pool_size_follows_littles_law_with_headroom() -> None:
    # 400 monitors, each in flight a tenth of the time if it hits its deadline: 40 on average.
    share = [monitor(f"m{i}", interval=10.0, timeout=1.0) for i in range(400)]
    size = pool_size(share)
    assert 40 + 3 * 40**0.5 < size <= 40 + 3 * 40**0.5 + 5


# The schedule, for real.


def test_checks_run_on_their_grid_points_on_time() -> None:
    check = Recorder()
    beats: list[float] = []
    schedule = Schedule(check, beat=lambda: beats.append(time.monotonic()), threads=4)
    monitors = {name: monitor(name, interval=0.2) for name in ("a", "b", "c")}
    schedule.start(monitors)
    try:
        wait_for(lambda: all(len(check.due_times(n)) >= 4 for n in monitors))
    finally:
        schedule.stop()
    for name, mon in monitors.items():
        dues = check.due_times(name)
        anchor = grid_anchor(name, mon.interval)
        for due in dues:
            assert due.tzinfo is not None
            assert due == grid_point(
                anchor, mon.interval, grid_index_at_or_before(anchor, mon.interval, due)
            )
        steps = [(b - a).total_seconds() for a, b in pairwise(dues)]
        assert steps == pytest.approx([0.2] * len(steps), abs=1e-6)
    lateness = sorted((started - due).total_seconds() for _, due, started in check.runs)
    assert lateness[len(lateness) // 2] < 0.02
    assert lateness[-1] < 0.25
    assert len(beats) >= len(check.finished)  # each check proves progress, and so does the tick
    assert schedule.stats.runs == len(check.runs)
    assert schedule.stats.late == schedule.stats.skipped == schedule.stats.coalesced == 0


def test_the_tick_beats_without_any_monitor() -> None:
    beats: list[float] = []
    schedule = Schedule(Recorder(), beat=lambda: beats.append(time.monotonic()), threads=1)
    schedule.start({})
    try:
        wait_for(lambda: len(beats) >= 2, timeout=3.0)
    finally:
        schedule.stop()
    assert beats[1] - beats[0] == pytest.approx(1.0, abs=0.2)


def test_a_check_still_running_when_the_next_is_due_skips_it_and_says_so(
    log: io.StringIO,
) -> None:
    check = Recorder(hold={"slow"})
    schedule = Schedule(check, beat=lambda: None, threads=2)
    schedule.start({"slow": monitor("slow", interval=0.1, timeout=0.1)})
    try:
        wait_for(lambda: schedule.stats.skipped >= 2)
        check.release.set()
        wait_for(lambda: len(check.finished) >= 2)
    finally:
        check.release.set()
        schedule.stop()
    assert schedule.stats.coalesced == 0  # the missed runs were skips, not coalescing
    assert "| slow | check due at" in log.getvalue()
    assert "skipped" in log.getvalue()
    assert "the previous check is still running" in log.getvalue()


def test_stop_waits_for_the_checks_in_flight_and_starts_no_more() -> None:
    check = Recorder(hold={"busy"})
    schedule = Schedule(check, beat=lambda: None, threads=2)
    schedule.start({"busy": monitor("busy", interval=0.2), "idle": monitor("idle", interval=0.2)})
    wait_for(lambda: any(name == "busy" for name, _, _ in check.runs))
    stopper = threading.Thread(target=schedule.stop)
    stopper.start()
    time_of_stop = datetime.now(UTC)
    stopper.join(0.3)
    assert stopper.is_alive(), "stop() returned with a check in flight"
    check.release.set()
    stopper.join(5)
    assert not stopper.is_alive()
    assert ("busy", check.due_times("busy")[0]) in check.finished
    assert all(started <= time_of_stop + timedelta(seconds=0.05) for _, _, started in check.runs)


def test_apply_reconciles_the_jobs_in_place() -> None:
    check = Recorder()
    schedule = Schedule(check, beat=lambda: None, threads=4)
    schedule.start({"a": monitor("a"), "b": monitor("b")})
    try:
        wait_for(lambda: len(check.due_times("a")) >= 2 and len(check.due_times("b")) >= 2)
        changed_b = monitor("b", expect_status="200")
        changes = schedule.apply({"b": changed_b, "c": monitor("c")}, threads=3)
        applied = datetime.now(UTC)
        assert (changes.added, changes.removed, changes.changed) == (("c",), ("a",), ("b",))
        assert schedule.threads == 3
        wait_for(lambda: len([d for d in check.due_times("c") if d > applied]) >= 2)
        wait_for(lambda: len([d for d in check.due_times("b") if d > applied]) >= 2)
    finally:
        schedule.stop()
    assert not [due for due in check.due_times("a") if due > applied + timedelta(seconds=0.2)]
    b_dues = check.due_times("b")
    steps = [(y - x).total_seconds() for x, y in pairwise(b_dues)]
    assert steps == pytest.approx([0.2] * len(steps), abs=1e-6)  # same grid, no gap


def test_a_changed_interval_moves_the_monitor_to_its_new_grid() -> None:
    check = Recorder()
    schedule = Schedule(check, beat=lambda: None, threads=2)
    schedule.start({"m": monitor("m", interval=0.2)})
    try:
        wait_for(lambda: len(check.due_times("m")) >= 1)
        schedule.apply({"m": monitor("m", interval=0.3)}, threads=2)
        applied = datetime.now(UTC)
        wait_for(lambda: len([d for d in check.due_times("m") if d > applied]) >= 2)
    finally:
        schedule.stop()
    anchor = grid_anchor("m", 0.3)
    for due in [d for d in check.due_times("m") if d > applied]:
        assert due == grid_point(anchor, 0.3, grid_index_at_or_before(anchor, 0.3, due))


def test_a_late_run_and_coalesced_runs_are_counted_and_logged(log: io.StringIO) -> None:
    mon = monitor("m", interval=1.0)
    anchor = grid_anchor("m", 1.0)
    clock = [NOW]
    schedule = Schedule(Recorder(), beat=lambda: None, threads=1, now=lambda: clock[0])
    schedule.apply({"m": mon}, threads=1)  # not started: run_due is driven by hand
    first = grid_point(anchor, 1.0, grid_index_at_or_before(anchor, 1.0, NOW))
    clock[0] = first + timedelta(seconds=0.01)
    schedule.run_due("m", scheduled=first)
    clock[0] = first + timedelta(seconds=1.5)
    schedule.run_due("m", scheduled=first + timedelta(seconds=1))
    clock[0] = first + timedelta(seconds=4.2)
    schedule.run_due("m", scheduled=first + timedelta(seconds=4))
    assert (schedule.stats.runs, schedule.stats.late, schedule.stats.coalesced) == (3, 2, 2)
    text = log.getvalue()
    assert "started 0.500 s late (1 late so far)" in text
    assert "started 0.200 s late (2 late so far)" in text
    assert "2 due check(s) coalesced into the one due at" in text
    assert "the oldest was due at" in text
    assert "2.200 s ago (2 coalesced so far)" in text


@pytest.mark.parametrize(
    ("interval", "timeout", "late", "expected"),
    [
        (5, 5, 0.003, 5 - 0.003 - NEXT_DUE_GUARD),  # the timeout equals the interval: shortened
        (5, 5, 0.0, 5 - NEXT_DUE_GUARD),
        (5, 4, 0.003, None),  # it fits: the whole timeout
        (5, 4.99, 0.0, 5 - NEXT_DUE_GUARD),
        (5, 5, 2.4, 5 - 2.4 - NEXT_DUE_GUARD),  # still at least half the timeout
        (5, 5, 2.6, None),  # far behind: the whole timeout, and the next run is skipped
        (5, 5, 7.0, None),
    ],
)
def test_a_check_ends_before_its_next_one_is_due(
    interval: float, timeout: float, late: float, expected: float | None
) -> None:
    monitor = make_monitor("m", url="http://127.0.0.1/", interval=interval, timeout=timeout)
    limit = check_limit(monitor, NOW, NOW + timedelta(seconds=late))
    assert limit == (None if expected is None else pytest.approx(expected))
