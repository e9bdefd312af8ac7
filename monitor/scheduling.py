"""APScheduler jobs for a worker's share: one interval job per monitor, on a fixed grid.

The only module that imports APScheduler. ``Schedule`` runs a ``BackgroundScheduler`` (UTC) with
one job per monitor: ``max_instances=1``, ``coalesce=True`` and ``misfire_grace_time=None``, so a
late check runs late rather than not at all, and a check still running when the next is due
makes that next one skipped. Every late, skipped or coalesced run is logged and counted.

The grid. Each monitor's checks are due at ``GRID_EPOCH + offset + k * interval``, where the
offset in [0, interval) comes from a hash of the monitor's name. So the first checks of a
thousand monitors are spread over their first interval rather than fired in the same instant,
every due time is computed from the epoch (no drift: APScheduler 3's ``jitter`` computes each
run from the previous jittered one), and the grid is the same across restarts and reloads.

The due time. APScheduler 3 does not tell a job when it was due, only its executor knows: our
executor passes that time to the job as ``scheduled=``, so each result carries it exactly, and
a check delayed past the next grid point is not mistaken for that next one.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES  # type: ignore[import-untyped]
from apscheduler.executors.base import BaseExecutor  # type: ignore[import-untyped]
from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]
from loguru import logger

from monitor.settings import Monitor

GRID_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
TICK_INTERVAL = 1.0  # seconds between the scheduler's proofs of progress (heartbeats)
LATE_AFTER = 0.1  # seconds: a check starting later than this after its due time is logged as late
# Pool sizing: the expected number of checks in flight when every check runs to its deadline
# (Little's law, sum of deadline/interval), plus three standard deviations of the way the offsets
# happen to cluster, plus a few spare threads; never more than one thread per monitor, which
# max_instances=1 makes enough for every monitor hitting its deadline at once.
SPARE_THREADS = 4
TICK_JOB = "tick"  # monitors' job ids carry a prefix, so no monitor name can collide with it
MONITOR_JOB_PREFIX = "monitor:"
# APScheduler logs each skip itself; ours carries the monitor and how late, so its own goes quiet.
APSCHEDULER_LOGGER = "monitor.scheduling.apscheduler"

# A scheduled check ends this long before its monitor's next one is due (see check_limit).
NEXT_DUE_GUARD = 0.02

Check = Callable[[Monitor, datetime], None]


def check_limit(monitor: Monitor, scheduled: datetime, now: datetime) -> float | None:
    """Seconds a check due at ``scheduled`` and starting ``now`` may take, when that is less
    than the monitor's timeout; None when the whole timeout fits.

    A check still running when its next one is due makes that one skipped (max_instances=1), so
    with a timeout as long as the interval a target that times out would be checked only every
    other interval. The check's deadline is therefore shortened to end just before the next due
    time: by the start's lateness plus NEXT_DUE_GUARD, milliseconds in practice. A check so late
    that less than half its timeout would be left keeps the whole of it: the scheduler is far
    behind, and the next run is skipped and logged.
    """
    left = (scheduled - now).total_seconds() + monitor.interval - NEXT_DUE_GUARD
    if left >= monitor.deadline or left < monitor.deadline / 2:
        return None
    return left


def grid_offset(name: str, interval: float) -> float:
    """A stable offset in [0, interval) for the monitor named ``name``, from a hash of the name."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * interval


def grid_anchor(name: str, interval: float) -> datetime:
    """The monitor's grid point at index 0: the fixed epoch plus its offset."""
    return GRID_EPOCH + timedelta(seconds=grid_offset(name, interval))


def grid_point(anchor: datetime, interval: float, index: int) -> datetime:
    return anchor + timedelta(seconds=index * interval)


def grid_index_at_or_before(anchor: datetime, interval: float, when: datetime) -> int:
    """The index of the latest grid point at or before ``when``."""
    index = math.floor((when - anchor).total_seconds() / interval)
    # Float division can land one off either way of an exact grid point; settle it exactly.
    if grid_point(anchor, interval, index + 1) <= when:
        return index + 1
    if grid_point(anchor, interval, index) > when:
        return index - 1
    return index


class GridTrigger(IntervalTrigger):  # type: ignore[misc]
    """An interval trigger whose fire times are always ``anchor + k * interval``.

    APScheduler's own adds the interval to the previous fire time as a float and rounds to the
    microsecond, which drifts for intervals that are not whole microseconds; this one computes
    every fire time from the anchor.
    """

    def __init__(self, interval: float, anchor: datetime) -> None:
        super().__init__(seconds=interval, start_date=anchor, timezone=UTC)
        self.anchor = anchor
        self.period = interval

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime:
        if previous_fire_time is None:
            # The first run: the first grid point at or after now.
            index = grid_index_at_or_before(self.anchor, self.period, now)
            if grid_point(self.anchor, self.period, index) < now:
                index += 1
        else:
            index = grid_index_at_or_before(self.anchor, self.period, previous_fire_time) + 1
        return grid_point(self.anchor, self.period, index)


def make_trigger(monitor: Monitor) -> GridTrigger:
    return GridTrigger(monitor.interval, grid_anchor(monitor.name, monitor.interval))


def pool_size(monitors: Iterable[Monitor], override: int = 0) -> int:
    """Threads for a share's checks: ``override`` if positive, else sized by Little's law.

    At least 1; at most one per monitor (a monitor never runs two checks at once).
    """
    share = list(monitors)
    if override > 0:
        return override
    if not share:
        return 1
    in_flight = sum(monitor.deadline / monitor.interval for monitor in share)
    wanted = math.ceil(in_flight + 3 * math.sqrt(in_flight)) + SPARE_THREADS
    return max(1, min(len(share), wanted))


class DueTimeExecutor(BaseExecutor):  # type: ignore[misc]
    """APScheduler executor on a thread pool that tells each job when it was due.

    Calls ``job.func(*job.args, scheduled=<due time>, **job.kwargs)`` with the latest due time
    (the only one, since every job coalesces). Its pool can be resized while jobs run: new runs
    go to the new pool while the old one finishes what it holds. On shutdown, runs that were
    due but have not started are cancelled: no new checks once stopping.
    """

    def __init__(self, threads: int, name: str = "check") -> None:
        super().__init__()
        self._name = name
        self._threads = threads
        self._pool = self._make_pool(threads)
        self._retired: list[concurrent.futures.ThreadPoolExecutor] = []

    def _make_pool(self, threads: int) -> concurrent.futures.ThreadPoolExecutor:
        return concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=self._name)

    @property
    def threads(self) -> int:
        return self._threads

    def resize(self, threads: int) -> None:
        """Run new checks on ``threads`` threads; running and queued ones finish where they are."""
        if threads == self._threads:
            return
        # Under the executor's lock (set once the scheduler has started), no submission can land
        # on the old pool after it is shut down.
        with self._lock or contextlib.nullcontext():
            old, self._pool, self._threads = self._pool, self._make_pool(threads), threads
        old.shutdown(wait=False)
        self._retired.append(old)  # waited for at shutdown: its checks' results must be sent

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        future = self._pool.submit(job.func, *job.args, scheduled=run_times[-1], **job.kwargs)
        future.add_done_callback(lambda done: self._settle(job.id, done))

    def _settle(self, job_id: str, future: concurrent.futures.Future[None]) -> None:
        error = None if future.cancelled() else future.exception()
        if error is None:
            self._run_job_success(job_id, [])
        else:
            self._run_job_error(job_id, error, error.__traceback__)

    def shutdown(self, wait: bool = True) -> None:
        for pool in (*self._retired, self._pool):
            pool.shutdown(wait=wait, cancel_futures=True)


@dataclass
class ScheduleStats:
    """Counts since the worker started, shared by the check threads (hence the lock)."""

    runs: int = 0
    late: int = 0
    skipped: int = 0
    coalesced: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def describe(self) -> str:
        return (
            f"{self.runs} checks, {self.late} late, {self.skipped} skipped,"
            f" {self.coalesced} coalesced"
        )


@dataclass(frozen=True, slots=True)
class Changes:
    """What a reconcile did to the jobs, by monitor name."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()


@dataclass
class _History:
    """What the scheduling needs to remember of a monitor between its runs."""

    interval: float
    last_due: datetime | None = None
    skipped_since: int = 0


class Schedule:
    """A share's checks on the grid, run by APScheduler in a thread pool.

    ``check(monitor, scheduled)`` runs one check and delivers its result; it must not raise.
    ``beat()`` proves progress: called every ``TICK_INTERVAL`` by the scheduler and after every
    check. ``now`` is the wall clock (UTC), which APScheduler's due times are on.
    """

    def __init__(
        self,
        check: Check,
        *,
        beat: Callable[[], None],
        threads: int,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._check = check
        self._beat = beat
        self._now = now
        self._monitors: dict[str, Monitor] = {}
        self._history: dict[str, _History] = {}
        self._history_lock = threading.Lock()
        self.stats = ScheduleStats()
        self._executor = DueTimeExecutor(threads)
        quiet = logging.getLogger(APSCHEDULER_LOGGER)
        quiet.setLevel(logging.ERROR)
        self._scheduler = BackgroundScheduler(
            timezone="UTC",
            logger=quiet,
            executors={"default": self._executor, "tick": DueTimeExecutor(1, name="tick")},
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None},
        )
        self._scheduler.add_listener(self._note_skipped, EVENT_JOB_MAX_INSTANCES)

    @property
    def threads(self) -> int:
        return self._executor.threads

    def start(self, monitors: Mapping[str, Monitor]) -> None:
        """Add a job per monitor and the tick job, and start the scheduler thread."""
        self._monitors = dict(monitors)
        for monitor in monitors.values():
            self._add_job(monitor)
        self._scheduler.add_job(
            self._tick,
            IntervalTrigger(seconds=TICK_INTERVAL, timezone=UTC),
            id=TICK_JOB,
            executor="tick",
            next_run_time=self._now(),
        )
        self._scheduler.start()

    def apply(self, monitors: Mapping[str, Monitor], threads: int) -> Changes:
        """Reconcile the jobs in place with a new share: add, remove, update; others untouched.

        A monitor whose interval is unchanged keeps its grid and its next due time; one whose
        interval changed moves to its new grid from now. Checks in flight finish as they were.
        """
        old = self._monitors
        added = sorted(set(monitors) - set(old))
        removed = sorted(set(old) - set(monitors))
        changed = sorted(name for name in set(old) & set(monitors) if old[name] != monitors[name])
        self._executor.resize(threads)
        # Jobs look their monitor up by name when they run, so swap the map first: a removed
        # monitor's job that fires before it is removed finds nothing and does nothing.
        self._monitors = dict(monitors)
        for name in removed:
            self._scheduler.remove_job(MONITOR_JOB_PREFIX + name)
            with self._history_lock:
                self._history.pop(name, None)
        for name in changed:
            if old[name].interval != monitors[name].interval:
                self._scheduler.reschedule_job(
                    MONITOR_JOB_PREFIX + name, trigger=make_trigger(monitors[name])
                )
                with self._history_lock:
                    self._history[name] = _History(monitors[name].interval)
        for name in added:
            self._add_job(monitors[name])
        return Changes(tuple(added), tuple(removed), tuple(changed))

    def stop(self) -> None:
        """Start no new checks; return once the checks in flight have finished."""
        self._scheduler.shutdown(wait=True)

    def _add_job(self, monitor: Monitor) -> None:
        with self._history_lock:
            self._history[monitor.name] = _History(monitor.interval)
        self._scheduler.add_job(
            self.run_due,
            make_trigger(monitor),
            args=(monitor.name,),
            id=MONITOR_JOB_PREFIX + monitor.name,
            name=monitor.name,
        )

    # The ``scheduled`` defaults are never used (DueTimeExecutor always passes it); APScheduler
    # rejects a job whose keyword-only arguments it cannot see supplied.

    def _tick(self, *, scheduled: datetime | None = None) -> None:
        self._beat()

    def run_due(self, name: str, *, scheduled: datetime | None = None) -> None:
        monitor = self._monitors.get(name)
        if monitor is None or scheduled is None:
            return
        due = scheduled.astimezone(UTC)
        self._note_run(monitor, due)
        self._check(monitor, due)
        self._beat()

    def _note_run(self, monitor: Monitor, due: datetime) -> None:
        """Count the run; log it if it started late or stands for coalesced earlier runs."""
        late = (self._now() - due).total_seconds()
        with self._history_lock:
            history = self._history.setdefault(monitor.name, _History(monitor.interval))
            missed = (
                0
                if history.last_due is None
                else count_missed(history.last_due, due, history.interval)
            )
            coalesced = max(0, missed - history.skipped_since)
            history.last_due, history.skipped_since = due, 0
        with self.stats.lock:
            self.stats.runs += 1
            self.stats.late += late > LATE_AFTER
            self.stats.coalesced += coalesced
            late_total, coalesced_total = self.stats.late, self.stats.coalesced
        bound = logger.bind(monitor=monitor.name)
        if late > LATE_AFTER:
            bound.warning(
                "check due at {} started {:.3f} s late ({} late so far)",
                _clock(due),
                late,
                late_total,
            )
        if coalesced:
            oldest = due - timedelta(seconds=coalesced * monitor.interval)
            bound.warning(
                "{} due check(s) coalesced into the one due at {}: the scheduler was behind,"
                " the oldest was due at {}, {:.3f} s ago ({} coalesced so far)",
                coalesced,
                _clock(due),
                _clock(oldest),
                (self._now() - oldest).total_seconds(),
                coalesced_total,
            )

    def _note_skipped(self, event: Any) -> None:
        """APScheduler listener: a due run was skipped, the previous check still running."""
        if not str(event.job_id).startswith(MONITOR_JOB_PREFIX):
            return  # the tick job: nothing an operator needs to hear about
        name = str(event.job_id).removeprefix(MONITOR_JOB_PREFIX)
        due = event.scheduled_run_times[-1].astimezone(UTC)
        late = (self._now() - due).total_seconds()
        with self._history_lock:
            history = self._history.get(name)
            if history is not None:
                history.skipped_since += len(event.scheduled_run_times)
        with self.stats.lock:
            self.stats.skipped += len(event.scheduled_run_times)
            skipped_total = self.stats.skipped
        logger.bind(monitor=name).warning(
            "check due at {} skipped, {:.3f} s late: the previous check is still running"
            " ({} skipped so far)",
            _clock(due),
            late,
            skipped_total,
        )


def count_missed(last_due: datetime, due: datetime, interval: float) -> int:
    """How many grid points lie strictly between two due times of a monitor on its grid."""
    steps = round((due - last_due).total_seconds() / interval)
    return max(0, steps - 1)


def _clock(when: datetime) -> str:
    return when.strftime("%H:%M:%S.%f")[:-3]
