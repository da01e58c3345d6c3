"""Interface A's sans-IO core against a hostile wire: random transactions, fragment sizes,
links that break (in-flight frames lost, then re-sent), duplicated and reordered frames. Both
sides must end with the same transactions, each applied once, whole, in order; a send never
finds the peer without a posted receive."""

from __future__ import annotations

import os
import random
from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsp_rdma.core import ifa
from hsp_rdma.core.frames import HEADER_SIZE, Channel
from hsp_rdma.core.ifa import (
    Alarm,
    Applied,
    Commit,
    Connected,
    Deliver,
    Disconnected,
    FrameReceived,
    Progress,
    Send,
    Session,
)

CH = Channel.PMEM


class Pair:
    """Two sessions joined by a simulated RC link per direction (in order, lossless while up)."""

    def __init__(self, buffer_size: int, credits: int, channel: Channel = CH):
        self.ch = channel
        self.s = {"a": Session(7, buffer_size, credits, (channel,), side=0),
                  "b": Session(7, buffer_size, credits, (channel,), side=1)}
        self.window = credits
        self.wire: dict[str, deque[tuple[bytes, bool]]] = {"a": deque(), "b": deque()}  # to X
        self.history: list[bytes] = []
        self.up = False
        self.tainted = False  # an adversarial frame was fed: credit counts may be off
        self.sent: dict[str, list[tuple[int, bytes, Commit]]] = {"a": [], "b": []}
        self.got: dict[str, list[tuple[int, bytes]]] = {"a": [], "b": []}
        self.progress: dict[str, tuple[int, int, int]] = {"a": (0, 0, 0), "b": (0, 0, 0)}
        self.alarms = 0

    @staticmethod
    def other(side: str) -> str:
        return "b" if side == "a" else "a"

    def run(self, side: str, actions: list) -> None:
        todo = deque(actions)
        while todo:
            act = todo.popleft()
            if isinstance(act, Send):
                assert self.up, "a send while the link is down"
                q = self.wire[self.other(side)]
                q.append((act.data, True))
                self.history.append(act.data)
                legit = sum(1 for _, ok in q if ok)
                if not self.tainted:
                    assert legit <= self.window, "a send without a posted receive at the peer"
                assert len(act.data) <= self.s[side].buffer_size
            elif isinstance(act, Deliver):
                # applied at once, its actions carried out before the rest of this list (as
                # the engine does): the frames must still leave in link order
                self.got[side].append((act.txid, bytes(act.message)))
                self.run(side, self.s[side].feed(Applied(act.channel, act.txid)))
            elif isinstance(act, Progress):
                old = self.progress[side]
                new = (act.sent, act.received, act.applied)
                assert all(n >= o for n, o in zip(new, old)), (old, new)
                self.progress[side] = new
            elif isinstance(act, Alarm):
                self.alarms += 1

    def submit(self, side: str, size: int, mode: Commit, rng: random.Random) -> None:
        msg = rng.randbytes(size)
        txid, actions = self.s[side].submit(self.ch, msg, mode)
        self.sent[side].append((txid, msg, mode))
        self.run(side, actions)

    def connect(self) -> None:
        if self.up:
            return
        self.up = True
        self.tainted = False
        for side in "ab":
            self.run(side, self.s[side].feed(Connected(self.ch)))

    def handshake(self) -> None:
        """Deliver both HELLOs (the first frame each way): data may flow from here on."""
        self.deliver("a")
        self.deliver("b")

    def quiesce(self, limit: int = 100_000) -> None:
        """Deliver until nothing moves, on the same link (a deadlock shows as work left)."""
        for _ in range(limit):
            if not (self.deliver("a") or self.deliver("b")):
                return
        raise AssertionError("livelock")

    def disconnect(self) -> None:
        if not self.up:
            return
        self.up = False
        for side in "ab":
            self.wire[side].clear()
            self.run(side, self.s[side].feed(Disconnected(self.ch)))

    def deliver(self, to: str) -> bool:
        if not self.wire[to]:
            return False
        data, legit = self.wire[to].popleft()
        self.tainted |= not legit
        self.run(to, self.s[to].feed(FrameReceived(self.ch, data)))
        return True

    def inject(self, to: str, data: bytes, front: bool = False) -> None:
        if self.up:
            (self.wire[to].appendleft if front else self.wire[to].append)((data, False))

    def drain(self, limit: int = 200_000) -> None:
        """Reconnect and deliver until quiet; a deadlock or livelock fails the test."""
        self.disconnect()
        self.connect()
        for _ in range(limit):
            if not (self.deliver("a") or self.deliver("b")):
                return
        raise AssertionError("the pair never went quiet: livelock")

    def check(self) -> None:
        for src in "ab":
            dst = self.other(src)
            want = [(txid, msg) for txid, msg, _ in self.sent[src]]
            assert self.got[dst] == want, "the peer's transactions differ from the sender's"
            sent, received, applied = self.progress[src]
            if self.sent[src]:
                assert sent == self.sent[src][-1][0]
            for txid, _, mode in self.sent[src]:
                if mode is Commit.APPLIED:
                    assert applied >= txid, f"applied-mode transaction {txid} never acked"
                if mode is Commit.RECEIVED:
                    assert received >= txid, f"received-mode transaction {txid} never acked"


ops = st.lists(st.one_of(
    st.tuples(st.just("submit"), st.sampled_from("ab"), st.integers(0, 5000),
              st.sampled_from(list(Commit))),
    st.tuples(st.just("deliver"), st.sampled_from("ab"), st.integers(1, 12)),
    st.tuples(st.just("break")),
    st.tuples(st.just("connect")),
    st.tuples(st.just("dup"), st.sampled_from("ab"), st.integers(0, 10_000)),
    st.tuples(st.just("reorder"), st.sampled_from("ab")),
    st.tuples(st.just("drop"), st.sampled_from("ab")),
), max_size=80)


@settings(max_examples=300 if os.environ.get("HSP_EXPLORE_FULL") else 120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(program=ops, buffer_size=st.integers(ifa.OVERHEAD + 64, 2048),
       credits=st.integers(ifa.MIN_CREDITS, 12), seed=st.integers(0, 2**32))
def test_random_transactions_survive_a_hostile_wire(program, buffer_size, credits, seed):
    rng = random.Random(seed)
    pair = Pair(buffer_size, credits)
    pair.connect()
    for op in program:
        kind = op[0]
        if kind == "submit":
            pair.submit(op[1], op[2], op[3], rng)
        elif kind == "deliver":
            for _ in range(op[2]):
                pair.deliver(op[1])
        elif kind == "break":
            pair.disconnect()
        elif kind == "connect":
            pair.connect()
        elif kind == "dup" and pair.history:
            pair.inject(op[1], pair.history[op[2] % len(pair.history)])
        elif kind == "reorder" and len(pair.wire[op[1]]) >= 2:
            q = pair.wire[op[1]]
            q[0], q[1] = q[1], q[0]
            pair.tainted = True
        elif kind == "drop" and pair.wire[op[1]]:
            # a frame lost on a live link (RC never does this): the gap must stop the stream
            # until a reconnect re-sends, never skip a fragment
            pair.wire[op[1]].popleft()
            pair.tainted = True
    pair.drain()
    pair.check()
    if not any(op[0] in ("dup", "reorder", "drop") for op in program):
        assert pair.alarms == 0, "a frame refused on an honest wire"


def test_one_megabyte_transaction_in_64k_buffers_is_fragmented_and_applied_whole():
    pair = Pair(64 * 1024, 8)
    pair.connect()
    rng = random.Random(1)
    pair.submit("a", 1 << 20, Commit.APPLIED, rng)
    frames = 0
    while pair.deliver("b") or pair.deliver("a"):
        frames += 1
        if pair.got["b"]:
            break
        assert not pair.got["b"], "delivered before the last fragment"
    pair.drain()
    pair.check()
    assert pair.s["a"].streams[CH].stats.frames_sent >= 17
    assert pair.alarms == 0


def test_a_cut_multi_fragment_transaction_is_never_delivered_in_part():
    pair = Pair(1024, 4)
    pair.connect()
    rng = random.Random(2)
    pair.handshake()
    pair.submit("a", 10_000, Commit.APPLIED, rng)
    for _ in range(3):  # 3 of the 10 fragments (4 credits, one kept back)
        pair.deliver("b")
    assert pair.got["b"] == []
    pair.disconnect()  # the active is gone for good: B keeps only what was complete
    assert pair.got["b"] == [] and pair.s["b"].streams[CH].partial is not None


def test_reconnect_resends_exactly_what_the_peer_lacks():
    pair = Pair(512, 4)
    pair.connect()
    rng = random.Random(3)
    pair.handshake()
    for _ in range(5):
        pair.submit("a", 2000, Commit.ASYNC, rng)
    for _ in range(3):
        pair.deliver("b")
    assert pair.got["b"] == []  # 2 of 5 fragments of the first transaction (3 credits: 1 kept)
    pair.disconnect()
    pair.drain()
    pair.check()
    b, a = pair.s["b"].streams[CH], pair.s["a"].streams[CH]
    assert b.stats.refused == {}  # nothing arrived twice: the HELLO said where to resume
    assert a.stats.frames_resent == 0 and a.stats.frames_sent == 25


def test_frames_lost_with_the_link_are_resent():
    pair = Pair(512, 8)
    pair.connect()
    pair.handshake()
    pair.submit("a", 3000, Commit.APPLIED, random.Random(7))
    assert len(pair.wire["b"]) == 6
    pair.deliver("b")
    pair.disconnect()  # 5 frames in flight are lost with the link
    pair.drain()
    pair.check()
    assert pair.s["a"].streams[CH].stats.frames_resent == 5


def test_no_deadlock_when_both_sides_saturate_their_credits():
    rng = random.Random(6)
    for credits in (4, 5, 8):
        pair = Pair(256, credits)
        pair.connect()
        pair.handshake()
        for _ in range(30):
            pair.submit("a", 600, Commit.ASYNC, rng)
            pair.submit("b", 600, Commit.ASYNC, rng)
        pair.quiesce()  # same link, no reconnect to reset credits
        pair.check()
        assert pair.alarms == 0


def test_credits_never_run_dry_in_one_direction_traffic():
    pair = Pair(256, 4)
    pair.connect()
    rng = random.Random(4)
    for i in range(300):
        pair.submit("a", rng.randrange(0, 900), Commit.ASYNC if i % 3 else Commit.RECEIVED, rng)
        while pair.deliver("b") or pair.deliver("a"):
            pass
    pair.check()
    assert len(pair.got["b"]) == 300
    assert pair.alarms == 0


def test_wrong_epoch_frames_are_refused_and_counted():
    pair = Pair(512, 4)
    pair.connect()
    pair.quiesce()
    pair.s["b"].set_epoch(8)
    pair.submit("a", 100, Commit.APPLIED, random.Random(5))
    pair.deliver("b")
    assert pair.got["b"] == []
    assert pair.s["b"].streams[CH].stats.refused == {"wrong_epoch": 1}


def test_nodes_of_different_epochs_meet_but_exchange_no_writes():
    # HELLO and CREDIT pass whatever their epoch (a restarted old active must meet the new
    # one and learn its epoch); a replication DATA frame of another epoch does not, while
    # heart beats (HEALTH) do: their payload carries the epoch for the detector.
    pair = Pair(512, 4)
    pair.s["b"].set_epoch(9)
    pair.connect()
    pair.quiesce()
    assert pair.s["a"].streams[CH].stats.refused == {} == pair.s["b"].streams[CH].stats.refused
    pair.submit("a", 100, Commit.APPLIED, random.Random(5))
    pair.quiesce()
    assert pair.got["b"] == [] and pair.s["b"].streams[CH].stats.refused == {"wrong_epoch": 1}
    beats = Pair(512, 4, Channel.HEALTH)
    beats.s["b"].set_epoch(9)
    beats.connect()
    beats.quiesce()
    beats.submit("a", 30, Commit.ASYNC, random.Random(6))
    beats.submit("b", 30, Commit.ASYNC, random.Random(7))
    beats.quiesce()
    assert len(beats.got["a"]) == len(beats.got["b"]) == 1


def test_tx_bodies_round_trip_and_refuse_out_of_range_writes():
    body = ifa.encode_pmem([(0, b"abc"), (100, b"x" * 10)])
    kind, items = ifa.decode_tx(body, pmem_size=110)
    assert kind is ifa.TxKind.PMEM and [(o, bytes(d)) for o, d in items] == [(0, b"abc"),
                                                                              (100, b"x" * 10)]
    with pytest.raises(ifa.TxError):
        ifa.decode_tx(body, pmem_size=109)
    body = ifa.encode_disk([(1, 4096, b"z" * 4096)])
    kind, items = ifa.decode_tx(body, disk_sizes=(0, 8192))
    assert kind is ifa.TxKind.DISK_WRITE and items[0][:2] == (1, 4096)
    with pytest.raises(ifa.TxError):
        ifa.decode_tx(body, disk_sizes=(8192,))
    assert ifa.decode_tx(ifa.encode_flush(0), disk_sizes=(1,)) == (ifa.TxKind.DISK_FLUSH, [0])
    assert ifa.decode_tx(ifa.encode_config({"set": 1})) == (ifa.TxKind.CONFIG, [{"set": 1}])
    for cut in range(len(body)):
        with pytest.raises(ifa.TxError):
            ifa.decode_tx(body[:cut], disk_sizes=(0, 8192))


def test_frame_header_is_the_shared_one():
    pair = Pair(512, 4)
    pair.connect()
    data = pair.wire["b"][0][0]
    assert len(data) >= HEADER_SIZE


def test_received_ack_leaves_before_the_deliver():
    """Commit mode received: the receiver's list has the ack's Send before the Deliver (the
    ack does not wait for the apply); applied: nothing is sent before the Deliver."""
    for mode, ack_first in ((Commit.RECEIVED, True), (Commit.APPLIED, False)):
        pair = Pair(1024, 8)
        pair.connect()
        pair.handshake()
        _, acts = pair.s["a"].submit(CH, b"x" * 100, mode)
        (frame,) = [a.data for a in acts if isinstance(a, Send)]
        out = pair.s["b"].feed(FrameReceived(CH, frame))
        assert isinstance(out[-1], Deliver)
        sends = [a for a in out[:-1] if isinstance(a, Send)]
        assert bool(sends) is ack_first, (mode, out)
        if ack_first:  # the ack moves a's received watermark before b applies anything
            back = pair.s["a"].feed(FrameReceived(CH, sends[0].data))
            (prog,) = [a for a in back if isinstance(a, Progress)]
            assert prog.received == 1 and prog.applied == 0


def test_disk_write_with_flush_is_one_transaction():
    body = ifa.encode_disk([(0, 512, b"q" * 4096)], flush=True)
    kind, items = ifa.decode_tx(body, disk_sizes=(8192,))
    assert kind is ifa.TxKind.DISK_WRITE_FLUSH and items[0][:2] == (0, 512)
    assert bytes(items[0][2]) == b"q" * 4096
    for cut in range(len(body)):
        with pytest.raises(ifa.TxError):
            ifa.decode_tx(body[:cut], disk_sizes=(8192,))


@pytest.mark.parametrize("hardware", [True, False])
def test_frames_are_the_same_on_either_crc_path(hardware):
    """use_crc32c_hardware picks the compiled CRC32C's path (SSE4.2 or table): the frames and
    what the peer accepts do not change, and a corrupted frame is refused on either."""
    if not ifa._frames.NATIVE_CRC32C:
        pytest.skip("the compiled CRC32C is not built")
    from hsp_rdma.core.frames import crc32c_reference

    before = ifa._HW
    try:
        ifa.use_crc32c_hardware(hardware)
        pair = Pair(64 * 1024, 8)
        pair.connect()
        rng = random.Random(3)
        for size in (16, 4096, 200_000):
            pair.submit("a", size, Commit.APPLIED, rng)
        pair.drain()
        pair.check()
        hello = pair.history[0]
        unsummed = hello[:HEADER_SIZE - 4] + b"\0\0\0\0" + hello[HEADER_SIZE:]
        assert int.from_bytes(hello[HEADER_SIZE - 4:HEADER_SIZE], "little") == \
            crc32c_reference(unsummed)
        s = Session(7, 4096, 4, (CH,))
        s.feed(Connected(CH))
        bad = bytearray(hello)
        bad[-1] ^= 1
        s.feed(FrameReceived(CH, bytes(bad)))
        assert s.streams[CH].stats.refused == {"bad_crc": 1}
    finally:
        ifa.use_crc32c_hardware(before)


def test_a_node_s_own_frame_sent_back_to_it_is_refused_as_reflected():
    """Found by hypothesis: a copy of B's own DATA frame injected towards B carried the
    sequence number B expected from A (both sides number from 1) and was delivered as A's
    transaction. Each side now marks its frames; one of its own coming back is refused."""
    pair = Pair(123, 5)
    pair.connect()
    rng = random.Random(0)
    pair.deliver("b")
    pair.submit("b", 129, Commit.ASYNC, rng)
    own = pair.history[-1]  # the last frame B sent
    pair.inject("b", own)
    pair.deliver("b")
    pair.drain()
    pair.check()
    assert pair.s["b"].streams[CH].stats.refused.get("reflected", 0) >= 1


def test_a_restarted_peer_is_told_by_its_incarnation():
    """B restarts (a new Session: numbering from 1 again): its HELLO on the new link names
    another incarnation, and A's stream says PeerRestarted instead of refusing B's frames one
    by one as replays; the same B reconnecting (same incarnation) is no restart."""
    pair = Pair(512, 4)
    pair.connect()
    rng = random.Random(4)
    pair.handshake()
    pair.submit("b", 100, Commit.APPLIED, rng)
    pair.quiesce()
    pair.disconnect()
    pair.connect()  # the same processes: a new link, no restart
    pair.quiesce()
    assert pair.alarms == 0
    pair.disconnect()
    pair.s["b"] = Session(7, 512, 4, (CH,), side=1)  # b restarted
    pair.up = True
    pair.s["a"].feed(Connected(CH))
    said = pair.s["b"].feed(Connected(CH))
    hello_b = next(act for act in said if isinstance(act, ifa.Send)).data
    out = pair.s["a"].feed(FrameReceived(CH, hello_b))
    assert [type(a) for a in out] == [ifa.PeerRestarted]
    assert out[0].channel == CH
