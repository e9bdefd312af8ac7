"""The worker: its outbox, its log forwarding, and a real worker process on a real pipe."""

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import pytest
from loguru import logger

from monitor.logs import configure_logging
from monitor.results import CheckResult
from monitor.settings import make_monitor
from monitor.worker import (
    WORKER_EXIT_OK,
    WORKER_EXIT_ORPHANED,
    ForwardingStream,
    LogEntry,
    Outbox,
    Share,
    WorkerSpec,
    run_worker,
)
from tests.servers import respond, serve

SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture(autouse=True)
def _reset_loguru() -> Iterator[None]:
    yield
    logger.remove()
    logging.basicConfig(handlers=[], force=True)


def receive(conn: Connection, timeout: float = 5.0) -> list[object]:
    assert conn.poll(timeout), "nothing arrived in time"
    batch = conn.recv()
    assert isinstance(batch, list)
    return batch


def drain(reader: Connection) -> list[Any]:
    """Every message sent so far, whatever batches they came in."""
    received: list[Any] = []
    while reader.poll(0):
        received.extend(reader.recv())
    return received


def test_the_outbox_sends_what_it_is_given_in_order() -> None:
    reader, writer = multiprocessing.Pipe(duplex=False)
    outbox = Outbox(writer)
    entries = [LogEntry("INFO", f"message {i}") for i in range(1000)]
    for entry in entries:
        outbox.put(entry)
    outbox.close()
    assert drain(reader) == entries


def test_a_full_outbox_drops_and_reports_how_many() -> None:
    reader, writer = multiprocessing.Pipe(duplex=False)
    outbox = Outbox(writer, capacity=10)
    # Fill the pipe's buffer so that the sender blocks and the queue fills behind it.
    big = LogEntry("INFO", "x" * 1_000_000)
    for _ in range(15):
        outbox.put(big)
    for _ in range(50):
        outbox.put(LogEntry("INFO", "small"))
    received: list[object] = []
    deadline = time.monotonic() + 10
    while not any(isinstance(m, LogEntry) and "dropped" in m.message for m in received):
        assert time.monotonic() < deadline
        if reader.poll(0.1):
            received.extend(reader.recv())
    outbox.close()
    [report] = [m for m in received if isinstance(m, LogEntry) and "dropped" in m.message]
    assert report.level == "ERROR"
    dropped = int(report.message.split()[0])
    assert dropped >= 40
    assert len(received) - 1 + dropped == 65


def test_a_broken_pipe_exits_the_process_as_orphaned() -> None:
    reader, writer = multiprocessing.Pipe(duplex=False)
    reader.close()
    codes: list[int] = []
    outbox = Outbox(writer, exit_process=codes.append)
    outbox.put(LogEntry("INFO", "nobody listens"))
    outbox.close()
    assert codes == [WORKER_EXIT_ORPHANED]


def test_forwarded_records_keep_level_fields_origin_and_traceback() -> None:
    reader, writer = multiprocessing.Pipe(duplex=False)
    outbox = Outbox(writer)
    configure_logging(level="INFO", json=False, stream=ForwardingStream(outbox, 2))  # type: ignore[arg-type]
    logger.bind(monitor="api").warning("late by {} s", 0.5)
    logger.bind(lock=threading.Lock()).info("an unpicklable field travels as its repr")
    logger.debug("filtered out by the level")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.opt(exception=True).error("a bug")
    outbox.close()
    late, odd, bug = drain(reader)
    assert isinstance(odd.extra["lock"], str)
    assert "lock" in odd.extra["lock"]
    assert isinstance(late, LogEntry)
    assert (late.level, late.message) == ("WARNING", "late by 0.5 s")
    assert late.extra == {"monitor": "api", "worker": 2}
    assert late.function == "test_forwarded_records_keep_level_fields_origin_and_traceback"
    assert late.exception is None
    assert bug.level == "ERROR"
    assert bug.exception is not None
    assert bug.exception.startswith("Traceback (most recent call last):")
    assert "ValueError: boom" in bug.exception


def test_a_worker_process_checks_its_share_applies_a_new_one_and_stops_on_sigterm() -> None:
    with serve(respond(200, body=b"ok")) as server:
        share = Share((make_monitor("one", url=f"{server.url}one", interval=0.2),))
        ours, theirs = SPAWN.Pipe(duplex=True)
        heartbeat = SPAWN.RawValue("d", 0.0)
        spec = WorkerSpec(slot=0, share=share, log_level="INFO", supervisor_pid=os.getpid())
        process = SPAWN.Process(target=run_worker, args=(spec, theirs, heartbeat))
        process.start()
        theirs.close()
        try:
            results: list[CheckResult] = []
            entries: list[LogEntry] = []

            def take(until: object, timeout: float = 10.0) -> None:
                deadline = time.monotonic() + timeout
                while not until():  # type: ignore[operator]
                    assert time.monotonic() < deadline, "the worker did not deliver in time"
                    for message in receive(ours, deadline - time.monotonic()):
                        target = results if isinstance(message, CheckResult) else entries
                        target.append(message)  # type: ignore[arg-type]

            take(lambda: sum(r.monitor == "one" for r in results) >= 2)
            assert heartbeat.value > 0.0
            assert all(r.ok and r.scheduled is not None for r in results)
            ours.send(Share((make_monitor("two", url=f"{server.url}two", interval=0.2),)))
            take(lambda: sum(r.monitor == "two" for r in results) >= 2)
            assert process.pid is not None
            os.kill(process.pid, signal.SIGTERM)
            take(lambda: any("stopped after" in e.message for e in entries))
            process.join(10)
            assert process.exitcode == WORKER_EXIT_OK
        finally:
            if process.is_alive():
                process.kill()
                process.join()
        checked = {request.path for request in server.received}
        assert checked == {"/one", "/two"}
        assert server.requests == len(results)  # every check the target saw was delivered
