"""hsp_rdma.via over the soft provider, on this host (no lab, no RDMA): VIA.md's semantics.

The lab's conformance scenarios (tests/via/scenarios.py, the same file test_via_lab.py runs on
rxe and siw) run here as a server and a client process on 127.0.0.1, each scenario reported as
its own test; then the random call sequences of fuzz.py against a sink process, and the
peer-killed drill (the receiving process is SIGKILLed mid-stream).
"""

from __future__ import annotations

import importlib.util
import json
import mmap
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hsp_rdma import via
from hsp_rdma.via.providers import soft

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
_spec = importlib.util.spec_from_file_location("via_scenarios", HERE / "scenarios.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
SCENARIOS: list[str] = _mod.SCENARIOS
LOCAL = "127.0.0.1"


def _env() -> dict:
    """A port base of this run's own (ports base..base+9999 stay below the ephemeral range),
    so parallel runs on one host do not meet."""
    return dict(os.environ, HSP_VIA_SOFT_PORT_BASE=str(soft.random_port_base()))


def _spawn(env: dict, script: str, *args: str, dev: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(HERE / script), *args, "--dev", dev, "--local", LOCAL,
         "--peer", LOCAL], cwd=str(ROOT), env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _finish(p: subprocess.Popen, timeout: float) -> tuple[str, str, bool]:
    try:
        out, err = p.communicate(timeout=timeout)
        return out, err, False
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return out, err, True


@pytest.fixture(scope="module", params=["same-host", "inline", "shared-memory", "python-apply"])
def scenario_results(request: pytest.FixtureRequest) -> dict:
    """Once with the same-host path (SEND/WRITE data of 4 KiB and more copied from the
    sender's memory), once with every byte inline on the stream (the path across hosts),
    once with every region a via.shared_buffer (RDMA Writes as direct copies into the
    peer's memory once granted: scenarios_shm.py), once with every frame applied by the
    provider's Python path (the SEND and ACK frames are otherwise applied by its compiled
    path: both must give every semantic)."""
    env = _env()
    env["HSP_VIA_SOFT_LOCAL"] = "0" if request.param == "inline" else "1"
    env["HSP_VIA_SOFT_COMPILED_APPLY"] = "0" if request.param == "python-apply" else "1"
    script = "scenarios_shm.py" if request.param == "shared-memory" else "scenarios.py"
    server = _spawn(env, script, "server", "--dump-after", "50", dev="soft:server")
    time.sleep(0.2)
    client = _spawn(env, script, "client", "--dump-after", "50", dev="soft:client")
    out: dict = {"stderr": {}, "hung": {}}
    for side, p in (("client", client), ("server", server)):
        stdout, stderr, hung = _finish(p, 60)
        out["stderr"][side] = stderr[-4000:]
        if hung:
            out["hung"][side] = True
        for r in _lines(stdout):
            out[(r["side"], r["scenario"])] = r
    return out


@pytest.mark.parametrize("name", SCENARIOS)
def test_via_semantics_soft(scenario_results: dict, name: str) -> None:
    for side in ("server", "client"):
        r = scenario_results.get((side, name))
        assert r is not None, (f"{side} never reported '{name}' (crashed or hung?): "
                               f"{scenario_results['hung']} {scenario_results['stderr']}")
        other = scenario_results.get(("client" if side == "server" else "server", name))
        assert r["ok"], (f"{side} {name} on soft: {r['detail']}; the other side reported "
                         f"{other}")
    counters = [scenario_results.get((side, "_counters")) for side in ("server", "client")]
    if all(counters) and name == SCENARIOS[-1]:  # (shared-memory run: regions were granted;
        # the scenarios write a region once each, so the writes after a grant, the direct
        # copies, are tested in test_via_soft_shm.py)
        assert sum(c["detail"].get("shm_grants_rx", 0) for c in counters) > 0, counters


def test_random_call_sequences_never_crash_soft() -> None:
    """fuzz.py's random VIPL calls, wrong ones included, over soft: only VipError."""
    env = _env()
    sinks = _spawn(env, "scenarios.py", "sinks", "--seconds", "20", dev="soft:sinks")
    try:
        time.sleep(0.2)
        fuzz = _spawn(env, "fuzz.py", "--steps", "2000", "--seed", "7", dev="soft:fuzz")
        out, err, hung = _finish(fuzz, 40)
    finally:
        sinks.kill()
        sinks.communicate()
    assert not hung and fuzz.returncode == 0, f"fuzz exit {fuzz.returncode}: {out[-1500:]} " \
                                              f"{err[-1500:]}"
    summary = _lines(out)[-1]
    assert summary["ok"] and summary["steps"] == 2000, summary
    assert summary["outcomes"].get("connect:ok", 0) > 0, "no connection was ever made"


def test_peer_killed_mid_transfer_soft(monkeypatch: pytest.MonkeyPatch) -> None:
    """The receiving process (scenarios.py sink) is SIGKILLed while this one streams sends
    into it: the error callback fires with CONN_LOST within a second, and SendWait(INFINITE)
    returns the send in error, or the next post is refused as the VI is in ERROR; no hang."""
    env = _env()
    monkeypatch.setattr(soft, "PORT_BASE", int(env["HSP_VIA_SOFT_PORT_BASE"]))
    sink = _spawn(env, "scenarios.py", "sink", dev="soft:sink")
    nic = via.VipOpenNic("soft:stream")
    errors: list = []
    via.VipErrorCallback(nic, lambda _c, e: errors.append((time.monotonic(), e.code)))
    try:
        ptag = via.VipCreatePtag(nic)
        buf = bytearray(4096)
        h = via.VipRegisterMem(nic, buf, via.MemAttributes(ptag=ptag))
        vi = via.VipCreateVi(nic, via.ViAttributes(ptag=ptag))
        deadline = time.monotonic() + 20
        while True:
            try:
                via.VipConnectRequest(vi, via.NetAddress(LOCAL), via.NetAddress(LOCAL, b"sink"),
                                      5000)
                break
            except via.VipNoMatch:
                assert time.monotonic() < deadline, "the sink never listened"
                time.sleep(0.05)
        desc = via.VipDescriptor(segments=[via.DataSegment(via.address_of(buf), h, 1024)])
        sent, t_kill, last = 0, None, None
        while time.monotonic() < deadline:
            if sent == 20:
                sink.send_signal(signal.SIGKILL)
                t_kill = time.monotonic()
            try:
                via.VipPostSend(vi, desc)
            except via.VipInvalidState as exc:
                last = str(exc)
                break
            d = via.VipSendWait(vi, None)
            if d.status & via.VIP_STATUS_ERROR_MASK:
                last = f"status 0x{d.status:x}"
                break
            sent += 1
            time.sleep(0.005)
        assert t_kill is not None and last is not None, f"no error after {sent} sends"
        assert vi.state is via.ViState.ERROR, vi.state
        assert [c for _t, c in errors] == ["CONN_LOST"], errors
        assert errors[0][0] - t_kill < 1.0, f"the loss took {errors[0][0] - t_kill:.2f} s"
        via.VipDisconnect(vi)
        via.VipDestroyVi(vi)
    finally:
        via.VipCloseNic(nic)
        sink.kill()
        sink.communicate()


@pytest.fixture(params=["same-host", "inline"])
def pair(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Two soft NICs in this process, a VI on each, connected over 127.0.0.1 (with the
    same-host path, or every byte inline); the receiver's VI reports both queues to one CQ."""
    monkeypatch.setattr(soft, "PORT_BASE", soft.random_port_base())
    monkeypatch.setenv("HSP_VIA_SOFT_LOCAL", "1" if request.param == "same-host" else "0")
    a, b = via.VipOpenNic("soft:a"), via.VipOpenNic("soft:b")
    ends = []
    for nic in (a, b):
        ptag = via.VipCreatePtag(nic)
        buf = bytearray(1 << 16)
        h = via.VipRegisterMem(nic, buf, via.MemAttributes(ptag=ptag, enable_rdma_write=True))
        cq = via.VipCreateCQ(nic, 64) if nic is a else None
        vi = via.VipCreateVi(nic, via.ViAttributes(ptag=ptag), send_cq=cq, recv_cq=cq)
        ends.append((nic, vi, buf, h, cq))
    got: list = []
    t = threading.Thread(target=lambda: got.append(via.VipConnectAccept(
        via.VipConnectWait(a, via.NetAddress(LOCAL, b"pair"), 5000), ends[0][1])))
    t.start()
    deadline = time.monotonic() + 5
    while True:
        try:
            via.VipConnectRequest(ends[1][1], via.NetAddress(LOCAL), via.NetAddress(LOCAL, b"pair"),
                                  2000)
            break
        except via.VipNoMatch:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    t.join(5)
    yield ends
    via.VipCloseNic(a)
    via.VipCloseNic(b)


def _desc(buf, h, off: int, n: int, control: int = 0, remote=None, imm: int = 0):
    return via.VipDescriptor(control=control, segments=[via.DataSegment(
        via.address_of(buf, off), h, n)], address=remote, immediate=imm)


def test_cq_fileno_is_readable_while_a_completion_waits(pair) -> None:
    """The CQ's fileno() (an eventfd) wakes an event loop when a completion arrives, and is
    quiet again once VipCQDone has nothing more."""
    (_na, vi_a, buf_a, h_a, cq), (_nb, vi_b, buf_b, h_b, _) = pair
    fd = cq.fileno()
    assert select.select([fd], [], [], 0)[0] == []
    via.VipPostRecv(vi_a, _desc(buf_a, h_a, 0, 64))
    buf_b[:5] = b"hello"
    via.VipPostSend(vi_b, _desc(buf_b, h_b, 0, 5))
    assert select.select([fd], [], [], 5)[0] == [fd], "no wake-up for a receive"
    assert via.VipCQDone(cq) == (vi_a, True)
    d = via.VipRecvDone(vi_a)
    assert d.length == 5 and bytes(buf_a[:5]) == b"hello"
    assert via.VipCQDone(cq) is None
    assert select.select([fd], [], [], 0)[0] == [], "still readable with nothing to take"
    assert via.VipSendWait(vi_b, 5000).status == via.VIP_STATUS_DONE | via.VIP_STATUS_OP_SEND
    # RDMA Write with immediate: the receive completes as a remote write, value and length.
    via.VipPostRecv(vi_a, _desc(buf_a, h_a, 0, 64))
    buf_b[100:200] = bytes(range(100))
    via.VipPostSend(vi_b, _desc(buf_b, h_b, 100, 100,
                                via.VIP_CONTROL_OP_RDMAWRITE | via.VIP_CONTROL_IMMEDIATE,
                                via.AddressSegment(via.address_of(buf_a, 1000), h_a), 0xFEED))
    who = via.VipCQWait(cq, 5000)
    assert who == (vi_a, True)
    d = via.VipRecvDone(vi_a)
    assert d.status == (via.VIP_STATUS_DONE | via.VIP_STATUS_OP_REMOTE_RDMA_WRITE
                        | via.VIP_STATUS_IMMEDIATE), hex(d.status)
    assert (d.immediate, d.length) == (0xFEED, 100)
    assert bytes(buf_a[1000:1100]) == bytes(range(100))
    d = via.VipSendWait(vi_b, 5000)
    assert d.status == via.VIP_STATUS_DONE | via.VIP_STATUS_OP_RDMA_WRITE, hex(d.status)


def test_query_answers(pair) -> None:
    (na, vi_a, _buf, _h, _cq), _ = pair
    attrs = via.VipQueryNic(na)
    assert attrs.name == "soft:a" and attrs.max_descriptors_per_queue == via.QUEUE_DEPTH
    assert attrs.max_segments_per_desc == soft.MAX_SEGMENTS
    assert attrs.max_discriminator_len == soft.MAX_DISCRIMINATOR
    state, vattrs, sq_empty, rq_empty = via.VipQueryVi(vi_a)
    assert state is via.ViState.CONNECTED and sq_empty and rq_empty
    assert vattrs.reliability_level is via.Reliability.RELIABLE_DELIVERY
    info = via.VipQuerySystemManagementInfo(na)
    assert "ACTIVE" in info["state"] and info["link_layer"] == "TCP"
    assert via.ServernetInit("soft:a")["soft:a"]["state"].endswith("ACTIVE")
    with pytest.raises(via.VipInvalidParameter, match="label"):
        via.VipOpenNic("soft:")


def test_buffers_are_free_after_deregister_and_close(pair) -> None:
    """An mmap registered with a soft NIC can be closed once deregistered, and once its NIC
    is closed (the GSO engine closes its image after VipCloseNic)."""
    (na, _vi, _buf, _h, _cq), _ = pair
    ptag = via.VipCreatePtag(na)
    m1, m2 = mmap.mmap(-1, 4096), mmap.mmap(-1, 4096)
    h1 = via.VipRegisterMem(na, m1, via.MemAttributes(ptag=ptag, enable_rdma_write=True))
    via.VipRegisterMem(na, m2, via.MemAttributes(ptag=ptag))
    with pytest.raises(BufferError):
        m1.close()  # registered: the provider writes into it
    via.VipDeregisterMem(na, m1, h1)
    m1.close()
    via.VipCloseNic(na)
    m2.close()


def test_full_queues_of_gathered_sends_then_writes(pair) -> None:
    """256 sends of 4 gathered 16 KiB segments each (16 MiB: more than the socket takes at
    once, so the writer thread carries the rest), then 256 RDMA Writes into one region:
    every descriptor completes in post order, every byte lands where it was meant to."""
    (na, vi_a, _ba, _ha, cq), (nb, vi_b, _bb, _hb, _) = pair
    pa, pb = vi_a.attrs.ptag, vi_b.attrs.ptag
    n, seg = via.QUEUE_DEPTH, 16384
    src = mmap.mmap(-1, 4 * seg)
    src[:] = bytes(range(256)) * (4 * seg // 256)
    hs = via.VipRegisterMem(nb, src, via.MemAttributes(ptag=pb))
    dst = mmap.mmap(-1, n * 4 * seg)
    hd = via.VipRegisterMem(na, dst, via.MemAttributes(ptag=pa, enable_rdma_write=True))
    for i in range(n):
        via.VipPostRecv(vi_a, _desc(dst, hd, i * 4 * seg, 4 * seg))
    sends = []
    for i in range(n):
        order = [(i + k) % 4 for k in range(4)]  # each send gathers the segments rotated
        sends.append(via.VipDescriptor(segments=[via.DataSegment(
            via.address_of(src, k * seg), hs, seg) for k in order]))
        via.VipPostSend(vi_b, sends[-1])
    for i in range(n):
        assert via.VipSendWait(vi_b, 10000) is sends[i]
        d = None
        while d is None:
            via.VipCQWait(cq, 10000)
            d = via.VipRecvDone(vi_a)
        assert d.length == 4 * seg and not d.status & via.VIP_STATUS_ERROR_MASK
    for i in (0, 1, n - 1):
        want = b"".join(bytes(src[k * seg:(k + 1) * seg]) for k in [(i + k) % 4 for k in range(4)])
        assert bytes(dst[i * 4 * seg:(i + 1) * 4 * seg]) == want, f"send {i}"
    dst[:] = bytes(len(dst))
    for i in range(n):
        via.VipPostSend(vi_b, _desc(src, hs, (i % 4) * seg, seg, via.VIP_CONTROL_OP_RDMAWRITE,
                                    via.AddressSegment(via.address_of(dst, i * seg), hd)))
    for _ in range(n):
        d = via.VipSendWait(vi_b, 10000)
        assert d.status == via.VIP_STATUS_DONE | via.VIP_STATUS_OP_RDMA_WRITE, hex(d.status)
    assert bytes(dst[:n * seg]) == bytes(src) * (n // 4)
    assert bytes(dst[n * seg:]) == bytes(len(dst) - n * seg)
    copied = via.VipQuerySystemManagementInfo(na)["counters"].get("cma_bytes_rx", 0)
    if os.environ["HSP_VIA_SOFT_LOCAL"] == "1":  # straight from src (but the first sends,
        assert 0 < copied <= n * 5 * seg, copied  # posted before the acceptor's CMA_OK came)
    else:
        assert copied == 0
    via.VipDeregisterMem(nb, src, hs)
    via.VipDeregisterMem(na, dst, hd)


def test_two_nodes_on_two_loopback_addresses_and_a_nic_closed_under_a_stream(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Node a listens on 127.0.0.2, node b (bound to 127.0.0.1) connects; b streams sends;
    a's NIC is closed under it: b's VI goes to ERROR with CONN_LOST, its sends complete (done
    or flushed), nothing raises but VipErrors, and a's registered buffer is free again."""
    monkeypatch.setattr(soft, "PORT_BASE", soft.random_port_base())
    a, b = via.VipOpenNic("soft:a"), via.VipOpenNic("soft:b")
    errors: list = []
    via.VipErrorCallback(b, lambda _c, e: errors.append(e.code))
    try:
        ends = []
        for nic in (a, b):
            ptag = via.VipCreatePtag(nic)
            buf = mmap.mmap(-1, 1 << 16)
            h = via.VipRegisterMem(nic, buf, via.MemAttributes(ptag=ptag))
            ends.append((buf, h, via.VipCreateVi(nic, via.ViAttributes(ptag=ptag))))
        (buf_a, h_a, vi_a), (buf_b, h_b, vi_b) = ends
        for i in range(16):
            via.VipPostRecv(vi_a, _desc(buf_a, h_a, i * 4096, 4096))
        t = threading.Thread(target=lambda: via.VipConnectAccept(
            via.VipConnectWait(a, via.NetAddress("127.0.0.2", b"node"), 5000), vi_a))
        t.start()
        deadline = time.monotonic() + 5
        while True:
            try:
                via.VipConnectRequest(vi_b, via.NetAddress(LOCAL),
                                      via.NetAddress("127.0.0.2", b"node"), 2000)
                break
            except via.VipNoMatch:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        t.join(5)
        for _ in range(8):
            via.VipPostSend(vi_b, _desc(buf_b, h_b, 0, 4096))
        via.VipCloseNic(a)
        buf_a.close()  # the closed NIC let its regions go
        statuses = [via.VipSendWait(vi_b, 5000).status for _ in range(8)]
        assert all(st & via.VIP_STATUS_DONE for st in statuses), statuses
        t0 = time.monotonic()
        while vi_b.state is not via.ViState.ERROR and time.monotonic() - t0 < 3:
            time.sleep(0.01)
        assert vi_b.state is via.ViState.ERROR and errors == ["CONN_LOST"], errors
    finally:
        via.VipCloseNic(a)
        via.VipCloseNic(b)


def test_a_port_base_that_leaves_no_room_is_a_clear_error(monkeypatch) -> None:
    """HSP_VIA_SOFT_PORT_BASE too high for the provider's ports: said, not an OverflowError
    from bind() deep inside (a drill runner once picked 59000 + a 10000-port span)."""
    monkeypatch.setattr(soft, "PORT_BASE", 59000)
    with pytest.raises(via.VipInvalidParameter, match="port base 59000.*HSP_VIA_SOFT_PORT_BASE"):
        soft.port_of(b"pmem")
    monkeypatch.setattr(soft, "PORT_BASE", soft.random_port_base())
    assert 10000 <= soft.port_of(b"pmem") < 32768
