"""Interop with pyverbs, our independent reference, in the lab on rxe and siw.

A pyverbs peer (node a, passive, rdma_cm) and our VI (node b, hsp_rdma.via) exchange sends
both ways, RDMA-write into and read from each other's registered memory and, on RoCE, pyverbs
RDMA-writes with immediate into ours. Every byte is checked on the side that received it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from hsp_rdma.lab import Lab
from hsp_rdma.via.providers.verbs import port_of

sys.path.insert(0, str(Path(__file__).resolve().parent))
from interop_common import STEPS, imm_discriminator

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

# Which side checks each step's bytes.
CHECKED_BY = {
    "send_ours_to_pyverbs": "pyverbs",
    "send_pyverbs_to_ours": "via",
    "pyverbs_rdma_write": "via",
    "pyverbs_rdma_read": "pyverbs",
    "ours_rdma_write": "pyverbs",
    "ours_rdma_read": "via",
    "pyverbs_rdma_write_imm": "via",
}


def records(out: str, side: str) -> list[dict]:
    recs = []
    for line in out.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            if rec.get("side") == side:
                recs.append(rec)
    return recs


def test_pyverbs_and_our_vi_interoperate(lab: Lab) -> None:
    info = lab.info()
    a, b = info["a"]["x"], info["b"]["x"]
    iwarp = info["rdma"] == "siw"
    disc = f"pyverbs-interop-{info['rdma']}".encode()
    peer = lab.spawn("a", [sys.executable, str(HERE / "pyverbs_peer.py"), "--ip", a["ipv4"],
                           "--port", str(port_of(disc)),
                           "--imm-port", str(port_of(imm_discriminator(disc))),
                           "--watchdog", "45"], timeout=60, cwd=str(REPO))
    ours = lab.exec("b", [sys.executable, str(HERE / "via_peer.py"), "--dev", b["rdma_dev"],
                          "--local", b["ipv4"], "--peer", a["ipv4"], "--disc", disc.decode(),
                          "--watchdog", "45"], timeout=60, cwd=str(REPO))
    if not ours.ok:
        peer.kill()  # it would wait for us until its watchdog
    theirs = peer.wait()
    both = (f"--- ours (b) rc={ours.rc}\n{ours.stdout}{ours.stderr}\n"
            f"--- pyverbs (a) rc={theirs.rc}\n{theirs.stdout}{theirs.stderr}")
    print(both)  # the step records, for -rA and for failures
    assert ours.rc == 0 and theirs.rc == 0, both

    by_side = {"via": records(ours.stdout, "via"), "pyverbs": records(theirs.stdout, "pyverbs")}
    verdicts: dict[str, bool] = {}
    for side, recs in by_side.items():
        done = [r for r in recs if r.get("done")]
        assert len(done) == 1 and done[0]["ok"], both
        for step, ok in done[0]["steps"].items():
            assert CHECKED_BY[step] == side, f"{step} checked by {side}\n{both}"
            verdicts[step] = ok
    # The verdicts the pyverbs peer sent over the wire agree with what it printed.
    for r in by_side["via"]:
        if r.get("event") == "peer_verdict":
            assert r["ok"] is True, both

    want = [s for s in STEPS if not (iwarp and s == "pyverbs_rdma_write_imm")]
    assert verdicts == dict.fromkeys(want, True), both
    if iwarp:  # no immediate data on iWARP (RFC 5040): both sides say so
        for recs in by_side.values():
            assert any(r.get("event") == "no_imm_step" for r in recs), both
    else:
        imm = next(r for r in by_side["via"] if r.get("step") == "pyverbs_rdma_write_imm")
        assert imm["immediate"] == imm["want_immediate"], both
