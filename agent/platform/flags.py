"""Command-line flags the platform's commands share (kept light: the command line imports it
to build its parsers, whatever command runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def add_sink_flags(parser: Any, *, required: bool = True) -> None:
    """``--sink`` and ``--sink-password-file``, as every command reading the receiver's
    database takes them."""
    parser.add_argument("--sink", metavar="URL", required=required,
                        help=("" if required else "required: ") + "the receiver's --sink: "
                        "sqlite:///file.db or postgresql://USER@HOST:PORT/DB (no password in "
                        "it)")
    parser.add_argument("--sink-password-file", type=Path, metavar="FILE",
                        help="PostgreSQL password (first line); default: libpq's PGPASSFILE "
                        "or ~/.pgpass")
