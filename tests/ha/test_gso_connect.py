"""The GSO engine's connection set-up over the soft provider (host, a few seconds): attempts
retried until the connect timeout, a connection that brings no Hello made again, the
listener waiting again after a connection that stays silent, the give-up message."""

from __future__ import annotations

import time

import pytest
from pair_helpers import in_thread

from hsp_rdma import via
from hsp_rdma.core.profiles import load_profiles, pick_profile
from hsp_rdma.ha.switchover import DISCRIMINATOR, Engine, SwitchoverError
from hsp_rdma.via.providers import soft

LISTEN_IP, CONNECT_IP = "127.0.0.1", "127.0.0.2"
HELLO_WAIT_S = 1.0


@pytest.fixture(autouse=True)
def _own_ports(monkeypatch):
    monkeypatch.setattr(soft, "PORT_BASE", soft.random_port_base())


def engine(name: str, serving: bool) -> Engine:
    eng = Engine.open(f"soft:{name}", pick_profile(f"soft:{name}", load_profiles()),
                      1 << 16, 256, serving=serving)
    eng.hello_wait_s = HELLO_WAIT_S
    return eng


def silent_peer(listen: bool, hold_s: float) -> None:
    """A peer that connects (or accepts) and says nothing for HOLD_S, then leaves."""
    nic = via.VipOpenNic("soft:silent")
    try:
        vi = via.VipCreateVi(nic, via.ViAttributes(ptag=via.VipCreatePtag(nic)))
        if listen:
            req = via.VipConnectWait(nic, via.NetAddress(LISTEN_IP, DISCRIMINATOR), 10000)
            via.VipConnectAccept(req, vi)
        else:
            deadline = time.monotonic() + 10
            while True:  # the listener's thread may not listen yet
                try:
                    via.VipConnectRequest(vi, via.NetAddress(CONNECT_IP, DISCRIMINATOR),
                                          via.NetAddress(LISTEN_IP, DISCRIMINATOR), 10000)
                    break
                except via.VipNoMatch:
                    assert time.monotonic() < deadline, "the engine never listened"
                    time.sleep(0.05)
        time.sleep(hold_s)
        via.VipDisconnect(vi)
    finally:
        via.VipCloseNic(nic)


def test_connector_started_first_retries_until_the_listener_comes():
    active, standby = engine("b", True), engine("a", False)
    try:
        t, box = in_thread(active.connect, CONNECT_IP, LISTEN_IP, 20)
        time.sleep(1.0)  # refused meanwhile: nothing listens yet
        assert standby.connect(LISTEN_IP, None, 20).serving
        t.join(20)
        assert "error" not in box, box
        assert not box["result"].serving and active.link_up and standby.link_up
    finally:
        active.close()
        standby.close()


def test_listener_waits_again_after_a_connection_that_brings_no_hello():
    standby, active = engine("a", False), engine("b", True)
    try:
        t, box = in_thread(standby.connect, LISTEN_IP, None, 20)
        silent_peer(listen=False, hold_s=HELLO_WAIT_S + 1.0)
        assert active.connect(CONNECT_IP, LISTEN_IP, 20).serving is False
        t.join(20)
        assert "error" not in box, box
        assert box["result"].serving
        # the receives of the failed attempt were posted again: the pair still talks
        assert len(standby._recv_slots) == len(active._recv_slots) == 16
    finally:
        active.close()
        standby.close()


def test_connector_tears_down_a_connection_that_brings_no_hello_and_connects_again():
    active = engine("b", True)
    retried: list[str] = []
    active.on_connect_failed = retried.append
    try:
        t, box = in_thread(active.connect, CONNECT_IP, LISTEN_IP, 30)
        silent_peer(listen=True, hold_s=HELLO_WAIT_S + 1.0)  # the first attempt's listener
        standby = engine("a", False)
        try:
            assert standby.connect(LISTEN_IP, None, 20).serving
            t.join(20)
            assert "error" not in box, box
            assert not box["result"].serving and active.link_up
            # the silent listener posts no receive: our Hello breaks it (as our Hello goes,
            # or while we wait for theirs), or it stays silent
            assert any("sent no Hello in 1 s" in why or "broke before its Hello" in why
                       or "broke as it came up, before our Hello" in why
                       for why in retried), retried
        finally:
            standby.close()
    finally:
        active.close()


def test_connect_gives_up_at_its_timeout_naming_the_attempts_and_the_last_error():
    active = engine("b", True)
    try:
        t0 = time.monotonic()
        with pytest.raises(SwitchoverError) as exc:
            active.connect(CONNECT_IP, LISTEN_IP, 1.5)
        assert time.monotonic() - t0 < 5
        msg = str(exc.value)
        assert f"cannot connect to {LISTEN_IP} within 2 s" in msg
        assert "failed attempt(s), the last: nothing listens" in msg
    finally:
        active.close()


def test_listener_gives_up_at_its_timeout():
    standby = engine("a", False)
    try:
        with pytest.raises(SwitchoverError, match="no peer connected in 1 s"):
            standby.connect(LISTEN_IP, None, 1.0)
    finally:
        standby.close()


def test_a_second_listener_on_the_same_address_says_who_holds_the_port():
    first, second = engine("a", False), engine("a2", False)
    try:
        t, _box = in_thread(first.connect, LISTEN_IP, None, 3)
        time.sleep(0.5)
        with pytest.raises(SwitchoverError, match="another GSO listener"):
            second.connect(LISTEN_IP, None, 1.0)
        t.join(10)
    finally:
        first.close()
        second.close()
