"""Log lines: colour codes only on a terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CODE = ("from agent.logs import configure_logging; import structlog; "
        "configure_logging('info', json=False); "
        "structlog.get_logger('t').warning('device_unavailable', device='m1')")


def _stderr(*, terminal: bool, no_color: bool = False) -> bytes:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    if no_color:
        env["NO_COLOR"] = "1"
    if not terminal:
        done = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, env=env,
                              capture_output=True, timeout=60, check=True)
        return done.stderr
    leader, follower = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-c", CODE], cwd=ROOT, env=env,
                                stderr=follower, stdout=subprocess.DEVNULL)
        os.close(follower)
        out = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal's other end closed
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(60) == 0
        return out
    finally:
        os.close(leader)


@pytest.mark.parametrize(("terminal", "no_color", "coloured"), [
    (False, False, False),  # a file, a pipe, the journal
    (True, False, True),
    (True, True, False),  # NO_COLOR on a terminal
])
def test_plain_text_is_coloured_only_on_a_terminal(
        terminal: bool, no_color: bool, coloured: bool) -> None:
    out = _stderr(terminal=terminal, no_color=no_color)
    assert b"device_unavailable" in out and b"m1" in out, out
    assert (b"\x1b[" in out) is coloured, out
