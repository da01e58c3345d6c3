"""The persisted P.mem (ha/pmem_store.py): what a restart gets back, torn and damaged logs,
checkpoints, a size that does not match; and a node whose P.mem survives its restart."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsp_rdma.errors import ConfigError
from hsp_rdma.ha import pmem_store
from hsp_rdma.ha.pmem_store import LOG, PmemStore

SIZE = 64 << 10


def fresh(tmp_path, size=SIZE):
    return PmemStore(tmp_path / "pmem", size)


def test_a_new_store_is_zeroed_and_says_so(tmp_path):
    s = fresh(tmp_path)
    buf = bytearray(SIZE)
    assert s.load(buf) is False and buf == bytes(SIZE)
    s.close()


def test_records_come_back_after_a_restart(tmp_path):
    s = fresh(tmp_path)
    s.record([(0, b"abc"), (4096, b"x" * 100)], durable=True)
    s.record([(1, b"Z")], durable=False)
    assert s.syncs == 1 and s.records == 2
    s.close()
    buf = bytearray(SIZE)
    r = fresh(tmp_path)
    assert r.load(buf) is True
    assert buf[:3] == b"aZc" and buf[4096:4196] == b"x" * 100 and r.replayed == 2
    r.close()


def test_a_torn_last_record_is_not_applied_and_is_cut_off(tmp_path):
    s = fresh(tmp_path)
    s.record([(0, b"first")], durable=True)
    s.record([(100, b"second")], durable=True)
    s.close()
    log = tmp_path / "pmem" / LOG
    data = log.read_bytes()
    log.write_bytes(data[:-3])  # the second record torn
    # the image got the second write too (it follows the log): a torn log record means the
    # image may hold part of it; replay must not be trusted beyond the log, so make the image
    # stale as a crash between log and image would leave it
    img = tmp_path / "pmem" / pmem_store.IMAGE
    raw = bytearray(img.read_bytes())
    raw[100:106] = bytes(6)
    img.write_bytes(raw)
    buf = bytearray(SIZE)
    r = fresh(tmp_path)
    assert r.load(buf) is True
    assert buf[:5] == b"first" and buf[100:106] == bytes(6)
    assert "torn" in r.dropped and r.replayed == 1
    r.record([(200, b"third")], durable=True)  # new records follow whole ones
    r.close()
    buf = bytearray(SIZE)
    r2 = fresh(tmp_path)
    r2.load(buf)
    assert buf[200:205] == b"third" and r2.replayed == 2 and not r2.dropped
    r2.close()


def test_a_damaged_record_ends_the_replay(tmp_path):
    s = fresh(tmp_path)
    s.record([(0, b"good")], durable=True)
    s.record([(10, b"bad!")], durable=True)
    s.close()
    log = tmp_path / "pmem" / LOG
    raw = bytearray(log.read_bytes())
    raw[-1] ^= 0xFF
    log.write_bytes(raw)
    r = fresh(tmp_path)
    r.load(bytearray(SIZE))
    assert r.replayed == 1 and "CRC" in r.dropped
    r.close()


def test_checkpoint_empties_the_log_and_keeps_everything(tmp_path, monkeypatch):
    monkeypatch.setattr(pmem_store, "CHECKPOINT", 4096)
    s = fresh(tmp_path)
    for i in range(40):
        s.record([(i * 1000, bytes([i]) * 500)], durable=False)
    assert s.checkpoints >= 4 and s.log_bytes < 4096 + 600
    s.close()
    buf = bytearray(SIZE)
    r = fresh(tmp_path)
    r.load(buf)
    for i in range(40):
        assert buf[i * 1000:i * 1000 + 500] == bytes([i]) * 500
    r.close()


def test_a_store_of_another_size_is_refused(tmp_path):
    fresh(tmp_path).close()
    with pytest.raises(ConfigError, match=r"holds 65536 bytes but \[pmem\] size is 131072"):
        fresh(tmp_path, 2 * SIZE)


@settings(max_examples=60, deadline=None)
@given(txs=st.lists(st.lists(st.tuples(st.integers(0, SIZE - 64), st.binary(min_size=1,
                                                                              max_size=64)),
                             min_size=1, max_size=4), min_size=1, max_size=12),
       cut=st.integers(0, 10_000))
def test_replay_gives_a_prefix_of_whole_transactions(tmp_path_factory, txs, cut):
    # Whatever byte the log is cut at, the loaded P.mem is the image after some prefix of
    # the transactions: never one applied in part.
    d = tmp_path_factory.mktemp("prop")
    s = PmemStore(d, SIZE)
    states = [bytes(SIZE)]
    mem = bytearray(SIZE)
    for tx in txs:
        for off, data in tx:
            mem[off:off + len(data)] = data
        states.append(bytes(mem))
        s.record(tx, durable=False)
    s.close()
    log = d / LOG
    raw = log.read_bytes()
    log.write_bytes(raw[:cut % (len(raw) + 1)])
    # the image as a crash right after the log write of the first lost record could leave
    # it: with that record's writes missing (the image lags the log)
    img = d / pmem_store.IMAGE
    img.write_bytes(bytes(SIZE))  # the worst case: nothing reached the image
    buf = bytearray(SIZE)
    r = PmemStore(d, SIZE)
    r.load(buf)
    r.close()
    assert bytes(buf) in states
    assert bytes(buf) == states[r.replayed]
