"""The password-file rule, one for ``validate``, the gateway's uplink and the platform's
receiver (docs/config.md, ``password_file``): the password is the file's first line without
its line end; a file that cannot be read, is not UTF-8 or whose first line is empty holds none.

Kept apart from the config models and from MQTT so that each of them imports it cheaply.
Nothing here ever puts a file's content in a message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

__all__ = ["PasswordFileProblem", "read_password_file"]

ProblemKind = Literal["unreadable", "not_utf8", "empty"]


class PasswordFileProblem(Exception):
    """Why ``path`` holds no password: ``kind`` for callers that word it their own way,
    ``reason`` as ``validate`` words it (after the file's name). Never holds the content."""

    def __init__(self, path: Path, kind: ProblemKind, strerror: str = "") -> None:
        self.path = path
        self.kind = kind
        self.strerror = strerror
        super().__init__(f"file {path} {self.reason}")

    @property
    def reason(self) -> str:
        if self.kind == "unreadable":
            return f"cannot be read: {self.strerror}"
        if self.kind == "not_utf8":
            return "is not UTF-8 text"
        return "is empty: put the password on its first line"


def read_password_file(path: Path) -> str:
    """The password in ``path``: its first line, without ``\\n`` or ``\\r\\n``.

    Read anew at each call, so a rotated password is used at the next connection.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PasswordFileProblem(path, "unreadable", exc.strerror or type(exc).__name__) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PasswordFileProblem(path, "not_utf8") from None
    password = text.split("\n", 1)[0].removesuffix("\r")
    if not password:
        raise PasswordFileProblem(path, "empty")
    return password
