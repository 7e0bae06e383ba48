"""The SDK's own error logs in a notebook: one line each instead of a full traceback."""

from __future__ import annotations

import logging


class _OneLine(logging.Formatter):
    """Format SDK log records as one line, without the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        return f"[sdk {record.levelname.lower()}] {record.getMessage()}"

    def formatException(self, ei: object) -> str:  # noqa: N802 - logging API
        return ""


def tidy_sdk_logging() -> None:
    """Show the SDK's own error logs as one line each instead of full tracebacks."""
    logger = logging.getLogger("copilot")
    if not any(isinstance(h.formatter, _OneLine) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(_OneLine())
        handler.setLevel(logging.ERROR)
        logger.addHandler(handler)
        logger.propagate = False
