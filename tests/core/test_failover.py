"""The failover machine step by step: a fenced failover, no fence, failing and late fences,
Pacemaker's commands, the returning old active, link loss with resync, starts and restarts."""

from __future__ import annotations

import pytest

from hsp_rdma.core.failover import (
    SERVING,
    TRANSITIONS,
    ArmTimer,
    BecomeActive,
    ClearAlarm,
    DataState,
    Demote,
    FailoverMachine,
    FailoverRefused,
    FencePeer,
    FenceResult,
    FoState,
    LinkRestored,
    Manager,
    PeerEpochSeen,
    PeerSuspected,
    Persisted,
    PersistEpoch,
    Promote,
    RaiseAlarm,
    Rejoin,
    ResyncDone,
    Role,
    StartDirtyTracking,
    StartResync,
    StopDirtyTracking,
    StopServing,
    SwitchedOver,
    SyncSide,
    Tick,
    Timeouts,
    Verdict,
    render_markdown,
)
from hsp_rdma.errors import IllegalTransition

S = FoState
T = Timeouts(fence=5, fence_retry=3)


def pair(**kw):
    return FailoverMachine.active(2, 0, timeouts=T, **kw), \
        FailoverMachine.standby(2, 1, timeouts=T, **kw)


def alarms(actions):
    return [a.reason for a in actions if isinstance(a, RaiseAlarm)]


def test_the_standby_promotes_only_after_the_fence_and_the_persisted_epoch():
    _, b = pair()
    assert b.feed(PeerSuspected(("retry-exceeded on x",)), 10) == [FencePeer(1), ArmTimer(15)]
    assert b.state is S.FENCING and not b.serving
    assert b.feed(FenceResult(True, "off", 1), 11) == [ClearAlarm(), PersistEpoch(3, 3)]
    # Decided, not yet durable: still no active, and the old active's frames are refused.
    assert b.state is S.PROMOTING and not b.serving and b.epoch == 2
    assert b.frame_verdict(2) is Verdict.REFUSE
    assert b.feed(Persisted(3), 11.1) == [BecomeActive(3), StartDirtyTracking()]
    assert b.serving and b.epoch == 3 and b.role is Role.ACTIVE
    assert b.frame_verdict(2) is Verdict.REFUSE


def test_without_a_fence_action_the_standby_alarms_and_stays():
    _, b = pair(fence_configured=False)
    actions = b.feed(PeerSuspected(), 10)
    assert not any(isinstance(a, FencePeer) for a in actions)
    (reason,) = alarms(actions)
    assert "no fence action is configured" in reason and "[fence]" in reason
    assert b.state is S.IN_DOUBT and b.role is Role.STANDBY
    assert b.feed(Tick(), 1000) == []  # no timer: it waits, it never promotes on time
    # The peer comes back: resync, alarm cleared.
    assert b.feed(LinkRestored(2, True), 20) == [ClearAlarm(), StartResync(SyncSide.TARGET)]
    assert b.data is DataState.INCONSISTENT
    assert b.feed(ResyncDone(), 21) == [] and b.state is S.STANDBY and b.promotion_score == 100


def test_the_operator_can_confirm_the_peer_is_down_by_hand():
    _, b = pair(fence_configured=False)
    b.feed(PeerSuspected(), 10)
    assert b.feed(FenceResult(True, "confirmed by operator"), 50) == [ClearAlarm(),
                                                                      PersistEpoch(3, 3)]


def test_a_failing_fence_alarms_retries_and_never_promotes_on_time():
    _, b = pair()
    b.feed(PeerSuspected(), 10)
    actions = b.feed(FenceResult(False, "fence_ipmilan exited 1: timed out", 1), 11)
    assert actions == [RaiseAlarm(actions[0].reason), ArmTimer(14)]
    assert "exited 1" in actions[0].reason and "fences again in 3 s" in actions[0].reason
    assert b.state is S.IN_DOUBT and not b.serving
    assert b.feed(Tick(), 13.9) == []
    assert b.feed(Tick(), 14) == [FencePeer(2), ArmTimer(19)]
    # The second attempt does not answer in time: alarm again, retry timer.
    actions = b.feed(Tick(), 19)
    assert "did not answer in 5 s" in alarms(actions)[0] and actions[-1] == ArmTimer(22)
    # Its late confirmation still counts: the peer is down whichever attempt took it.
    assert b.feed(FenceResult(True, "off", 2), 20)[-1] == PersistEpoch(3, 3)


def test_an_answer_about_an_earlier_suspicion_is_ignored():
    _, b = pair()
    b.feed(PeerSuspected(), 10)
    b.feed(Tick(), 15)  # attempt 1 timed out
    b.feed(LinkRestored(2, True), 16)
    b.feed(ResyncDone(), 17)
    b.feed(PeerSuspected(), 30)  # a new suspicion: attempt 2
    assert b.feed(FenceResult(True, "late", 1), 31) == []
    assert b.state is S.FENCING and b.stale_ignored == 1


def test_a_fence_that_fails_while_the_peer_is_heard_again_resyncs():
    _, b = pair()
    b.feed(PeerSuspected(), 10)
    assert b.feed(LinkRestored(2, True), 11) == []  # the fence runs on and decides
    assert b.feed(FenceResult(False, "refused", 1), 12) == [ClearAlarm(),
                                                           StartResync(SyncSide.TARGET)]
    assert b.state is S.SYNC_TARGET


def test_pacemaker_mode_never_promotes_itself():
    _, b = pair(manager=Manager.PACEMAKER)
    assert b.feed(PeerSuspected(), 10) == []
    assert b.state is S.PEER_LOST
    assert b.feed(Tick(), 10_000) == [] and not b.serving
    assert b.promotion_score == 100
    assert b.feed(Promote(), 11) == [ClearAlarm(), PersistEpoch(3, 3)]
    assert b.feed(Persisted(3), 11) == [BecomeActive(3), StartDirtyTracking()]


def test_promote_of_an_inconsistent_node_is_refused_and_changes_nothing():
    _, b = pair(manager=Manager.PACEMAKER)
    b.feed(PeerEpochSeen(2, True), 1)
    b.feed(PeerSuspected(), 2)
    b.feed(LinkRestored(2, True), 3)  # resync starts: Inconsistent
    assert b.state is S.SYNC_TARGET and b.promotion_score == 0
    with pytest.raises(FailoverRefused, match="Inconsistent.*wait for the resync"):
        b.feed(Promote(), 4)
    assert b.state is S.SYNC_TARGET and b.pending is None


def test_self_mode_promote_by_hand_is_refused_while_the_peer_is_active():
    _, b = pair()
    with pytest.raises(FailoverRefused, match="the peer is the active"):
        b.feed(Promote(), 1)


def test_demote_by_pacemaker_then_promote_the_other():
    a, b = pair(manager=Manager.PACEMAKER)
    assert a.feed(Demote(), 1) == [StopServing("Demote command")]
    assert a.state is S.STANDBY_PAIR and not a.serving
    b.feed(PeerEpochSeen(2, False), 1.1)
    assert b.feed(Promote(), 2) == [ClearAlarm(), PersistEpoch(3, 3)]
    assert b.feed(Persisted(3), 2.1) == [BecomeActive(3), StartDirtyTracking(),
                                         StartResync(SyncSide.SOURCE)]
    # a follows the new active: persists its epoch, then resyncs from it.
    assert a.feed(PeerEpochSeen(3, True), 3) == [ClearAlarm(), PersistEpoch(3, 2),
                                                 StartResync(SyncSide.TARGET)]
    assert a.frame_verdict(3) is Verdict.HOLD
    a.feed(Persisted(3), 3.1)
    assert a.frame_verdict(3) is Verdict.ACCEPT and a.frame_verdict(2) is Verdict.REFUSE


def test_a_returning_old_active_stops_first_persists_then_rejoins():
    a, _ = pair()
    a.feed(PeerSuspected(), 5)  # paused, it thinks the standby went away
    actions = a.feed(LinkRestored(3, True), 20)
    assert actions[0] == StopServing("the peer is active at epoch 3")
    assert "above this node's 2" in alarms(actions)[0]
    assert actions[-1] == PersistEpoch(3, 2)
    assert not a.serving and a.state is S.DEMOTING and a.data is DataState.OUTDATED
    assert a.feed(Persisted(3), 20.1) == [Rejoin(3), StartResync(SyncSide.TARGET)]
    assert a.state is S.SYNC_TARGET and a.epoch == 3
    assert a.feed(ResyncDone(), 30) == [] and a.state is S.STANDBY


def test_link_loss_without_node_loss_tracks_then_resyncs_and_resumes_an_interrupted_one():
    a, _ = pair()
    assert a.feed(PeerSuspected(), 1) == [StartDirtyTracking()]
    assert a.serving
    assert a.feed(LinkRestored(2, False), 11) == [StartResync(SyncSide.SOURCE)]
    assert a.feed(PeerSuspected(), 12) == []  # resync interrupted; the bitmap keeps its cursor
    assert a.state is S.ACTIVE_ALONE and a.serving
    assert a.feed(LinkRestored(2, False), 13) == [StartResync(SyncSide.SOURCE)]
    assert a.feed(ResyncDone(), 14) == [StopDirtyTracking()]
    assert a.state is S.ACTIVE


def test_demote_during_resync_is_refused():
    a, _ = pair()
    a.feed(PeerSuspected(), 1)
    a.feed(LinkRestored(2, False), 2)
    with pytest.raises(FailoverRefused, match="Inconsistent"):
        a.feed(Demote(), 3)
    assert a.state is S.SYNC_SOURCE and a.serving


def test_epochs_never_collide_between_the_two_nodes():
    a, b = pair()
    assert a.next_epoch() == 4 and b.next_epoch() == 3
    b.feed(PeerEpochSeen(7, True), 1)
    assert b.next_epoch() == 9
    assert FailoverMachine.rank_of("a", "b") == 0 and FailoverMachine.rank_of("b", "a") == 1
    with pytest.raises(ValueError, match="distinct names"):
        FailoverMachine.rank_of("a", "a")


def test_first_start_and_restart():
    a, actions = FailoverMachine.start("active", 0)
    assert actions == [PersistEpoch(2, 2)] and not a.serving
    assert a.feed(Persisted(2), 0) == [BecomeActive(2), StartDirtyTracking()]
    b, actions = FailoverMachine.start("standby", 1)
    assert actions == [] and b.state is S.WAIT_PEER and b.data is DataState.INCONSISTENT
    assert b.feed(LinkRestored(2, True), 1) == [ClearAlarm(), PersistEpoch(2, 0),
                                                StartResync(SyncSide.TARGET)]
    # A restarted node is Consistent: promotable by Pacemaker, never by itself.
    r = FailoverMachine.restarted(3, 3, 1)
    assert r.data is DataState.CONSISTENT and r.promotion_score == 10
    assert r.state is S.WAIT_PEER and r.epoch == 3
    actions = r.feed(LinkRestored(3, False), 1)
    assert r.state is S.STANDBY_PAIR and "both nodes are standby" in alarms(actions)[0]
    with pytest.raises(ValueError, match="active or standby"):
        FailoverMachine.start("primary", 0)


def test_a_restarted_consistent_node_takes_over_only_from_a_peer_that_cannot_serve():
    # kill-active-during-resync: the old active restarts Consistent; its peer is a SyncTarget
    # (Inconsistent) or Outdated, not active, in the same epoch: it serves again in that
    # epoch (the one it was the active of) and resyncs the peer.
    for first in (LinkRestored, PeerEpochSeen):
        r = FailoverMachine.restarted(2, 2, 0)
        if first is PeerEpochSeen:  # heard first as an ordinary standby pair: alarm
            r.feed(LinkRestored(2, False), 1)
            assert r.state is S.STANDBY_PAIR
        actions = r.feed(first(2, False, unfit=True), 2)
        assert actions == [ClearAlarm(), BecomeActive(2), StartDirtyTracking(),
                           StartResync(SyncSide.SOURCE)]
        assert r.state is S.SYNC_SOURCE and r.serving and r.epoch == 2
    # not from a peer that is active, in another epoch, or fit; not when this node is not
    # Consistent or was not the active of its epoch; not under Pacemaker (it promotes)
    for event, kw in ((LinkRestored(2, True, unfit=True), {}),
                      (LinkRestored(3, False, unfit=True), {}),
                      (LinkRestored(1, False, unfit=True), {}),
                      (LinkRestored(2, False, unfit=False), {}),
                      (LinkRestored(2, False, unfit=True), {"data": DataState.INCONSISTENT}),
                      (LinkRestored(2, False, unfit=True), {"active_since": 0}),
                      (LinkRestored(2, False, unfit=True), {"manager": Manager.PACEMAKER})):
        r = FailoverMachine.restarted(2, kw.pop("active_since", 2), 0, **kw)
        r.feed(event, 1)
        assert not r.serving and r.state is not S.PROMOTING, (event, kw)
    # a restart never comes back UpToDate
    assert FailoverMachine.restarted(2, 2, 0, data=DataState.UP_TO_DATE).data \
        is DataState.CONSISTENT


def test_a_standby_the_fence_device_holds_outdated_stops_fencing_and_is_unfit():
    # A pulled cable: the active outdated the standby and serves alone; the standby's own
    # fence is refused for that. It learns its data is behind: Outdated, never promoted, no
    # more fencing (it would only take down the one up-to-date copy); its heart beats say
    # unfit, which is what lets a restarted old active serve again.
    _, b = pair()
    assert b.feed(PeerSuspected(), 10) == [FencePeer(1), ArmTimer(15)]
    actions = b.feed(FenceResult(False, "node b is Outdated (by a): it may not fence", 1,
                                 outdated=True), 11)
    assert b.state is S.IN_DOUBT and b.data is DataState.OUTDATED and b.deadline is None
    assert "Outdated" in alarms(actions)[0] and "will not take over" in alarms(actions)[0]
    assert b.feed(Tick(), 100) == [] and b.state is S.IN_DOUBT
    with pytest.raises(FailoverRefused, match="Outdated"):
        b.feed(Promote(), 101)
    # the active is back: the resync makes it UpToDate again
    b.feed(LinkRestored(2, True), 102)
    assert b.state is S.SYNC_TARGET and b.data is DataState.INCONSISTENT
    b.feed(ResyncDone(), 103)
    assert b.state is S.STANDBY and b.data is DataState.UP_TO_DATE
    # a refusal of another kind still retries
    _, c = pair()
    c.feed(PeerSuspected(), 10)
    c.feed(FenceResult(False, "ipmi timeout", 1), 11)
    assert c.state is S.IN_DOUBT and c.data is DataState.UP_TO_DATE and c.deadline is not None


def test_switched_over_hook():
    a, b = pair()
    assert a.feed(SwitchedOver(active=False), 1) == [] and a.state is S.STANDBY_PAIR
    assert b.feed(SwitchedOver(active=True), 1) == [ClearAlarm(), PersistEpoch(3, 3)]


def test_an_event_the_table_lacks_breaks_the_machine_for_good():
    a, _ = pair()
    with pytest.raises(IllegalTransition, match="LinkRestored.*ACTIVE"):
        a.feed(LinkRestored(2, False), 1)  # the detector never restores a heard peer
    with pytest.raises(IllegalTransition):
        a.feed(Tick(), 2)


def test_the_table_is_complete_where_it_must_be_and_renders():
    assert set(TRANSITIONS) == set(FoState)
    for state, rows in TRANSITIONS.items():
        for kind in ("PERSISTED", "TICK", "FENCE_FAILED"):
            assert any(on.name == kind for on in rows), (state, kind)
    text = render_markdown()
    assert all(f"| {s.value} |" in text for s in FoState)
    assert SERVING == {S.ACTIVE, S.ACTIVE_ALONE, S.SYNC_SOURCE}


def test_bad_timeouts_say_which():
    with pytest.raises(ValueError, match="fence_retry should be > 0"):
        Timeouts(fence=1, fence_retry=0)


def test_status_speaks_drbd():
    a, b = pair()
    b.feed(PeerSuspected(), 1)
    assert b.status() == {
        "role": "standby", "state": "FENCING", "serving": False, "epoch": 2,
        "disk": "UpToDate", "connection": "Connecting", "replication": "Off",
        "peer_epoch": 2, "peer_role": "unknown", "promotion_score": 100, "fence_attempts": 1,
    }
    a.feed(PeerSuspected(), 1)
    a.feed(LinkRestored(2, False), 2)
    assert (a.status()["replication"], a.status()["peer_role"]) == ("SyncSource", "standby")
