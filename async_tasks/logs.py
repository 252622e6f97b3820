"""Log formats and configuration. The default text format::

    2025-08-12 05:56:10 info: Starting execution of task <id> for session <key> [request_id=demo-42]

``<date time> <level>: <message>``; a line written for a request, or for a
task a request created, ends with `` [request_id=<id>]`` (the ``X-Request-ID`` of that
request), so text logs can be searched by request id too.

``LOG_FORMAT=json`` writes one JSON object per line instead: ``timestamp``,
``level``, ``logger``, ``message`` and, where they apply, ``request_id``,
``session_key``, ``task_id``, ``executor``, ``status``, ``duration_ms``, ``reason``
and ``error``. The context fields come from the context variables of
`async_tasks.context` (`ContextFilter`) unless a call passes them in ``extra=``.
Nothing sensitive is logged: session keys are random or keyed hashes, never a
token or an IP.
"""

from __future__ import annotations

import logging
import logging.config
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

from async_tasks.context import executor_var, request_id_var, session_key_var, task_id_var
from async_tasks.settings import EngineSettings

#: Record attributes filled from the log context when a call does not set them.
CONTEXT_FIELDS = (
    ("request_id", request_id_var),
    ("session_key", session_key_var),
    ("task_id", task_id_var),
    ("executor", executor_var),
)
#: Record attributes a JSON line carries when they are set (context or ``extra=``).
JSON_FIELDS = ("request_id", "session_key", "task_id", "executor", "status", "duration_ms", "reason", "error")


class TextFormatter(logging.Formatter):
    """``<date time> <level>: <message>`` with a lower-case level, and `` [request_id=<id>]``
    when the record carries a request id (see `ContextFilter`)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)
        record.levelname = record.levelname.lower()
        request_id = getattr(record, "request_id", None)
        if request_id:
            record.msg, record.args = f"{record.getMessage()} [request_id={request_id}]", None
        return super().format(record)


class ContextFilter(logging.Filter):
    """Copies the log context (request id, session key, task id, executor) onto each
    record that does not carry them already. Attach it to handlers: it must run in
    the thread and context of the logging call (a queue handler's filters do)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for attr, var in CONTEXT_FIELDS:
            if getattr(record, attr, None) is None:
                setattr(record, attr, var.get())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for attr in JSON_FIELDS:
            value = getattr(record, attr, None)
            if value is not None:
                line[attr] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(line, enc_hook=str).decode()


def flush_logs() -> None:
    """Write out every queued record now (before a hard exit skips ``atexit``)."""
    seen: set[int] = set()
    for logger in (logging.getLogger(), logging.getLogger("async_tasks"), logging.getLogger("litestar")):
        for handler in logger.handlers:
            listener = getattr(handler, "listener", None)
            if listener is None or id(listener) in seen or getattr(listener, "_thread", None) is None:
                continue
            seen.add(id(listener))
            listener.stop()  # processes what is queued, then joins its thread
        for handler in logger.handlers:
            handler.flush()
    sys.stderr.flush()


def logging_dict(
    settings: EngineSettings, handler: dict[str, Any] | None = None, handler_name: str = "async_tasks"
) -> dict[str, Any]:
    """The `logging.config.dictConfig` schema of our logs: one handler (stderr unless
    given) with the configured format and the context filter, for our loggers,
    Litestar's and uvicorn's (warnings) and the root logger.

    uvicorn's loggers are taken over so that ``uvicorn async_tasks.web:create_app
    --factory`` writes the same lines as ``async-tasks serve``: its errors in our
    format, its start-up chatter left out, and no access log (it would show client
    addresses, which are never logged; every response carries ``X-Request-ID``)."""
    level = settings.log_level.upper()
    handler = handler or {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"text": {"()": TextFormatter}, "json": {"()": JsonFormatter}},
        "filters": {"context": {"()": ContextFilter}},
        "handlers": {
            handler_name: {
                **handler,
                "level": "DEBUG",
                "formatter": "json" if settings.log_format == "json" else "text",
                "filters": ["context"],
            }
        },
        "loggers": {
            "async_tasks": {"level": level, "handlers": [handler_name], "propagate": False},
            "litestar": {"level": "WARNING", "handlers": [handler_name], "propagate": False},
            "uvicorn": {"level": "WARNING", "handlers": [handler_name], "propagate": False},
            "uvicorn.error": {"level": "WARNING", "handlers": [], "propagate": True},
            "uvicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
            # SAQ logs each job at info and a warning at every worker stop; its errors still show.
            "saq": {"level": "ERROR", "handlers": [handler_name], "propagate": False},
        },
        "root": {"level": "WARNING", "handlers": [handler_name]},
    }


def configure_logging(settings: EngineSettings) -> None:
    """Set up our logs in a process without the web app (a worker, a script)."""
    logging.config.dictConfig(logging_dict(settings))
