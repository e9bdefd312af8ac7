"""The supervisor: runs the workers, watches their progress, owns signals and the one log file.

Processes and pipes::

    supervisor (main thread: the loop)        worker i (spawned)
      │ signals → SignalInbox ─┐                │
      │ sentinels, heartbeats ─┴► loop          │
      │ Link i: receiver thread ◄── pipe ───── Outbox thread ◄── check threads
      │         control thread  ─── pipe ────► main thread (applies a new Share)
      │ Recorder thread: log line per result (the only writer of the log file)

The loop never blocks on a worker: reading and writing pipes happens in each worker's Link
threads, so a stopped or wedged worker cannot stall signal handling, heartbeat watching or the
other workers. Every lifecycle decision is an edge of ``monitor.states``; this module performs
its side effects (spawn, SIGTERM, SIGKILL, log).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from monitor import __version__
from monitor.logs import FileOptions, configure_logging
from monitor.recording import log_result
from monitor.results import CheckResult
from monitor.settings import ConfigError, Monitor, Settings, load_settings, parse_env_file
from monitor.sharing import share_out
from monitor.signals import SignalInbox
from monitor.states import (
    BackoffPolicy,
    Lifecycle,
    WorkerState,
    became_ready,
    exited,
    has_process,
    kill_due,
    kill_requested,
    restart_due,
    spawned,
    stop_requested,
)
from monitor.systemd import (
    NULL_NOTIFIER,
    Notifier,
    reloading_message,
    without_env_file_values,
)
from monitor.worker import LogEntry, Share, WorkerSpec, run_worker

if TYPE_CHECKING:
    from loguru import Record

    from monitor.worker import Heartbeat

EXIT_OK = 0
EXIT_WORKER_CANNOT_BOOT = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT: a second Ctrl-C stopped the daemon without waiting
BOOT_TIMEOUT = 30.0  # seconds for a spawned worker to send its first heartbeat
KILL_GRACE = 2.0  # seconds from SIGTERM to SIGKILL for a worker that stopped making progress
POLL_INTERVAL = 0.25  # seconds between looks at the heartbeats
STOP_MARGIN = 0.5  # seconds of the shutdown timeout kept for writing what the workers sent
LINK_CLOSE_TIMEOUT = 5.0  # seconds to read what an exited worker left in its pipe
# A running worker beats at least every second (its scheduler's tick). Systemd's watchdog is
# pinged only while every worker beat within this (or the heartbeat timeout, if shorter), so a
# stuck worker stops the pings before the supervisor replaces it; and one it cannot replace (a
# process that SIGKILL does not end) lets the watchdog restart the whole service.
HEARTBEAT_FRESH = 3.0
DAEMON_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Settings a reload (SIGHUP) applies at once; a change to any other is logged as waiting for the
# next restart (the log file, its level and format, the state directory).
RELOADABLE = frozenset(
    {"monitors", "monitors_file", "workers", "threads", "shutdown_timeout", "heartbeat_timeout"}
)

SPAWN = multiprocessing.get_context("spawn")  # threads do not survive fork; pinned, not default

Target = Callable[[WorkerSpec, Connection, "Heartbeat"], None]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The supervisor's own timing, in seconds (tests shorten them)."""

    boot: float = BOOT_TIMEOUT
    kill_grace: float = KILL_GRACE
    poll: float = POLL_INTERVAL
    heartbeat: float | None = None  # None: the settings' heartbeat_timeout


DEFAULT_TIMEOUTS = Timeouts()
DEFAULT_POLICY = BackoffPolicy()


class Recorder:
    """Runs the sinks for everything the workers send, in order, on one thread.

    For now the one sink is the log line (``recording.log_result``); a worker's own log records
    are written as if logged here, keeping their level, origin and fields. It also keeps the
    count of checks and each monitor's latest verdict, for systemd's STATUS= line.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[CheckResult | LogEntry | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._checks = 0
        self._latest: dict[str, bool] = {}
        self._thread = threading.Thread(target=self._record_all, name="recorder", daemon=True)
        self._thread.start()

    def put(self, message: CheckResult | LogEntry) -> None:
        self._queue.put(message)

    def close(self) -> None:
        """Record everything put so far, then stop."""
        self._queue.put(None)
        self._thread.join()

    def tally(self, names: Iterable[str]) -> tuple[int, int, int]:
        """Checks recorded so far, and how many of ``names`` were up and down at their latest."""
        with self._lock:
            latest = [self._latest[name] for name in names if name in self._latest]
            return self._checks, latest.count(True), latest.count(False)

    def _count(self, message: CheckResult | LogEntry) -> None:
        if isinstance(message, CheckResult):
            with self._lock:
                self._checks += 1
                self._latest[message.monitor] = message.ok

    def _record_all(self) -> None:
        while (message := self._queue.get()) is not None:
            self._count(message)
            try:
                record_message(message)
            except Exception:  # a bug in a sink must not stop the recording of the rest
                logger.opt(exception=True).error("could not record {!r}", message)


def record_message(message: CheckResult | LogEntry) -> None:
    if isinstance(message, CheckResult):
        log_result(message)
    else:
        replay_entry(message)


def replay_entry(entry: LogEntry) -> None:
    """Log a worker's record here, with its level, fields and origin; a traceback as text."""
    text = entry.message
    if entry.exception is not None:
        text = f"{text}\n{entry.exception.rstrip()}"
    logger.patch(partial(_restore_origin, entry)).bind(**entry.extra).log(entry.level, "{}", text)


def _restore_origin(entry: LogEntry, record: Record) -> None:
    record["name"] = entry.name
    record["function"] = entry.function
    record["line"] = entry.line


class Link:
    """The supervisor's end of one worker's pipe.

    A receiver thread reads batches until the pipe closes (the worker exited) and hands each
    message to the recorder; a control thread sends new shares. Neither ever blocks the loop.
    """

    def __init__(self, conn: Connection, recorder: Recorder, name: str) -> None:
        self._conn = conn
        self._recorder = recorder
        self._control: queue.SimpleQueue[Share | None] = queue.SimpleQueue()
        self._receiver = threading.Thread(target=self._receive_all, name=f"{name}-in", daemon=True)
        self._sender = threading.Thread(target=self._send_all, name=f"{name}-out", daemon=True)
        self._receiver.start()
        self._sender.start()

    def send(self, share: Share) -> None:
        self._control.put(share)

    def close(self, timeout: float = LINK_CLOSE_TIMEOUT) -> None:
        """Once the worker has exited: record what it left in the pipe, then close the pipe."""
        self._receiver.join(timeout)
        self._control.put(None)
        self._sender.join(timeout)
        self._conn.close()

    def _receive_all(self) -> None:
        while True:
            try:
                batch = self._conn.recv()
            except (EOFError, OSError):  # closed: the worker exited (mid-message if killed)
                return
            for message in batch:
                self._recorder.put(message)

    def _send_all(self) -> None:
        while (share := self._control.get()) is not None:
            try:
                self._conn.send(share)
            except OSError:  # the worker exited; the loop will reap it
                return


@dataclass
class Slot:
    """One worker position: its share (monitor names), lifecycle, and current process if any."""

    index: int
    share: tuple[str, ...]
    life: Lifecycle = field(default_factory=Lifecycle)
    process: BaseProcess | None = None
    link: Link | None = None
    heartbeat: Heartbeat | None = None
    sigkill_sent: bool = False

    @property
    def name(self) -> str:
        return f"worker {self.index}"

    def describe_process(self) -> str:
        pid = None if self.process is None else self.process.pid
        return f"{self.name} (pid {pid})"


class Supervisor:
    """Runs one worker process per slot and keeps them running until told to stop.

    ``load`` re-reads the configuration for SIGHUP (raising ConfigError if it is invalid).
    ``target`` is the worker process's body, ``clock`` a monotonic clock shared with the workers'
    heartbeats (CLOCK_MONOTONIC is system-wide on Linux), ``cpus`` the CPUs available,
    ``notifier`` where READY=1, STATUS=, WATCHDOG=1, RELOADING=1 and STOPPING=1 go (systemd).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        load: Callable[[], Settings],
        target: Target = run_worker,
        clock: Callable[[], float] = time.monotonic,
        cpus: int | None = None,
        policy: BackoffPolicy = DEFAULT_POLICY,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        context: SpawnContext = SPAWN,
        notifier: Notifier = NULL_NOTIFIER,
    ) -> None:
        self.settings = settings
        self._load = load
        self._target = target
        self._clock = clock
        self._cpus = available_cpus() if cpus is None else cpus
        self._policy = policy
        self._timeouts = timeouts
        self._context = context
        self._recorder = Recorder()
        self._slots: list[Slot] = []
        self._retiring: list[Slot] = []
        self._stopping = False
        self._exit_code = EXIT_OK
        self._notifier = notifier
        self._ready = False  # READY=1 sent since the start or the last reload
        self._status = ""
        self._next_ping = 0.0

    @property
    def slots(self) -> Sequence[Slot]:
        return tuple(self._slots)

    def serve(self, inbox: SignalInbox) -> int:
        """Run until stopped by a signal or a worker that cannot boot; return the exit code."""
        try:
            self._start_workers()
            while not self._finished():
                self._wait_for_events(inbox)
                for signum in inbox.drain():
                    self._on_signal(signum)
                now = self._clock()
                self._reap_workers(now)
                self._watch_workers(now)
                self._notify_systemd(now)
        finally:
            self._kill_leftovers()
            self._recorder.close()
        return self._exit_code

    # The loop's parts.

    def _notify_systemd(self, now: float) -> None:
        """READY=1 once every worker runs; STATUS= when it changes; WATCHDOG=1 while healthy."""
        message: dict[str, str] = {}
        all_running = all(s.life.state is WorkerState.RUNNING for s in self._slots)
        if not self._ready and not self._stopping and all_running:
            self._ready = True
            message["READY"] = "1"
        status = self._describe_status()
        if status != self._status:
            self._status = message["STATUS"] = status
        interval = self._notifier.watchdog_interval
        if interval is not None and now >= self._next_ping and self._workers_fresh(now):
            self._next_ping = now + interval
            message["WATCHDOG"] = "1"
        if message:
            self._notifier.send(message)

    def _describe_status(self) -> str:
        """One line for ``systemctl status``: monitors, workers, up and down, checks so far."""
        monitors = self.settings.monitors
        running = sum(s.life.state is WorkerState.RUNNING for s in self._slots)
        checks, up, down = self._recorder.tally(monitors)
        if self._stopping:
            state = "stopping"
        elif running < len(self._slots):
            state = f"{running} of {len(self._slots)} workers running"
        else:
            state = f"{len(self._slots)} workers running"
        return f"{len(monitors)} monitors, {state}; {up} up, {down} down; {checks} checks"

    def _workers_fresh(self, now: float) -> bool:
        """Whether every worker made progress lately, or is being started within its deadline.

        A worker waiting to restart (backoff) counts as fresh: the supervisor is handling it.
        One being killed does not: if SIGKILL cannot end it, the watchdog must fire.
        """
        fresh = min(HEARTBEAT_FRESH, self._heartbeat_timeout())
        for slot in self._all_slots():
            state = slot.life.state
            if slot.life.kill_at is not None and state is not WorkerState.STOPPING:
                return False
            if state is WorkerState.STARTING and now - slot.life.since > self._timeouts.boot:
                return False
            if state is WorkerState.RUNNING:
                beat = 0.0 if slot.heartbeat is None else slot.heartbeat.value
                if now - beat > fresh:
                    return False
        return True

    def _finished(self) -> bool:
        return self._stopping and not any(has_process(s.life) for s in self._all_slots())

    def _all_slots(self) -> list[Slot]:
        return [*self._slots, *self._retiring]

    def _wait_for_events(self, inbox: SignalInbox) -> None:
        sentinels = [s.process.sentinel for s in self._all_slots() if s.process is not None]
        wait([inbox.fileno(), *sentinels], timeout=self._next_wait(self._clock()))

    def _next_wait(self, now: float) -> float:
        deadlines = [self._timeouts.poll]
        if self._notifier.watchdog_interval is not None and self._next_ping > now:
            deadlines.append(self._next_ping - now)  # a ping overdue waits for fresh heartbeats
        for slot in self._all_slots():
            for deadline in (slot.life.restart_at, slot.life.kill_at):
                if deadline is not None:
                    deadlines.append(max(0.0, deadline - now))
        return min(deadlines)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            if not self._stopping:
                logger.info("{} received: reloading the configuration", name)
                self.reload()
        elif not self._stopping:
            self.stop(f"{name} received")
        elif signum == signal.SIGINT:
            self.stop_now(f"{name} received again")

    def _start_workers(self) -> None:
        monitors = self.settings.monitors
        count = self._worker_count(self.settings)
        shares = share_out(rates_of(monitors), count)
        logger.info(
            "monitor {} (pid {}) starting: {} monitors on {} workers",
            __version__,
            os.getpid(),
            len(monitors),
            count,
        )
        self._slots = [Slot(index, share) for index, share in enumerate(shares)]
        now = self._clock()
        for slot in self._slots:
            self._spawn(slot, now)

    def _worker_count(self, settings: Settings) -> int:
        return settings.worker_count(self._cpus)

    def _share_message(self, share: Iterable[str]) -> Share:
        monitors = self.settings.monitors
        return Share(tuple(monitors[name] for name in share), self.settings.threads)

    def _spawn(self, slot: Slot, now: float) -> None:
        """Start a process for the slot: STARTING until its first heartbeat."""
        parent_end, child_end = self._context.Pipe(duplex=True)
        heartbeat: Heartbeat = self._context.RawValue("d", 0.0)
        spec = WorkerSpec(
            slot=slot.index,
            share=self._share_message(slot.share),
            log_level=self.settings.log_level,
            supervisor_pid=os.getpid(),
        )
        process = self._context.Process(
            target=self._target,
            args=(spec, child_end, heartbeat),
            name=f"monitor-worker-{slot.index}",
        )
        slot.life = spawned(slot.life, now)
        slot.sigkill_sent = False
        try:
            process.start()
        except OSError as error:  # EAGAIN, ENOMEM: counts as a failed boot
            logger.error("{} could not be started: {}", slot.name, error)
            parent_end.close()
            slot.life = exited(slot.life, now, self._policy)
            return
        finally:
            child_end.close()  # the worker's copy; so its exit closes the pipe
        slot.process, slot.heartbeat = process, heartbeat
        slot.link = Link(parent_end, self._recorder, f"worker-{slot.index}")
        logger.info("{} starting: {} monitors", slot.describe_process(), len(slot.share))

    def _reap_workers(self, now: float) -> None:
        for slot in self._all_slots():
            process = slot.process
            if process is None or process.is_alive():
                continue
            code, pid = process.exitcode, process.pid
            self._release(slot)
            before = slot.life.state
            slot.life = exited(slot.life, now, self._policy)
            self._log_exit(slot, before, describe_exit(code), pid=pid)
        self._retiring = [s for s in self._retiring if has_process(s.life)]

    def _release(self, slot: Slot) -> None:
        """After the process exited: record what it left in the pipe, free its resources."""
        assert slot.process is not None
        if slot.link is not None:
            slot.link.close()
        slot.process.join()
        slot.process.close()
        slot.process, slot.link, slot.heartbeat = None, None, None

    def _log_exit(self, slot: Slot, before: WorkerState, how: str, *, pid: int | None) -> None:
        who = f"{slot.name} (pid {pid})"
        state = slot.life.state
        if before is WorkerState.STOPPING:
            logger.info("{} stopped: {}", who, how)
        elif state is WorkerState.FATAL:
            logger.critical(
                "{} {}; it cannot boot ({} attempts in a row failed): stopping the daemon",
                who,
                how,
                slot.life.boot_failures,
            )
        else:
            logger.error(
                "{} {} while {}; its {} monitors ({}) are not checked until it restarts in {:g} s",
                who,
                how,
                before.value,
                len(slot.share),
                summarize_names(slot.share),
                slot.life.delay,
            )

    def _watch_workers(self, now: float) -> None:
        for slot in self._all_slots():
            self._watch_progress(slot, now)
            if kill_due(slot.life, now) and not slot.sigkill_sent:
                self._sigkill(slot)
            if restart_due(slot.life, now) and not self._stopping:
                self._spawn(slot, now)
        if not self._stopping and any(s.life.state is WorkerState.FATAL for s in self._slots):
            self._exit_code = EXIT_WORKER_CANNOT_BOOT
            self.stop("a worker cannot boot")

    def _watch_progress(self, slot: Slot, now: float) -> None:
        """STARTING → RUNNING on the first heartbeat; kill a worker that stops making progress."""
        beat = 0.0 if slot.heartbeat is None else slot.heartbeat.value
        if slot.life.kill_at is not None:
            return
        if slot.life.state is WorkerState.STARTING:
            if beat > 0.0:
                slot.life = became_ready(slot.life, now)
                logger.info(
                    "{} running: {} monitors checked", slot.describe_process(), len(slot.share)
                )
            elif now - slot.life.since > self._timeouts.boot:
                self._kill(
                    slot, now, f"sent no heartbeat within {self._timeouts.boot:g} s of starting"
                )
        elif slot.life.state is WorkerState.RUNNING:
            silent = now - beat
            limit = self._heartbeat_timeout()
            if silent > limit:
                self._kill(slot, now, f"made no progress for {silent:.1f} s (limit {limit:g} s)")

    def _heartbeat_timeout(self) -> float:
        if self._timeouts.heartbeat is not None:
            return self._timeouts.heartbeat
        return self.settings.heartbeat_timeout

    def _kill(self, slot: Slot, now: float, why: str) -> None:
        grace = self._timeouts.kill_grace
        logger.error(
            "{} {}: sending SIGTERM, SIGKILL in {:g} s", slot.describe_process(), why, grace
        )
        slot.life = kill_requested(slot.life, now, grace)
        self._send_signal(slot, signal.SIGTERM)

    def _sigkill(self, slot: Slot) -> None:
        logger.warning("{} still running: sending SIGKILL", slot.describe_process())
        slot.sigkill_sent = True
        self._send_signal(slot, signal.SIGKILL)

    def _send_signal(self, slot: Slot, signum: int) -> None:
        pid = None if slot.process is None else slot.process.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile; not yet reaped
                os.kill(pid, signum)

    # Stopping and reloading.

    def stop(self, why: str) -> None:
        """Graceful stop: no new checks; in-flight ones finish; SIGKILL at the shutdown timeout."""
        self._stopping = True
        self._notifier.send({"STOPPING": "1", "STATUS": f"stopping: {why}"})
        budget = max(0.0, self.settings.shutdown_timeout - STOP_MARGIN)
        logger.info("stopping ({}): waiting up to {:g} s for checks in flight", why, budget)
        self._stop_slots(self._all_slots(), budget)

    def stop_now(self, why: str) -> None:
        """Stop at once: SIGKILL every worker; checks in flight are lost."""
        logger.warning("stopping at once ({}): checks in flight are not recorded", why)
        self._exit_code = EXIT_INTERRUPTED
        self._stop_slots(self._all_slots(), 0.0)

    def _stop_slots(self, slots: Iterable[Slot], grace: float) -> None:
        now = self._clock()
        for slot in slots:
            before = slot.life.state
            slot.life = stop_requested(slot.life, now, grace)
            if before is not WorkerState.STOPPING and slot.life.state is WorkerState.STOPPING:
                self._send_signal(slot, signal.SIGTERM)

    def _kill_leftovers(self) -> None:
        """Last resort on the way out (an exception in the loop): no worker may outlive us."""
        for slot in self._all_slots():
            if slot.process is not None and slot.process.is_alive():
                self._send_signal(slot, signal.SIGKILL)
                slot.process.join()

    def reload(self) -> None:
        """Validate the configuration again; if valid, apply it with no pause in checking.

        Workers that stay get their new share over their pipe and reconcile their jobs in
        place; workers are started or stopped only if the worker count changes.
        """
        self._notifier.send(reloading_message())
        self._ready = False  # READY=1 again once every worker runs the new configuration
        try:
            new = self._load()
        except ConfigError as error:
            for problem in error.problems:
                logger.error("reload rejected: {}", problem)
            logger.error("reload rejected: still running the previous configuration")
            return
        old = self.settings
        logger.info("reload: {}", describe_diff(diff_monitors(old.monitors, new.monitors)))
        for name in restart_only_changes(old, new):
            logger.warning(
                "reload: MONITOR_{} changed; it takes effect at the next restart", name.upper()
            )
        self.settings = new
        self._apply_shares()

    def _apply_shares(self) -> None:
        count = self._worker_count(self.settings)
        shares = share_out(
            rates_of(self.settings.monitors), count, [slot.share for slot in self._slots]
        )
        now = self._clock()
        kept, leaving = self._slots[:count], self._slots[count:]
        for slot, share in zip(kept, shares, strict=False):
            slot.share = share
            if slot.link is not None:
                slot.link.send(self._share_message(share))
        for index in range(len(kept), count):
            slot = Slot(index, shares[index])
            kept.append(slot)
            self._spawn(slot, now)
        self._slots = kept
        if leaving:
            logger.info("reload: stopping {} workers", len(leaving))
            self._stop_slots(leaving, max(0.0, self.settings.shutdown_timeout - STOP_MARGIN))
            self._retiring.extend(s for s in leaving if has_process(s.life))


@dataclass(frozen=True, slots=True)
class MonitorDiff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]


def diff_monitors(old: Mapping[str, Monitor], new: Mapping[str, Monitor]) -> MonitorDiff:
    """Which monitors a new configuration adds, removes and changes (each sorted by name)."""
    return MonitorDiff(
        added=tuple(sorted(set(new) - set(old))),
        removed=tuple(sorted(set(old) - set(new))),
        changed=tuple(sorted(n for n in set(old) & set(new) if old[n] != new[n])),
    )


def describe_diff(diff: MonitorDiff) -> str:
    """``1 added (web), 0 removed, 2 changed (api, db)``, or ``no monitor changed``."""
    if not (diff.added or diff.removed or diff.changed):
        return "no monitor changed"
    parts = []
    for label, names in (
        ("added", diff.added),
        ("removed", diff.removed),
        ("changed", diff.changed),
    ):
        parts.append(f"{len(names)} {label}" + (f" ({summarize_names(names)})" if names else ""))
    return ", ".join(parts)


def restart_only_changes(old: Settings, new: Settings) -> list[str]:
    """Names of the settings that differ between ``old`` and ``new`` and only a restart applies."""
    fields = type(old).model_fields
    return [
        name
        for name in fields
        if name not in RELOADABLE and getattr(old, name) != getattr(new, name)
    ]


def summarize_names(names: Sequence[str], limit: int = 5) -> str:
    """``a, b, c`` or ``a, b, c, d, e and 7 more``."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def describe_exit(code: int | None) -> str:
    """``exited with code 1`` or ``was killed by SIGKILL``."""
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def rates_of(monitors: Mapping[str, Monitor]) -> dict[str, float]:
    """Each monitor's checks per second."""
    return {name: 1.0 / monitor.interval for name, monitor in monitors.items()}


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_daemon_logging(settings: Settings) -> None:
    """Every record to stderr and to the log file: the supervisor is the file's only writer."""
    log_file = settings.log_file
    options = None
    if log_file is not None:
        options = FileOptions(
            path=Path(log_file),
            rotation=settings.log_rotation,
            retention=settings.log_retention,
            compression=settings.log_compression,
        )
    configure_logging(
        level=settings.log_level,
        json=settings.log_json,
        stream=sys.stderr,
        file=options,
        stream_up_checks=False,
    )


def run_daemon(
    settings: Settings,
    *,
    environ: Mapping[str, str],
    env_file: Path | None,
    cwd: Path | None = None,
    notifier: Notifier = NULL_NOTIFIER,
) -> int:
    """``monitor run``: supervise the workers until stopped; return the exit code.

    A reload (SIGHUP) reads the configuration as the start did: the same environment (less the
    values it shares with the env file, see ``reload_environment``), env file and working
    directory. ``notifier`` tells systemd how the daemon is doing.
    """
    configure_daemon_logging(settings)
    for warning in settings.warnings():
        logger.warning(warning)
    load = partial(
        load_settings,
        environ=reload_environment(environ, settings.env_file),
        cwd=cwd or Path.cwd(),
        env_file=env_file,
    )
    supervisor = Supervisor(settings, load=load, notifier=notifier)
    with SignalInbox(DAEMON_SIGNALS) as inbox:
        code = supervisor.serve(inbox)
    logger.info("monitor stopped (exit code {})", code)
    return code


def reload_environment(environ: Mapping[str, str], env_file: Path | None) -> dict[str, str]:
    """The environment a reload reads: without the MONITOR_* values the env file gave it.

    systemd's ``EnvironmentFile=`` copies the env file into the environment, which outranks the
    file, so without this a reload would never see the file change.
    """
    if env_file is None:
        return dict(environ)
    try:
        text = env_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):  # read at start a moment ago; the reload will say why
        return dict(environ)
    return without_env_file_values(environ, parse_env_file(text).values)
