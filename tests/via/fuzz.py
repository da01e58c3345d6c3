"""Random VIPL call sequences, wrong ones included, against real verbs in a lab node.

Every call either succeeds or raises VipError / VerbsError; anything else (another exception,
a crash of the interpreter, a hang past the job's timeout) is a failure. Objects are dropped
and garbage-collected in random order too, so the C objects' teardown order is exercised.
Connections go to a peer node running ``scenarios.py sink`` on discriminator b"sink".

    python tests/via/fuzz.py --dev rxe0 --local 10.77.1.2 --peer 10.77.1.1 --steps 400 --seed 1
"""

from __future__ import annotations

import argparse
import gc
import json
import mmap
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hsp_rdma import via
from hsp_rdma.errors import VerbsError


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dev", required=True)
    p.add_argument("--local", required=True)
    p.add_argument("--peer", required=True)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rng = random.Random(args.seed)
    nics: list = []
    ptags: list = []
    mems: list = []  # (nic, buffer, handle)
    vis: list = []
    cqs: list = []
    outcomes: Counter = Counter()

    def pick(xs):
        return rng.choice(xs) if xs else None

    def seg_desc(control=0):
        m = pick(mems)
        if m is None:
            return via.VipDescriptor(control=control)
        _nic, buf, h = m
        off = rng.choice([0, 64, len(buf) - 64, len(buf) + 8])
        n = rng.choice([0, 8, 64, 4096, 1 << 20])
        handle = h if rng.random() < 0.8 else rng.randrange(1, 1 << 32)
        addr = via.address_of(buf, min(off, len(buf))) if not buf.closed else 0
        remote = via.AddressSegment(addr, int(h)) if control & 3 else None
        return via.VipDescriptor(control=control, segments=[via.DataSegment(addr, handle, n)],
                                 address=remote, immediate=rng.randrange(1 << 32))

    ops = {
        "open": lambda: nics.append(via.VipOpenNic(rng.choice([args.dev, args.dev, "nosuch0"]))),
        "close": lambda: via.VipCloseNic(nics.pop(rng.randrange(len(nics)))) if nics else None,
        "ptag": lambda: ptags.append(via.VipCreatePtag(pick(nics))) if nics else None,
        "unptag": lambda: via.VipDestroyPtag(pick(nics), ptags.pop()) if ptags and nics
        else None,
        "reg": lambda: _reg(),
        "dereg": lambda: _dereg(),
        "vi": lambda: _vi(),
        "destroy_vi": lambda: via.VipDestroyVi(vis.pop(rng.randrange(len(vis)))) if vis
        else None,
        "connect": lambda: _connect(),
        "disconnect": lambda: via.VipDisconnect(pick(vis)) if vis else None,
        "post_recv": lambda: via.VipPostRecv(pick(vis), seg_desc()) if vis else None,
        "post_send": lambda: via.VipPostSend(pick(vis), seg_desc(rng.choice(
            [0, 1, 2, 4, 5, 3, 8]))) if vis else None,
        "done": lambda: (via.VipSendDone if rng.random() < 0.5 else via.VipRecvDone)(pick(vis))
        if vis else None,
        "wait": lambda: (via.VipSendWait if rng.random() < 0.5 else via.VipRecvWait)(
            pick(vis), rng.choice([0, 1, 50])) if vis else None,
        "query": lambda: (via.VipQueryNic(pick(nics)), via.VipQueryVi(pick(vis)) if vis else 0)
        if nics else None,
        "cq": lambda: cqs.append(via.VipCreateCQ(pick(nics), rng.choice([0, 4, 64])))
        if nics else None,
        "cq_done": lambda: via.VipCQDone(pick(cqs)) if cqs else None,
        "cq_destroy": lambda: via.VipDestroyCQ(cqs.pop()) if cqs else None,
        "reset": lambda: via.ServernetReset(pick(nics)) if nics else None,
        "drop": lambda: _drop(),
        "gc": gc.collect,
    }

    def _reg():
        nic, ptag = pick(nics), pick(ptags)
        if nic is None or ptag is None:
            return
        buf = mmap.mmap(-1, rng.choice([4096, 65536])) if rng.random() < 0.9 else b"readonly"
        h = via.VipRegisterMem(nic, buf, via.MemAttributes(
            ptag=ptag, enable_rdma_write=rng.random() < 0.5, enable_rdma_read=rng.random() < 0.5))
        mems.append((nic, buf, h))

    def _dereg():
        if mems:
            nic, buf, h = mems.pop(rng.randrange(len(mems)))
            via.VipDeregisterMem(pick(nics) or nic, buf, h)

    def _vi():
        nic = pick(nics)
        if nic is None:
            return
        cq = pick(cqs) if rng.random() < 0.3 else None
        vis.append(via.VipCreateVi(nic, via.ViAttributes(
            ptag=pick(ptags), enable_rdma_read=rng.random() < 0.5,
            reliability_level=rng.choice([via.Reliability.RELIABLE_DELIVERY] * 4
                                         + [via.Reliability.UNRELIABLE])),
            send_cq=cq, recv_cq=cq))

    def _connect():
        vi = pick(vis)
        if vi is None:
            return
        disc = rng.choice([b"sink", b"sink", b"nobody"])
        via.VipConnectRequest(vi, via.NetAddress(args.local), via.NetAddress(args.peer, disc),
                              rng.choice([300, 3000]))

    def _drop():
        for pool in (vis, mems, ptags, cqs, nics):
            if pool and rng.random() < 0.3:
                pool.pop(rng.randrange(len(pool)))

    names = sorted(ops)
    t0 = time.monotonic()
    for step in range(args.steps):
        name = rng.choice(names)
        try:
            ops[name]()
            outcomes[f"{name}:ok"] += 1
        except (via.VipError, VerbsError) as exc:
            outcomes[f"{name}:{type(exc).__name__}"] += 1
        except Exception as exc:
            print(json.dumps({"ok": False, "step": step, "op": name, "seed": args.seed,
                              "error": f"{type(exc).__name__}: {exc}"}), flush=True)
            raise
    for nic in nics:
        via.VipCloseNic(nic)
    nics.clear()
    vis.clear()
    mems.clear()
    gc.collect()
    print(json.dumps({"ok": True, "steps": args.steps, "seed": args.seed,
                      "seconds": round(time.monotonic() - t0, 1),
                      "outcomes": dict(sorted(outcomes.items()))}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
