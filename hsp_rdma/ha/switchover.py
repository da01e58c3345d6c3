"""The Graceful Switch Over driver: core.gso's machine executed over one VIA reliable VI.

One RC VI per pair carries the gso channel's control frames (send/receive, Interface A) and
the image copy (RDMA Write, Interface B); the marker is the last RDMA Write on that same VI, so
the RC ordering guarantees every data write landed before it. Each node registers one state
buffer (header | P.mem | blob): the live state while it is active, the copy target while it
is standby, so the standby resumes in place ("IRET") and switch-back needs no new memory.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hsp_rdma import via
from hsp_rdma.core import gso
from hsp_rdma.core.frames import PROTOCOL_VERSION
from hsp_rdma.core.gso_wire import Hello, decode_message, encode_message
from hsp_rdma.core.profiles import PollMode, Profile
from hsp_rdma.errors import FrameError, HspError
from hsp_rdma.ha.image import HEADER_SPACE, StateImage, verify

DISCRIMINATOR = b"hsp-gso"
CTL_SLOTS = 16  # receive descriptors kept posted: one per possible in-flight control frame
CTL_SIZE = 256  # a gso control frame is 26 header bytes + at most 43 payload bytes
MARKER = struct.Struct("<Q")
Clock = Callable[[], float]


class SwitchoverError(HspError):
    """The switch-over engine could not set up or lost its peer; says which step."""


@dataclass
class GsoReport:
    """What one GSO did, measured on this node's monotonic clock."""

    epoch: int
    outcome: str
    role: str  # the side this node played: "active" (source) or "standby" (target)
    image_bytes: int = 0
    stop_t: float = 0.0  # A: application frozen
    copy_start_t: float = 0.0
    copy_end_t: float = 0.0  # A: last data write completed
    marker_t: float = 0.0  # A: marker write completed
    done_t: float = 0.0  # A: "done" received (B resumed before sending it)
    resume_t: float = 0.0  # B: resumed as active
    verify_s: float = 0.0  # B: digest check
    reason: str = ""
    writes: int = 0

    @property
    def blackout_s(self) -> float:
        """A's stop to A's receipt of "done": an upper bound of the real blackout."""
        return self.done_t - self.stop_t if self.done_t and self.stop_t else 0.0

    @property
    def copy_MBps(self) -> float:
        """MB = 2**20 bytes, as perftest counts, so the two figures compare directly."""
        dt = self.copy_end_t - self.copy_start_t
        return self.image_bytes / dt / (1 << 20) if dt > 0 else 0.0


@dataclass
class Application:
    """The application's hooks: freeze() -> blob bytes; resume(image view, blob) on takeover."""

    freeze: Callable[[], bytes] = lambda: b""
    resume: Callable[[memoryview, bytes], None] = lambda pmem, blob: None
    stop_standby: Callable[[], None] = lambda: None


@dataclass
class Peer:
    hello: Hello | None = None


@dataclass
class Engine:
    """One node's GSO engine over one connected VI."""

    nic: object
    vi: object
    ptag: object
    image: StateImage
    image_handle: object
    marker_buf: mmap.mmap
    marker_handle: object
    src_marker: mmap.mmap
    src_marker_handle: object
    ctl_buf: mmap.mmap
    ctl_handle: object
    machine: gso.GsoMachine
    profile: Profile
    app: Application = field(default_factory=Application)
    clock: Clock = time.monotonic
    digest_algo: gso.DigestAlgo = gso.DigestAlgo.CRC32
    chunk_size: int = 0
    queue_depth: int = 0
    peer: Peer = field(default_factory=Peer)
    reports: list[GsoReport] = field(default_factory=list)
    _current: GsoReport | None = None
    _send_seq: int = 0
    _recv_slots: deque = field(default_factory=deque)
    _send_slot: int = 0
    _inbox: deque = field(default_factory=deque)
    forged_frames: int = 0  # frames that failed to decode: counted, never applied
    alarm: str = ""
    markers_ignored: int = 0  # marker values seen that were not this epoch's (stale, torn)
    # Misbehaviour on purpose, for the drills (hsp_rdma.ha.gso_node --inject).
    hello_version: int = PROTOCOL_VERSION
    drop_ready: bool = False
    stale_marker_first: bool = False

    # ---- set-up --------------------------------------------------------------------
    @classmethod
    def open(cls, device: str, profile: Profile, pmem_size: int, blob_capacity: int,
             serving: bool, epoch: int = 0, timeouts: gso.Timeouts | None = None,
             app: Application | None = None, chunk_size: int = 0,
             queue_depth: int = 0) -> Engine:
        """Open DEVICE and register the state buffer, the marker and the control slots."""
        nic = via.VipOpenNic(device)
        try:
            ptag = via.VipCreatePtag(nic)
            image = StateImage(pmem_size, blob_capacity)
            rw = via.MemAttributes(ptag=ptag, enable_rdma_write=True,
                                   enable_rdma_read=profile.rdma_read)
            image_handle = via.VipRegisterMem(nic, image.buf, rw)
            marker = mmap.mmap(-1, mmap.PAGESIZE)
            marker_handle = via.VipRegisterMem(nic, marker, rw)
            src_marker = mmap.mmap(-1, mmap.PAGESIZE)
            local = via.MemAttributes(ptag=ptag)
            src_marker_handle = via.VipRegisterMem(nic, src_marker, local)
            ctl = mmap.mmap(-1, CTL_SIZE * (CTL_SLOTS + CTL_SLOTS))
            ctl_handle = via.VipRegisterMem(nic, ctl, local)
            depth = queue_depth or profile.queue_depth
            vi = via.VipCreateVi(nic, via.ViAttributes(
                ptag=ptag, enable_rdma_write=True, enable_rdma_read=profile.rdma_read))
        except BaseException:
            via.VipCloseNic(nic)
            raise
        machine_cls = gso.GsoMachine.active if serving else gso.GsoMachine.standby
        machine = machine_cls(epoch=epoch, region_size=image.capacity,
                              timeouts=timeouts or gso.Timeouts())
        return cls(nic=nic, vi=vi, ptag=ptag, image=image, image_handle=image_handle,
                   marker_buf=marker, marker_handle=marker_handle, src_marker=src_marker,
                   src_marker_handle=src_marker_handle, ctl_buf=ctl, ctl_handle=ctl_handle,
                   machine=machine, profile=profile, app=app or Application(),
                   chunk_size=chunk_size or profile.chunk_size, queue_depth=depth)

    def _post_recv(self, slot: int) -> None:
        d = via.VipDescriptor(segments=[via.DataSegment(
            via.address_of(self.ctl_buf, slot * CTL_SIZE), self.ctl_handle, CTL_SIZE)])
        d.slot = slot
        via.VipPostRecv(self.vi, d)
        self._recv_slots.append(slot)

    def connect(self, local_ip: str, peer_ip: str | None, timeout_s: float = 30.0) -> Hello:
        """Listen (peer_ip None) or connect, then exchange Hello; returns the peer's.

        The connector retries while nothing listens yet (the peer may still be starting)."""
        local = via.NetAddress(local_ip, DISCRIMINATOR)
        deadline = self.clock() + timeout_s
        if not self._recv_slots:
            for slot in range(CTL_SLOTS):  # receives first: the peer may send at once
                self._post_recv(slot)  # (they stay posted across failed attempts)
        while True:
            ms = max(1, int((deadline - self.clock()) * 1000))
            try:
                if peer_ip is None:
                    req = via.VipConnectWait(self.nic, local, ms)
                    via.VipConnectAccept(req, self.vi)
                else:
                    via.VipConnectRequest(self.vi, local,
                                          via.NetAddress(peer_ip, DISCRIMINATOR), ms)
                break
            except (via.VipNoMatch, via.VipNotReachable, via.VipReject) as exc:
                if peer_ip is None or self.clock() + 0.5 >= deadline:
                    raise SwitchoverError(f"cannot connect to {peer_ip}: {exc}") from exc
                time.sleep(0.5)
            except via.VipTimeout as exc:
                raise SwitchoverError(f"no peer {'connected' if peer_ip is None else 'answered'}"
                                      f" in {timeout_s:.0f} s: {exc}") from exc
        self._send(Hello(region_addr=via.address_of(self.image.buf),
                         region_handle=int(self.image_handle), region_size=self.image.capacity,
                         marker_addr=via.address_of(self.marker_buf),
                         marker_handle=int(self.marker_handle),
                         serving=self.machine.serving, active_since=self.machine.active_since,
                         version=self.hello_version))
        deadline = self.clock() + timeout_s
        while self.peer.hello is None:
            msg = self._receive(deadline)
            if msg is None:
                raise SwitchoverError(f"peer {peer_ip or '(listener)'} sent no Hello in "
                                      f"{timeout_s:.0f} s")
            if isinstance(msg, Hello):
                if msg.version != PROTOCOL_VERSION:
                    raise SwitchoverError(f"peer speaks protocol version {msg.version}, we "
                                          f"speak {PROTOCOL_VERSION}: upgrade one side")
                self.peer.hello = msg
            else:
                self._inbox.append(msg)
        if self.peer.hello.serving and self.machine.serving:
            raise SwitchoverError("both nodes claim to be active: refusing to run (split "
                                  "brain); restart one of them as standby")
        return self.peer.hello

    # ---- control frames --------------------------------------------------------------
    def _send(self, msg) -> None:
        slot = CTL_SLOTS + self._send_slot % CTL_SLOTS
        self._send_slot += 1
        self._send_seq += 1
        wire = encode_message(msg, self._send_seq)
        off = slot * CTL_SIZE
        self.ctl_buf[off:off + len(wire)] = wire
        d = via.VipDescriptor(segments=[via.DataSegment(
            via.address_of(self.ctl_buf, off), self.ctl_handle, len(wire))])
        via.VipPostSend(self.vi, d)
        self._reap_send(d, "control frame")

    def _reap_send(self, desc, what: str, timeout_s: float = 10.0) -> None:
        done = via.VipSendWait(self.vi, int(timeout_s * 1000))
        if done is not desc:
            raise SwitchoverError(f"{what}: completions out of order")
        if done.status & via.VIP_STATUS_ERROR_MASK:
            raise SwitchoverError(f"{what}: completed with status 0x{done.status:x} "
                                  "(the peer or the link is gone)")

    def _receive(self, deadline: float, block: bool = True):
        """The next valid message, or None at the deadline; forged frames are counted."""
        while True:
            left = deadline - self.clock()
            if block and left <= 0:
                return None
            if block:
                try:
                    d = via.VipRecvWait(self.vi, max(1, int(left * 1000)))
                except via.VipTimeout:
                    return None
            else:
                d = via.VipRecvDone(self.vi)
                if d is None:
                    return None
            slot = self._recv_slots.popleft()
            if d.status & via.VIP_STATUS_ERROR_MASK:
                raise SwitchoverError(f"control receive failed with status 0x{d.status:x}: "
                                      "the peer is gone or the link is down")
            raw = bytes(self.ctl_buf[slot * CTL_SIZE: slot * CTL_SIZE + d.length])
            try:
                self._post_recv(slot)
            except via.VipInvalidState:
                if self.vi.state is not via.ViState.ERROR:
                    raise
                # The peer left right after this message (its goodbye at the end of the last
                # run): the message still counts; the next receive reports the VI's state.
            try:
                msg, _seq = decode_message(raw)
            except FrameError:
                self.forged_frames += 1
                continue
            if isinstance(msg, Hello) and self.peer.hello is not None:
                continue  # a repeated Hello changes nothing once connected
            return msg

    # ---- the machine's actions ----------------------------------------------------------
    def request_gso(self) -> None:
        """Start a GSO as the active; GsoRefused (nothing stopped) when it cannot."""
        hello = self.peer.hello
        if hello is None:
            raise SwitchoverError("no peer connected: cannot switch over")
        # The blob is padded to its reserved size, so the length is known before the freeze.
        length = HEADER_SPACE + self.image.pmem_size + self.image.blob_capacity
        self._feed(gso.RequestGso(image_length=length, peer_region_size=hello.region_size,
                                  peer_version=hello.version, digest_algo=self.digest_algo))

    def _feed(self, event: gso.Event) -> None:
        pending = deque(self.machine.feed(event, self.clock()))
        while pending:
            follow = self._execute(pending.popleft())
            if follow is not None:
                pending.extend(self.machine.feed(follow, self.clock()))

    def _execute(self, action: gso.Action) -> gso.Event | None:
        now = self.clock()
        match action:
            case gso.SendMessage(message=msg):
                if isinstance(msg, gso.StartGso):
                    self._current = GsoReport(msg.epoch, "", "active")
                if not (self.drop_ready and isinstance(msg, gso.Ready)):
                    self._send(msg)
            case gso.StopApplication():
                rep = self._current
                rep.stop_t = now
                blob = self.app.freeze()
                rep.image_bytes = self.image.load_blob(blob.ljust(self.image.blob_capacity,
                                                                  b"\0"))
            case gso.StartCopy(epoch=epoch, image_length=length):
                return self._copy(epoch, length)
            case gso.WriteMarker(value=value):
                return self._write_marker(value)
            case gso.RestartAsStandby():
                self._current.done_t = now
            case gso.StopActivity():
                self._current = GsoReport(self.machine.epoch, "", "standby")
                self.app.stop_standby()
            case gso.ZeroMarker():
                MARKER.pack_into(self.marker_buf, 0, 0)
                return gso.Quiesced(self.machine.epoch)
            case gso.PollMarker(expected=expected, not_equal_to=ne, deadline=deadline):
                seen = self._poll_marker(ne, deadline)
                if isinstance(seen, gso.MarkerSeen) and seen.value != expected:
                    self.markers_ignored += 1
                return seen
            case gso.VerifyImage(epoch=epoch, image_length=length, digest_algo=algo):
                t0 = self.clock()
                v = verify(self.image.buf, epoch, length, algo)
                self._current.verify_s = self.clock() - t0
                self._current.reason = v.reason
                return gso.ImageVerified(epoch, v.ok)
            case gso.ResumeAsActive():
                self._current.resume_t = now
                pm = self.image.pmem
                at = HEADER_SPACE + self.image.pmem_size
                self.app.resume(pm, bytes(self.image.buf[at:at + self.image.blob_capacity]))
            case gso.ResumeApplication() | gso.ResumeStandby() | gso.ClearAlarm():
                pass
            case gso.RaiseAlarm(reason=why):
                self.alarm = why
            case gso.Notify(outcome=outcome, epoch=epoch, reason=reason):
                rep = self._current or GsoReport(epoch, "", self.machine.role.name.lower())
                rep.outcome = outcome.value
                if reason is not None:
                    rep.reason = reason.name
                self.reports.append(rep)
                self._current = None
            case gso.CancelCopy() | gso.FencePeer():
                pass  # the copy loop is synchronous; fencing is the HA layer's (not in bench)
        return None

    def _copy(self, epoch: int, length: int) -> gso.Event:
        """RDMA-write [HEADER_SPACE, length) in chunks with queue_depth writes in flight,
        digesting each chunk while the next ones fly; then the header."""
        hello, rep = self.peer.hello, self._current
        rep.copy_start_t = self.clock()
        digest = self.image.digest_start(epoch, self.digest_algo)
        view = memoryview(self.image.buf)
        inflight: deque = deque()
        try:
            if self.stale_marker_first:
                # A marker left over from an earlier switch-over lands late, before the copy.
                self._write_marker(gso.marker_value(epoch - 1) if epoch > 1 else 0xFABE)
            for off in range(HEADER_SPACE, length, self.chunk_size):
                n = min(self.chunk_size, length - off)
                inflight.append(self._post_write(off, n, hello.region_addr + off,
                                                 hello.region_handle))
                digest.update(view[off:off + n])
                if len(inflight) >= self.queue_depth:
                    self._reap_send(inflight.popleft(), "image write")
            while inflight:
                self._reap_send(inflight.popleft(), "image write")
            hdr = self.image.header(epoch, digest.digest(), self.digest_algo)
            self.image.buf[:len(hdr)] = hdr
            self._reap_send(self._post_write(0, len(hdr), hello.region_addr,
                                             hello.region_handle), "image header write")
        except (SwitchoverError, via.VipError) as exc:
            rep.reason = str(exc)
            return gso.CopyFailed(epoch, str(exc))
        finally:
            view.release()
        rep.copy_end_t = self.clock()
        return gso.CopyComplete(epoch)

    def _post_write(self, off: int, n: int, raddr: int, rhandle: int):
        d = via.VipDescriptor(
            control=via.VIP_CONTROL_OP_RDMAWRITE,
            segments=[via.DataSegment(via.address_of(self.image.buf, off), self.image_handle, n)],
            address=via.AddressSegment(raddr, rhandle))
        via.VipPostSend(self.vi, d)
        self._current.writes += 1
        return d

    def _write_marker(self, value: int) -> gso.Event | None:
        MARKER.pack_into(self.src_marker, 0, value)
        hello = self.peer.hello
        d = via.VipDescriptor(
            control=via.VIP_CONTROL_OP_RDMAWRITE,
            segments=[via.DataSegment(via.address_of(self.src_marker), self.src_marker_handle,
                                      MARKER.size)],
            address=via.AddressSegment(hello.marker_addr, hello.marker_handle))
        via.VipPostSend(self.vi, d)
        self._reap_send(d, "marker write")
        self._current.marker_t = self.clock()
        return None

    def _poll_marker(self, not_equal_to: int, deadline: float) -> gso.Event:
        """Look at the marker word per the profile's marker_poll; between looks, take any
        control frame (a Cancel from A must not wait for the deadline)."""
        poll = self.profile.marker_poll
        looks = 0
        while True:
            value = MARKER.unpack_from(self.marker_buf, 0)[0]
            if value != not_equal_to:
                return gso.MarkerSeen(value)
            now = self.clock()
            if now >= deadline:
                return gso.Tick()
            looks += 1
            if looks % 64 == 0:
                msg = self._receive(now, block=False)
                if msg is not None:
                    return msg
            if poll.mode is PollMode.YIELD:
                os.sched_yield()
            elif poll.mode is PollMode.SLEEP:
                time.sleep(poll.sleep_us / 1e6)

    # ---- the loop -----------------------------------------------------------------------
    def serve(self, until: Callable[[], bool], tick_s: float = 0.05) -> None:
        """Take control frames and ticks until UNTIL() is true (or the machine breaks)."""
        while not until():
            while self._inbox:
                self._feed(self._inbox.popleft())
            msg = self._receive(self.clock() + tick_s)
            self._feed(msg if msg is not None else gso.Tick())

    def close(self) -> None:
        try:
            if self.vi is not None:
                try:
                    via.VipDisconnect(self.vi)
                except via.VipError:
                    pass
        finally:
            via.VipCloseNic(self.nic)
            self.image.close()
            for b in (self.marker_buf, self.src_marker, self.ctl_buf):
                b.close()
