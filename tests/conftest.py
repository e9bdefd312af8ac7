import io
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from loguru import logger

from monitor.logs import configure_logging
from tests.daemons import Daemon


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    """Every record from DEBUG up, in the text format, captured for the test to read."""
    stream = io.StringIO()
    configure_logging(level="DEBUG", json=False, stream=stream)
    yield stream
    logger.remove()
    logging.basicConfig(handlers=[], force=True)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start real daemons in tmp_path; each is stopped (and its workers killed) afterwards."""
    started: list[Daemon] = []

    def start(settings: Mapping[str, object], **environ: str) -> Daemon:
        daemon = Daemon(tmp_path, settings, **environ)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.close()
