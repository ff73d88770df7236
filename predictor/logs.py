"""Logging for the predictor and the KServe/uvicorn loggers under it: a level, text or JSON, and
per-request lines off by default (KServe writes several per request, which costs more than a forecast).

Written as a dictConfig file that KServe also hands to every `--workers` process.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from datetime import datetime, timezone

from kserve.errors import InvalidInput

LEVEL_ENV = "PERF_PREDICTOR_LOG_LEVEL"
FORMAT_ENV = "PERF_PREDICTOR_LOG_FORMAT"
REQUEST_LOG_ENV = "PERF_PREDICTOR_REQUEST_LOG"
TEXT_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class ClientErrorFilter(logging.Filter):
    """KServe logs a full traceback at ERROR for every rejected request; one INFO line says as much."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, InvalidInput):
            record.msg, record.args, record.exc_info, record.exc_text = "rejected request: %s", (str(exc),), None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


class RequestLineFilter(logging.Filter):
    """Drops KServe's per-call gRPC line when request logging is off."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("grpc method:")


def dict_config(level: str, fmt: str, request_log: bool) -> dict:
    level = level.upper()
    request_level = "INFO" if request_log else "WARNING"
    filters = ["client_errors"] + ([] if request_log else ["request_lines"])
    formatter = {"()": f"{__name__}.JsonFormatter"} if fmt == "json" else {"format": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "filters": {
            "client_errors": {"()": f"{__name__}.ClientErrorFilter"},
            "request_lines": {"()": f"{__name__}.RequestLineFilter"},
        },
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "formatter": "default", "filters": filters}},
        "loggers": {
            **{name: {"handlers": ["stderr"], "level": level, "propagate": False}
               for name in ("perf_predictor", "kserve", "uvicorn", "uvicorn.error")},
            **{name: {"handlers": ["stderr"], "level": request_level, "propagate": False}
               for name in ("kserve.trace", "uvicorn.access")},
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    }


def write_config(level: str, fmt: str, request_log: bool) -> str:
    """The config as a JSON file (KServe passes a file path to its worker processes)."""
    fd, path = tempfile.mkstemp(prefix="perf-predictor-logging-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(dict_config(level, fmt, request_log), fh)
    return path
