"""Log configuration. The default text format is the seed's::

    2025-08-12 05:56:10 info: Starting execution of task <id> for session <key>
"""

from __future__ import annotations

import logging

from litestar.logging.config import LoggingConfig

from async_tasks.settings import Settings


class SeedFormatter(logging.Formatter):
    """``<date time> <level>: <message>`` with a lower-case level, as in the seed."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)
        record.levelname = record.levelname.lower()
        return super().format(record)


def logging_config(settings: Settings) -> LoggingConfig:
    level = settings.log_level.upper()
    return LoggingConfig(
        formatters={"seed": {"()": SeedFormatter}},
        handlers={
            "queue_listener": {
                "class": "litestar.logging.standard.QueueListenerHandler",
                "level": "DEBUG",
                "formatter": "seed",
            },
        },
        loggers={
            "async_tasks": {"level": level, "handlers": ["queue_listener"], "propagate": False},
            "litestar": {"level": "WARNING", "handlers": ["queue_listener"], "propagate": False},
        },
        root={"level": "WARNING", "handlers": ["queue_listener"]},
        log_exceptions="never",  # our 500 handler logs the error once, with the route
    )
