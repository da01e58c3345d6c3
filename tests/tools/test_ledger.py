"""The drills' ledger workload on the host: any sequence of transfers keeps the sum, a torn or
damaged journal tail is detected and never misread, every acknowledged transfer is found or
reported lost, and a node that takes over makes ledger and journal agree again."""

from __future__ import annotations

import random
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsp_rdma.tools.drills.ledger import (
    HEADER_SIZE,
    JOURNAL_MIN,
    RECORD_SIZE,
    TRANSACTION_FIXED,
    Journal,
    Ledger,
    LedgerError,
    LedgerWorkload,
    MemoryDisk,
    MemoryPmem,
    Transfer,
    check_ledger,
    check_replay,
    encode_journal_record,
    ledger_size,
    memo_size_for,
    read_journal,
    recover_image,
    scan_journal,
    verify_acked,
)

ACCOUNTS = 8


def fresh(accounts: int = ACCOUNTS, memo: int = 0, disk: int = 1 << 16):
    pmem = MemoryPmem(ledger_size(accounts, memo, 4 if memo else 0))
    ledger = Ledger.format(pmem, accounts, initial_balance=100, memo_size=memo,
                           memo_slots=4 if memo else 0)
    d = MemoryDisk(disk)
    return pmem, d, LedgerWorkload(ledger, Journal(d))


def run(work: LedgerWorkload, n: int, seed: int = 1) -> list[int]:
    rng = random.Random(seed)
    acked = []
    for _ in range(n):
        t = work.random_transfer(rng)
        work.apply(t)
        acked.append(t.id)
    return acked


def test_a_fresh_ledger_checks_and_layout_is_as_declared() -> None:
    pmem, disk, _ = fresh()
    assert check_ledger(pmem.buf) == (True, [])
    assert HEADER_SIZE == 64 and RECORD_SIZE == 16 and TRANSACTION_FIXED == 96
    assert len(pmem.buf) == 64 + ACCOUNTS * 16
    assert read_journal(disk.buf) == []


transfers = st.lists(st.tuples(st.integers(-1, ACCOUNTS), st.integers(-1, ACCOUNTS),
                               st.integers(-5, 300)), max_size=60)


@settings(max_examples=200, deadline=None)
@given(transfers)
def test_any_sequence_of_transfers_keeps_the_sum(moves) -> None:
    """Valid transfers apply; invalid ones (bad account, same account, overdraft, zero or
    negative amount) are refused and change nothing, in P.mem or in the journal."""
    pmem, disk, work = fresh()
    for src, dst, amount in moves:
        t = Transfer(work.last_id + 1, src, dst, amount)
        before = (bytes(pmem.buf), bytes(disk.buf))
        try:
            work.apply(t)
        except LedgerError:
            assert (bytes(pmem.buf), bytes(disk.buf)) == before
        assert check_ledger(pmem.buf) == (True, [])
    assert check_replay(pmem.buf, disk.buf) == []
    assert sum(work.ledger.balance(i) for i in range(ACCOUNTS)) == ACCOUNTS * 100


def test_each_transfer_is_one_transaction_of_the_asked_size() -> None:
    sizes = []
    pmem = MemoryPmem(ledger_size(ACCOUNTS, memo_size_for(512), 4))

    @contextmanager
    def counting(commit: str):
        with MemoryPmem.transaction(pmem, commit) as tx:
            written = []

            class Tx:
                def write(self, offset, data):
                    written.append(len(data))
                    tx.write(offset, data)

            yield Tx()
        sizes.append(sum(written))

    pmem.transaction = counting  # type: ignore[method-assign]
    ledger = Ledger.format(pmem, ACCOUNTS, 100, memo_size_for(512), 4)
    work = LedgerWorkload(ledger, None)
    run(work, 10)
    assert sizes[1:] == [512] * 10 and pmem.transactions == 11
    with pytest.raises(LedgerError, match="at least 96 B"):
        memo_size_for(95)


def test_a_transaction_that_raises_writes_nothing() -> None:
    pmem = MemoryPmem(64)
    with pytest.raises(RuntimeError), pmem.transaction() as tx:
        tx.write(0, b"x" * 8)
        raise RuntimeError("the application died mid-transaction")
    assert pmem.buf == bytearray(64)


def test_damage_to_the_ledger_is_named() -> None:
    pmem, _, work = fresh()
    run(work, 20)
    bad = bytearray(pmem.buf)
    bad[HEADER_SIZE + 3 * RECORD_SIZE + 8] ^= 1  # a balance
    ok, problems = check_ledger(bad)
    assert not ok and any("sum of balances" in p for p in problems)
    bad = bytearray(pmem.buf)
    bad[40] ^= 0x80  # the last transfer's id, inside the header's CRC
    assert check_ledger(bad) == (False, ["header fails its CRC32C"])
    bad = bytearray(pmem.buf)
    bad[HEADER_SIZE + 2 * RECORD_SIZE] = 5  # record 2 claims account 5
    assert any("record 2 holds account 5" in p for p in check_ledger(bad)[1])
    assert check_ledger(bytes(len(pmem.buf)))[1][0].startswith("no ledger magic")
    with pytest.raises(LedgerError, match="damaged"):
        Ledger.open(MemoryPmem(len(pmem.buf)))


def journal_of(n: int, size: int = JOURNAL_MIN) -> tuple[bytes, list[Transfer]]:
    ts = [Transfer(i, i % 5, (i + 1) % 5, i * 3 + 1) for i in range(1, n + 1)]
    return b"".join(encode_journal_record(t, size) for t in ts), ts


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 6), st.integers(JOURNAL_MIN, 200), st.data())
def test_a_torn_journal_tail_is_detected_never_misread(n, size, data) -> None:
    """Cut anywhere, then followed by zeros or garbage: exactly the whole records before the
    cut come back, and the read says why it stopped when the tail is not clean."""
    full, ts = journal_of(n, size)
    cut = data.draw(st.integers(0, len(full)))
    tail = data.draw(st.sampled_from([b"", bytes(64), b"\xff" * 64, bytes(range(64))]))
    scan = scan_journal(full[:cut] + tail)
    whole = cut // size
    assert list(scan.records) == ts[:whole]
    assert scan.end == whole * size
    if cut % size:
        assert scan.torn is not None


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5), st.data())
def test_any_flipped_bit_in_a_record_ends_the_read_before_it(n, data) -> None:
    full, ts = journal_of(n, 64)
    bit = data.draw(st.integers(0, len(full) * 8 - 1))
    bad = bytearray(full)
    bad[bit // 8] ^= 1 << (bit % 8)
    records = read_journal(bad)
    assert records == ts[:bit // 8 // 64]


def test_a_journal_resumes_after_its_torn_tail_and_overwrites_it() -> None:
    full, _ = journal_of(3)
    disk = MemoryDisk(1024)
    disk.buf[:len(full) + 10] = full + b"\x01" * 10  # record 4 was cut mid-write
    j = Journal.resume(disk, disk.buf)
    assert (j.last_id, j.end) == (3, len(full))
    j.append(Transfer(4, 1, 2, 3))
    assert [t.id for t in read_journal(disk.buf)] == [1, 2, 3, 4]
    with pytest.raises(LedgerError, match="does not follow"):
        j.append(Transfer(9, 1, 2, 3))
    with pytest.raises(LedgerError, match="past the end"):
        Journal(MemoryDisk(10)).append(Transfer(1, 0, 1, 1))
    with pytest.raises(LedgerError, match="does not fit a journal record"):
        Journal(MemoryDisk(100)).append(Transfer(1, -1, 1, 1))


def test_verify_acked_names_what_the_survivor_lacks() -> None:
    pmem, disk, work = fresh()
    acked = run(work, 30)
    assert verify_acked(acked, pmem.buf, disk.buf) == []
    assert verify_acked(acked + [31, 32], pmem.buf, disk.buf) == [31, 32]
    # the standby's journal stopped at 25 (a lost disk write), its ledger has them all
    short = bytearray(disk.buf)
    short[25 * JOURNAL_MIN:] = bytes(len(short) - 25 * JOURNAL_MIN)
    assert verify_acked(acked, pmem.buf, short) == list(range(26, 31))
    assert verify_acked(acked, None, short) == list(range(26, 31))
    assert verify_acked(acked, pmem.buf, None) == []
    assert verify_acked(acked, bytes(len(pmem.buf)), None) == acked  # no ledger at all


def test_recover_after_the_journal_got_ahead_replays_it() -> None:
    """Killed between the journal's flush and the P.mem transaction: the journal holds the
    transfer, the ledger does not; the node taking over replays it, then carries on."""
    pmem, disk, work = fresh()
    run(work, 10)
    t = work.random_transfer(random.Random(7))
    work.journal.append(t)  # the P.mem transaction never happened
    ledger = Ledger.open(pmem)
    again = LedgerWorkload.recover(ledger, disk, disk.buf, accounts=ACCOUNTS)
    assert ledger.last_id == again.journal.last_id == 11
    run(again, 5, seed=3)
    assert check_replay(pmem.buf, disk.buf) == []
    assert check_ledger(pmem.buf) == (True, [])


def test_recover_after_the_journal_lost_a_record_re_appends_it() -> None:
    """The standby got the P.mem transaction but not the journal write: the header's last
    transfer restores the record."""
    pmem, disk, work = fresh()
    run(work, 10)
    disk.buf[9 * JOURNAL_MIN:10 * JOURNAL_MIN] = bytes(JOURNAL_MIN)
    again = LedgerWorkload.recover(Ledger.open(pmem), disk, disk.buf)
    assert again.journal.last_id == 10 and check_replay(pmem.buf, disk.buf) == []
    disk.buf[8 * JOURNAL_MIN:] = bytes(len(disk.buf) - 8 * JOURNAL_MIN)
    with pytest.raises(LedgerError, match="more than the one interrupted transfer"):
        LedgerWorkload.recover(Ledger.open(pmem), disk, disk.buf)


def test_recover_image_judges_what_a_takeover_would_serve() -> None:
    """CI, n+1 on siw: active b was killed between its journal write (replicated) and its
    P.mem transaction; the standby host's never-promoted session for b held the journal one
    transfer ahead. Raw, the replay check names it; recovered as a takeover would, it is
    clean; the inputs are left untouched; what a takeover cannot repair stays named."""
    pmem, disk, work = fresh()
    run(work, 10)
    work.journal.append(work.random_transfer(random.Random(7)))
    raw_pmem, raw_disk = bytes(pmem.buf), bytes(disk.buf)
    assert any("journal ends at transfer 11, ledger at 10" in p
               for p in check_replay(raw_pmem, raw_disk))
    ledger, journal = recover_image(raw_pmem, raw_disk)
    assert check_replay(ledger, journal) == [] and check_ledger(ledger) == (True, [])
    assert verify_acked(list(range(1, 12)), ledger, journal) == []
    assert (bytes(pmem.buf), bytes(disk.buf)) == (raw_pmem, raw_disk)
    # a consistent image is unchanged
    pmem2, disk2, work2 = fresh()
    run(work2, 10)
    assert recover_image(pmem2.buf, disk2.buf) == (bytes(pmem2.buf), bytes(disk2.buf))
    # the ledger two transfers past its journal: beyond what a takeover repairs, returned as
    # it was for the checkers to name
    disk2.buf[8 * JOURNAL_MIN:] = bytes(len(disk2.buf) - 8 * JOURNAL_MIN)
    ledger, journal = recover_image(pmem2.buf, disk2.buf)
    assert (ledger, journal) == (bytes(pmem2.buf), bytes(disk2.buf))
    assert check_replay(ledger, journal) != []
    assert recover_image(None, disk.buf) == (None, bytes(disk.buf))


def test_workloads_of_one_target() -> None:
    disk = MemoryDisk(1 << 14)
    only_disk = LedgerWorkload(None, Journal(disk, record_size=256), accounts=4)
    acked = run(only_disk, 20)
    assert verify_acked(acked, None, disk.buf) == []
    assert all(0 <= t.from_account < 4 and t.from_account != t.to_account
               for t in read_journal(disk.buf))
    with pytest.raises(LedgerError, match="P.mem, a disk, or both"):
        LedgerWorkload(None, None)
    with pytest.raises(LedgerError, match="needs .* of P.mem"):
        Ledger.format(MemoryPmem(100), ACCOUNTS)
