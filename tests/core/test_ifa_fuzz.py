"""Fuzz the Interface A receive path: >= 100,000 mutated frames, 0 crashes, 0 applied.

The corpus is a real exchange (HELLO, CREDIT and DATA frames of several sizes) that the
receiver already took, so every original is a replay. Mutations: bit flips, cuts, extensions,
splices (CRC left as it is), and header or link-control rewrites with the CRC recomputed so
the deeper checks run: wrong epoch, channel, version, magic, type, length; link and stream
sequence numbers replayed or ahead (white-box: the receiver's expected values plus or minus);
fragment flags and transaction ids out of order; grants and acks out of range.
"""

from __future__ import annotations

import os
import random
import struct
import time

from hsp_rdma.core import ifa
from hsp_rdma.core.frames import HEADER, HEADER_SIZE, Channel, crc32c
from hsp_rdma.core.ifa import CTRL, DATA_HDR, Commit, Deliver, FrameReceived, Session

CH = Channel.PMEM
_CRC_OFF = HEADER_SIZE - 4


def _corpus(rng: random.Random) -> tuple[Session, list[bytes]]:
    a, b = Session(5, 1024, 8, (CH,)), Session(5, 1024, 8, (CH,))
    wire = {"a": [], "b": []}

    def run(side: str, acts: list) -> None:
        for act in acts:
            if isinstance(act, ifa.Send):
                wire["b" if side == "a" else "a"].append(act.data)
            elif isinstance(act, Deliver):
                run(side, (a if side == "a" else b).feed(ifa.Applied(CH, act.txid)))

    run("a", a.feed(ifa.Connected(CH)))
    run("b", b.feed(ifa.Connected(CH)))
    corpus: list[bytes] = []
    for i in range(60):
        _, acts = a.submit(CH, rng.randbytes(rng.choice([0, 1, 50, 900, 3000])),
                           list(Commit)[i % 3])
        run("a", acts)
        while wire["a"] or wire["b"]:
            for to, sess in (("b", b), ("a", a)):
                while wire[to]:
                    data = wire[to].pop(0)
                    if to == "b":
                        corpus.append(data)
                    run(to, sess.feed(FrameReceived(CH, data)))
    return b, corpus


def _refit(buf: bytearray) -> bytes:
    buf[_CRC_OFF:HEADER_SIZE] = b"\0\0\0\0"
    crc = crc32c(bytes(buf))
    buf[_CRC_OFF:HEADER_SIZE] = crc.to_bytes(4, "little")
    return bytes(buf)


def _mutate(rng: random.Random, base: bytes, recv: ifa.Stream) -> bytes:
    buf = bytearray(base)
    kind = rng.randrange(10)
    if kind == 0:  # bit flips, CRC as it was
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        return bytes(buf)
    if kind == 1:  # cut
        return bytes(buf[:rng.randrange(len(buf))])
    if kind == 2:  # extend
        return bytes(buf) + rng.randbytes(rng.randint(1, 64))
    if kind == 3:  # splice two frames' bytes
        return bytes(buf[:rng.randrange(len(buf))]) + rng.randbytes(rng.randint(0, 40))
    fields = list(HEADER.unpack_from(buf))  # magic, version, channel, type, epoch, seq, len, crc
    if kind == 4:
        which = rng.randrange(5)
        if which == 0:
            fields[4] = rng.choice([0, 4, 6, 0xFFFF_FFFF])
        elif which == 1:
            fields[2] = rng.choice([c for c in range(256) if c != CH])
        elif which == 2:
            fields[1] = rng.choice([0, 2, 255])
        elif which == 3:
            fields[0] = rng.randrange(0x10000) ^ 0x4853 or 1
        else:
            fields[3] = rng.choice([0, 4, 9, 0xFFFF])
        HEADER.pack_into(buf, 0, *fields)
        return _refit(buf)
    if kind == 5:  # length field lies
        fields[6] = max(0, fields[6] + rng.choice([-3, -1, 1, 7, 1 << 21]))
        HEADER.pack_into(buf, 0, *fields)
        return _refit(buf)
    if len(buf) < HEADER_SIZE + CTRL.size:
        return bytes(buf[:-1])
    link = recv.link
    link_seq, grant, ack_seq, ack_applied = CTRL.unpack_from(buf, HEADER_SIZE)
    expected = link.received + 1
    if kind == 6:  # link order: a replay or a gap (both refused whatever else is right)
        link_seq = rng.choice([max(0, expected - rng.randint(1, 50)), expected + rng.randint(1, 9)])
        CTRL.pack_into(buf, HEADER_SIZE, link_seq, grant, ack_seq, ack_applied)
        return _refit(buf)
    if kind == 7:  # in link order, but acks or grants out of range
        grant, ack_seq, ack_applied = rng.choice([
            (link.window + rng.randint(1, 9), 0, 0), (0, recv.next_seq + rng.randint(0, 9), 0),
            (0, 0, recv.next_txid + rng.randint(0, 9))])
        CTRL.pack_into(buf, HEADER_SIZE, expected, grant, ack_seq, ack_applied)
        return _refit(buf)
    # kinds 8, 9: in link order, then broken at the stream: an old or future sequence, a
    # fragment out of place, unknown flags, a CREDIT with a sequence, a second HELLO
    fields[3] = rng.choice([ifa.FrameType.DATA, ifa.FrameType.DATA, ifa.FrameType.CREDIT,
                            ifa.FrameType.HELLO])
    fields[4] = recv.session.epoch
    CTRL.pack_into(buf, HEADER_SIZE, expected, 0, 0, 0)
    if fields[3] == ifa.FrameType.DATA:
        if len(buf) < HEADER_SIZE + CTRL.size + DATA_HDR.size:
            buf += bytes(DATA_HDR.size)
        choice = rng.randrange(4)
        if choice == 0:  # sequence already taken
            fields[5] = rng.randint(max(1, recv.recv_next - 500), recv.recv_next - 1)
        elif choice == 1:  # sequence ahead
            fields[5] = recv.recv_next + rng.randint(1, 1 << 20)
        else:  # the right sequence, but a fragment that cannot be
            fields[5] = recv.recv_next
            txid = recv.delivered_txid + rng.choice([-1, 0, 2, 50])
            flags = rng.choice([0, ifa.Flag.LAST, 0x10, 0xF0 | 3])
            if choice == 3:
                txid, flags = recv.delivered_txid + 1, ifa.Flag.FIRST | 0x20
            DATA_HDR.pack_into(buf, HEADER_SIZE + CTRL.size, max(0, txid), int(flags))
    elif fields[3] == ifa.FrameType.CREDIT:
        fields[5] = rng.randint(1, 1 << 30)
    fields[6] = len(buf) - HEADER_SIZE
    HEADER.pack_into(buf, 0, *fields)
    return _refit(buf)


def test_fuzz_receive_path_never_crashes_and_never_applies() -> None:
    total = 400_000 if os.environ.get("HSP_EXPLORE_FULL") else 100_000
    rng = random.Random(0xF022)
    recv, corpus = _corpus(rng)
    stream = recv.streams[CH]
    assert len(corpus) > 90 and stream.delivered_txid == 60
    start_delivered = stream.delivered_txid
    applied = 0
    t0 = time.monotonic()
    for i in range(total):
        base = corpus[rng.randrange(len(corpus))]
        data = _mutate(rng, base, stream)
        if i % 1000 == 999:  # the link broke and came back: a fresh link keeps being fuzzed
            recv.feed(ifa.Disconnected(CH))
            recv.feed(ifa.Connected(CH))
            recv.feed(FrameReceived(CH, _hello(stream)))
        acts = recv.feed(FrameReceived(CH, data))  # must not raise
        applied += sum(isinstance(a, Deliver) for a in acts)
    assert applied == 0
    assert stream.delivered_txid == start_delivered
    refused = stream.stats.refused
    assert sum(refused.values()) >= total * 0.99, refused
    # every cause the mutations aim at was seen
    for cause in ("truncated", "bad_magic", "too_big", "bad_length", "bad_crc", "version",
                  "wrong_channel", "bad_type", "wrong_epoch", "replayed", "out_of_order",
                  "bad_ack", "bad_fragment"):
        assert refused.get(cause, 0) > 0, (cause, refused)
    assert time.monotonic() - t0 < 90


def _hello(stream: ifa.Stream) -> bytes:
    # the corpus peer's own incarnation: the same process, a new link
    body = CTRL.pack(1, 0, 0, 0) + ifa.INCARNATION.pack(stream.peer_incarnation)
    header = HEADER.pack(0x4853, 1, int(CH), ifa.FrameType.HELLO, stream.session.epoch, 0,
                         len(body), 0)
    crc = crc32c(body, crc32c(header))
    return header[:_CRC_OFF] + struct.pack("<I", crc) + body
