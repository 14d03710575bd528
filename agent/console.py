"""What every command of ``ssc-agent`` shares: its exit codes and how it prints an error."""

from __future__ import annotations

import sys

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a process killed by SIGPIPE


def err(message: str) -> None:
    """``message`` on stderr, each line prefixed ``ssc-agent: ``."""
    for line in message.splitlines() or [message]:
        print(f"ssc-agent: {line}", file=sys.stderr)
