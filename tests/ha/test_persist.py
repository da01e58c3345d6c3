"""The epochs a node persists: durable, read back as written, and refused when damaged (a
node that cannot tell which epochs it saw must not join)."""

from __future__ import annotations

import json

import pytest

from hsp_rdma.errors import ConfigError
from hsp_rdma.ha.persist import FILE, Epochs, EpochStore


def test_round_trip_and_no_temporary_left(tmp_path) -> None:
    store = EpochStore(tmp_path / "node")
    assert store.load() is None
    store.save(Epochs(3, 5, 2))
    assert EpochStore(tmp_path / "node").load() == Epochs(3, 5, 2)
    assert sorted(p.name for p in (tmp_path / "node").iterdir()) == [FILE]


DAMAGED = [
    "",
    "{",
    '{"epoch": 1}',
    '{"epoch": 4, "seen": 2, "active_since": 0}',  # seen below epoch
    '{"epoch": "x", "seen": 1, "active_since": 0}',
]


@pytest.mark.parametrize("text", DAMAGED)
def test_damaged_state_is_refused_naming_the_file(tmp_path, text: str) -> None:
    (tmp_path / FILE).write_text(text)
    with pytest.raises(ConfigError) as err:
        EpochStore(tmp_path).load()
    assert str(tmp_path / FILE) in str(err.value)


def test_state_dir_that_cannot_be_made_is_a_config_error(tmp_path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot create the state directory"):
        EpochStore(tmp_path / "file" / "sub")


def test_saved_json_is_what_load_reads(tmp_path) -> None:
    EpochStore(tmp_path).save(Epochs(7, 9, 7))
    assert json.loads((tmp_path / FILE).read_text()) == {"epoch": 7, "seen": 9,
                                                          "active_since": 7}
