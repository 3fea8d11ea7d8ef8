"""``--log-format json``: each log record as one JSON object on one line.

Every line has ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``, ``pid``
and ``message``. A call's line (``CallLog``) also has the fields it was made with, read from
the record's attributes (``extra``): ``method``, ``nodes``, ``status``, ``duration_ms`` and,
when known, ``rows``, ``peer`` and ``trace_id``. An exception's traceback, when a record
carries one, is in ``exception``, so that a line is always one line.
"""

import json
import logging
from datetime import UTC, datetime

# Record attributes copied into the object when the record has them.
CALL_FIELDS = ("method", "nodes", "rows", "status", "duration_ms", "peer", "trace_id")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for field in CALL_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def log_handler(log_format: str) -> logging.Handler:
    """A stderr handler writing ``text`` lines (the default) or ``json`` objects."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
        )
    return handler
