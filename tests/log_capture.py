"""The pack's log lines as a list, for tests that assert on what a user would read."""
import logging
from contextlib import contextmanager

from wanfp4.log import get_logger


@contextmanager
def captured_lines():
    """Messages of the wanfp4 logger ("[INFO] ...", "[WARN] ...") emitted inside the `with`."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    handler = Collect()
    get_logger().addHandler(handler)
    try:
        yield lines
    finally:
        get_logger().removeHandler(handler)
