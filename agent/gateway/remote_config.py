"""Remote configuration on the gateway (docs/config.md "Remote configuration").

With ``[remote_config] enabled`` in the local config file, the uplink subscribes to
``{prefix}/{gw}/config/set`` (through :class:`ConfigChannel`) and :class:`RemoteConfig` handles
each push:

1. decode within bounds, check it is for this gateway, verify its Ed25519 signature with the
   local ``public_key_file``, and refuse a serial not above the highest one accepted;
2. validate the config with the rules of ``validate`` and those of a pushed config
   (:mod:`agent.config.pushed`);
3. apply it through the reload path (the same as SIGHUP), keep it in ``data_dir/remote/``
   (:mod:`agent.gateway.remote_store`) and report ``applied`` on ``config/state``;
4. watch it for ``rollback_after`` (monotonic clock): once a device answered a poll and the
   uplink is connected, it becomes the last good config; if the time runs out first, the last
   good config (or the local file) is applied again the same way and ``rolled_back`` reported.

Any refusal is reported ``rejected`` with every problem; the running config goes on. A config
whose trial two restarts of the agent cut short (it crashed or was stopped each time) is
rolled back at the third start. No line logs the config's
text; problems quote at most a short excerpt of a bad value (never a secret-looking key's).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog

from agent.config import AgentConfig
from agent.config.pushed import load_pushed
from agent.errors import ConfigError, WireFormatError
from agent.gateway.remote_store import PushedMeta, RemoteStore
from agent.wire.config_push import (
    ConfigSet,
    ConfigState,
    ConfigStateName,
    config_sha256,
    config_topic,
    decode_config_set,
    encode_config_state,
)

if TYPE_CHECKING:
    from agent.gateway.scheduler import DeviceStats
    from agent.gateway.store import DataDirLock
    from agent.signing import PublicKey

log = structlog.get_logger(__name__)

MAX_TRIAL_STARTS = 2
CHECK_EVERY = 0.25  # seconds between looks at a config on trial


class Outcome(Protocol):
    """What the reload path says of a config it was handed."""

    @property
    def applied(self) -> bool: ...

    @property
    def problems(self) -> tuple[str, ...]: ...


class Poller(Protocol):
    name: str
    stats: DeviceStats


Apply = Callable[[AgentConfig], Awaitable[Outcome]]
# The running devices' pollers and whether the uplink is connected, now.
Health = Callable[[], tuple[Sequence[Poller], bool]]


class ConfigChannel:
    """The uplink's side of remote configuration: the topic it subscribes to for pushes (the
    latest one waits in :meth:`take`) and the retained report it publishes once connected."""

    def __init__(self, prefix: str, gw: str) -> None:
        self.set_topic = config_topic(prefix, gw, "set")
        self.state_topic = config_topic(prefix, gw, "state")
        self.topics: tuple[str, ...] = (self.set_topic,)
        self.due = asyncio.Event()  # a report waits to be published
        self.arrived = asyncio.Event()  # a push waits to be handled
        self._push: bytes | None = None
        self._report: bytes | None = None

    def received(self, topic: str, payload: bytes) -> None:
        # an empty retained payload: someone cleared the topic, nothing to apply
        if topic == self.set_topic and payload:
            self._push = payload  # a newer push makes an unhandled older one moot
            self.arrived.set()

    def take(self) -> bytes | None:
        push, self._push = self._push, None
        self.arrived.clear()
        return push

    def report(self, payload: bytes) -> None:
        self._report = payload
        self.due.set()

    def outgoing(self) -> list[tuple[str, bytes]]:
        return [] if self._report is None else [(self.state_topic, self._report)]

    def sent(self, topic: str, payload: bytes) -> None:
        if payload is self._report:
            self._report = None


@dataclass
class _Running:
    """What runs: a pushed config (``meta``) or the local file (``meta`` None)."""

    config: AgentConfig
    meta: PushedMeta | None


@dataclass
class _Trial:
    deadline: float
    # id(poller) → (poller, the polls it had answered when the config was applied)
    baseline: dict[int, tuple[Poller, int]]


class RemoteConfig:
    """Pushes handled one at a time; built by :meth:`start` before the runtime."""

    def __init__(self, local: AgentConfig, store: RemoteStore, key: PublicKey, *,
                 clock: Callable[[], float], monotonic: Callable[[], float]) -> None:
        assert local.uplink is not None
        self._local = local
        self._store = store
        self._key = key
        self._clock = clock
        self._monotonic = monotonic
        self._gw = local.gateway.id
        self._grace = local.remote_config.rollback_after
        self._base_dir = local.source_path.parent if local.source_path is not None else None
        self._local_sha = _file_sha(local.source_path)
        self.channel = ConfigChannel(local.uplink.topic_prefix, self._gw)
        self.running = _Running(local, None)
        self._trial_pending = False  # started on trial: watched from run()
        self._trial: _Trial | None = None
        self._last_payload: bytes | None = None
        self._lock: DataDirLock | None = None

    @classmethod
    def start(cls, local: AgentConfig, *, clock: Callable[[], float],
              monotonic: Callable[[], float]) -> RemoteConfig:
        """Read ``data_dir/remote/`` and choose the config to start with: the pushed one that
        ran last, else the local file (:attr:`running`)."""
        from agent.gateway.store import DataDirLock
        from agent.signing import load_public_key

        assert local.remote_config.public_key_file is not None  # checked by validate
        key = load_public_key(local.remote_config.public_key_file)
        store = RemoteStore(Path(local.gateway.data_dir))
        # Its own lock, before anything is written there: the agent's data_dir lock is taken
        # later, and a second agent on this data_dir must not count or roll back our trial.
        lock = DataDirLock.acquire(store.dir)
        store.load()
        remote = cls(local, store, key, clock=clock, monotonic=monotonic)
        remote._lock = lock
        try:
            remote._choose_at_start()
        except BaseException:
            lock.release()
            raise
        return remote

    def close(self) -> None:
        """Free ``data_dir/remote/`` (the agent stops)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _choose_at_start(self) -> None:
        current = self._store.state.current
        if current is not None and current.trial and current.starts >= MAX_TRIAL_STARTS:
            errors = [f"the agent restarted {current.starts + 1} times while it was on trial "
                      "and it never showed it works (the agent crashed or was stopped)"]
            self._store.roll_back()
            self.running = self._from_store("current")
            self._report_push("rolled_back", current.serial, current.sha256, errors,
                              restored=self.running.meta)
            log.error("remote_config_rolled_back", serial=current.serial, errors=errors,
                      restored_serial=self._serial(self.running.meta))
        current = self._store.count_start()
        self.running = self._from_store("current")
        self._trial_pending = current is not None and current.trial
        log.info("remote_config_enabled", running_serial=self._serial(self.running.meta),
                 running_sha256=self._running_sha(), on_trial=self._trial_pending,
                 highest_serial=self._store.state.highest_serial)

    def _from_store(self, which: str) -> _Running:
        """The pushed config ``current`` or ``good`` as kept, else the local file."""
        meta: PushedMeta | None = getattr(self._store.state, which)
        text = self._store.text(which)
        if meta is None or text is None:
            return _Running(self._local, None)
        try:
            return _Running(self._load(text), meta)
        except ConfigError as exc:
            log.error("remote_config_unusable", which=which, serial=meta.serial,
                      problems=exc.problems[:20])
            return _Running(self._local, None)

    def _load(self, text: str) -> AgentConfig:
        return load_pushed(text, local=self._local, base_dir=self._base_dir)

    def reload_source(self, local_source: Callable[[], AgentConfig]
                      ) -> Callable[[], AgentConfig]:
        """What SIGHUP reloads: the local file read again (its problems reported as for any
        reload), and while a pushed config runs, that one, as a restart would run it. A
        change of ``[remote_config]`` itself takes effect at the next start."""
        def source() -> AgentConfig:
            local = local_source()
            text = None if self.running.meta is None else self._store.text("current")
            if text is None:
                self._local = local  # a rollback goes back to the file as it is now
                self._local_sha = _file_sha(local.source_path)
                return local
            return load_pushed(text, local=local, base_dir=self._base_dir)

        return source

    # ------------------------------------------------------------------ running

    async def run(self, apply: Apply, health: Health) -> None:
        """Handle pushes and watch a config on trial, until cancelled."""
        if self._trial_pending:
            self._trial = self._new_trial(health)
        while True:
            try:
                payload = self.channel.take()
                if payload is not None:
                    await self._handle(payload, apply, health)
                    continue
                if self._trial is not None:
                    await self._watch_trial(apply, health)
            except Exception as exc:  # a bug or a failed write must not take the agent down
                log.exception("remote_config_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            timeout = CHECK_EVERY if self._trial is not None else None
            try:
                async with asyncio.timeout(timeout):
                    await self.channel.arrived.wait()
            except TimeoutError:
                pass

    def _new_trial(self, health: Health) -> _Trial:
        pollers, _ = health()
        return _Trial(self._monotonic() + self._grace.seconds,
                      {id(p): (p, p.stats.answered) for p in pollers})

    async def _handle(self, payload: bytes, apply: Apply, health: Health) -> None:
        if payload == self._last_payload:
            return  # the retained push again, after a reconnect
        self._last_payload = payload
        try:
            push = decode_config_set(payload)
        except WireFormatError as exc:
            self._reject(None, [str(exc)])
            return
        if push.gw != self._gw:
            self._reject(push, [f"config/set.gw: signed for gateway {push.gw!r}, this is "
                                f"{self._gw!r}"])
            return
        try:
            verified = await self._key.verifies_apart(push.sig, push.signed())
        except OSError as exc:  # the check could not run (no memory, no process): try later
            self._last_payload = None  # the retained push, delivered again, is checked again
            self._reject(push, [f"config/set.sig: could not be checked: {exc}"])
            return
        if not verified:
            self._reject(push, ["config/set.sig: does not verify with public_key_file "
                                f"{self._key.path} (signed with another key, or altered)"])
            return
        highest = self._store.state.highest_serial
        if push.serial == highest:
            # the last push handled (applied, rejected or rolled back, and reported), retained
            # and delivered again at a reconnect or after a restart
            log.debug("remote_config_seen_already", serial=push.serial)
            return
        if push.serial < highest:
            self._reject(push, [f"config/set.serial: {push.serial} is not above {highest}, "
                                "the highest serial this gateway accepted (an older config "
                                "replayed)"])
            return
        try:
            config = self._load(push.config)
        except ConfigError as exc:
            self._store.note_serial(push.serial)
            self._reject(push, exc.problems)
            return
        outcome = await apply(config)
        if not outcome.applied:
            self._store.note_serial(push.serial)
            self._reject(push, list(outcome.problems))
            return
        meta = PushedMeta(push.serial, push.sha256, push.issued)
        self._store.begin_trial(meta, push.config)
        self.running = _Running(config, meta)
        self._trial = self._new_trial(health)
        log.info("remote_config_applied", serial=push.serial, sha256=push.sha256,
                 rollback_after=self._grace.text)
        self._report_push("applied", push.serial, push.sha256, [])

    async def _watch_trial(self, apply: Apply, health: Health) -> None:
        trial = self._trial
        assert trial is not None
        pollers, connected = health()
        answered = [p for p in pollers if not p.stats.down
                    and p.stats.answered > trial.baseline.get(id(p), (p, 0))[1]]
        if (answered or not pollers) and connected:
            self._trial = None
            self._store.promote()
            log.info("remote_config_working", serial=self._serial(self.running.meta),
                     devices_answered=len(answered))
            return
        if self._monotonic() < trial.deadline:
            return
        errors = []
        if pollers and not answered:
            names = ", ".join(p.name for p in pollers[:10])
            more = f" and {len(pollers) - 10} more" if len(pollers) > 10 else ""
            errors.append(f"no device answered a poll within {self._grace.text}: "
                          f"{names}{more}")
        if not connected:
            errors.append(f"the uplink did not connect to the broker within {self._grace.text}")
        await self._roll_back(apply, errors)

    async def _roll_back(self, apply: Apply, errors: list[str]) -> None:
        self._trial = None
        failed = self.running.meta
        target = self._from_store("good")
        outcome = await apply(target.config)
        if not outcome.applied:
            errors = [*errors, "the last good config was refused too: "
                      + "; ".join(outcome.problems[:5])]
            log.error("remote_config_rollback_failed", problems=list(outcome.problems[:20]))
        else:
            self.running = target
        self._store.roll_back()
        log.error("remote_config_rolled_back", serial=self._serial(failed), errors=errors,
                  restored_serial=self._serial(target.meta))
        self._report_push("rolled_back", self._serial(failed),
                          None if failed is None else failed.sha256, errors,
                          restored=target.meta)

    # ------------------------------------------------------------------ reports

    def _reject(self, push: ConfigSet | None, problems: list[str]) -> None:
        serial = None if push is None else push.serial
        sha = None if push is None else push.sha256
        log.warning("remote_config_rejected", serial=serial, sha256=sha,
                    problems=problems[:20], problem_count=len(problems))
        self._report_push("rejected", serial, sha, problems)

    def _report_push(self, state: ConfigStateName, serial: int | None, sha: str | None,
                     errors: list[str], *, restored: PushedMeta | None = None) -> None:
        running = self.running.meta
        report = ConfigState(
            gw=self._gw, state=state, t=int(self._clock() * 1000), serial=serial, sha256=sha,
            errors=tuple(errors), running_serial=self._serial(running),
            running_sha256=self._running_sha(),
            restored_serial=self._serial(restored),
            restored_sha256=self._local_sha if restored is None else restored.sha256)
        self.channel.report(encode_config_state(report))

    def _running_sha(self) -> str | None:
        meta = self.running.meta
        return self._local_sha if meta is None else meta.sha256

    @staticmethod
    def _serial(meta: PushedMeta | None) -> int | None:
        return None if meta is None else meta.serial


def _file_sha(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return config_sha256(path.read_bytes())
    except OSError:
        return None

