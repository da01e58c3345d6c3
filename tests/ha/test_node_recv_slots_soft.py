"""A receive that could not be posted again (its VI went into ERROR as the message before it
completed) must come back at the reset before the reconnect, over the soft VIA provider on
this host. It used to be dropped: each loss took a receive or more with it, and a link
down to none had every new connection broken by the peer's first message (rxe lab,
pull-fabric-10s: the health channel made and lost every 0.3 s for two minutes, no resync)."""

from __future__ import annotations

import time
from pathlib import Path

from pair_helpers import start_nodes

from hsp_rdma import via
from hsp_rdma.core.frames import Channel
from hsp_rdma.ha.config import load_node_config
from hsp_rdma.ha.node import Node
from hsp_rdma.tools.lab_config import write_node_configs
from hsp_rdma.via.providers import soft

INFO = {"a": {"x": {"rdma_dev": "soft:a", "ipv4": "127.0.0.1"}},
        "b": {"x": {"rdma_dev": "soft:b", "ipv4": "127.0.0.2"}}}
FAILS = 5


def two_nodes(tmp_path: Path, monkeypatch) -> tuple[Node, Node]:
    """Nodes a and b over the soft provider on this host, not started."""
    monkeypatch.setattr(soft, "PORT_BASE", soft.random_port_base())
    paths = write_node_configs(INFO, tmp_path, pmem_size="64 KiB",
                               timeouts={"connect": 20000})
    return Node(load_node_config(paths["a"])), Node(load_node_config(paths["b"]))


def test_receives_not_posted_again_are_posted_at_the_reconnect(tmp_path: Path,
                                                                monkeypatch) -> None:
    a, b = two_nodes(tmp_path, monkeypatch)
    post = Node._post_recv
    left = {"fails": 0}

    def post_recv(self: Node, link, slot: int, size: int) -> None:
        # on b's health link while it is connected (the loop re-posting a heart beat's
        # receive; the reset posts onto an IDLE VI): as if the VI had just gone into ERROR
        if (self is b and link is b._port.links[Channel.HEALTH] and left["fails"] > 0
                and via.VipQueryVi(link.vi)[0] is via.ViState.CONNECTED):
            left["fails"] -= 1
            raise via.VipInvalidState("test: VI is in ERROR (CONN_LOST)")
        post(self, link, slot, size)

    monkeypatch.setattr(Node, "_post_recv", post_recv)
    try:
        errors = start_nodes((a, b))
        assert not errors, errors
        link = b._port.links[Channel.HEALTH]
        credits = b.config.replication.credits
        assert len(link.vi.recvq) == credits
        assert b.status()["channels"]["health"]["receives_posted"] == credits
        left["fails"] = FAILS
        deadline = time.monotonic() + 30
        while left["fails"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left["fails"], "the heart beats stopped coming"
        # the link is lost, made again, and serves: every receive posted on it again
        beats = None
        while time.monotonic() < deadline:
            with b._lock:
                up, posted = link.up, len(link.vi.recvq) + len(link.unposted)
            st = b.status()["channels"]["health"]["state"]
            if up and st == "connected" and posted == credits:
                beats = b.heartbeats["received"]
                break
            time.sleep(0.05)
        assert beats is not None, (b.status()["channels"]["health"], len(link.vi.recvq),
                                   link.unposted, b.status()["alarms"][-5:])
        assert len(link.vi.recvq) == credits and not link.unposted
        assert b.status()["channels"]["health"]["receives_posted"] == credits
        assert any("cannot re-post a receive" in x for x in b.status()["alarms"])
        time.sleep(1.0)
        assert b.heartbeats["received"] > beats, "no heart beat came after the reconnect"
    finally:
        for n in (a, b):
            n.close()


def test_a_connected_link_short_of_receives_raises_an_alarm(tmp_path: Path,
                                                            monkeypatch) -> None:
    # A receive lost by the node itself (here taken off the VI's queue behind its back) is
    # not seen by the peer until a burst of messages outruns those left: the node says so
    # at its heart beats, once, with the count, while the link still serves.
    a, b = two_nodes(tmp_path, monkeypatch)
    try:
        errors = start_nodes((a, b))
        assert not errors, errors
        link = b._port.links[Channel.PMEM]
        credits = b.config.replication.credits
        time.sleep(0.5)
        assert not [x for x in b.status()["alarms"] if "receives posted" in x]
        with b._lock:
            link.vi.recvq.pop()  # the last posted: the peer's messages use it last
        deadline = time.monotonic() + 10
        said = []
        while not said and time.monotonic() < deadline:
            said = [x for x in b.status()["alarms"] if "receives posted" in x]
            time.sleep(0.05)
        assert said == [(f"pmem on fabric x: {credits - 1} of {credits} receives posted on a "
                        "connected link: a receive was lost, and a burst of the peer's "
                        "messages larger than those left will break the link")], said
        assert b.status()["channels"]["pmem"]["receives_posted"] == credits - 1
        time.sleep(1.0)  # once, not at every beat
        assert len([x for x in b.status()["alarms"] if "receives posted" in x]) == 1
        assert b.status()["channels"]["pmem"]["state"] == "connected"
        with a.pmem.transaction() as tx:  # the link still serves
            tx.write(0, b"still here")
    finally:
        for n in (a, b):
            n.close()
