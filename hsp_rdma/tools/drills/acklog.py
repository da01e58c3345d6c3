"""The driver's log of every transfer the active acknowledged, kept outside the nodes.

The workload sends one line per acknowledged transfer over a stream (a TCP connection to the
driver, ``ACK_LINE``); the driver's ``pump`` stamps each with its own monotonic clock and the
node that sent it, and appends it to a file on the driver's host (``AckWriter``), so the log
survives any death of a node. A transfer is acknowledged when its line reached the driver:
a node killed before its line was sent had acknowledged nothing to anyone.

File: a header line (``FILE_HEADER``), then ``<id> <t_ns> <node>`` per line. Durability
(``fsync=``): "none" (default) hands every line to the kernel with one write(2) before the
next is read, which survives the node, the workload and the driver process; "always" also
fsyncs every line (survives the driver host's power loss, costs a disk flush per transfer);
"interval" fsyncs at most every ``interval_s``, and on close.
``read_acklog`` drops a torn last line (no newline: the writer was cut mid-line) and says
so; a damaged complete line is an error naming the file and line.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Self

from hsp_rdma.errors import HspError

FILE_HEADER = "# hsp-failover-test acklog v1"
ACK_LINE = "ack {id}\n"  # workload -> driver, one per acknowledged transfer
FSYNC_POLICIES = ("none", "always", "interval")
_ACK = re.compile(rb"ack (\d{1,20})\n\Z")
_ENTRY = re.compile(r"(\d{1,20}) (\d{1,20}) ([A-Za-z0-9_-]{1,32})\Z")
MAX_LINE = 64  # longer is not an ack line: refused before it can fill the driver's memory


class AckLogError(HspError):
    """The acknowledgement log or the workload's ack stream is malformed."""


@dataclass(frozen=True, slots=True)
class Ack:
    """One acknowledged transfer: its id, when the driver got it (monotonic ns), from whom."""

    id: int
    t_ns: int
    node: str


@dataclass(frozen=True, slots=True)
class AckLog:
    acks: tuple[Ack, ...]
    torn: str | None = None  # what was dropped at the end, if anything

    @property
    def ids(self) -> list[int]:
        return [a.id for a in self.acks]


def ack_line(transfer_id: int) -> bytes:
    """What the workload sends when it acknowledges ``transfer_id``."""
    return ACK_LINE.format(id=transfer_id).encode()


class AckWriter:
    """Appends acks to the log file, one write(2) per line, fsync as ``fsync`` says."""

    def __init__(self, path: str | Path, fsync: str = "none", interval_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if fsync not in FSYNC_POLICIES:
            raise AckLogError(f"fsync policy {fsync!r}: use one of {', '.join(FSYNC_POLICIES)}")
        self.path = Path(path)
        self.fsync = fsync
        self.interval_s = interval_s
        self._clock = clock
        try:
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                                           0o644)
        except OSError as exc:
            raise AckLogError(f"{self.path}: cannot open the ack log: {exc.strerror}") from None
        if os.fstat(self._fd).st_size == 0:
            self._write(FILE_HEADER + "\n")
        self._synced = clock()

    def _write(self, line: str) -> None:
        if self._fd is None:
            raise AckLogError(f"{self.path}: the ack log is closed")
        data = line.encode()
        while data:
            data = data[os.write(self._fd, data):]

    def append(self, ack: Ack) -> None:
        if not _ENTRY.match(f"{ack.id} {ack.t_ns} {ack.node}"):
            raise AckLogError(f"ack {ack!r} cannot be logged: node names are 1-32 letters, "
                              "digits, '_' or '-'")
        self._write(f"{ack.id} {ack.t_ns} {ack.node}\n")
        now = self._clock()
        if self.fsync == "always" or (self.fsync == "interval"
                                      and now - self._synced >= self.interval_s):
            os.fsync(self._fd)  # type: ignore[arg-type]
            self._synced = now

    def close(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self.fsync != "none":
                os.fsync(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_acklog(text: str, path: str = "<acklog>") -> AckLog:
    """The acks in ``text`` (a log file's content)."""
    lines = text.split("\n")
    tail = lines.pop()  # "" when the text ends with a newline; else a line cut mid-write
    torn = f"dropped a torn last line {tail[:40]!r}" if tail else None
    first = lines[0] if lines else tail
    if first and not (first == FILE_HEADER or (not lines and FILE_HEADER.startswith(first))):
        raise AckLogError(f"{path}:1: not an ack log (expected {FILE_HEADER!r})")
    acks = []
    for number, line in enumerate(lines[1:], start=2):
        m = _ENTRY.match(line)
        if not m:
            raise AckLogError(f"{path}:{number}: damaged ack line {line[:60]!r} (expected "
                              "'<id> <t_ns> <node>')")
        acks.append(Ack(int(m.group(1)), int(m.group(2)), m.group(3)))
    return AckLog(tuple(acks), torn)


def read_acklog(path: str | Path) -> AckLog:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise AckLogError(f"{path}: cannot read the ack log: {exc.strerror}") from None
    return parse_acklog(text, str(path))


def ack_ids(lines: Iterable[bytes]) -> Iterator[int]:
    """The transfer ids of the workload's ack lines; a last line without its newline (the
    node died mid-send) is no ack and ends the stream."""
    for line in lines:
        if not line.endswith(b"\n"):
            return
        m = _ACK.match(line)
        if not m:
            raise AckLogError(f"the workload sent {line[:MAX_LINE]!r}, not an ack line "
                              f"({ACK_LINE.strip()!r})")
        yield int(m.group(1))


def _bounded_lines(stream: BinaryIO) -> Iterator[bytes]:
    while True:
        line = stream.readline(MAX_LINE + 1)
        if not line:
            return
        if len(line) > MAX_LINE:
            raise AckLogError(f"the workload sent a line longer than {MAX_LINE} B, not an "
                              f"ack line ({ACK_LINE.strip()!r})")
        yield line


def pump(stream: BinaryIO, writer: AckWriter, node: str,
         clock: Callable[[], int] = time.monotonic_ns) -> int:
    """Log every ack ``node`` sends on ``stream`` until it closes; returns how many."""
    count = 0
    for transfer_id in ack_ids(_bounded_lines(stream)):
        writer.append(Ack(transfer_id, clock(), node))
        count += 1
    return count


class AckServer:
    """The driver's end of the nodes' ack streams: every connection to SOCK (listening) is
    pumped into WRITER, the first as ORDER[0]'s acks (the active when the drill began), every
    later one as ORDER[1]'s (the node serving after a takeover). ``addr`` is SOCK's port on
    HOST, as the nodes are told it. ``close`` stops taking connections, closes SOCK and waits
    for the pumps; WRITER stays the caller's."""

    def __init__(self, sock: socket.socket, writer: AckWriter, host: str = "127.0.0.1",
                 order: tuple[str, str] = ("a", "b")):
        sock.settimeout(0.2)
        self.sock, self.writer, self.order = sock, writer, order
        self.addr = f"{host}:{sock.getsockname()[1]}"
        self.stop = threading.Event()
        self.pumps: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            who = self.order[min(len(self.pumps), 1)]
            t = threading.Thread(target=lambda c=conn, w=who: pump(c.makefile("rb"),
                                                                   self.writer, w),
                                 daemon=True)
            t.start()
            self.pumps.append(t)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        for t in self.pumps:
            t.join(5)


def blackout_ms(acks: Iterable[Ack], fault_ns: int) -> float | None:
    """The longest time without an ack from the last ack before ``fault_ns`` on, in ms: for a
    node killed, last ack before to the first after; for a cable pulled, where acks may go
    on for a moment until the loss is seen, the stop that follows (None: no ack on one side,
    the workload never came back or never ran)."""
    times = sorted(a.t_ns for a in acks)
    before = [t for t in times if t <= fault_ns]
    if not before or times[-1] <= fault_ns:
        return None
    start = len(before) - 1
    return max(b - a for a, b in zip(times[start:], times[start + 1:], strict=False)) / 1e6
