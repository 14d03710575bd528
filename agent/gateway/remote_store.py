"""What remote configuration keeps in the data_dir (``data_dir/remote/``), so that a restart
or a power cut runs the config the platform pushed last, and never takes an older push again.

- ``state.json``: the highest serial accepted, and which pushed configs are *current* (the one
  that runs, ``trial`` while it has not shown it works) and *good* (the last one that did);
  either may be absent (then the gateway's local config file stands in).
- ``current.toml``, ``good.toml``: their TOML text, exactly as signed.

Every file is replaced atomically (a temporary file, fsync, rename, fsync of the folder), the
texts before ``state.json``, which is the commit point: a power cut leaves the old state or the
new one. A text whose sha256 does not match the state is not used.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from agent.gateway.durable_file import replace_durably
from agent.wire.config_push import config_sha256

log = structlog.get_logger(__name__)

REMOTE_DIR = "remote"
STATE_FILE = "state.json"


@dataclass(frozen=True)
class PushedMeta:
    """A pushed config as kept: its serial, hash and signing time; ``trial`` while it has not
    shown it works; ``starts``: agent starts since it was applied, while on trial."""

    serial: int
    sha256: str
    issued: int
    trial: bool = False
    starts: int = 0


@dataclass(frozen=True)
class RemoteState:
    highest_serial: int = 0
    current: PushedMeta | None = None
    good: PushedMeta | None = None


class RemoteStore:
    """``data_dir/remote/``: read once at start, then updated at each step of a push."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / REMOTE_DIR
        self.state = RemoteState()

    def load(self) -> RemoteState:
        """The kept state; an unreadable one is logged and read as empty (the local file
        runs; serials start over, which only the platform's newer pushes can use)."""
        path = self.dir / STATE_FILE
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            self.state = RemoteState(int(obj["highest_serial"]), _meta(obj.get("current")),
                                     _meta(obj.get("good")))
        except FileNotFoundError:
            self.state = RemoteState()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("remote_config_state_unreadable", path=str(path), error=str(exc)[:200])
            self.state = RemoteState()
        return self.state

    def text(self, which: str) -> str | None:
        """The TOML of ``current`` or ``good``, if its file matches the state's hash."""
        meta: PushedMeta | None = getattr(self.state, which)
        if meta is None:
            return None
        path = self.dir / f"{which}.toml"
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.error("remote_config_file_unreadable", path=str(path), error=str(exc)[:200])
            return None
        if config_sha256(data) != meta.sha256:
            log.error("remote_config_file_mismatch", path=str(path), expected=meta.sha256)
            return None
        return data.decode("utf-8", errors="replace")

    def _commit(self, state: RemoteState, **texts: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for which, text in texts.items():
            replace_durably(self.dir / f"{which}.toml", text.encode("utf-8"))
        body = {"highest_serial": state.highest_serial,
                "current": None if state.current is None else asdict(state.current),
                "good": None if state.good is None else asdict(state.good)}
        replace_durably(self.dir / STATE_FILE, json.dumps(body, indent=1).encode())
        self.state = state

    def note_serial(self, serial: int) -> None:
        """A verified push was handled (applied or rejected): never take it or older again."""
        if serial > self.state.highest_serial:
            self._commit(replace(self.state, highest_serial=serial))

    def begin_trial(self, meta: PushedMeta, text: str) -> None:
        """``text`` runs now, on trial."""
        self._commit(RemoteState(max(self.state.highest_serial, meta.serial),
                                 replace(meta, trial=True, starts=0), self.state.good),
                     current=text)

    def count_start(self) -> PushedMeta | None:
        """The agent starts with the current config: one more start on trial, if it is."""
        current = self.state.current
        if current is None or not current.trial:
            return current
        current = replace(current, starts=current.starts + 1)
        self._commit(replace(self.state, current=current))
        return current

    def promote(self) -> None:
        """The current config works: it becomes the last good one."""
        current = self.state.current
        text = self.text("current")
        if current is None or text is None:
            return
        good = replace(current, trial=False, starts=0)
        self._commit(replace(self.state, current=good, good=good), good=text)

    def roll_back(self) -> None:
        """Back to the last good config (None: the local file)."""
        good = self.state.good
        texts = {}
        if good is not None:
            text = self.text("good")
            if text is not None:
                texts["current"] = text
        self._commit(replace(self.state, current=good if texts else None), **texts)


def _meta(obj: Any) -> PushedMeta | None:
    if obj is None:
        return None
    return PushedMeta(serial=int(obj["serial"]), sha256=str(obj["sha256"]),
                      issued=int(obj["issued"]), trial=bool(obj.get("trial", False)),
                      starts=int(obj.get("starts", 0)))
