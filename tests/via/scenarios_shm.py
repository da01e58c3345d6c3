"""The VIA scenarios of scenarios.py with every anonymous mmap they make a via.shared_buffer.

Over the soft provider on one host, the first RDMA Write into a peer's region then obtains a
grant of it (later ones go as direct copies into the peer's memory), so the conformance suite
also runs with registered shared memory and grants. Same arguments as scenarios.py; each NIC
closed prints the side's counters so far (all its NICs added up) as one more JSON line
(scenario "_counters"), from which the test checks that grants were made.

    python tests/via/scenarios_shm.py server|client --dev soft:x --local … --peer …
"""

from __future__ import annotations

import json
import mmap
import runpy
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from hsp_rdma import via
from hsp_rdma.via import shm

_mmap = mmap.mmap
_close_nic = via.VipCloseNic
_side = sys.argv[1] if len(sys.argv) > 1 else "?"
_total: Counter = Counter()


def _mapping(fileno: int, length: int, *args, **kwargs):
    if fileno == -1 and not args and not kwargs:
        return shm.shared_buffer(length)
    return _mmap(fileno, length, *args, **kwargs)


def _close_and_count(nic) -> None:
    _total.update(via.VipQuerySystemManagementInfo(nic)["counters"])
    print(json.dumps({"scenario": "_counters", "side": _side, "ok": True,
                      "detail": dict(_total)}), flush=True)
    _close_nic(nic)


mmap.mmap = _mapping
via.VipCloseNic = _close_and_count

if __name__ == "__main__":
    sys.argv[0] = str(HERE / "scenarios.py")
    runpy.run_path(str(HERE / "scenarios.py"), run_name="__main__")
