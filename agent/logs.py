"""structlog set-up: JSON lines when stderr is not a TTY (journald, files), pretty on a TTY.

Plain text (``--no-log-json``) carries colour codes only when stderr is a terminal and
``NO_COLOR`` is not set: in a file or the journal they would be noise.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog


def _colours() -> bool:
    return sys.stderr.isatty() and not os.environ.get("NO_COLOR")


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog and the stdlib loggers of our dependencies once, at start-up."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    use_json = not sys.stderr.isatty() if json is None else json
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if use_json
        else structlog.dev.ConsoleRenderer(colors=_colours())
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer]
        if use_json
        else [*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # pymodbus logs frame dumps on every failed request; paho warns about pending calls.
    # Our scheduler logs a device going down once, so silence them below WARNING/ERROR.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)
