"""JSON logs on stdout: one object per line, for the app and for gunicorn alike.

Every line has ``time`` (RFC 3339 UTC), ``level``, ``message`` and ``logger``; a line written
while a request is served also has that request's ``request_id``.
"""

from __future__ import annotations

import logging
import logging.config
import sys
from collections.abc import Mapping
from typing import Any

from gunicorn.glogging import Logger as _GunicornLogger
from pythonjsonlogger.orjson import OrjsonFormatter

from nexus.clock import rfc3339
from nexus.http import current_request_id


# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is a field.
_RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(OrjsonFormatter):
    """python-json-logger's orjson formatter with our field names and gunicorn's access atoms as fields.

    ``add_fields`` is ours: one pass over the record instead of the library's general renaming
    machinery, because it runs once per request.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__("%(message)s")

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data["time"] = rfc3339(record.created)
        log_data["level"] = record.levelname
        log_data["message"] = record.message
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES:
                log_data[key] = value
        log_data.update(message_dict)
        log_data["logger"] = record.name
        if record.name == "gunicorn.access" and isinstance(record.args, Mapping):
            _access_fields(log_data, record.args)


def _access_fields(log_data: dict[str, Any], atoms: Mapping[str, Any]) -> None:
    """Turn gunicorn's access-log atoms into the same fields as the app's request lines."""
    log_data.pop("args", None)
    request_id = atoms.get("{x-request-id}o")
    if request_id and request_id != "-":
        log_data["request_id"] = request_id
    log_data["method"] = atoms.get("m")
    log_data["path"] = atoms.get("U")
    status = str(atoms.get("s", ""))
    log_data["status"] = int(status) if status.isdigit() else status
    duration_us = atoms.get("D")
    if isinstance(duration_us, int):
        log_data["duration_ms"] = round(duration_us / 1000, 3)
    log_data["remote_addr"] = atoms.get("h")


class RequestIdFilter(logging.Filter):
    """Put the id of the request being served on every record written while serving it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "request_id" not in record.__dict__:
            request_id = current_request_id()
            if request_id is not None:
                record.request_id = request_id
        return True


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """Return the ``logging.config.dictConfig`` schema for JSON lines on stdout (gunicorn's too)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {"request_id": {"()": RequestIdFilter}},
        "handlers": {
            "stdout": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "json", "filters": ["request_id"]},
        },
        "root": {"level": level, "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
        },
    }


def _lighten_records() -> None:
    """Skip the work LogRecord does for fields we never print (caller frame, thread, process names)."""
    logging._srcfile = None  # the documented way to skip findCaller()
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def configure(level: str = "INFO") -> None:
    """Send JSON lines to stdout unless logging was already set up (by gunicorn or a test runner)."""
    _lighten_records()
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root.addHandler(handler)
    root.setLevel(level)


class GunicornLogger(_GunicornLogger):
    """gunicorn's logger with its error and access lines sent through our JSON handler.

    Unlike ``logconfig_dict``, this keeps gunicorn's access log off unless ``accesslog`` is set,
    so requests do not pay for a second line: the app already writes one per request.
    """

    def setup(self, cfg) -> None:
        super().setup(cfg)
        logging.config.dictConfig(logging_config(cfg.loglevel.upper()))
        _lighten_records()
