"""Every process logs one JSON object a line (issue 14) to its standard error, which
csbs-cluster and the test harness append to the process's log file: ts, level, logger,
message, process (the region's ID or "coordinator"), request_id (csbs.request_ids; null when
the line belongs to no request) and thread, and the traceback of an exception as `exception`.
An exception no code caught (in any thread) is logged the same way before the process goes on
or ends, so that the log stays JSON lines."""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from types import TracebackType

from csbs import request_ids


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self._process = process

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": self._process,
            "request_id": request_ids.current() or None,
            "thread": record.threadName,
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False)


def json_line(process: str, logger: str, message: str, level: str = "INFO") -> str:
    """One line as the processes write them, for a line written by another (csbs-cluster's
    mark of a start in a process's log file)."""
    record = logging.LogRecord(logger, logging.getLevelName(level), "", 0, message, None, None)
    return JsonFormatter(process).format(record)


def configure(process: str, level: int = logging.INFO) -> None:
    """JSON lines on standard error for the whole process, uncaught exceptions included."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # Python's warnings too, as JSON lines
    log = logging.getLogger("csbs.uncaught")

    def uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        log.critical("uncaught exception", exc_info=(kind, exc, tb))

    def uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None or isinstance(args.exc_value, SystemExit):
            return
        thread = args.thread.name if args.thread is not None else "?"
        log.critical(
            "uncaught exception in thread %s",
            thread,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )

    sys.excepthook = uncaught
    threading.excepthook = uncaught_in_thread
