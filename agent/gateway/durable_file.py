"""Replacing a small file so that a crash or power cut leaves the old content or the new one,
never a mix: the seq sidecar next to the buffer, the pushed configs in ``data_dir/remote/``."""

from __future__ import annotations

import os
from pathlib import Path


def replace_durably(path: Path, data: bytes, *, sync_folder: bool = True) -> None:
    """Write ``data`` to ``path.tmp``, fsync it, rename it over ``path``, and (``sync_folder``)
    fsync the folder so the rename itself survives a power cut. OSError as raised."""
    tmp = path.with_name(f"{path.name}.tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync_folder:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
