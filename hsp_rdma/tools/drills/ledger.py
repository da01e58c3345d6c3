"""The drills' workload: a ledger of accounts in P.mem, each transfer ONE transaction, and an
append-only journal of the transfers on a replicated disk; plus the checkers a drill runs on
the survivor (the sum of balances never changes; every acknowledged transfer is there).

P.mem layout, little-endian, declared once below:

    header   HEADER_FORMAT (64 B): magic "HSLG", version, record size, account count, memo
             size, memo slots, initial balance, total, last transfer (id, from, to, amount),
             CRC32C of the header with its CRC field zero; rewritten by every transfer
    records  one RECORD_FORMAT (16 B) per account: account number, 0, balance
    memos    ``memo_slots`` slots of ``memo_size`` bytes: each transfer fills slot id % slots,
             so a transaction writes as many bytes as the drill's scenario asks

Journal record (disk), appended at the end, flushed before the P.mem transaction:
JOURNAL_FORMAT (magic "HSJR", version, record size, id, from, to, amount), padding to the
record size (a pattern of the id), then the CRC32C of all that. A zero magic is the clean end;
anything else that does not check (cut, bad size, bad CRC) is a torn tail and ends the read.

The transfer is acknowledged only after both writes returned: the journal is a redo log, and
the header's last transfer lets a survivor re-append a journal record the disk lost, so
``recover`` makes ledger and journal agree again after any single interrupted transfer.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from typing import Protocol

from hsp_rdma.core.frames import crc32c
from hsp_rdma.errors import HspError

Buffer = bytes | bytearray | memoryview

LEDGER_MAGIC = b"HSLG"
LEDGER_VERSION = 1
HEADER_FIELDS = ("magic", "version", "record_size", "accounts", "memo_size", "memo_slots",
                 "initial_balance", "total", "last_id", "last_from", "last_to", "last_amount",
                 "crc32c")
HEADER_FORMAT = "<4sHHIIIqqQIIqI"
HEADER = struct.Struct(HEADER_FORMAT)
HEADER_SIZE = HEADER.size  # 64
RECORD_FIELDS = ("account", "reserved", "balance")
RECORD = struct.Struct("<IIq")
RECORD_SIZE = RECORD.size
# the fixed bytes of a transfer's transaction: header, two records
TRANSACTION_FIXED = HEADER_SIZE + 2 * RECORD_SIZE

JOURNAL_MAGIC = b"HSJR"
JOURNAL_VERSION = 1
JOURNAL_FIELDS = ("magic", "version", "record_size", "id", "from_account", "to_account",
                  "amount")
JOURNAL = struct.Struct("<4sHIQIIq")
_CRC = struct.Struct("<I")
JOURNAL_MIN = JOURNAL.size + _CRC.size
JOURNAL_MAX = 1 << 20

MAX_ACCOUNTS = 1 << 24
MAX_BALANCE = 1 << 40  # per account, so no sum can overflow the header's int64


class LedgerError(HspError):
    """The ledger or its journal cannot be used as asked (damaged, full, a bad transfer)."""


# -- what the workload writes through: the node engine's P.mem and disk fit these ----------

class TransactionWriter(Protocol):
    def write(self, offset: int, data: Buffer) -> None: ...


class TransactionSink(Protocol):
    """P.mem as the workload sees it: ``transaction(commit=...)`` is a context manager whose
    writes land together when it exits normally and not at all when it raises; ``view()``
    reads the region (the node engine's ``node.pmem``)."""

    def transaction(self, commit: str) -> AbstractContextManager[TransactionWriter]: ...

    def view(self) -> memoryview: ...


class DiskSink(Protocol):
    """A replicated disk as the journal sees it (the node engine's ``node.disk[name]``)."""

    def write(self, offset: int, data: Buffer) -> None: ...

    def flush(self) -> None: ...


class MemoryPmem:
    """In-memory TransactionSink for host tests: a transaction's writes are applied when it
    exits normally, dropped when it raises."""

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.transactions = 0

    @contextmanager
    def transaction(self, commit: str = "applied") -> Iterator[TransactionWriter]:
        pending: list[tuple[int, bytes]] = []
        size = len(self.buf)

        class _Tx:
            def write(self, offset: int, data: Buffer) -> None:
                if offset < 0 or offset + len(data) > size:
                    raise LedgerError(f"write of {len(data)} B at {offset} is outside the "
                                      f"{size} B region")
                pending.append((offset, bytes(data)))

        yield _Tx()
        for offset, data in pending:
            self.buf[offset:offset + len(data)] = data
        self.transactions += 1

    def view(self) -> memoryview:
        return memoryview(self.buf)


class MemoryDisk:
    """In-memory DiskSink for host tests; ``flushes`` counts flush calls."""

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.flushes = 0

    def write(self, offset: int, data: Buffer) -> None:
        if offset < 0 or offset + len(data) > len(self.buf):
            raise LedgerError(f"journal write of {len(data)} B at {offset} is past the end of "
                              f"the {len(self.buf)} B disk: give the drill a larger disk")
        self.buf[offset:offset + len(data)] = data

    def flush(self) -> None:
        self.flushes += 1


# -- transfers and journal records --------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Transfer:
    """Move ``amount`` from one account to another; ``id`` grows by one per transfer."""

    id: int
    from_account: int
    to_account: int
    amount: int


def memo_size_for(transaction_size: int) -> int:
    """The memo bytes that make a transfer's P.mem transaction ``transaction_size`` bytes."""
    if transaction_size < TRANSACTION_FIXED:
        raise LedgerError(f"a transaction is at least {TRANSACTION_FIXED} B (header and two "
                          f"records), not {transaction_size}")
    return transaction_size - TRANSACTION_FIXED


def ledger_size(accounts: int, memo_size: int = 0, memo_slots: int = 0) -> int:
    """The P.mem bytes a ledger of that shape needs."""
    return HEADER_SIZE + accounts * RECORD_SIZE + memo_size * memo_slots


def _fill(transfer_id: int, n: int) -> bytes:
    """Padding derived from the id: a record moved or replayed from elsewhere does not check."""
    unit = struct.pack("<Q", transfer_id)
    return (unit * (n // 8 + 1))[:n]


def encode_journal_record(t: Transfer, record_size: int = JOURNAL_MIN) -> bytes:
    if not JOURNAL_MIN <= record_size <= JOURNAL_MAX:
        raise LedgerError(f"journal record size {record_size} should be between {JOURNAL_MIN} "
                          f"and {JOURNAL_MAX}")
    try:
        head = JOURNAL.pack(JOURNAL_MAGIC, JOURNAL_VERSION, record_size, t.id, t.from_account,
                            t.to_account, t.amount)
    except struct.error:
        raise LedgerError(f"transfer {t} does not fit a journal record (ids and accounts are "
                          "unsigned, 64 and 32 bits; amounts signed 64 bits)") from None
    body = head + _fill(t.id, record_size - JOURNAL_MIN)
    return body + _CRC.pack(crc32c(body))


@dataclass(frozen=True, slots=True)
class JournalScan:
    """What a journal holds: its whole records, where they end, and why the read stopped
    (``torn`` is None at a clean end: zeros or the end of the buffer)."""

    records: tuple[Transfer, ...]
    end: int
    torn: str | None = None


def scan_journal(buf: Buffer) -> JournalScan:
    """Read records from the start; stop at the first zero, cut or non-checking record."""
    view = memoryview(buf)
    records: list[Transfer] = []
    pos = 0
    torn = None
    while pos < len(view):
        head = view[pos:pos + JOURNAL.size]
        if not any(head):
            break
        if len(head) < JOURNAL.size:
            torn = f"record at {pos} is cut after {len(head)} B"
            break
        magic, version, size, tid, src, dst, amount = JOURNAL.unpack(head)
        if magic != JOURNAL_MAGIC or version != JOURNAL_VERSION:
            torn = f"record at {pos} has no journal magic/version"
            break
        if not JOURNAL_MIN <= size <= JOURNAL_MAX:
            torn = f"record at {pos} claims {size} B"
            break
        if pos + size > len(view):
            torn = f"record at {pos} is cut: {size} B claimed, {len(view) - pos} B there"
            break
        (crc,) = _CRC.unpack(view[pos + size - _CRC.size:pos + size])
        if crc != crc32c(view[pos:pos + size - _CRC.size]):
            torn = f"record at {pos} fails its CRC32C"
            break
        if records and tid != records[-1].id + 1:
            torn = f"record at {pos} has id {tid} after {records[-1].id}"
            break
        records.append(Transfer(tid, src, dst, amount))
        pos += size
    return JournalScan(tuple(records), pos, torn)


def read_journal(buf: Buffer) -> list[Transfer]:
    """The journal's whole records, in order; a torn or zero tail ends the list, never
    misread."""
    return list(scan_journal(buf).records)


class Journal:
    """Appends one self-checking record per transfer and flushes it."""

    def __init__(self, disk: DiskSink, record_size: int = JOURNAL_MIN, end: int = 0,
                 last_id: int = 0) -> None:
        encode_journal_record(Transfer(0, 0, 0, 0), record_size)  # checks the size
        self.disk = disk
        self.record_size = record_size
        self.end = end
        self.last_id = last_id

    @classmethod
    def resume(cls, disk: DiskSink, content: Buffer, record_size: int = JOURNAL_MIN
               ) -> Journal:
        """Continue the journal whose current bytes are ``content``: after its last whole
        record, writing over a torn tail (an unacknowledged transfer's record)."""
        scan = scan_journal(content)
        last = scan.records[-1].id if scan.records else 0
        return cls(disk, record_size, scan.end, last)

    def append(self, t: Transfer) -> None:
        if t.id != self.last_id + 1:
            raise LedgerError(f"journal: transfer {t.id} does not follow {self.last_id}")
        record = encode_journal_record(t, self.record_size)
        self.disk.write(self.end, record)
        self.disk.flush()
        self.end += len(record)
        self.last_id = t.id


# -- the ledger in P.mem --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LedgerHeader:
    version: int
    record_size: int
    accounts: int
    memo_size: int
    memo_slots: int
    initial_balance: int
    total: int
    last: Transfer  # id 0: no transfer yet

    def pack(self) -> bytes:
        fields = (LEDGER_MAGIC, self.version, self.record_size, self.accounts, self.memo_size,
                  self.memo_slots, self.initial_balance, self.total, self.last.id,
                  self.last.from_account, self.last.to_account, self.last.amount)
        crc = crc32c(HEADER.pack(*fields, 0))
        return HEADER.pack(*fields, crc)


def parse_header(buf: Buffer) -> tuple[LedgerHeader | None, list[str]]:
    """The header and what is wrong with it (a header with problems is None)."""
    if len(buf) < HEADER_SIZE:
        return None, [f"region of {len(buf)} B is smaller than the {HEADER_SIZE} B header"]
    raw = bytes(buf[:HEADER.size])
    (magic, version, record_size, accounts, memo_size, memo_slots, initial, total,
     last_id, last_from, last_to, last_amount, crc) = HEADER.unpack(raw)
    if magic != LEDGER_MAGIC:
        return None, [f"no ledger magic (found {magic!r}): the region holds no ledger"]
    problems = []
    if crc != crc32c(raw[:-_CRC.size] + b"\0\0\0\0"):
        problems.append("header fails its CRC32C")
    if version != LEDGER_VERSION:
        problems.append(f"header version {version}, this tool reads {LEDGER_VERSION}")
    if record_size != RECORD_SIZE:
        problems.append(f"record size {record_size}, expected {RECORD_SIZE}")
    if not 2 <= accounts <= MAX_ACCOUNTS:
        problems.append(f"account count {accounts} out of range")
    elif len(buf) < ledger_size(accounts, memo_size, memo_slots):
        problems.append(f"{accounts} accounts and {memo_slots} memos of {memo_size} B do "
                        f"not fit the {len(buf)} B region")
    if total != initial * accounts:
        problems.append(f"total {total} is not {accounts} accounts x {initial}")
    if problems:
        return None, problems
    last = Transfer(last_id, last_from, last_to, last_amount)
    return LedgerHeader(version, record_size, accounts, memo_size, memo_slots, initial, total,
                        last), []


def balances(buf: Buffer, accounts: int) -> list[int]:
    view = memoryview(buf)
    return [RECORD.unpack_from(view, HEADER_SIZE + i * RECORD_SIZE)[2] for i in range(accounts)]


def check_ledger(buf: Buffer) -> tuple[bool, list[str]]:
    """(ok, problems): header intact, every record in its place, the sum of balances equal
    to the header's total."""
    header, problems = parse_header(buf)
    if header is None:
        return False, problems
    view = memoryview(buf)
    total = 0
    for i in range(header.accounts):
        account, reserved, balance = RECORD.unpack_from(view, HEADER_SIZE + i * RECORD_SIZE)
        if account != i or reserved != 0:
            problems.append(f"record {i} holds account {account} (reserved {reserved})")
        if not 0 <= balance <= MAX_BALANCE:
            problems.append(f"account {i} has balance {balance}")
        total += balance
    if total != header.total:
        problems.append(f"sum of balances is {total}, the ledger holds {header.total}: "
                        f"{header.total - total:+d} went missing")
    return not problems, problems


class Ledger:
    """A formatted ledger on a TransactionSink; ``transfer`` is one transaction."""

    def __init__(self, pmem: TransactionSink, header: LedgerHeader, commit: str = "applied"):
        self.pmem = pmem
        self.header = header
        self.commit = commit

    @classmethod
    def format(cls, pmem: TransactionSink, accounts: int, initial_balance: int = 1_000_000,
               memo_size: int = 0, memo_slots: int = 0, commit: str = "applied") -> Ledger:
        """Write an empty ledger (every account at ``initial_balance``) in one transaction."""
        if not 2 <= accounts <= MAX_ACCOUNTS:
            raise LedgerError(f"accounts should be between 2 and {MAX_ACCOUNTS}")
        if not 0 <= initial_balance <= MAX_BALANCE:
            raise LedgerError(f"initial balance should be between 0 and {MAX_BALANCE}")
        if memo_size and not memo_slots:
            raise LedgerError("memos need at least one slot")
        need = ledger_size(accounts, memo_size, memo_slots)
        have = len(pmem.view())
        if need > have:
            raise LedgerError(f"the ledger needs {need} B of P.mem, the region has {have}: "
                              "fewer accounts or a larger region")
        header = LedgerHeader(LEDGER_VERSION, RECORD_SIZE, accounts, memo_size, memo_slots,
                              initial_balance, initial_balance * accounts, Transfer(0, 0, 0, 0))
        records = b"".join(RECORD.pack(i, 0, initial_balance) for i in range(accounts))
        with pmem.transaction(commit=commit) as tx:
            tx.write(HEADER_SIZE, records)
            tx.write(0, header.pack())
        return cls(pmem, header, commit)

    @classmethod
    def open(cls, pmem: TransactionSink, commit: str = "applied") -> Ledger:
        view = pmem.view()
        ok, problems = check_ledger(view)
        if not ok:
            raise LedgerError("the ledger in P.mem is damaged: " + "; ".join(problems))
        header, _ = parse_header(view)
        assert header is not None  # check_ledger passed
        return cls(pmem, header, commit)

    @property
    def last_id(self) -> int:
        return self.header.last.id

    def balance(self, account: int) -> int:
        return RECORD.unpack_from(self.pmem.view(), HEADER_SIZE + account * RECORD_SIZE)[2]

    def check(self, t: Transfer) -> None:
        """Raise LedgerError when ``t`` cannot be applied next."""
        n = self.header.accounts
        if t.id != self.last_id + 1:
            raise LedgerError(f"transfer {t.id} does not follow {self.last_id}")
        if not (0 <= t.from_account < n and 0 <= t.to_account < n):
            raise LedgerError(f"transfer {t.id}: accounts are 0..{n - 1}")
        if t.from_account == t.to_account:
            raise LedgerError(f"transfer {t.id}: from and to are both {t.to_account}")
        if not 0 < t.amount <= self.balance(t.from_account):
            raise LedgerError(f"transfer {t.id}: {t.amount} from account {t.from_account} "
                              f"holding {self.balance(t.from_account)}")
        if self.balance(t.to_account) + t.amount > MAX_BALANCE:
            raise LedgerError(f"transfer {t.id}: account {t.to_account} would pass "
                              f"{MAX_BALANCE}")

    def transfer(self, t: Transfer) -> None:
        """Apply ``t`` as one transaction: both records, a memo, the header."""
        self.check(t)
        src = self.balance(t.from_account) - t.amount
        dst = self.balance(t.to_account) + t.amount
        header = replace(self.header, last=t)
        with self.pmem.transaction(commit=self.commit) as tx:
            tx.write(HEADER_SIZE + t.from_account * RECORD_SIZE,
                     RECORD.pack(t.from_account, 0, src))
            tx.write(HEADER_SIZE + t.to_account * RECORD_SIZE, RECORD.pack(t.to_account, 0, dst))
            if self.header.memo_size:
                slot = t.id % self.header.memo_slots
                base = ledger_size(self.header.accounts) + slot * self.header.memo_size
                tx.write(base, _fill(t.id, self.header.memo_size))
            tx.write(0, header.pack())
        self.header = header


class LedgerWorkload:
    """The application a drill runs on the active: each transfer goes to the journal (when
    there is a disk), then to the ledger (when there is P.mem); when ``apply`` returns the
    transfer may be acknowledged."""

    def __init__(self, ledger: Ledger | None, journal: Journal | None,
                 accounts: int = 1000) -> None:
        if ledger is None and journal is None:
            raise LedgerError("the workload needs P.mem, a disk, or both")
        if ledger and journal and ledger.last_id != journal.last_id:
            raise LedgerError(f"ledger at transfer {ledger.last_id}, journal at "
                              f"{journal.last_id}: recover() them first")
        self.ledger = ledger
        self.journal = journal
        # a journal without a ledger still names accounts, from this many
        self.accounts = ledger.header.accounts if ledger else accounts

    @property
    def last_id(self) -> int:
        return self.ledger.last_id if self.ledger else self.journal.last_id  # type: ignore[union-attr]

    @classmethod
    def recover(cls, ledger: Ledger | None, disk: DiskSink | None, content: Buffer | None,
                record_size: int = JOURNAL_MIN, accounts: int = 1000) -> LedgerWorkload:
        """The workload on a node that takes over (or starts): the journal resumes after its
        last whole record in ``content`` (the disk's current bytes), and ledger and journal are
        made to agree after an interrupted transfer: journal records the ledger lacks are
        replayed, the one record the journal lacks is re-appended (the header keeps it)."""
        journal = None
        if disk is not None:
            journal = Journal.resume(disk, content if content is not None else b"", record_size)
        if ledger is not None and journal is not None:
            if journal.last_id > ledger.last_id:
                for t in scan_journal(content or b"").records:
                    if t.id > ledger.last_id:
                        ledger.transfer(t)
            elif ledger.last_id == journal.last_id + 1:
                journal.append(ledger.header.last)
            elif ledger.last_id != journal.last_id:
                raise LedgerError(f"ledger at transfer {ledger.last_id} and journal at "
                                  f"{journal.last_id}: more than the one interrupted transfer "
                                  "is missing from the journal")
        return cls(ledger, journal, accounts)

    def apply(self, t: Transfer) -> None:
        if self.ledger is not None:
            self.ledger.check(t)
        if self.journal is not None:
            self.journal.append(t)
        if self.ledger is not None:
            self.ledger.transfer(t)

    def random_transfer(self, rng: random.Random) -> Transfer:
        """A valid next transfer: two distinct accounts, an amount the payer holds."""
        tid = self.last_id + 1
        n = self.accounts
        src = rng.randrange(n)
        dst = (src + rng.randrange(1, n)) % n
        if self.ledger is None:
            return Transfer(tid, src, dst, rng.randint(1, 1000))
        have = self.ledger.balance(src)
        if have == 0:
            src, dst = dst, src
            have = self.ledger.balance(src)
        return Transfer(tid, src, dst, rng.randint(1, max(1, min(have, 1000))))


def recover_image(ledger_buf: Buffer | None, journal_buf: Buffer | None,
                  record_size: int = JOURNAL_MIN) -> tuple[bytes | None, bytes | None]:
    """Copies of a session's P.mem ledger and journal as a node taking over from them would
    serve them: ``LedgerWorkload.recover`` run on the copies, so the one transfer an active
    killed between its journal write and its P.mem transaction left half done is completed
    (or re-journalled), as a takeover would. A damaged ledger, or a journal more than that one
    transfer apart, is returned unchanged for the checkers to name."""
    if ledger_buf is None or journal_buf is None:
        return (None if ledger_buf is None else bytes(ledger_buf),
                None if journal_buf is None else bytes(journal_buf))
    pmem = MemoryPmem(len(ledger_buf))
    pmem.buf[:] = ledger_buf
    disk = MemoryDisk(len(journal_buf))
    disk.buf[:] = journal_buf
    try:
        LedgerWorkload.recover(Ledger.open(pmem), disk, journal_buf, record_size)
    except LedgerError:
        return bytes(ledger_buf), bytes(journal_buf)
    return bytes(pmem.buf), bytes(disk.buf)


def verify_acked(acked_ids: Sequence[int], ledger_buf: Buffer | None,
                 journal_buf: Buffer | None) -> list[int]:
    """The acknowledged transfers the survivor lacks, sorted: an id past the ledger's last
    transfer, or missing from the journal's whole records. A damaged ledger loses them all."""
    acked = sorted(set(acked_ids))
    lost: set[int] = set()
    if ledger_buf is not None:
        header, _ = parse_header(ledger_buf)
        last = header.last.id if header is not None else 0
        lost.update(i for i in acked if i > last)
    if journal_buf is not None:
        have = {t.id for t in scan_journal(journal_buf).records}
        lost.update(i for i in acked if i not in have)
    return sorted(lost)


def check_replay(ledger_buf: Buffer, journal_buf: Buffer) -> list[str]:
    """Problems found by replaying the whole journal on a fresh ledger of the same shape:
    the balances must come out as the ledger holds them."""
    header, problems = parse_header(ledger_buf)
    if header is None:
        return problems
    scan = scan_journal(journal_buf)
    expect = [header.initial_balance] * header.accounts
    for t in scan.records:
        if not (0 <= t.from_account < header.accounts and 0 <= t.to_account < header.accounts):
            return [f"journal transfer {t.id} names an account outside 0..{header.accounts - 1}"]
        expect[t.from_account] -= t.amount
        expect[t.to_account] += t.amount
    last = scan.records[-1].id if scan.records else 0
    if last != header.last.id:
        problems.append(f"journal ends at transfer {last}, ledger at {header.last.id}")
    have = balances(ledger_buf, header.accounts)
    wrong = [i for i in range(header.accounts) if have[i] != expect[i]]
    if wrong:
        problems.append(f"{len(wrong)} account(s) differ from the journal's replay, first "
                        f"{wrong[0]}: {have[wrong[0]]} held, {expect[wrong[0]]} replayed")
    return problems


def ledger_problems(who: str, ledger: Buffer | None, journal: Buffer | None) -> list[str]:
    """What a drill reports of one node's final ledger (``check_ledger``) and of its journal's
    replay on it (``check_replay``), each prefixed with WHO; nothing for a ledger not given."""
    if ledger is None:
        return []
    ok, why = check_ledger(ledger)
    out = [] if ok else [f"{who}'s ledger: {w}" for w in why]
    if journal is not None:
        out.extend(f"{who}: {w}" for w in check_replay(ledger, journal))
    return out
