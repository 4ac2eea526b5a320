"""dtc's messages go through stdlib ``logging``, under the ``dtc`` logger and its children
(``dtc.engine.trainer``, ``dtc.io``, ...): status lines at INFO, problems at WARNING.

The library only logs. In Python nothing below WARNING is shown unless you ask, as usual:
``logging.basicConfig(level=logging.INFO)`` (or a handler on ``logging.getLogger("dtc")``). The ``dtc``
command line calls :func:`use_cli_logging`, which prints INFO lines on stdout and warnings on stderr.
Results a command exists to print (tables, summaries) stay plain prints in ``dtc.cli``; warnings that
ask the user to fix their input (``DataWarning``) stay ``warnings.warn`` so they can be filtered.
"""
from __future__ import annotations

import logging
import sys

__all__ = ["use_cli_logging"]


class _ConsoleHandler(logging.Handler):
    """INFO to stdout, WARNING and above to stderr, looked up at each record: a command run inside a test
    (or any caller that swaps the streams) prints where the streams are now, not where they were."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.levelno >= logging.WARNING:
                stream, message = sys.stderr, f"{record.levelname.lower()}: {message}"
            else:
                stream = sys.stdout
            stream.write(message + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001  (logging's contract: report, never raise)
            self.handleError(record)


def use_cli_logging(level: int = logging.INFO) -> None:
    """Shows dtc's messages on the console at ``level`` and above (once per process, however often called)."""
    logger = logging.getLogger("dtc")
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        logger.addHandler(_ConsoleHandler())
    logger.setLevel(level)
