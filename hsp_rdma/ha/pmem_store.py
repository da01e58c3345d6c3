"""P.mem kept across a restart (``[pmem] persist = true``): an image file and a write-ahead log
under ``<state_dir>/pmem/``.

Why: a node's P.mem lives in (registered) memory, so a node that crashes comes back with none
of it and must be resynced in full by its peer. That is fine while the peer has everything,
but not when the peer cannot serve: an active killed while it resyncs its standby is the only
node with a complete copy (the SyncTarget is Inconsistent), and DRBD's answer, the returning
node becomes SyncSource again, needs that copy to survive the crash. With ``persist`` the
node loads P.mem from here at start and its restart is Consistent (``core/failover.py``).

How: every transaction written into this node's P.mem (its own commits, and on a standby what
it applies) is appended to ``pmem.log`` as one record: a header (magic, sequence number, how
many writes, the body's length, a CRC-32 of header and body) and the writes (offset, length,
bytes). Then the bytes go into ``pmem.img`` at their offsets. The log is ``fdatasync``'d before
the commit is acknowledged when ``durable`` (the node serves while its peer is not UpToDate:
alone, or resyncing it, exactly when the dirty bitmaps are on), so what was acknowledged then
survives a power loss; otherwise the record rides the page cache (a killed process or guest
keeps it, a power loss may not, and then the peer, UpToDate, has it). Replay at load: the
image, then every whole record of the log in order; a torn or damaged last record ends the
replay (it was never acknowledged durably: its transaction is not applied, not half-applied).
When the log passes ``CHECKPOINT`` bytes the image is ``fdatasync``'d and the log emptied.

Not kept here: disks (they are files already, written in place and flushed by the node).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from hsp_rdma.errors import ConfigError

IMAGE, LOG = "pmem.img", "pmem.log"
MAGIC = 0x504D454D  # "PMEM"
RECORD = struct.Struct("<IIQII")  # magic, crc32 (of the rest of the header and the body),
#                                   sequence, writes, body length
WRITE = struct.Struct("<QI")  # offset, length
CHECKPOINT = 8 << 20  # bytes of log before the image is made stable and the log emptied


class PmemStore:
    """The persisted copy of one node's P.mem of ``size`` bytes in ``directory``."""

    def __init__(self, directory: str | Path, size: int):
        self.dir = Path(directory)
        self.size = size
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.existed = (self.dir / IMAGE).exists()
            self.img = os.open(self.dir / IMAGE, os.O_RDWR | os.O_CREAT, 0o600)
            self.log = os.open(self.dir / LOG, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot open the persisted P.mem: {exc.strerror}",
                              str(self.dir)) from None
        have = os.fstat(self.img).st_size
        if self.existed and have != size:
            self.close()
            raise ConfigError(f"the persisted P.mem holds {have} bytes but [pmem] size is "
                              f"{size}: a P.mem of another size is not this node's state; "
                              "set the size back, or remove the directory knowingly (the "
                              "node then starts Inconsistent and is resynced in full)",
                              str(self.dir / IMAGE))
        if not self.existed:
            os.ftruncate(self.img, size)
            os.fsync(self.img)
        self.seq = 0
        self.log_bytes = os.fstat(self.log).st_size
        self.records = 0  # appended by this process
        self.syncs = 0  # fdatasync of the log before an acknowledgement
        self.checkpoints = 0
        self.replayed = 0  # records applied at load
        self.dropped = ""  # why the replay stopped before the log's end, if it did

    def close(self) -> None:
        for fd in (getattr(self, "img", -1), getattr(self, "log", -1)):
            if fd >= 0:
                os.close(fd)
        self.img = self.log = -1

    def load(self, buf) -> bool:
        """Fill BUF (writable, ``size`` bytes) with the persisted P.mem; True when there was one
        (an earlier run of this node), False for a new, zeroed store."""
        if not self.existed:
            return False
        view = memoryview(buf)
        done = 0
        while done < self.size:
            got = os.preadv(self.img, [view[done:]], done)
            if got <= 0:
                break
            done += got
        log = b""
        if self.log_bytes:
            log = os.pread(self.log, self.log_bytes, 0)
        pos = 0
        while pos < len(log):
            rec = self._record(log, pos)
            if isinstance(rec, str):
                self.dropped = f"{rec} at log byte {pos} of {len(log)}"
                break
            seq, writes, end = rec
            for offset, data in writes:
                view[offset:offset + len(data)] = data
                os.pwrite(self.img, data, offset)
            self.seq = seq
            self.replayed += 1
            pos = end
        if pos < len(log):  # a torn tail: cut it off so that new records follow whole ones
            os.ftruncate(self.log, pos)
            self.log_bytes = pos
        return True

    def _record(self, log: bytes, pos: int) -> tuple[int, list, int] | str:
        if pos + RECORD.size > len(log):
            return "a torn record header"
        magic, crc, seq, count, length = RECORD.unpack_from(log, pos)
        if magic != MAGIC:
            return "no record magic"
        end = pos + RECORD.size + length
        if end > len(log):
            return "a torn record"
        body = log[pos + RECORD.size:end]
        if zlib.crc32(body, zlib.crc32(log[pos + 8:pos + RECORD.size])) != crc:
            return "a record whose CRC does not match"
        writes, at = [], 0
        for _ in range(count):
            if at + WRITE.size > length:
                return "a record shorter than its writes"
            offset, n = WRITE.unpack_from(body, at)
            at += WRITE.size
            if at + n > length or offset + n > self.size:
                return "a write beyond the record or P.mem"
            writes.append((offset, body[at:at + n]))
            at += n
        return seq, writes, end

    def record(self, writes, durable: bool) -> None:
        """Persist one transaction's WRITES ((offset, bytes-like), ...), already in P.mem: in
        the log (made stable first when DURABLE), then in the image."""
        parts = []
        for offset, data in writes:
            parts.append(WRITE.pack(offset, len(data)))
            parts.append(bytes(data))
        body = b"".join(parts)
        self.seq += 1
        rest = struct.pack("<QII", self.seq, len(writes), len(body))
        crc = zlib.crc32(body, zlib.crc32(rest))
        rec = struct.pack("<II", MAGIC, crc) + rest + body
        os.write(self.log, rec)
        self.log_bytes += len(rec)
        self.records += 1
        if durable:
            os.fdatasync(self.log)
            self.syncs += 1
        for offset, data in writes:
            os.pwrite(self.img, data, offset)
        if self.log_bytes >= CHECKPOINT:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Make the image stable, then empty the log."""
        os.fdatasync(self.img)
        os.ftruncate(self.log, 0)
        os.fsync(self.log)
        self.log_bytes = 0
        self.checkpoints += 1

    def status(self) -> dict:
        return {"dir": str(self.dir), "records": self.records, "syncs": self.syncs,
                "checkpoints": self.checkpoints, "replayed": self.replayed,
                "log_bytes": self.log_bytes, **({"dropped": self.dropped} if self.dropped
                                                 else {})}
