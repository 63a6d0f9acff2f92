"""Logging: structlog events rendered as readable lines on the console and as one
JSON object per line in the night's log file.

Both go through the standard `logging` root, so warnings from libraries land in
the same places. `configure()` once per process; `night_log(path)` adds the
night's JSON file for the duration of a run.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import structlog

_SHARED = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _formatter(renderer) -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer])


def _route_to_stdlib() -> None:
    """Send structlog events through `logging` (idempotent), so that the night's
    file handler receives them whether or not a console was configured."""
    if not structlog.is_configured():
        structlog.configure(
            processors=_SHARED + [structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        )
        logging.getLogger("gppy").setLevel(logging.DEBUG)


def configure(verbose: bool = False) -> None:
    """Readable events on stderr (info and up, debug with `verbose`)."""
    _route_to_stdlib()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG if verbose else logging.INFO)
    console.setFormatter(_formatter(structlog.dev.ConsoleRenderer(
        colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback)))
    root = logging.getLogger()
    root.handlers = [console]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)


@contextmanager
def night_log(path: str | Path) -> Iterator[Path]:
    """Append every event (debug included) as JSON lines to `path` while inside."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(_formatter(structlog.processors.JSONRenderer()))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()


def get(name: str = "gppy"):
    _route_to_stdlib()
    return structlog.get_logger(name)
