"""Graceful Switch Over (Interface B, the patent's Fig. 3) as a sans-IO state machine.

Two rules, as in h11's ``_state.py``: everything that affects a transition lives in this
file (the ``TRANSITIONS`` table, the event classifier ``_kind`` and the effects ``_apply``),
and the machine does no I/O: ``feed(event, now)`` returns the actions the driver executes.

One machine per node. The node's role follows from its state: ``NORMAL_ACTIVE`` and the
states of a GSO it drives are the active side (A, the source of the copy); ``NORMAL_STANDBY``
and the states of a GSO it receives are the standby side (B, the target). A completed GSO
moves A into ``NORMAL_STANDBY`` and B into ``NORMAL_ACTIVE``, so switch-back is the same
protocol with the roles reversed.

Epochs. Every GSO has an epoch, one more than the highest epoch the source has seen; the
target adopts it from Start-GSO. A message, local completion or heart beat of another epoch
than the node's current one is stale: it is ignored and counted in ``stale_ignored`` (late
duplicates are normal on two fabrics, and an error would turn a harmless one into an outage).
Only a Start-GSO above every epoch the node has seen (``seen``) starts a GSO; a refused one is
seen too, so a late duplicate can never start an epoch the node already refused (its source
took the refusal as final). A Cancel above ``seen`` is adopted, so the Start-GSO it overtook is
ignored. An event of the current epoch that the table has no entry for is a protocol
violation: ``IllegalTransition`` is raised and stays raised (sticky) for every later ``feed``.

The marker (``marker_value``) is a 64-bit word, ``epoch << 16 | 0xfabe``: the agreed constant in
the low 16 bits, the epoch (up to 48 bits) above. B zeroes it before sending "ready", and only
the value of the current epoch moves B on; a marker left by an earlier GSO, or a late write of
one, is ignored and polling continues.

The point of no return is the marker write. Before it (PRE_GSO, COPYING) A may cancel and
resume active on any trouble, because B cannot complete without the marker of this epoch.
After it (AWAIT_DONE) A never resumes active on its own: on a "done" timeout or the loss of
every fabric it goes IN_DOUBT (alarm raised, Cancel sent as a question), then fences B. It
resumes active only on B's Abort (B committed to standby) or on FenceConfirmed (B is down,
and the epoch is raised so B's late messages are stale); it becomes standby on B's Done or
on a heart beat saying B is active in this epoch. B never sends both Done and Abort for one
epoch, and answers every Cancel with the one it committed to. B sends Done only after its
application resumed, so A's freeze to its receipt of Done bounds the blackout.

Fencing is timed: a fence action that does not answer within ``Timeouts.fence`` counts as
failed (A stays in doubt, asks B again, fences again later), so a hung fence keeps the alarm
up and never lets A resume. Safety after the marker rests on the fence telling the truth, as
in every HA stack (Pacemaker's STONITH included): a fence that confirms while B still runs
makes two actives, and no rule of this machine can prevent it, because A fences exactly when
B cannot be heard. A FenceConfirmed that lies is the fence's bug; the explorer shows it. The
split brain shows once a heart beat crosses: the active of the older epoch meets PeerActive
of a newer one, which no row accepts (IllegalTransition, an alarm); stopping there would only
shorten the split brain, not prevent it.

Pull mode (``RequestGso(mode=GsoMode.PULL)``, announced in Start-GSO). The data path turns
around, the machine stays: after "ready" A freezes and seals the image (``SealImage``: the
header written into A's own buffer, the image opened for remote read for this epoch only),
then sends Sealed with the handle, address and length, and digests the frozen image
(``DigestImage``) while B reads it: both only read it, and it stays frozen until A revokes the
read. A sends the digest in a message of its own (Digest) when ``ImageDigested`` comes, in
AWAIT_DONE only (the application still frozen). B pulls the image with RDMA Reads
(``StartPull``) and keeps a Digest of this epoch whenever it comes (``pull_digest``); it
verifies (``VerifyImage`` with that digest) only once it has both the complete pull and the
digest: a pull that completes first waits in AWAIT_DIGEST under the copy timer armed at Sealed.
Then it proceeds as for a push (resume, "done"). Sending Sealed is the point of no return of
a pull, as the marker write is of a push: before it B cannot read the image, so A may resume;
after it A waits for "done" (timer ``pull`` = ``copy + done``: B's pull, digest wait, verify and
resume) and goes in doubt without it. A revokes the read permission (``RevokeRead``) whenever
the GSO ends, before the application runs again; a seal that completes after the GSO ended is
revoked at once. B's waits are timed too: for Sealed (the ``gso`` deadline) and for the pull
and the digest (``copy``); a pull that fails or stalls, a digest that never comes or does not
match, or a lost link ends in Abort: B never resumes without a pulled image that it verified
against the digest A sent.

Restarts. A node that restarts comes back as a standby with the ``epoch`` and ``seen`` it
persisted (``GsoMachine.standby(epoch, ..., seen=seen)``): the Start-GSO, Done and marker of
any epoch it saw are stale to it. It joins as a new session: the peer destroys the old
session's queue pairs before it accepts the new one, so nothing the node sent before it
went down arrives after it came back.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from hsp_rdma.core.frames import MAX_EPOCH, PROTOCOL_VERSION
from hsp_rdma.errors import GsoRefused, IllegalTransition

MARKER_MAGIC = 0xFABE
MARKER_SIZE = 8  # bytes: one aligned 64-bit word, written by one RDMA Write
MAX_MARKER_EPOCH = (1 << 48) - 1


def marker_value(epoch: int) -> int:
    """The marker word that completes GSO ``epoch``: ``epoch << 16 | 0xfabe`` (64 bits).

    Epoch 0 is never a GSO epoch, so neither 0 (the zeroed word) nor a bare 0xfabe ever
    completes a GSO.
    """
    if not 1 <= epoch <= MAX_MARKER_EPOCH:
        raise ValueError(f"GSO epoch should be between 1 and {MAX_MARKER_EPOCH}, got {epoch}")
    return (epoch << 16) | MARKER_MAGIC


class Role(enum.IntEnum):
    """Which side of a GSO a state belongs to; ordered like Pacemaker's roles."""

    STANDBY = 1  # B, the target of the copy
    ACTIVE = 2  # A, the source of the copy


class GsoState(enum.Enum):
    """The states of Fig. 3 on both sides, plus the abort and in-doubt states."""

    NORMAL_ACTIVE = "NORMAL_ACTIVE"
    PRE_GSO = "PRE_GSO"  # A sent Start-GSO, waits for "ready"; application still runs
    COPYING = "COPYING"  # A stopped the application, RDMA-writes the image
    SEALING = "SEALING"  # pull: A stopped the application, opens the image for remote read
    AWAIT_DONE = "AWAIT_DONE"  # A wrote the marker (point of no return), waits for "done"
    IN_DOUBT = "IN_DOUBT"  # A does not know whether B resumed: alarm, asks B (Cancel)
    FENCING = "FENCING"  # A asked the fence action to take B down
    NORMAL_STANDBY = "NORMAL_STANDBY"
    START_GSO = "START_GSO"  # B stops all activity and zeroes the marker
    GSO_INTERRUPT = "GSO_INTERRUPT"  # B sent "ready", polls the marker word
    AWAIT_SEALED = "AWAIT_SEALED"  # pull: B sent "ready", waits for Sealed
    PULLING = "PULLING"  # pull: B RDMA-reads the image from A
    AWAIT_DIGEST = "AWAIT_DIGEST"  # pull: B read the whole image, waits for A's Digest
    VERIFYING = "VERIFYING"  # B saw the marker, checks image length and digest


class AbortReason(enum.IntEnum):
    """Why a GSO ended without a switch (carried in Abort and Cancel messages)."""

    READY_TIMEOUT = 1
    COPY_FAILED = 2
    COPY_TIMEOUT = 3
    LINK_LOST = 4
    IN_DOUBT = 5  # A's question after the marker: "did you resume? if not, abort"
    IMAGE_TOO_LARGE = 6
    VERSION_MISMATCH = 7
    BUSY = 8  # another GSO is in progress on the target
    NOT_STANDBY = 9  # the Start-GSO reached a node that is not a standby
    GSO_TIMEOUT = 10  # B's marker never came
    DIGEST_MISMATCH = 11
    CANCELLED = 12  # B's answer to A's Cancel


class DigestAlgo(enum.IntEnum):
    """How B checks the image; the digest itself travels in the image trailer."""

    BLAKE2B_256 = 1
    # CRC-32C (Castagnoli), the compiled hsp_rdma.cext.crc32c: SSE4.2 ~8.6 GB/s on the host,
    # its slice-by-8 path ~660 MiB/s in a TCG guest (which emulates SSE4.2's crc32 at ~100)
    CRC32C = 2
    CRC32 = 3  # zlib's CRC-32 (IEEE): ~550 MiB/s in a TCG guest, ~4.3 GB/s on the host


class GsoMode(enum.IntEnum):
    """How the image travels: A writes it (push, RDMA Write + marker) or B reads it (pull)."""

    PUSH = 1
    PULL = 2


class Outcome(enum.Enum):
    """How a GSO ended, as reported to the user by ``Notify``."""

    COMPLETED = "completed"
    ABORTED = "aborted"
    FENCED = "fenced"  # A resumed active after the fence action took B down


# ----------------------------------------------------------------------------- events
class Event:
    """Base of everything fed to the machine."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class StartGso(Event):
    """A → B: start GSO ``epoch`` of an image of ``image_length`` bytes."""

    epoch: int
    image_length: int
    digest_algo: DigestAlgo = DigestAlgo.BLAKE2B_256
    version: int = PROTOCOL_VERSION
    mode: GsoMode = GsoMode.PUSH


@dataclass(frozen=True, slots=True)
class Ready(Event):
    """B → A: B has stopped and zeroed the marker; copy now."""

    epoch: int


@dataclass(frozen=True, slots=True)
class Done(Event):
    """B → A: B verified the image and resumed as active.

    Sent only after the resume, so A's freeze to its receipt of Done is an upper bound of
    the blackout.
    """

    epoch: int


@dataclass(frozen=True, slots=True)
class Sealed(Event):
    """A → B (pull): A froze the image and opened it for remote read for this epoch only.

    ``address``/``handle`` name the image in A's memory (the handle is valid until A revokes
    it when the GSO ends). The digest follows in Digest: A takes it while B reads.
    """

    epoch: int
    address: int
    handle: int
    image_length: int
    digest_algo: DigestAlgo


@dataclass(frozen=True, slots=True)
class Digest(Event):
    """A → B (pull): the digest of the frozen image A opened for read in this epoch (taken
    while B reads it); B verifies its pulled image against it, never without it."""

    epoch: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class Abort(Event):
    """B → A: B ended the GSO and stays (or returns to) standby; it will never resume for it."""

    epoch: int
    reason: AbortReason


@dataclass(frozen=True, slots=True)
class Cancel(Event):
    """A → B: A ends the GSO (or, in doubt, asks B to end it unless it already resumed)."""

    epoch: int
    reason: AbortReason


@dataclass(frozen=True, slots=True)
class Quiesced(Event):
    """Local (B): all standby activity stopped and the marker zeroed."""

    epoch: int


@dataclass(frozen=True, slots=True)
class CopyComplete(Event):
    """Local (A): every data write of the image completed."""

    epoch: int


@dataclass(frozen=True, slots=True)
class CopyFailed(Event):
    """Local (A): a data write failed; the marker was not written."""

    epoch: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ImageSealed(Event):
    """Local (A, pull): the image is frozen, its header written and open for remote read."""

    epoch: int
    address: int
    handle: int


@dataclass(frozen=True, slots=True)
class ImageDigested(Event):
    """Local (A, pull): the digest of the frozen image of ``epoch`` is taken."""

    epoch: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class SealFailed(Event):
    """Local (A, pull): the image could not be opened for remote read; nothing is open."""

    epoch: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class PullComplete(Event):
    """Local (B, pull): every RDMA Read of the image completed."""

    epoch: int


@dataclass(frozen=True, slots=True)
class PullFailed(Event):
    """Local (B, pull): a read failed (revoked, peer gone, link lost); nothing more is posted."""

    epoch: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class MarkerSeen(Event):
    """Local (B): the marker word changed to ``value``."""

    value: int


@dataclass(frozen=True, slots=True)
class ImageVerified(Event):
    """Local (B): the copied image's length and digest were checked."""

    epoch: int
    ok: bool


@dataclass(frozen=True, slots=True)
class FenceConfirmed(Event):
    """Local (A): the fence action took the peer down.

    Report it only after this node's queue pairs to the peer are destroyed, so that nothing
    the fenced peer sent can still arrive; a peer that comes back joins as a new session.
    """

    epoch: int


@dataclass(frozen=True, slots=True)
class FenceFailed(Event):
    """Local (A): the fence action did not confirm; the peer may still run."""

    epoch: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Tick(Event):
    """Time passed; ``now`` comes with every ``feed``."""


@dataclass(frozen=True, slots=True)
class AllFabricsLost(Event):
    """Every fabric to the peer is silent."""


@dataclass(frozen=True, slots=True)
class PeerActive(Event):
    """A heart beat: the peer serves as active since epoch ``epoch``."""

    epoch: int


@dataclass(frozen=True, slots=True)
class RequestGso(Event):
    """The user asks this node to hand over; carries what the pre-checks need."""

    image_length: int
    peer_region_size: int
    peer_version: int = PROTOCOL_VERSION
    digest_algo: DigestAlgo = DigestAlgo.BLAKE2B_256
    mode: GsoMode = GsoMode.PUSH


Message = StartGso | Ready | Sealed | Digest | Done | Abort | Cancel


# ---------------------------------------------------------------------------- actions
class Action:
    """Base of everything the machine asks its driver to do, in list order."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class SendMessage(Action):
    """Send ``message`` to the peer on the gso channel (any fabric)."""

    message: Message


@dataclass(frozen=True, slots=True)
class StopApplication(Action):
    """A: freeze the application; its state image must not change after this."""


@dataclass(frozen=True, slots=True)
class StartCopy(Action):
    """A: RDMA-write the image into B's region (chunked, pipelined); report CopyComplete."""

    epoch: int
    image_length: int


@dataclass(frozen=True, slots=True)
class CancelCopy(Action):
    """A: stop posting copy writes; never write this epoch's marker."""

    epoch: int


@dataclass(frozen=True, slots=True)
class SealImage(Action):
    """A (pull): write the header into the frozen image, open it for remote read for
    ``epoch`` only; report ImageSealed (with handle and address) or SealFailed."""

    epoch: int
    image_length: int


@dataclass(frozen=True, slots=True)
class DigestImage(Action):
    """A (pull): digest the frozen image of ``epoch`` while the peer reads it (only reading
    it); report ImageDigested. Drop it when the read is revoked (the GSO ended)."""

    epoch: int
    image_length: int


@dataclass(frozen=True, slots=True)
class RevokeRead(Action):
    """A (pull): close the remote read of the image (deregister it); idempotent."""

    epoch: int


@dataclass(frozen=True, slots=True)
class StartPull(Action):
    """B (pull): RDMA-read the image from A (chunked, pipelined); report PullComplete."""

    epoch: int
    address: int
    handle: int
    image_length: int


@dataclass(frozen=True, slots=True)
class CancelPull(Action):
    """B (pull): post no more reads for ``epoch``; report nothing more for it."""

    epoch: int


@dataclass(frozen=True, slots=True)
class WriteMarker(Action):
    """A: one last RDMA Write of the 8-byte marker, after every data write, same QP."""

    value: int


@dataclass(frozen=True, slots=True)
class ResumeApplication(Action):
    """A: thaw the stopped application; this node serves as active again."""


@dataclass(frozen=True, slots=True)
class RestartAsStandby(Action):
    """A: B took over in ``epoch``; restart this node as its standby."""

    epoch: int


@dataclass(frozen=True, slots=True)
class StopActivity(Action):
    """B: stop all standby activity (applying updates) that touches the state region."""


@dataclass(frozen=True, slots=True)
class ZeroMarker(Action):
    """B: store 0 in the marker word, then report Quiesced."""


@dataclass(frozen=True, slots=True)
class PollMarker(Action):
    """B: look at the marker until it differs from ``not_equal_to`` or ``deadline``; report it.

    How to look (busy, yield, sleep) is the hardware profile's ``marker_poll``.
    """

    expected: int
    not_equal_to: int
    deadline: float


@dataclass(frozen=True, slots=True)
class VerifyImage(Action):
    """B: check the image's length and digest; report ImageVerified. The digest to match is
    ``digest`` when given (a pull: the one A's Digest carried), else the image header's."""

    epoch: int
    image_length: int
    digest_algo: DigestAlgo
    digest: bytes | None = None


@dataclass(frozen=True, slots=True)
class ResumeAsActive(Action):
    """B: "IRET": continue from the copied image as the active of ``epoch``."""

    epoch: int


@dataclass(frozen=True, slots=True)
class ResumeStandby(Action):
    """B: resume standby activity; after a started copy the region needs a resync."""

    needs_resync: bool


@dataclass(frozen=True, slots=True)
class FencePeer(Action):
    """A: run the configured fence action on the peer; report FenceConfirmed/FenceFailed."""

    epoch: int


@dataclass(frozen=True, slots=True)
class RaiseAlarm(Action):
    """Tell the operator: no node may be serving, and why."""

    reason: str


@dataclass(frozen=True, slots=True)
class ClearAlarm(Action):
    """The condition of the last RaiseAlarm is over."""


@dataclass(frozen=True, slots=True)
class Notify(Action):
    """Report the end of GSO ``epoch`` to the user."""

    outcome: Outcome
    epoch: int
    reason: AbortReason | None = None


# ---------------------------------------------------------------- the table and its keys
class On(enum.Enum):
    """Event kinds: the table's keys. ``_kind`` maps an event (and the machine) to one."""

    REQUEST_GSO = "RequestGso"
    REQUEST_GSO_BAD = "RequestGso (pre-check fails)"
    START_GSO_NEW = "StartGso (newer epoch)"
    START_GSO_BAD = "StartGso (newer epoch, pre-check fails)"
    START_GSO_DUP = "StartGso (same epoch)"
    READY = "Ready"
    READY_PULL = "Ready (pull)"
    SEALED = "Sealed"
    DIGEST = "Digest"
    DONE = "Done"
    ABORT = "Abort"
    CANCEL = "Cancel"
    CANCEL_AHEAD = "Cancel (newer epoch)"
    QUIESCED = "Quiesced"
    QUIESCED_PULL = "Quiesced (pull)"
    IMAGE_SEALED = "ImageSealed"
    IMAGE_DIGESTED = "ImageDigested"
    SEAL_FAILED = "SealFailed"
    PULL_COMPLETE = "PullComplete (digest received)"
    PULL_COMPLETE_EARLY = "PullComplete (digest not received yet)"
    PULL_FAILED = "PullFailed"
    COPY_COMPLETE = "CopyComplete"
    COPY_FAILED = "CopyFailed"
    MARKER_OURS = "MarkerSeen (this epoch)"
    MARKER_OTHER = "MarkerSeen (other value)"
    IMAGE_OK = "ImageVerified (ok)"
    IMAGE_BAD = "ImageVerified (mismatch)"
    FENCE_CONFIRMED = "FenceConfirmed"
    FENCE_FAILED = "FenceFailed"
    TICK = "Tick"
    TICK_EXPIRED = "Tick (deadline passed)"
    ALL_FABRICS_LOST = "AllFabricsLost"
    PEER_ACTIVE = "PeerActive"


class Timer(enum.Enum):
    """The one deadline a timed state holds; its length comes from ``Timeouts``."""

    READY = "ready"
    COPY = "copy"
    DONE = "done"
    PULL = "pull"  # A after Sealed: B's pull, verify and resume (copy + done)
    FENCE = "fence"
    GSO = "gso"


class Op(enum.Enum):
    """What a transition does; ``_apply`` turns each into machine updates and actions."""

    REFUSE = "refuse (raise GsoRefused)"
    BEGIN = "epoch+1, send StartGso"
    ADOPT = "adopt the message's epoch"
    ARM = "arm timer"
    SEND_READY = "send Ready"
    SEND_DONE = "send Done"
    SEND_ABORT = "send Abort"
    SEND_CANCEL = "send Cancel"
    STOP_APPLICATION = "StopApplication"
    START_COPY = "StartCopy"
    CANCEL_COPY = "CancelCopy"
    WRITE_MARKER = "WriteMarker"
    SEAL_IMAGE = "SealImage"
    SEND_SEALED = "send Sealed"
    DIGEST_IMAGE = "DigestImage"
    SEND_DIGEST = "send Digest"
    TAKE_DIGEST = "keep the Digest"
    REVOKE_READ = "RevokeRead (pull)"
    START_PULL = "StartPull"
    CANCEL_PULL = "CancelPull"
    RESUME_APPLICATION = "ResumeApplication"
    RESTART_AS_STANDBY = "RestartAsStandby"
    STOP_ACTIVITY = "StopActivity"
    ZERO_MARKER = "ZeroMarker"
    POLL_MARKER = "PollMarker"
    VERIFY_IMAGE = "VerifyImage"
    RESUME_AS_ACTIVE = "ResumeAsActive (IRET)"
    RESUME_STANDBY = "ResumeStandby"
    RESUME_STANDBY_RESYNC = "ResumeStandby (needs resync)"
    FENCE_PEER = "FencePeer"
    PROMOTE = "epoch+1 (peer fenced)"
    RAISE_ALARM = "RaiseAlarm"
    CLEAR_ALARM = "ClearAlarm"
    NOTIFY = "Notify"


@dataclass(frozen=True, slots=True)
class Effect:
    """One step of a transition: an ``Op`` and its argument (a reason, timer or outcome)."""

    op: Op
    arg: AbortReason | Timer | Outcome | None = None

    def __str__(self) -> str:
        if self.arg is None:
            return self.op.value
        return f"{self.op.value} ({self.arg.name.lower()})"


@dataclass(frozen=True, slots=True)
class Step:
    """A table entry: the next state and the effects, in order."""

    next: GsoState
    effects: tuple[Effect, ...] = ()


def _e(op: Op, arg: AbortReason | Timer | Outcome | None = None) -> Effect:
    return Effect(op, arg)


S = GsoState
R = AbortReason
_IGNORE = None  # marker in the table source: "same state, nothing to do"
_REFUSE = (_e(Op.REFUSE),)


def _steps(state: GsoState, rows: dict[On, tuple[GsoState | None, tuple[Effect, ...]]]):
    return {on: Step(state if nxt is None else nxt, effects) for on, (nxt, effects) in rows.items()}


def _ignore(*kinds: On) -> dict[On, tuple[None, tuple[Effect, ...]]]:
    return {kind: (_IGNORE, ()) for kind in kinds}


# Pull mode: the peer's read of the image is revoked before the application runs again (and
# when A becomes standby). In push mode REVOKE_READ emits nothing.
_RESUME_A = (_e(Op.REVOKE_READ), _e(Op.RESUME_APPLICATION))
_ABORTED = (_e(Op.NOTIFY, Outcome.ABORTED),)
_TO_STANDBY = (_e(Op.REVOKE_READ), _e(Op.RESTART_AS_STANDBY), _e(Op.NOTIFY, Outcome.COMPLETED))
_ENTER_DOUBT = (
    _e(Op.RAISE_ALARM),
    _e(Op.SEND_CANCEL, R.IN_DOUBT),
    _e(Op.ARM, Timer.FENCE),
)
# B is down (the fence took it): the epoch goes up, so whatever B sent is stale.
_FENCED = (_e(Op.CLEAR_ALARM),) + _RESUME_A + (_e(Op.NOTIFY, Outcome.FENCED), _e(Op.PROMOTE))
_B_ABORTS_AFTER_READY = (_e(Op.RESUME_STANDBY_RESYNC),) + _ABORTED
# A Start-GSO of a newer epoch while this node is in a GSO: refused, nothing stops. (After
# the marker, A can meet B's switch-back request before B's Done.)
_BUSY = {
    On.START_GSO_NEW: (_IGNORE, (_e(Op.SEND_ABORT, R.BUSY),)),
    On.START_GSO_BAD: (_IGNORE, (_e(Op.SEND_ABORT, R.BUSY),)),
}

TRANSITIONS: dict[Role, dict[GsoState, dict[On, Step]]] = {
    Role.ACTIVE: {
        S.NORMAL_ACTIVE: _steps(S.NORMAL_ACTIVE, {
            On.REQUEST_GSO: (S.PRE_GSO, (_e(Op.BEGIN), _e(Op.ARM, Timer.READY))),
            On.REQUEST_GSO_BAD: (_IGNORE, _REFUSE),
            # A Start-GSO reaching an active node: refuse it without stopping anything.
            On.START_GSO_NEW: (_IGNORE, (_e(Op.SEND_ABORT, R.NOT_STANDBY),)),
            On.START_GSO_BAD: (_IGNORE, (_e(Op.SEND_ABORT, R.NOT_STANDBY),)),
            # This node was B of the current epoch and resumed: A asks, the answer is Done.
            On.CANCEL: (_IGNORE, (_e(Op.SEND_DONE),)),
            # A seal that completes after the GSO ended (pull): close the read at once.
            On.IMAGE_SEALED: (_IGNORE, (_e(Op.REVOKE_READ),)),
            # Late arrivals of an epoch this node already finished, as A or as B.
            # A digest that completes after the GSO ended: the image may run again, never send.
            **_ignore(On.START_GSO_DUP, On.READY, On.READY_PULL, On.SEALED, On.DIGEST,
                      On.ABORT, On.COPY_COMPLETE, On.COPY_FAILED, On.SEAL_FAILED,
                      On.IMAGE_DIGESTED, On.PULL_COMPLETE, On.PULL_COMPLETE_EARLY,
                      On.PULL_FAILED, On.MARKER_OURS, On.MARKER_OTHER, On.FENCE_CONFIRMED,
                      On.FENCE_FAILED, On.TICK, On.ALL_FABRICS_LOST),
        }),
        S.PRE_GSO: _steps(S.PRE_GSO, {
            On.READY: (S.COPYING, (_e(Op.STOP_APPLICATION), _e(Op.START_COPY),
                                   _e(Op.ARM, Timer.COPY))),
            On.READY_PULL: (S.SEALING, (_e(Op.STOP_APPLICATION), _e(Op.SEAL_IMAGE),
                                        _e(Op.ARM, Timer.COPY))),
            On.TICK_EXPIRED: (S.NORMAL_ACTIVE, (_e(Op.SEND_CANCEL, R.READY_TIMEOUT),) + _ABORTED),
            On.ABORT: (S.NORMAL_ACTIVE, _ABORTED),
            On.ALL_FABRICS_LOST: (S.NORMAL_ACTIVE, (_e(Op.SEND_CANCEL, R.LINK_LOST),) + _ABORTED),
            On.REQUEST_GSO: (_IGNORE, _REFUSE),
            **_ignore(On.TICK),
        }),
        # Before the marker: B cannot complete this epoch, so A may always resume.
        S.COPYING: _steps(S.COPYING, {
            On.COPY_COMPLETE: (S.AWAIT_DONE, (_e(Op.WRITE_MARKER), _e(Op.ARM, Timer.DONE))),
            On.COPY_FAILED: (S.NORMAL_ACTIVE, (_e(Op.CANCEL_COPY), _e(Op.SEND_CANCEL, R.COPY_FAILED))
                             + _RESUME_A + _ABORTED),
            On.TICK_EXPIRED: (S.NORMAL_ACTIVE, (_e(Op.CANCEL_COPY),
                                                _e(Op.SEND_CANCEL, R.COPY_TIMEOUT))
                              + _RESUME_A + _ABORTED),
            On.ABORT: (S.NORMAL_ACTIVE, (_e(Op.CANCEL_COPY),) + _RESUME_A + _ABORTED),
            On.ALL_FABRICS_LOST: (S.NORMAL_ACTIVE, (_e(Op.CANCEL_COPY),
                                                    _e(Op.SEND_CANCEL, R.LINK_LOST))
                                  + _RESUME_A + _ABORTED),
            On.REQUEST_GSO: (_IGNORE, _REFUSE),
            **_ignore(On.READY, On.TICK),
        }),
        # Pull, before Sealed: B cannot read the image yet, so A may always resume.
        S.SEALING: _steps(S.SEALING, {
            # Sealed first (B starts reading), then A digests while B reads.
            On.IMAGE_SEALED: (S.AWAIT_DONE, (_e(Op.SEND_SEALED), _e(Op.DIGEST_IMAGE),
                                             _e(Op.ARM, Timer.PULL))),
            On.SEAL_FAILED: (S.NORMAL_ACTIVE, (_e(Op.SEND_CANCEL, R.COPY_FAILED),)
                             + _RESUME_A + _ABORTED),
            On.TICK_EXPIRED: (S.NORMAL_ACTIVE, (_e(Op.SEND_CANCEL, R.COPY_TIMEOUT),)
                              + _RESUME_A + _ABORTED),
            On.ABORT: (S.NORMAL_ACTIVE, _RESUME_A + _ABORTED),
            On.ALL_FABRICS_LOST: (S.NORMAL_ACTIVE, (_e(Op.SEND_CANCEL, R.LINK_LOST),)
                                  + _RESUME_A + _ABORTED),
            On.REQUEST_GSO: (_IGNORE, _REFUSE),
            **_ignore(On.READY_PULL, On.TICK),
        }),
        # After the marker (push) or Sealed (pull): A resumes only on B's word (Abort) or B's
        # fence; never on a timer.
        S.AWAIT_DONE: _steps(S.AWAIT_DONE, {
            # Pull: the image is still frozen here (every exit revokes before it thaws).
            On.IMAGE_DIGESTED: (_IGNORE, (_e(Op.SEND_DIGEST),)),
            On.DONE: (S.NORMAL_STANDBY, _TO_STANDBY),
            On.PEER_ACTIVE: (S.NORMAL_STANDBY, _TO_STANDBY),
            On.ABORT: (S.NORMAL_ACTIVE, _RESUME_A + _ABORTED),
            On.TICK_EXPIRED: (S.IN_DOUBT, _ENTER_DOUBT),
            On.ALL_FABRICS_LOST: (S.IN_DOUBT, _ENTER_DOUBT),
            On.REQUEST_GSO: (_IGNORE, _REFUSE),
            **_BUSY,
            **_ignore(On.CANCEL_AHEAD, On.READY, On.READY_PULL, On.TICK),
        }),
        S.IN_DOUBT: _steps(S.IN_DOUBT, {
            On.ABORT: (S.NORMAL_ACTIVE, (_e(Op.CLEAR_ALARM),) + _RESUME_A + _ABORTED),
            On.DONE: (S.NORMAL_STANDBY, (_e(Op.CLEAR_ALARM),) + _TO_STANDBY),
            On.PEER_ACTIVE: (S.NORMAL_STANDBY, (_e(Op.CLEAR_ALARM),) + _TO_STANDBY),
            # The fence timer counts from this feed's ``now`` whichever order: effects are
            # applied before the driver runs any action. ARM comes last, as in every row that
            # arms one: the action, then the deadline that bounds it.
            On.TICK_EXPIRED: (S.FENCING, (_e(Op.FENCE_PEER), _e(Op.ARM, Timer.FENCE))),
            # The late answer of a fence attempt that timed out. Confirmed: B is down whichever
            # attempt took it (FenceConfirmed's contract), so resuming is as safe as in
            # FENCING, and waiting to fence again would only keep every node frozen for
            # nothing. Failed: changes nothing; the fence timer is armed and decides.
            On.FENCE_CONFIRMED: (S.NORMAL_ACTIVE, _FENCED),
            On.REQUEST_GSO: (_IGNORE, _REFUSE),
            **_BUSY,
            # A digest taken after the doubt began: A asked B to abort; no use sending it.
            **_ignore(On.CANCEL_AHEAD, On.READY, On.READY_PULL, On.FENCE_FAILED, On.TICK,
                      On.ALL_FABRICS_LOST, On.IMAGE_DIGESTED),
        }),
        # B is being taken down: its Done no longer counts; its Abort still does. A fence that
        # does not answer in time counts as failed: in doubt again (alarm still up), ask B
        # again, fence again when the timer passes; never resume on a timer.
        S.FENCING: _steps(S.FENCING, {
            On.FENCE_CONFIRMED: (S.NORMAL_ACTIVE, _FENCED),
            On.FENCE_FAILED: (S.IN_DOUBT, _ENTER_DOUBT[1:]),
            On.TICK_EXPIRED: (S.IN_DOUBT, _ENTER_DOUBT[1:]),
            On.ABORT: (S.NORMAL_ACTIVE, (_e(Op.CLEAR_ALARM),) + _RESUME_A + _ABORTED),
            On.REQUEST_GSO: (_IGNORE, _REFUSE),
            **_BUSY,
            **_ignore(On.CANCEL_AHEAD, On.DONE, On.PEER_ACTIVE, On.READY, On.READY_PULL,
                      On.TICK, On.ALL_FABRICS_LOST, On.IMAGE_DIGESTED),
        }),
    },
    Role.STANDBY: {
        S.NORMAL_STANDBY: _steps(S.NORMAL_STANDBY, {
            On.START_GSO_NEW: (S.START_GSO, (_e(Op.ADOPT), _e(Op.STOP_ACTIVITY),
                                             _e(Op.ZERO_MARKER), _e(Op.ARM, Timer.GSO))),
            # Refused before anything stops; the epoch is taken so duplicates are ignored.
            On.START_GSO_BAD: (_IGNORE, (_e(Op.ADOPT), _e(Op.SEND_ABORT))),
            # This node was B and aborted (or refused): answer A's question again.
            On.CANCEL: (_IGNORE, (_e(Op.SEND_ABORT, R.CANCELLED),)),
            On.CANCEL_AHEAD: (_IGNORE, (_e(Op.ADOPT), _e(Op.SEND_ABORT, R.CANCELLED))),
            On.REQUEST_GSO: (_IGNORE, _REFUSE),
            # Late arrivals of a finished epoch (this node was A and completed, or B and aborted),
            # and the active's heart beats. As A in doubt, this node may have taken B's Done
            # while a fence attempt that timed out still ran: its answer comes now (if it took
            # B down, the active is gone: the Monitor's failover, not the GSO's). Abort: this
            # node was A, went down, and restarted as standby before B's Abort came.
            **_ignore(On.START_GSO_DUP, On.READY, On.READY_PULL, On.SEALED, On.DIGEST, On.DONE,
                      On.ABORT, On.QUIESCED, On.QUIESCED_PULL, On.PULL_COMPLETE,
                      On.PULL_COMPLETE_EARLY, On.PULL_FAILED, On.IMAGE_SEALED,
                      On.IMAGE_DIGESTED, On.SEAL_FAILED, On.MARKER_OURS, On.MARKER_OTHER,
                      On.IMAGE_OK, On.IMAGE_BAD, On.FENCE_CONFIRMED, On.FENCE_FAILED,
                      On.PEER_ACTIVE, On.TICK, On.ALL_FABRICS_LOST),
        }),
        S.START_GSO: _steps(S.START_GSO, {
            On.QUIESCED: (S.GSO_INTERRUPT, (_e(Op.SEND_READY), _e(Op.POLL_MARKER))),
            # Pull: the gso deadline armed at Start-GSO also bounds the wait for Sealed.
            On.QUIESCED_PULL: (S.AWAIT_SEALED, (_e(Op.SEND_READY),)),
            On.CANCEL: (S.NORMAL_STANDBY, (_e(Op.SEND_ABORT, R.CANCELLED),
                                           _e(Op.RESUME_STANDBY)) + _ABORTED),
            On.TICK_EXPIRED: (S.NORMAL_STANDBY, (_e(Op.SEND_ABORT, R.GSO_TIMEOUT),
                                                 _e(Op.RESUME_STANDBY)) + _ABORTED),
            On.REQUEST_GSO: (_IGNORE, _REFUSE),
            **_BUSY,
            **_ignore(On.START_GSO_DUP, On.CANCEL_AHEAD, On.MARKER_OTHER, On.PEER_ACTIVE,
                      On.TICK, On.ALL_FABRICS_LOST),
        }),
        S.GSO_INTERRUPT: _steps(S.GSO_INTERRUPT, {
            On.MARKER_OURS: (S.VERIFYING, (_e(Op.VERIFY_IMAGE),)),
            # A stale marker (earlier epoch) or a torn value: keep polling, past this value.
            On.MARKER_OTHER: (_IGNORE, (_e(Op.POLL_MARKER),)),
            On.TICK_EXPIRED: (S.NORMAL_STANDBY, (_e(Op.SEND_ABORT, R.GSO_TIMEOUT),)
                              + _B_ABORTS_AFTER_READY),
            On.CANCEL: (S.NORMAL_STANDBY, (_e(Op.SEND_ABORT, R.CANCELLED),)
                        + _B_ABORTS_AFTER_READY),
            On.REQUEST_GSO: (_IGNORE, _REFUSE),
            **_BUSY,
            **_ignore(On.START_GSO_DUP, On.CANCEL_AHEAD, On.PEER_ACTIVE, On.TICK,
                      On.ALL_FABRICS_LOST),
        }),
        # Pull: nothing was read into the region yet, so no resync is needed on an abort.
        S.AWAIT_SEALED: _steps(S.AWAIT_SEALED, {
            On.SEALED: (S.PULLING, (_e(Op.START_PULL), _e(Op.ARM, Timer.COPY))),
            # A sends it after Sealed; on another fabric it may overtake Sealed: kept.
            On.DIGEST: (_IGNORE, (_e(Op.TAKE_DIGEST),)),
            On.TICK_EXPIRED: (S.NORMAL_STANDBY, (_e(Op.SEND_ABORT, R.GSO_TIMEOUT),
                                                 _e(Op.RESUME_STANDBY)) + _ABORTED),
            On.CANCEL: (S.NORMAL_STANDBY, (_e(Op.SEND_ABORT, R.CANCELLED),
                                           _e(Op.RESUME_STANDBY)) + _ABORTED),
            On.REQUEST_GSO: (_IGNORE, _REFUSE),
            **_BUSY,
            **_ignore(On.START_GSO_DUP, On.CANCEL_AHEAD, On.MARKER_OURS, On.MARKER_OTHER,
                      On.PEER_ACTIVE, On.TICK, On.ALL_FABRICS_LOST),
        }),
        # A pull that fails, stalls or loses the link ends in Abort; reads stop first. B
        # verifies only with both the whole image and A's digest, whichever comes last.
        S.PULLING: _steps(S.PULLING, {
            On.DIGEST: (_IGNORE, (_e(Op.TAKE_DIGEST),)),
            On.PULL_COMPLETE: (S.VERIFYING, (_e(Op.VERIFY_IMAGE),)),
            On.PULL_COMPLETE_EARLY: (S.AWAIT_DIGEST, ()),
            On.PULL_FAILED: (S.NORMAL_STANDBY, (_e(Op.SEND_ABORT, R.COPY_FAILED),)
                             + _B_ABORTS_AFTER_READY),
            On.TICK_EXPIRED: (S.NORMAL_STANDBY, (_e(Op.CANCEL_PULL),
                                                 _e(Op.SEND_ABORT, R.COPY_TIMEOUT))
                              + _B_ABORTS_AFTER_READY),
            On.CANCEL: (S.NORMAL_STANDBY, (_e(Op.CANCEL_PULL), _e(Op.SEND_ABORT, R.CANCELLED))
                        + _B_ABORTS_AFTER_READY),
            On.ALL_FABRICS_LOST: (S.NORMAL_STANDBY, (_e(Op.CANCEL_PULL),
                                                     _e(Op.SEND_ABORT, R.LINK_LOST))
                                  + _B_ABORTS_AFTER_READY),
            On.REQUEST_GSO: (_IGNORE, _REFUSE),
            **_BUSY,
            **_ignore(On.START_GSO_DUP, On.CANCEL_AHEAD, On.SEALED, On.MARKER_OURS,
                      On.MARKER_OTHER, On.PEER_ACTIVE, On.TICK),
        }),
        # Pull: the image is all here, A's digest is not. The copy timer armed at Sealed
        # bounds the wait; no digest, a Cancel or a lost link: Abort, never resume.
        S.AWAIT_DIGEST: _steps(S.AWAIT_DIGEST, {
            On.DIGEST: (S.VERIFYING, (_e(Op.TAKE_DIGEST), _e(Op.VERIFY_IMAGE))),
            On.TICK_EXPIRED: (S.NORMAL_STANDBY, (_e(Op.SEND_ABORT, R.COPY_TIMEOUT),)
                              + _B_ABORTS_AFTER_READY),
            On.CANCEL: (S.NORMAL_STANDBY, (_e(Op.SEND_ABORT, R.CANCELLED),)
                        + _B_ABORTS_AFTER_READY),
            On.ALL_FABRICS_LOST: (S.NORMAL_STANDBY, (_e(Op.SEND_ABORT, R.LINK_LOST),)
                                  + _B_ABORTS_AFTER_READY),
            On.REQUEST_GSO: (_IGNORE, _REFUSE),
            **_BUSY,
            **_ignore(On.START_GSO_DUP, On.CANCEL_AHEAD, On.SEALED, On.MARKER_OURS,
                      On.MARKER_OTHER, On.PEER_ACTIVE, On.TICK),
        }),
        S.VERIFYING: _steps(S.VERIFYING, {
            # Done leaves only after the application resumed: A's freeze to its receipt of
            # Done then bounds the blackout.
            On.IMAGE_OK: (S.NORMAL_ACTIVE, (_e(Op.RESUME_AS_ACTIVE), _e(Op.SEND_DONE),
                                            _e(Op.NOTIFY, Outcome.COMPLETED))),
            On.IMAGE_BAD: (S.NORMAL_STANDBY, (_e(Op.SEND_ABORT, R.DIGEST_MISMATCH),)
                           + _B_ABORTS_AFTER_READY),
            On.CANCEL: (S.NORMAL_STANDBY, (_e(Op.SEND_ABORT, R.CANCELLED),)
                        + _B_ABORTS_AFTER_READY),
            On.REQUEST_GSO: (_IGNORE, _REFUSE),
            **_BUSY,
            **_ignore(On.START_GSO_DUP, On.CANCEL_AHEAD, On.SEALED, On.DIGEST, On.MARKER_OURS,
                      On.MARKER_OTHER, On.PEER_ACTIVE, On.TICK, On.ALL_FABRICS_LOST),
        }),
    },
}

ROLE_OF: dict[GsoState, Role] = {
    state: role for role, states in TRANSITIONS.items() for state in states
}
# The node runs the application as the active: A until it stops for the copy, B after IRET.
SERVING = frozenset({S.NORMAL_ACTIVE, S.PRE_GSO})
ALARMED = frozenset({S.IN_DOUBT, S.FENCING})
TIMED = frozenset({S.PRE_GSO, S.COPYING, S.SEALING, S.AWAIT_DONE, S.IN_DOUBT, S.FENCING,
                   S.START_GSO, S.GSO_INTERRUPT, S.AWAIT_SEALED, S.PULLING, S.AWAIT_DIGEST})


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Deadline lengths in seconds. B's ``gso`` should exceed A's ``ready + copy``.

    ``fence`` is both how long A waits in doubt before it fences and how long it gives the
    fence action to answer. In pull mode A waits ``pull`` (= ``copy + done``) after Sealed:
    B's reads, its wait for the digest, verify and resume (B's reads and digest wait share
    ``copy``).
    """

    ready: float = 0.5
    copy: float = 10.0
    done: float = 2.0
    fence: float = 2.0
    gso: float = 15.0

    def __post_init__(self) -> None:
        for name in ("ready", "copy", "done", "fence", "gso"):
            if not getattr(self, name) > 0:
                raise ValueError(f"timeout {name} should be > 0 s, got {getattr(self, name)}")

    @property
    def pull(self) -> float:
        return self.copy + self.done


def _seen(epoch: int, seen: int | None) -> int:
    if seen is None:
        return epoch
    if seen < epoch:
        raise ValueError(f"seen epoch {seen} is below the current epoch {epoch}; "
                         "pass the values persisted together")
    return seen


_EPOCHED = (StartGso, Ready, Sealed, Digest, Done, Abort, Cancel, Quiesced, CopyComplete,
            CopyFailed, ImageSealed, ImageDigested, SealFailed, PullComplete, PullFailed,
            ImageVerified, FenceConfirmed, FenceFailed)
_SIMPLE_KIND: dict[type[Event], On] = {
    Ready: On.READY, Sealed: On.SEALED, Digest: On.DIGEST, Done: On.DONE, Abort: On.ABORT,
    Cancel: On.CANCEL, ImageDigested: On.IMAGE_DIGESTED,
    Quiesced: On.QUIESCED, CopyComplete: On.COPY_COMPLETE, CopyFailed: On.COPY_FAILED,
    ImageSealed: On.IMAGE_SEALED, SealFailed: On.SEAL_FAILED,
    PullComplete: On.PULL_COMPLETE, PullFailed: On.PULL_FAILED,
    FenceConfirmed: On.FENCE_CONFIRMED, FenceFailed: On.FENCE_FAILED,
    AllFabricsLost: On.ALL_FABRICS_LOST,
}


@dataclass(slots=True)
class GsoMachine:
    """One node's GSO state. Build with ``active()`` or ``standby()``; drive with ``feed``.

    ``region_size`` is the size of this node's registered state region (checked when it is
    the target); ``epoch`` the GSO this node is in or last took part in, ``seen`` the highest
    epoch it started, joined or refused (persist both across restarts, and pass both back to
    ``active`` or ``standby`` when the node restarts).
    """

    state: GsoState
    epoch: int = 0
    region_size: int = 0
    timeouts: Timeouts = field(default_factory=Timeouts)
    seen: int = 0  # highest epoch this node started, joined or refused; new ones go above
    active_since: int = 0  # epoch this node became active in; its heart beats carry it
    image_length: int = 0
    digest_algo: DigestAlgo = DigestAlgo.BLAKE2B_256
    mode: GsoMode = GsoMode.PUSH  # of the current (or last) GSO
    pull_digest: bytes | None = None  # B (pull): the Digest of this epoch, once it came
    deadline: float | None = None
    stale_ignored: int = 0
    broken: IllegalTransition | None = None
    # An outside refusal of a Start-GSO the machine itself finds nothing wrong with (an n+1
    # standby host already active for another pair: BUSY), asked as the machine's own
    # problems are: the refusal takes the table's START_GSO_BAD row, as theirs do (epoch
    # adopted, Abort with that reason back, nothing stops). None: no outside say.
    refuse_start: Callable[[GsoMachine, StartGso], AbortReason | None] | None = None

    @classmethod
    def active(cls, epoch: int = 0, region_size: int = 0, timeouts: Timeouts | None = None,
               *, seen: int | None = None) -> GsoMachine:
        """A node serving as active, at ``epoch``; ``seen`` (default ``epoch``) as persisted."""
        return cls(S.NORMAL_ACTIVE, epoch, region_size, timeouts or Timeouts(),
                   _seen(epoch, seen), epoch)

    @classmethod
    def standby(cls, epoch: int = 0, region_size: int = 0, timeouts: Timeouts | None = None,
                *, seen: int | None = None) -> GsoMachine:
        """A standby node whose registered state region holds ``region_size`` bytes.

        A node that restarts passes the ``epoch`` and ``seen`` it persisted, so that nothing
        of an epoch it already saw (a late Start-GSO, Done, or a marker) can start or
        complete a GSO on it.
        """
        return cls(S.NORMAL_STANDBY, epoch, region_size, timeouts or Timeouts(),
                   _seen(epoch, seen))

    @property
    def role(self) -> Role:
        """The side this node plays now (it changes when a GSO completes)."""
        return ROLE_OF[self.state]

    @property
    def serving(self) -> bool:
        """Whether the application runs as active on this node."""
        return self.state in SERVING

    @property
    def alarmed(self) -> bool:
        """Whether this node holds an alarm raised by the GSO (in doubt or fencing)."""
        return self.state in ALARMED

    def feed(self, event: Event, now: float) -> list[Action]:
        """Apply ``event`` at time ``now``; return the actions to execute, in order.

        Raises GsoRefused (nothing changed) for a refused RequestGso, IllegalTransition
        (sticky) for an event the current state has no entry for.
        """
        if self.broken is not None:
            raise self.broken
        kind = self._kind(event, now)
        if kind is None:
            self.stale_ignored += 1
            return []
        step = TRANSITIONS[self.role][self.state].get(kind)
        if step is None:
            self.broken = IllegalTransition(
                f"GSO protocol violation: {kind.value} ({event!r}) in state {self.state.value} "
                f"at epoch {self.epoch}; this GSO machine is now broken, raise an alarm"
            )
            raise self.broken
        if step.effects == _REFUSE:
            raise GsoRefused(self._refusal(event))
        actions: list[Action] = []
        if step.next not in TIMED:
            self.deadline = None
        for effect in step.effects:
            actions.extend(self._apply(effect, event, now))
        self.state = step.next
        return actions

    # The classifier: which table key an event is, given this machine's epoch and deadline.
    def _kind(self, event: Event, now: float) -> On | None:
        if isinstance(event, StartGso):
            if event.epoch > self.seen:
                return On.START_GSO_BAD if self._start_problem(event) else On.START_GSO_NEW
            return On.START_GSO_DUP if event.epoch == self.epoch else None
        if isinstance(event, Cancel) and event.epoch > self.seen:
            return On.CANCEL_AHEAD
        if isinstance(event, _EPOCHED):
            if event.epoch != self.epoch:
                return None
            if isinstance(event, ImageVerified):
                return On.IMAGE_OK if event.ok else On.IMAGE_BAD
            pull = self.mode is GsoMode.PULL
            if isinstance(event, Ready) and pull:
                return On.READY_PULL
            if isinstance(event, Quiesced) and pull:
                return On.QUIESCED_PULL
            if isinstance(event, PullComplete) and self.pull_digest is None:
                return On.PULL_COMPLETE_EARLY
            return _SIMPLE_KIND[type(event)]
        if isinstance(event, MarkerSeen):
            ours = self.epoch >= 1 and event.value == marker_value(self.epoch)
            return On.MARKER_OURS if ours else On.MARKER_OTHER
        if isinstance(event, Tick):
            expired = self.deadline is not None and now >= self.deadline
            return On.TICK_EXPIRED if expired else On.TICK
        if isinstance(event, PeerActive):
            return On.PEER_ACTIVE if event.epoch >= self.epoch else None
        if isinstance(event, RequestGso):
            bad = self.state is S.NORMAL_ACTIVE and self._request_problem(event)
            return On.REQUEST_GSO_BAD if bad else On.REQUEST_GSO
        if type(event) not in _SIMPLE_KIND:
            raise TypeError(f"not a GSO event: {event!r}")
        return _SIMPLE_KIND[type(event)]

    def _start_problem(self, msg: StartGso) -> AbortReason | None:
        if msg.version != PROTOCOL_VERSION:
            return R.VERSION_MISMATCH
        if msg.image_length > self.region_size:
            return R.IMAGE_TOO_LARGE
        return self.refuse_start(self, msg) if self.refuse_start is not None else None

    def _request_problem(self, req: RequestGso) -> str | None:
        if req.peer_version != PROTOCOL_VERSION:
            return (f"GSO refused: peer speaks protocol version {req.peer_version}, "
                    f"we speak {PROTOCOL_VERSION}")
        if req.image_length > req.peer_region_size:
            return (f"GSO refused: state image of {req.image_length} bytes exceeds the "
                    f"standby's registered region of {req.peer_region_size} bytes")
        if req.image_length < 0:
            return f"GSO refused: image length {req.image_length} is negative"
        if self.seen + 1 > min(MAX_EPOCH, MAX_MARKER_EPOCH):
            return f"GSO refused: epoch {self.seen} is the last one a frame can carry"
        return None

    def _refusal(self, event: Event) -> str:
        if self.state is S.NORMAL_ACTIVE:
            problem = self._request_problem(event)  # type: ignore[arg-type]
            assert problem is not None
            return problem
        if self.role is Role.STANDBY:
            return (f"GSO refused: this node is the standby ({self.state.value}); "
                    "ask the active node for a GSO")
        return (f"GSO refused: GSO epoch {self.epoch} is already in progress "
                f"({self.state.value}); wait for it to end")

    def _apply(self, effect: Effect, event: Event, now: float) -> list[Action]:
        op, arg = effect.op, effect.arg
        match op:
            case Op.BEGIN:
                assert isinstance(event, RequestGso)
                self.epoch = self.seen = self.seen + 1
                self.image_length, self.digest_algo = event.image_length, event.digest_algo
                self.mode = event.mode
                self.pull_digest = None
                return [SendMessage(StartGso(self.epoch, self.image_length, self.digest_algo,
                                             mode=self.mode))]
            case Op.ADOPT:
                assert isinstance(event, (StartGso, Cancel))
                self.epoch = self.seen = event.epoch
                self.pull_digest = None
                if isinstance(event, StartGso):
                    self.image_length, self.digest_algo = event.image_length, event.digest_algo
                    self.mode = event.mode
                return []
            case Op.ARM:
                assert isinstance(arg, Timer)
                self.deadline = now + getattr(self.timeouts, arg.value)
                return []
            case Op.SEND_READY:
                return [SendMessage(Ready(self.epoch))]
            case Op.SEND_DONE:
                return [SendMessage(Done(self.epoch))]
            case Op.SEND_ABORT:
                return [SendMessage(self._abort_for(event, arg))]
            case Op.SEND_CANCEL:
                assert isinstance(arg, AbortReason)
                return [SendMessage(Cancel(self.epoch, arg))]
            case Op.START_COPY:
                return [StartCopy(self.epoch, self.image_length)]
            case Op.CANCEL_COPY:
                return [CancelCopy(self.epoch)]
            case Op.WRITE_MARKER:
                return [WriteMarker(marker_value(self.epoch))]
            case Op.SEAL_IMAGE:
                return [SealImage(self.epoch, self.image_length)]
            case Op.SEND_SEALED:
                assert isinstance(event, ImageSealed)
                return [SendMessage(Sealed(self.epoch, event.address, event.handle,
                                           self.image_length, self.digest_algo))]
            case Op.DIGEST_IMAGE:
                return [DigestImage(self.epoch, self.image_length)]
            case Op.SEND_DIGEST:
                assert isinstance(event, ImageDigested)
                return [SendMessage(Digest(self.epoch, event.digest))]
            case Op.TAKE_DIGEST:
                assert isinstance(event, Digest)
                self.pull_digest = event.digest
                return []
            case Op.REVOKE_READ:
                return [RevokeRead(self.epoch)] if self.mode is GsoMode.PULL else []
            case Op.START_PULL:
                assert isinstance(event, Sealed)
                return [StartPull(self.epoch, event.address, event.handle, self.image_length)]
            case Op.CANCEL_PULL:
                return [CancelPull(self.epoch)]
            case Op.RESTART_AS_STANDBY:
                return [RestartAsStandby(self.epoch)]
            case Op.POLL_MARKER:
                seen = event.value if isinstance(event, MarkerSeen) else 0
                assert self.deadline is not None
                return [PollMarker(marker_value(self.epoch), seen, self.deadline)]
            case Op.VERIFY_IMAGE:
                if self.mode is GsoMode.PULL:
                    # The table verifies a pull only once the digest came; b"" (no digest)
                    # can only fail, never stand for the header's.
                    return [VerifyImage(self.epoch, self.image_length, self.digest_algo,
                                        self.pull_digest or b"")]
                return [VerifyImage(self.epoch, self.image_length, self.digest_algo)]
            case Op.RESUME_AS_ACTIVE:
                self.active_since = self.epoch
                return [ResumeAsActive(self.epoch)]
            case Op.RESUME_STANDBY | Op.RESUME_STANDBY_RESYNC:
                return [ResumeStandby(needs_resync=op is Op.RESUME_STANDBY_RESYNC)]
            case Op.FENCE_PEER:
                return [FencePeer(self.epoch)]
            case Op.PROMOTE:
                self.epoch = self.seen = self.seen + 1
                self.active_since = self.epoch
                return []
            case Op.RAISE_ALARM:
                return [RaiseAlarm(
                    f"GSO epoch {self.epoch}: marker written but the standby's answer is "
                    "missing; no node serves until it answers or is fenced")]
            case Op.NOTIFY:
                assert isinstance(arg, Outcome)
                reason = event.reason if isinstance(event, (Abort, Cancel)) else None
                return [Notify(arg, self.epoch, reason)]
        simple: dict[Op, Action] = {
            Op.STOP_APPLICATION: StopApplication(),
            Op.RESUME_APPLICATION: ResumeApplication(),
            Op.STOP_ACTIVITY: StopActivity(),
            Op.ZERO_MARKER: ZeroMarker(),
            Op.CLEAR_ALARM: ClearAlarm(),
        }
        return [simple[op]]

    def _abort_for(self, event: Event, reason: AbortReason | Timer | Outcome | None) -> Abort:
        if isinstance(event, StartGso):
            # A refusal answers the Start-GSO's own epoch and is final: that epoch is seen,
            # so a late duplicate of the same Start-GSO can never start it afterwards.
            self.seen = max(self.seen, event.epoch)
            return Abort(event.epoch, reason or self._start_problem(event) or R.BUSY)
        assert isinstance(reason, AbortReason)
        return Abort(self.epoch, reason)


def render_markdown() -> str:
    """The transition table as Markdown, one section per role (for the docs)."""
    lines = ["# GSO transitions (generated from hsp_rdma.core.gso.TRANSITIONS)", ""]
    for role, states in TRANSITIONS.items():
        lines += [f"## {role.name.lower()} side", "",
                  "| state | event | next state | effects |", "|---|---|---|---|"]
        for state, steps in states.items():
            for on, step in steps.items():
                nxt = "—" if step.next is state else step.next.value
                effects = ", ".join(str(e) for e in step.effects) or "ignore"
                lines.append(f"| {state.value} | {on.value} | {nxt} | {effects} |")
        lines.append("")
    return "\n".join(lines)


def render_mermaid() -> str:
    """The state changes (self-loops left out) as a Mermaid state diagram."""
    lines = ["stateDiagram-v2", "    [*] --> NORMAL_ACTIVE", "    [*] --> NORMAL_STANDBY"]
    for states in TRANSITIONS.values():
        for state, steps in states.items():
            for on, step in steps.items():
                if step.next is not state:
                    lines.append(f"    {state.value} --> {step.next.value}: {on.value}")
    return "\n".join(lines)
