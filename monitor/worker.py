"""The worker process: checks its share on schedule and sends everything to the supervisor.

The whole protocol with the supervisor::

    supervisor ──Share──────────────────────────────► worker   (control: its new share)
    supervisor ◄──[CheckResult | LogEntry, ...]────── worker   (one pipe, batches)
    supervisor ◄──heartbeat (shared double)────────── worker   (time.monotonic() of its last
                                                                 progress; 0.0 until booted)
    supervisor ──SIGTERM─────────────────────────────► worker   (stop gracefully)
    supervisor ◄──exit code (WORKER_EXIT_*)────────── worker

Check threads never touch the pipe: they hand results to the ``Outbox``, whose one thread sends
them, so a supervisor that stops reading never blocks a check. The worker's own log records
travel the same way: only the supervisor writes the log file.

If the supervisor dies, even by SIGKILL, the worker exits at once: a thread waits on the parent
process's sentinel, and on Linux the kernel sends SIGKILL on parent death (PR_SET_PDEATHSIG)
even if every thread is wedged.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, Protocol

from loguru import logger

from monitor.checks import run_check, utc_now
from monitor.http import Fetcher
from monitor.logs import configure_logging
from monitor.results import CheckResult
from monitor.scheduling import Schedule, check_limit, pool_size
from monitor.settings import Monitor
from monitor.signals import SignalInbox

if TYPE_CHECKING:
    from loguru import Message

WORKER_EXIT_OK = 0
WORKER_EXIT_BOOT_FAILED = 3  # the worker could not start checking; see its log record
WORKER_EXIT_ORPHANED = 4  # the supervisor is gone; nothing could be delivered
OUTBOX_CAPACITY = 100_000  # messages held while the supervisor is not reading; then dropped
OUTBOX_LINGER = 0.05  # seconds a batch may wait for more results before it is sent
BATCH_SIZE = 256  # messages per send: fewer writes and wake-ups when results come in bursts
OUTBOX_CLOSE_TIMEOUT = 5.0  # seconds to flush the outbox on a graceful stop
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class Heartbeat(Protocol):
    """A shared ``ctypes.c_double``: ``multiprocessing`` ``RawValue("d")``."""

    value: float


@dataclass(frozen=True, slots=True)
class Share:
    """Control message: the monitors this worker checks from now on, and its thread setting."""

    monitors: tuple[Monitor, ...]
    threads: int = 0  # 0: size the pool from the share


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a worker needs to boot, pickled to it by the spawn context."""

    slot: int
    share: Share
    log_level: str
    supervisor_pid: int


@dataclass(frozen=True, slots=True)
class LogEntry:
    """A worker's log record, for the supervisor to write: the fields loguru's record has."""

    level: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    function: str = ""
    line: int = 0
    exception: str | None = None


Outgoing = CheckResult | LogEntry


class Outbox:
    """Messages to the supervisor, sent in batches by one thread.

    ``put`` never blocks: check threads hand over their result and go on. If the supervisor
    stops reading, up to ``capacity`` messages wait; beyond that they are dropped and counted,
    and the count is reported once the pipe moves again. If the pipe breaks (the supervisor is
    gone) the process exits with WORKER_EXIT_ORPHANED: there is no one left to report to.
    """

    def __init__(
        self,
        conn: Connection,
        *,
        capacity: int = OUTBOX_CAPACITY,
        exit_process: Callable[[int], None] = os._exit,
        linger: float = OUTBOX_LINGER,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._conn = conn
        self._linger = linger
        self._sleep = sleep
        self._queue: queue.Queue[Outgoing | None] = queue.Queue(capacity)
        self._exit_process = exit_process
        self._dropped = 0
        self._reported = 0
        self._thread = threading.Thread(target=self._send_all, name="outbox", daemon=True)
        self._thread.start()

    def put(self, message: Outgoing) -> None:
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            self._dropped += 1  # only this counter; logging here would recurse into put

    def close(self, timeout: float = OUTBOX_CLOSE_TIMEOUT) -> None:
        """Send everything queued so far, then stop the thread (waiting at most ``timeout``)."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)

    def _send_all(self) -> None:
        while True:
            batch, closing = self._take_batch()
            if batch:
                try:
                    self._conn.send(batch)
                except OSError:  # EPIPE, ECONNRESET: the supervisor has gone
                    self._exit_process(WORKER_EXIT_ORPHANED)
                    return
            if closing:
                return
            self._report_dropped()

    def _take_batch(self) -> tuple[list[Outgoing], bool]:
        first = self._queue.get()
        if first is None:
            return [], True
        # Let the batch fill for a moment rather than wake, pickle and send per result: waking
        # this thread and the supervisor's for every check cost more CPU than the check itself.
        if self._queue.qsize() < BATCH_SIZE:
            self._sleep(self._linger)
        batch = [first]
        while len(batch) < BATCH_SIZE:
            try:
                message = self._queue.get_nowait()
            except queue.Empty:
                break
            if message is None:
                return batch, True
            batch.append(message)
        return batch, False

    def _report_dropped(self) -> None:
        dropped = self._dropped
        if dropped > self._reported:
            text = (
                f"{dropped - self._reported} messages dropped: the supervisor was not reading"
                f" and {self._queue.maxsize} were waiting"
            )
            self._reported = dropped
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(LogEntry("ERROR", text))


class ForwardingStream:
    """A loguru stream sink that forwards each record to the supervisor as a LogEntry.

    Loguru hands a stream sink a ``str`` with the record attached as ``.record``: the fields
    are taken from it, not parsed from the formatted text. Tracebacks travel as text.
    """

    def __init__(self, outbox: Outbox, slot: int) -> None:
        self._outbox = outbox
        self._slot = slot

    def write(self, message: Message) -> None:
        self._outbox.put(to_entry(message.record, slot=self._slot))

    def flush(self) -> None:
        pass


def to_entry(record: Any, *, slot: int) -> LogEntry:
    """A loguru record as a LogEntry, tagged with the worker's slot.

    Field values other than str, int, float, bool and None travel as their repr(): whatever a
    caller binds, the entry always pickles (one that did not would stop the outbox).
    """
    extra = {k: _plain(v) for k, v in record["extra"].items() if not k.startswith("_")}
    extra["worker"] = slot
    error = record["exception"]
    text = None
    if error is not None:
        text = "".join(traceback.format_exception(error.type, error.value, error.traceback))
    return LogEntry(
        level=record["level"].name,
        message=record["message"],
        extra=extra,
        name=record["name"],
        function=record["function"],
        line=record["line"],
        exception=text,
    )


def _plain(value: object) -> object:
    return value if value is None or isinstance(value, str | int | float) else repr(value)


class Worker:
    """One worker's share, fetcher and schedule; results go to the outbox."""

    def __init__(self, spec: WorkerSpec, outbox: Outbox, heartbeat: Heartbeat) -> None:
        self.slot = spec.slot
        self._share = spec.share
        self._outbox = outbox
        self._heartbeat = heartbeat
        self._fetcher = Fetcher()
        self._schedule = Schedule(
            self._check, beat=self.beat, threads=pool_size(spec.share.monitors, spec.share.threads)
        )

    def start(self) -> None:
        """Start checking the share, and prove it with the first heartbeat."""
        monitors = {monitor.name: monitor for monitor in self._share.monitors}
        self._schedule.start(monitors)
        logger.info(
            "worker {} (pid {}) checking {} monitors with up to {} threads",
            self.slot,
            os.getpid(),
            len(monitors),
            self._schedule.threads,
        )
        self.beat()

    def beat(self) -> None:
        """Prove progress: the supervisor reads this to tell a live worker from a stuck one."""
        self._heartbeat.value = time.monotonic()

    def _check(self, monitor: Monitor, scheduled: datetime) -> None:
        limit = check_limit(monitor, scheduled, utc_now())
        self._outbox.put(run_check(monitor, self._fetcher, scheduled=scheduled, limit=limit))

    def apply(self, share: Share) -> None:
        """Reconcile the running jobs with a new share, in place."""
        monitors = {monitor.name: monitor for monitor in share.monitors}
        changes = self._schedule.apply(monitors, pool_size(monitors.values(), share.threads))
        logger.info(
            "worker {} now checks {} monitors ({} added, {} removed, {} changed), {} threads",
            self.slot,
            len(monitors),
            len(changes.added),
            len(changes.removed),
            len(changes.changed),
            self._schedule.threads,
        )

    def serve(self, conn: Connection, inbox: SignalInbox) -> None:
        """Apply shares as they arrive until SIGTERM. A closed pipe means the supervisor is gone."""
        while True:
            ready = wait([conn, inbox.fileno()])
            if signal.SIGTERM in inbox.drain():
                return
            if conn in ready:
                try:
                    share = conn.recv()
                except (EOFError, OSError):
                    os._exit(WORKER_EXIT_ORPHANED)
                self.apply(share)

    def stop(self) -> None:
        """Start no new checks, wait for those in flight (their results are sent), then close."""
        self._schedule.stop()
        self._fetcher.close()
        logger.info("worker {} stopped after {}", self.slot, self._schedule.stats.describe())


def run_worker(spec: WorkerSpec, conn: Connection, heartbeat: Heartbeat) -> None:
    """The worker process's body (the spawn target). Exits with a WORKER_EXIT_* code."""
    with SignalInbox([signal.SIGTERM], ignore=[signal.SIGINT]) as inbox:
        die_with_parent(spec.supervisor_pid)
        outbox = Outbox(conn)
        configure_logging(
            level=spec.log_level,
            json=False,
            forward=ForwardingStream(outbox, spec.slot).write,
        )
        try:
            worker = Worker(spec, outbox, heartbeat)
            worker.start()
        except Exception:
            logger.opt(exception=True).critical("worker {} cannot boot", spec.slot)
            outbox.close()
            sys.exit(WORKER_EXIT_BOOT_FAILED)
        worker.serve(conn, inbox)
        worker.stop()
        outbox.close()


def die_with_parent(supervisor_pid: int) -> None:
    """Exit at once, and on Linux be SIGKILLed by the kernel, when the supervisor dies.

    Two ways, because either alone can fail: the sentinel thread needs the interpreter to run,
    and PR_SET_PDEATHSIG is Linux only and tracks the thread that spawned us.
    """
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != supervisor_pid:  # the supervisor died before we could ask
        os._exit(WORKER_EXIT_ORPHANED)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(
            target=_exit_when_ready, args=(parent.sentinel,), name="parent-watch", daemon=True
        ).start()


def _exit_when_ready(sentinel: int) -> None:
    wait([sentinel])
    os._exit(WORKER_EXIT_ORPHANED)
