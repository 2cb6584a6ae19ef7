"""How node and relay processes log: plain text lines, or one JSON object per line (``--log-format json``).

JSON lines go through ``python-json-logger``: each carries ``time``, ``level``, ``logger`` and ``message``,
the exception's traceback as one field when there is one, and whatever the call put in ``extra=`` (for
example ``session_id`` or ``request_id``), so a log pipeline (journald, docker, Loki) gets one event per line
with its ids as fields instead of parsing them out of prose.
"""

from __future__ import annotations

import logging
import sys

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(name)s %(message)s"


def json_formatter() -> logging.Formatter:
    """A formatter that writes each record as one JSON object (ids given in ``extra=`` become fields)."""
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger", "exc_info": "exception"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )


def configure_logging(log_format: str = "text", level: int = logging.INFO) -> None:
    """Send the root logger's records to stderr in ``log_format`` (``text`` or ``json``).

    Raises:
        ValueError: an unknown format.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    if log_format == "json":
        # Every stderr line must be one JSON event: warnings become log records, and progress bars (a weight
        # load's, redrawn with \r) go quiet; the node's own progress still arrives as log events.
        logging.captureWarnings(True)
        try:
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()
        except ImportError:
            pass
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
