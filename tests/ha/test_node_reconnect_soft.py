"""A channel connection the active gave up on and made again, over the soft VIA provider on
this host (the siw lab flake of the drill pair start, ~1 start in 7): the standby drops the
first pmem connection before its HELLO (on siw, its accept sat until the active's HELLO
wait ran out), so the active resets pmem and connects it again. The NIC's error report of
that first connection (CONN_LOST) is queued for the loop while the active is still
connecting; when the loop started it used to take that stale report for the new,
healthy connection: pmem marked down, the ledger's first transaction "not applied ...
link: down". Here the pair must serve: the first pmem transaction is applied."""

from __future__ import annotations

import random
from pathlib import Path

from pair_helpers import start_nodes

from hsp_rdma import via
from hsp_rdma.core.frames import Channel
from hsp_rdma.ha import node as node_mod
from hsp_rdma.ha.config import load_node_config
from hsp_rdma.ha.node import Node, NodeError
from hsp_rdma.tools.lab_config import write_node_configs
from hsp_rdma.via.providers import soft

INFO = {"a": {"x": {"rdma_dev": "soft:a", "ipv4": "127.0.0.1"}},
        "b": {"x": {"rdma_dev": "soft:b", "ipv4": "127.0.0.2"}}}


def test_a_report_of_an_abandoned_connection_does_not_down_its_successor(
        tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(soft, "PORT_BASE", soft.random_port_base())
    monkeypatch.setattr(node_mod, "HELLO_WAIT_S", 2.0)
    paths = write_node_configs(INFO, tmp_path, pmem_size="64 KiB",
                               timeouts={"connect": 20000})
    a, b = (Node(load_node_config(paths[n])) for n in ("a", "b"))
    up = Node._up
    dropped: list[Channel] = []

    def standby_up(self: Node, ch: Channel, timeout_s: float) -> None:
        if self is b and ch == Channel.PMEM and not dropped:
            # the standby lets the first pmem connection go before its HELLO
            dropped.append(ch)
            via.VipDisconnect(self._port.links[ch].vi)
            raise NodeError("test: the first pmem connection dropped before HELLO")
        up(self, ch, timeout_s)

    monkeypatch.setattr(Node, "_up", standby_up)
    try:
        errors = start_nodes((a, b))
        assert not errors, errors
        assert dropped == [Channel.PMEM]
        # the active reconnected pmem (its first connection was reported lost meanwhile)
        with a.pmem.transaction(commit="applied") as tx:
            tx.write(0, random.Random(1).randbytes(4096))
        assert tx.txid == 1
        assert b.pmem.read(0, 4096) == a.pmem.read(0, 4096)
        st = a.status()
        assert st["channels"]["pmem"]["state"] == "connected", st["channels"]["pmem"]
        # the first connection's own loss may be noted (a flushed receive during its HELLO
        # wait); the provider's report of it must not be taken for the second one
        assert not [x for x in st["alarms"] if "pmem" in x and "CONN_LOST" in x], st["alarms"]
    finally:
        for n in (a, b):
            n.close()
