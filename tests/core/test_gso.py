"""The GSO machine step by step: Fig. 3's happy path, each abort path, refusals, epochs."""

from __future__ import annotations

import pytest

from hsp_rdma.core.frames import PROTOCOL_VERSION
from hsp_rdma.core.gso import (
    ALARMED,
    MARKER_MAGIC,
    SERVING,
    TIMED,
    TRANSITIONS,
    Abort,
    AbortReason,
    AllFabricsLost,
    Cancel,
    CancelCopy,
    CancelPull,
    ClearAlarm,
    CopyComplete,
    CopyFailed,
    Digest,
    DigestImage,
    Done,
    FenceConfirmed,
    FenceFailed,
    FencePeer,
    GsoMachine,
    GsoMode,
    GsoState,
    ImageDigested,
    ImageSealed,
    ImageVerified,
    MarkerSeen,
    Notify,
    On,
    Outcome,
    PeerActive,
    PollMarker,
    PullComplete,
    PullFailed,
    Quiesced,
    RaiseAlarm,
    Ready,
    RequestGso,
    RestartAsStandby,
    ResumeApplication,
    ResumeAsActive,
    ResumeStandby,
    RevokeRead,
    Role,
    Sealed,
    SealFailed,
    SealImage,
    SendMessage,
    StartCopy,
    StartGso,
    StartPull,
    StopActivity,
    StopApplication,
    Tick,
    Timeouts,
    VerifyImage,
    WriteMarker,
    ZeroMarker,
    marker_value,
    render_markdown,
    render_mermaid,
)
from hsp_rdma.errors import GsoRefused, IllegalTransition

REGION = 1 << 20
T = Timeouts(ready=1, copy=10, done=2, fence=3, gso=20)


def sent(actions):
    return [a.message for a in actions if isinstance(a, SendMessage)]


def pair():
    return GsoMachine.active(4, REGION, T), GsoMachine.standby(4, REGION, T)


def to_copying(a: GsoMachine, b: GsoMachine):
    (start,) = sent(a.feed(RequestGso(1000, REGION), 0))
    assert b.feed(start, 0) == [StopActivity(), ZeroMarker()]
    (ready,) = sent(b.feed(Quiesced(5), 0.1))
    assert a.feed(ready, 0.1) == [StopApplication(), StartCopy(5, 1000)]
    return start


def test_marker_value_combines_fabe_and_epoch():
    assert marker_value(1) == 0x1_FABE and marker_value(0x1234) == 0x1234_FABE
    assert marker_value(5) & 0xFFFF == MARKER_MAGIC
    assert marker_value((1 << 48) - 1) < 1 << 64
    for bad in (0, -1, 1 << 48):
        with pytest.raises(ValueError, match="epoch should be between 1"):
            marker_value(bad)


def test_happy_path_fig3():
    a, b = pair()
    start = to_copying(a, b)
    assert start == StartGso(5, 1000)
    assert (a.state, b.state) == (GsoState.COPYING, GsoState.GSO_INTERRUPT)
    assert a.feed(CopyComplete(5), 0.5) == [WriteMarker(marker_value(5))]
    assert b.feed(MarkerSeen(marker_value(5)), 0.6) == [VerifyImage(5, 1000, start.digest_algo)]
    acts = b.feed(ImageVerified(5, True), 0.7)
    # Done leaves only after the application resumed: A's freeze to Done bounds the blackout.
    assert acts == [ResumeAsActive(5), SendMessage(Done(5)), Notify(Outcome.COMPLETED, 5)]
    assert a.feed(Done(5), 0.8) == [RestartAsStandby(5), Notify(Outcome.COMPLETED, 5)]
    assert (a.state, b.state) == (GsoState.NORMAL_STANDBY, GsoState.NORMAL_ACTIVE)
    assert (a.role, b.role) == (Role.STANDBY, Role.ACTIVE)
    assert b.serving and not a.serving and b.active_since == 5


def test_switch_back_uses_the_next_epoch():
    a, b = pair()
    to_copying(a, b)
    a.feed(CopyComplete(5), 0)
    b.feed(MarkerSeen(marker_value(5)), 0)
    b.feed(ImageVerified(5, True), 0)
    a.feed(Done(5), 0)
    (start,) = sent(b.feed(RequestGso(10, REGION), 1))
    assert start.epoch == 6
    assert a.feed(start, 1) == [StopActivity(), ZeroMarker()]


def test_ready_timeout_a_aborts_and_stays_active():
    a, _ = pair()
    a.feed(RequestGso(1000, REGION), 0)
    assert a.feed(Tick(), 0.5) == []
    acts = a.feed(Tick(), 1.0)
    assert acts == [SendMessage(Cancel(5, AbortReason.READY_TIMEOUT)),
                    Notify(Outcome.ABORTED, 5)]
    assert a.state is GsoState.NORMAL_ACTIVE and a.serving
    assert a.feed(Ready(5), 1.1) == []  # the late "ready" starts nothing


def test_digest_mismatch_b_aborts_a_resumes():
    a, b = pair()
    to_copying(a, b)
    a.feed(CopyComplete(5), 0.5)
    b.feed(MarkerSeen(marker_value(5)), 0.6)
    acts = b.feed(ImageVerified(5, False), 0.7)
    assert acts[:2] == [SendMessage(Abort(5, AbortReason.DIGEST_MISMATCH)),
                        ResumeStandby(needs_resync=True)]
    assert b.state is GsoState.NORMAL_STANDBY
    acts = a.feed(Abort(5, AbortReason.DIGEST_MISMATCH), 0.8)
    assert acts == [ResumeApplication(), Notify(Outcome.ABORTED, 5, AbortReason.DIGEST_MISMATCH)]
    assert a.serving


def test_copy_failure_before_the_marker_resumes_active():
    a, b = pair()
    to_copying(a, b)
    acts = a.feed(CopyFailed(5, "IBV_WC_RETRY_EXC_ERR"), 0.3)
    assert CancelCopy(5) in acts and ResumeApplication() in acts
    assert not any(isinstance(x, WriteMarker) for x in acts)
    assert a.serving


def test_link_lost_after_the_marker_goes_in_doubt_until_b_answers():
    a, b = pair()
    to_copying(a, b)
    a.feed(CopyComplete(5), 0.5)
    acts = a.feed(AllFabricsLost(), 0.6)
    assert isinstance(acts[0], RaiseAlarm)
    assert SendMessage(Cancel(5, AbortReason.IN_DOUBT)) in acts
    assert a.state is GsoState.IN_DOUBT and a.alarmed and not a.serving
    # No timer, fabric event or request makes A resume on its own.
    for event in (Tick(), AllFabricsLost(), Ready(5)):
        a.feed(event, 1.0)
        assert not a.serving
    with pytest.raises(GsoRefused, match="already in progress"):
        a.feed(RequestGso(1, REGION), 1.0)
    # B had aborted: its answer lets A resume.
    acts = a.feed(Abort(5, AbortReason.CANCELLED), 1.1)
    assert acts[:2] == [ClearAlarm(), ResumeApplication()]
    assert a.serving and not a.alarmed


def test_done_lost_b_resumed_a_in_doubt_learns_and_becomes_standby():
    a, b = pair()
    to_copying(a, b)
    a.feed(CopyComplete(5), 0.5)
    b.feed(MarkerSeen(marker_value(5)), 0.6)
    b.feed(ImageVerified(5, True), 0.7)  # Done is lost
    acts = a.feed(Tick(), 2.5)  # done deadline
    (cancel,) = sent(acts)
    assert a.state is GsoState.IN_DOUBT
    # B is active: it answers A's question with Done, never with Abort.
    assert sent(b.feed(cancel, 2.6)) == [Done(5)]
    assert b.serving
    acts = a.feed(Done(5), 2.7)
    assert acts[0] == ClearAlarm() and RestartAsStandby(5) in acts
    assert not a.serving


def test_in_doubt_heart_beat_of_active_b_makes_a_standby():
    a, b = pair()
    to_copying(a, b)
    a.feed(CopyComplete(5), 0.5)
    a.feed(Tick(), 2.5)
    assert a.feed(PeerActive(4), 2.6) == []  # B's heart beat from before the GSO: stale
    assert a.state is GsoState.IN_DOUBT
    a.feed(PeerActive(5), 2.7)
    assert a.state is GsoState.NORMAL_STANDBY


def test_in_doubt_then_fence_then_resume_with_a_new_epoch():
    a, b = pair()
    to_copying(a, b)
    a.feed(CopyComplete(5), 0.5)
    a.feed(Tick(), 2.5)
    assert a.feed(Tick(), 5.5) == [FencePeer(5)]
    assert a.state is GsoState.FENCING and a.alarmed
    assert a.feed(Done(5), 5.6) == []  # B is being taken down: its Done no longer counts
    acts = a.feed(FenceFailed(5, "ipmi timeout"), 6.0)
    assert SendMessage(Cancel(5, AbortReason.IN_DOUBT)) in acts and a.state is GsoState.IN_DOUBT
    a.feed(Tick(), 9.0)
    acts = a.feed(FenceConfirmed(5), 9.5)
    assert ResumeApplication() in acts and Notify(Outcome.FENCED, 5) in acts
    assert a.serving and a.epoch == 6  # a promotion raises the epoch
    assert a.feed(Done(5), 9.6) == [] and a.stale_ignored == 1



def in_doubt(a: GsoMachine, b: GsoMachine) -> None:
    """A wrote the marker of epoch 5, B's Done never came: A in doubt at t=2.5 (fence 3 s)."""
    to_copying(a, b)
    a.feed(CopyComplete(5), 0.5)
    a.feed(Tick(), 2.5)
    assert a.state is GsoState.IN_DOUBT


def test_a_fence_that_never_answers_keeps_a_in_doubt_and_asks_again():
    a, b = pair()
    in_doubt(a, b)
    assert a.feed(Tick(), 5.5) == [FencePeer(5)]
    assert a.state is GsoState.FENCING and a.deadline == 8.5
    assert a.feed(Tick(), 8.4) == []
    # The fence hangs: its deadline counts as a failure, the alarm stays up, B is asked again.
    acts = a.feed(Tick(), 8.5)
    assert acts == [SendMessage(Cancel(5, AbortReason.IN_DOUBT))]
    assert a.state is GsoState.IN_DOUBT and a.alarmed and not a.serving
    # And so on, for as long as nothing answers: fence, time out, ask, never resume on a timer.
    now = 8.5
    for _ in range(3):
        now += 3
        assert a.feed(Tick(), now) == [FencePeer(5)]
        now += 3
        assert sent(a.feed(Tick(), now)) == [Cancel(5, AbortReason.IN_DOUBT)]
        assert a.alarmed and not a.serving
    # B's Abort still lets A resume.
    acts = a.feed(Abort(5, AbortReason.CANCELLED), now + 0.1)
    assert acts[:2] == [ClearAlarm(), ResumeApplication()] and a.serving


def test_late_fence_confirmation_in_doubt_resumes_with_a_new_epoch():
    a, b = pair()
    in_doubt(a, b)
    a.feed(Tick(), 5.5)  # fence attempt 1
    a.feed(Tick(), 8.5)  # it times out: in doubt again
    # A late failure of attempt 1 changes nothing: the fence timer still decides.
    assert a.feed(FenceFailed(5, "late"), 9.0) == [] and a.state is GsoState.IN_DOUBT
    assert a.feed(Tick(), 11.5) == [FencePeer(5)]  # the deadline armed at 8.5 still holds
    a.feed(Tick(), 14.5)
    # Attempt 2's confirmation arrives late, in doubt: B is down all the same.
    acts = a.feed(FenceConfirmed(5), 15.0)
    assert acts == [ClearAlarm(), ResumeApplication(), Notify(Outcome.FENCED, 5)]
    assert a.serving and not a.alarmed and a.epoch == 6 and a.deadline is None
    assert a.feed(FenceConfirmed(5), 15.1) == []  # a third, later answer is stale


def test_late_fence_answer_after_b_answered_done_is_ignored():
    a, b = pair()
    in_doubt(a, b)
    a.feed(Tick(), 5.5)
    a.feed(Tick(), 8.5)  # fence attempt timed out, still running somewhere
    acts = a.feed(Done(5), 8.6)  # B resumed after all
    assert ClearAlarm() in acts and RestartAsStandby(5) in acts
    # The hung attempt answers now; this node is B's standby: nothing more to do here (if the
    # fence took B down, the failover's detector sees it).
    assert a.feed(FenceConfirmed(5), 9.0) == [] and a.state is GsoState.NORMAL_STANDBY
    assert a.feed(FenceFailed(5), 9.1) == [] and a.stale_ignored == 0


def test_a_lying_fence_shows_as_a_protocol_violation_once_a_heart_beat_crosses():
    # The fence confirmed while B still ran: A resumed in epoch 6, B serves since epoch 5.
    a, b = pair()
    in_doubt(a, b)
    b.feed(MarkerSeen(marker_value(5)), 2.6)
    b.feed(ImageVerified(5, True), 2.7)  # Done lost
    a.feed(Tick(), 5.5)
    a.feed(FenceConfirmed(5), 6.0)
    assert a.serving and b.serving and (a.active_since, b.active_since) == (6, 5)
    assert a.feed(PeerActive(5), 6.2) == []  # B's beats are stale to A
    with pytest.raises(IllegalTransition, match="PeerActive .* in state NORMAL_ACTIVE"):
        b.feed(PeerActive(6), 6.3)

def test_restarted_standby_keeps_its_persisted_epochs():
    # B joined GSO 5, went down, came back with what it persisted: epoch 5, seen 6 (it had
    # refused a Start-GSO of epoch 6 as busy).
    b = GsoMachine.standby(5, REGION, T, seen=6)
    assert (b.state, b.epoch, b.seen) == (GsoState.NORMAL_STANDBY, 5, 6)
    for stale in (StartGso(5, 10), StartGso(6, 10), Done(5), Ready(5), Quiesced(5),
                  MarkerSeen(marker_value(5)), Abort(5, AbortReason.GSO_TIMEOUT)):
        assert b.feed(stale, 1) == [], stale
        assert b.state is GsoState.NORMAL_STANDBY and not b.serving
    # A's question about epoch 5 gets an honest answer: this node will never resume for it.
    assert sent(b.feed(Cancel(5, AbortReason.IN_DOUBT), 1)) == [Abort(5, AbortReason.CANCELLED)]
    # The next GSO goes above everything it saw.
    assert b.feed(StartGso(7, 10), 2) == [StopActivity(), ZeroMarker()]
    assert b.epoch == b.seen == 7


def test_a_restarted_node_cannot_forget_an_epoch():
    with pytest.raises(ValueError, match="seen epoch 3 is below the current epoch 5"):
        GsoMachine.standby(5, REGION, seen=3)
    a = GsoMachine.active(5, REGION, seen=8)
    (start,) = sent(a.feed(RequestGso(10, REGION), 0))
    assert start.epoch == 9 and a.active_since == 5

def test_b_marker_timeout_aborts_and_returns_to_standby():
    a, b = pair()
    to_copying(a, b)
    assert b.feed(Tick(), 19.9) == []
    acts = b.feed(Tick(), 20.0)
    assert sent(acts) == [Abort(5, AbortReason.GSO_TIMEOUT)]
    assert ResumeStandby(needs_resync=True) in acts
    assert b.state is GsoState.NORMAL_STANDBY
    # The marker arriving after B gave up changes nothing, and A, told, resumes.
    assert b.feed(MarkerSeen(marker_value(5)), 21) == []
    assert not b.serving
    a.feed(Abort(5, AbortReason.GSO_TIMEOUT), 21)
    assert a.serving


def test_stale_marker_never_completes_a_later_gso():
    a, b = pair()
    to_copying(a, b)
    # A marker left by GSO 4 (or a late write of it) keeps B polling, past that value.
    acts = b.feed(MarkerSeen(marker_value(4)), 0.2)
    assert acts == [PollMarker(marker_value(5), marker_value(4), 20.0)]
    assert b.feed(MarkerSeen(MARKER_MAGIC), 0.3)[0].not_equal_to == MARKER_MAGIC
    assert b.state is GsoState.GSO_INTERRUPT and not b.serving


def test_cancel_during_start_gso_stops_nothing_more():
    a, b = pair()
    (start,) = sent(a.feed(RequestGso(1000, REGION), 0))
    b.feed(start, 0)
    acts = b.feed(Cancel(5, AbortReason.READY_TIMEOUT), 0.1)
    assert acts[:2] == [SendMessage(Abort(5, AbortReason.CANCELLED)),
                        ResumeStandby(needs_resync=False)]
    assert b.feed(Quiesced(5), 0.2) == []  # late completion ignored
    assert b.feed(start, 0.3) == []  # duplicate Start-GSO ignored
    assert b.state is GsoState.NORMAL_STANDBY


def test_cancel_overtaking_its_start_gso_makes_the_start_stale():
    b = GsoMachine.standby(4, REGION, T)
    assert sent(b.feed(Cancel(5, AbortReason.READY_TIMEOUT), 0)) == [
        Abort(5, AbortReason.CANCELLED)]
    assert b.feed(StartGso(5, 10), 0.1) == [] and b.state is GsoState.NORMAL_STANDBY


# ------------------------------------------------------------------ refusals, before any stop
def test_image_larger_than_the_standby_region_is_refused_before_anything_stops():
    a, _ = pair()
    with pytest.raises(GsoRefused, match="exceeds the standby's registered region"):
        a.feed(RequestGso(REGION + 1, REGION), 0)
    assert a.state is GsoState.NORMAL_ACTIVE and a.epoch == 4 and a.serving


def test_peer_of_another_protocol_version_is_refused():
    a, _ = pair()
    with pytest.raises(GsoRefused, match=f"peer speaks protocol version 9, we speak "
                                         f"{PROTOCOL_VERSION}"):
        a.feed(RequestGso(10, REGION, peer_version=9), 0)


def test_gso_asked_of_a_standby_is_refused():
    _, b = pair()
    with pytest.raises(GsoRefused, match="this node is the standby"):
        b.feed(RequestGso(10, REGION), 0)


def test_two_gsos_at_once_are_refused():
    a, _ = pair()
    a.feed(RequestGso(10, REGION), 0)
    with pytest.raises(GsoRefused, match="GSO epoch 5 is already in progress"):
        a.feed(RequestGso(10, REGION), 0)
    assert a.state is GsoState.PRE_GSO


def test_standby_refuses_a_start_it_cannot_hold_or_understand():
    b = GsoMachine.standby(4, REGION, T)
    assert b.feed(StartGso(5, REGION + 1), 0) == [
        SendMessage(Abort(5, AbortReason.IMAGE_TOO_LARGE))]
    assert b.feed(StartGso(6, 10, version=PROTOCOL_VERSION + 1), 0) == [
        SendMessage(Abort(6, AbortReason.VERSION_MISMATCH))]
    assert b.state is GsoState.NORMAL_STANDBY
    # A refused epoch stays refused: its duplicate does not start it later.
    assert b.feed(StartGso(6, 10), 0) == []


def test_busy_standby_refuses_a_second_gso_for_good():
    a, b = pair()
    to_copying(a, b)
    assert sent(b.feed(StartGso(6, 10), 0.2)) == [Abort(6, AbortReason.BUSY)]
    assert b.epoch == 5 and b.state is GsoState.GSO_INTERRUPT
    b.feed(Tick(), 20)  # GSO 5 ends
    assert b.feed(StartGso(6, 10), 21) == []  # the refused epoch never starts


def test_start_gso_reaching_an_active_is_refused():
    a, _ = pair()
    assert sent(a.feed(StartGso(9, 10), 0)) == [Abort(9, AbortReason.NOT_STANDBY)]
    assert a.serving


# ------------------------------------------------------------------------ the table itself
def test_illegal_event_raises_and_stays_raised():
    a, _ = pair()
    with pytest.raises(IllegalTransition, match="Done .* in state NORMAL_ACTIVE"):
        a.feed(Done(4), 0)
    with pytest.raises(IllegalTransition):
        a.feed(Tick(), 1)  # sticky, even for an event that was fine


def test_not_an_event():
    a, _ = pair()
    with pytest.raises(TypeError, match="not a GSO event"):
        a.feed(object(), 0)  # type: ignore[arg-type]


def test_timeouts_must_be_positive():
    with pytest.raises(ValueError, match="timeout ready should be > 0"):
        Timeouts(ready=0)


def test_every_state_is_in_the_table_and_the_rendered_docs():
    states = {s for table in TRANSITIONS.values() for s in table}
    assert states == set(GsoState)
    targets = {step.next for table in TRANSITIONS.values() for steps in table.values()
               for step in steps.values()}
    assert targets <= states
    markdown, mermaid = render_markdown(), render_mermaid()
    for state in GsoState:
        assert f"| {state.value} |" in markdown and state.value in mermaid
    for kind in On:
        assert kind.value in markdown
    assert SERVING <= states and ALARMED <= states


def test_every_state_answers_a_gso_request_and_time():
    for table in TRANSITIONS.values():
        for state, steps in table.items():
            assert On.REQUEST_GSO in steps and On.TICK in steps, state
            # A state holding a deadline says what happens when it passes.
            assert (On.TICK_EXPIRED in steps) == (state in TIMED), state


# ------------------------------------------------------------------------- pull mode
DIGEST = bytes(range(32))


def test_pull_happy_path_seal_pull_verify_resume_revoke() -> None:
    a, b = pair()
    (start,) = sent(a.feed(RequestGso(1000, REGION, mode=GsoMode.PULL), 0))
    assert start == StartGso(5, 1000, mode=GsoMode.PULL)
    assert b.feed(start, 0.1) == [StopActivity(), ZeroMarker()]
    (ready,) = sent(b.feed(Quiesced(5), 0.2))  # no marker poll: B waits for Sealed
    assert b.state is GsoState.AWAIT_SEALED and b.deadline == pytest.approx(20.1)
    assert a.feed(ready, 0.3) == [StopApplication(), SealImage(5, 1000)]
    assert a.state is GsoState.SEALING and a.deadline == pytest.approx(10.3)
    acts = a.feed(ImageSealed(5, 0x7000, 42), 0.4)
    # Sealed first, then A digests the frozen image while B reads it
    assert acts == [SendMessage(Sealed(5, 0x7000, 42, 1000, a.digest_algo)),
                    DigestImage(5, 1000)]
    (sealed,) = sent(acts)
    assert a.state is GsoState.AWAIT_DONE and a.deadline == pytest.approx(0.4 + 12)
    assert b.feed(sealed, 0.5) == [StartPull(5, 0x7000, 42, 1000)]
    assert b.state is GsoState.PULLING and b.deadline == pytest.approx(10.5)
    (digest,) = sent(a.feed(ImageDigested(5, DIGEST), 0.6))
    assert digest == Digest(5, DIGEST) and a.state is GsoState.AWAIT_DONE
    assert b.feed(digest, 0.7) == [] and b.state is GsoState.PULLING  # kept, pull goes on
    assert b.feed(PullComplete(5), 2) == [VerifyImage(5, 1000, b.digest_algo, DIGEST)]
    acts = b.feed(ImageVerified(5, True), 2.1)
    assert acts[0] == ResumeAsActive(5) and sent(acts) == [Done(5)]
    # A revokes B's read before it restarts as standby
    assert a.feed(Done(5), 2.2)[:2] == [RevokeRead(5), RestartAsStandby(5)]


def _sealing(a, b) -> None:
    """A pull GSO of epoch 5 up to the active's seal: B got Start-GSO, A got B's Quiesced."""
    start = sent(a.feed(RequestGso(1000, REGION, mode=GsoMode.PULL), 0))[0]
    b.feed(start, 0)
    a.feed(sent(b.feed(Quiesced(5), 0))[0], 0)


def test_pull_aborts_revoke_the_read_before_the_active_thaws() -> None:
    a, b = pair()
    _sealing(a, b)
    sealed = sent(a.feed(ImageSealed(5, 0x7000, 42), 0))[0]
    b.feed(sealed, 0)
    # the pull fails: B aborts (and never resumes), A revokes, then thaws
    acts = b.feed(PullFailed(5, "remote access error"), 1)
    assert sent(acts) == [Abort(5, AbortReason.COPY_FAILED)]
    assert ResumeStandby(needs_resync=True) in acts and b.state is GsoState.NORMAL_STANDBY
    acts = a.feed(Abort(5, AbortReason.COPY_FAILED), 1.1)
    assert acts[:2] == [RevokeRead(5), ResumeApplication()] and a.serving


def test_pull_timers_a_stalled_pull_and_a_missing_sealed_end_in_abort() -> None:
    a, b = pair()
    start = sent(a.feed(RequestGso(1000, REGION, mode=GsoMode.PULL), 0))[0]
    b.feed(start, 0)
    b.feed(Quiesced(5), 0)
    acts = b.feed(Tick(), 20)  # no Sealed before the gso deadline
    assert sent(acts) == [Abort(5, AbortReason.GSO_TIMEOUT)]
    assert ResumeStandby(needs_resync=False) in acts  # nothing was read into the region
    a, b = pair()
    _sealing(a, b)
    b.feed(sent(a.feed(ImageSealed(5, 1, 2), 0))[0], 1)
    acts = b.feed(Tick(), 11)  # the pull stalled past the copy timeout
    assert acts[0] == CancelPull(5) and sent(acts) == [Abort(5, AbortReason.COPY_TIMEOUT)]
    # A, past Sealed, waits copy + done and then goes in doubt: never resumes on a timer
    a.feed(Tick(), 12.5)
    assert a.state is GsoState.IN_DOUBT and not a.serving


def test_seal_timeout_and_failure_thaw_the_active() -> None:
    a, b = pair()
    _sealing(a, b)
    acts = a.feed(SealFailed(5, "no memory"), 0.5)
    assert sent(acts) == [Cancel(5, AbortReason.COPY_FAILED)]
    assert acts[1:3] == [RevokeRead(5), ResumeApplication()] and a.serving
    # a seal that completes after the GSO ended is revoked at once
    assert a.feed(ImageSealed(5, 1, 2), 0.6) == [RevokeRead(5)]


def test_push_mode_never_revokes() -> None:
    a, _ = pair()
    a.feed(RequestGso(1000, REGION), 0)
    acts = a.feed(Abort(5, AbortReason.BUSY), 0.1)
    assert not any(isinstance(x, RevokeRead) for x in acts)


def _pulling(a, b) -> None:
    _sealing(a, b)
    b.feed(sent(a.feed(ImageSealed(5, 0x7000, 42), 0))[0], 0.5)
    assert b.state is GsoState.PULLING


def test_pull_complete_before_the_digest_waits_for_it_then_verifies_against_it() -> None:
    a, b = pair()
    _pulling(a, b)
    assert b.feed(PullComplete(5), 2) == [] and b.state is GsoState.AWAIT_DIGEST
    assert b.deadline == pytest.approx(10.5)  # still the copy timer armed at Sealed
    assert b.feed(Digest(4, DIGEST), 2.1) == [] and b.state is GsoState.AWAIT_DIGEST  # stale
    assert b.feed(Digest(5, DIGEST), 2.2) == [VerifyImage(5, 1000, b.digest_algo, DIGEST)]
    assert b.state is GsoState.VERIFYING
    assert b.feed(Digest(5, DIGEST), 2.3) == []  # a duplicate changes nothing


@pytest.mark.parametrize("end", ["timeout", "link", "cancel", "mismatch"])
def test_pull_without_a_good_digest_aborts_and_never_resumes(end) -> None:
    a, b = pair()
    _pulling(a, b)
    b.feed(PullComplete(5), 2)
    if end == "timeout":
        acts, reason = b.feed(Tick(), 10.5), AbortReason.COPY_TIMEOUT
    elif end == "link":
        acts, reason = b.feed(AllFabricsLost(), 3), AbortReason.LINK_LOST
    elif end == "cancel":
        acts, reason = b.feed(Cancel(5, AbortReason.IN_DOUBT), 3), AbortReason.CANCELLED
    else:
        b.feed(Digest(5, DIGEST), 3)
        acts, reason = b.feed(ImageVerified(5, False), 3.1), AbortReason.DIGEST_MISMATCH
    assert sent(acts) == [Abort(5, reason)] and b.state is GsoState.NORMAL_STANDBY
    assert not any(isinstance(x, ResumeAsActive) for x in acts)
    assert ResumeStandby(needs_resync=True) in acts


def test_a_digest_taken_after_the_gso_ended_is_never_sent() -> None:
    a, b = pair()
    _pulling(a, b)
    acts = a.feed(Abort(5, AbortReason.COPY_FAILED), 1)
    assert acts[:2] == [RevokeRead(5), ResumeApplication()] and a.serving
    assert a.feed(ImageDigested(5, DIGEST), 1.1) == []  # its image may run again
    # in doubt (A asked B to abort), a late digest is not sent either
    a, b = pair()
    _pulling(a, b)
    a.feed(Tick(), 12.5)
    assert a.state is GsoState.IN_DOUBT and a.feed(ImageDigested(5, DIGEST), 12.6) == []


def test_a_digest_overtaking_sealed_is_kept() -> None:
    a, b = pair()
    _sealing(a, b)
    sealed = sent(a.feed(ImageSealed(5, 0x7000, 42), 0))[0]
    digest = sent(a.feed(ImageDigested(5, DIGEST), 0.1))[0]
    assert b.feed(digest, 0.2) == [] and b.state is GsoState.AWAIT_SEALED
    b.feed(sealed, 0.3)
    assert b.feed(PullComplete(5), 1) == [VerifyImage(5, 1000, b.digest_algo, DIGEST)]
