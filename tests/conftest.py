import io
import logging
from collections.abc import Iterator

import pytest
from loguru import logger

from monitor.logs import configure_logging


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    """Every record from DEBUG up, in the text format, captured for the test to read."""
    stream = io.StringIO()
    configure_logging(level="DEBUG", json=False, stream=stream)
    yield stream
    logger.remove()
    logging.basicConfig(handlers=[], force=True)
