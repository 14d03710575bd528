"""``data_dir/remote/``: what a restart finds after each step of a push (real files)."""

from __future__ import annotations

from pathlib import Path

from agent.gateway.remote_store import PushedMeta, RemoteStore
from agent.wire.config_push import config_sha256

A = '[gateway]\nid = "a"\n'
B = '[gateway]\nid = "b"\n'


def _meta(serial: int, text: str) -> PushedMeta:
    return PushedMeta(serial, config_sha256(text.encode()), issued=serial * 10)


def _reopened(data_dir: Path) -> RemoteStore:
    store = RemoteStore(data_dir)
    store.load()
    return store


def test_each_step_is_what_a_restart_finds(tmp_path: Path) -> None:
    store = _reopened(tmp_path)
    assert store.state.current is None
    assert store.text("current") is None

    store.begin_trial(_meta(5, A), A)
    again = _reopened(tmp_path)
    assert again.state.highest_serial == 5
    assert again.state.current == PushedMeta(5, config_sha256(A.encode()), 50, trial=True)
    assert again.text("current") == A
    assert again.state.good is None

    assert again.count_start() == PushedMeta(5, config_sha256(A.encode()), 50, trial=True,
                                             starts=1)
    again.promote()
    good = _reopened(tmp_path)
    assert good.state.good == good.state.current == _meta(5, A)
    assert good.text("good") == A
    assert good.count_start() == _meta(5, A)  # not on trial: no start counted

    good.begin_trial(_meta(9, B), B)
    good.roll_back()
    back = _reopened(tmp_path)
    assert back.state.current == _meta(5, A)
    assert back.text("current") == A
    assert back.state.highest_serial == 9  # a rolled-back serial is never taken again

    back.note_serial(7)  # lower: changes nothing
    assert _reopened(tmp_path).state.highest_serial == 9
    assert not list((tmp_path / "remote").glob("*.tmp"))


def test_rollback_without_a_good_push_goes_to_the_local_file(tmp_path: Path) -> None:
    store = _reopened(tmp_path)
    store.begin_trial(_meta(3, A), A)
    store.roll_back()
    back = _reopened(tmp_path)
    assert back.state.current is None
    assert back.state.highest_serial == 3


def test_a_text_that_does_not_match_its_hash_is_not_used(tmp_path: Path) -> None:
    store = _reopened(tmp_path)
    store.begin_trial(_meta(3, A), A)
    (tmp_path / "remote" / "current.toml").write_text(B)  # torn or edited by hand
    assert _reopened(tmp_path).text("current") is None


def test_an_unreadable_state_reads_as_empty(tmp_path: Path) -> None:
    (tmp_path / "remote").mkdir()
    (tmp_path / "remote" / "state.json").write_text("{not json")
    assert _reopened(tmp_path).state.current is None
