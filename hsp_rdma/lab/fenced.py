"""The lab's fence device, host side, the way fence_virtd serves VMs: a listener that powers a
named node off or on and answers. `python -m hsp_rdma.lab.fenced LAB_DIR` is started by
`Lab.up` under `timeout` and ended by `Lab.down` by its pid.

The channel from each guest is its own writable 9p share (the one the command channel already
uses): the guest's fence agent (`hsp_rdma.lab.fence_agent`) renames a request into
`fence/ID.req`; the listener carries it out and renames the answer into `fence/ID.ans`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from hsp_rdma.errors import LabError
from hsp_rdma.lab.lab import Lab

FENCE_DIR = "fence"
POLL_S = 0.1


def _write_atomically(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def carry_out(lab: Lab, action: str, plug: str) -> dict:
    """One request: {"ok", "power", "detail"}; never raises."""
    nodes = lab.nodes  # a, b, or every node of a lab of 3+
    if plug not in nodes:
        return {"ok": False, "detail": f"unknown plug {plug!r}: the lab's nodes are "
                                       f"{', '.join(nodes)}"}
    try:
        if action == "off":
            if lab.node_alive(plug):
                lab.fault(plug, "kill")
            off = not lab.node_alive(plug)
            return {"ok": off, "power": "off" if off else "on",
                    "detail": f"node {plug} is {'off' if off else 'still running'}"}
        if action == "on":
            if not lab.node_alive(plug):
                lab.boot_node(plug)
            return {"ok": True, "power": "on", "detail": f"node {plug} is on"}
        if action in ("status", "monitor"):
            power = "on" if lab.node_alive(plug) else "off"
            return {"ok": True, "power": power, "detail": f"node {plug} is {power}"}
        if action == "reboot":
            if lab.node_alive(plug):
                lab.fault(plug, "kill")
            lab.boot_node(plug)
            return {"ok": True, "power": "on", "detail": f"node {plug} rebooted"}
    except LabError as exc:
        return {"ok": False, "detail": str(exc)}
    return {"ok": False, "detail": f"unknown action {action!r}: off, on, reboot, status"}


def serve_once(lab: Lab, log) -> int:
    """Answer every pending request of every node; how many were answered."""
    n = 0
    for asker in lab.nodes:
        folder = lab.node_dir(asker) / "share" / FENCE_DIR
        for req in sorted(folder.glob("*.req")) if folder.is_dir() else ():
            try:
                r = json.loads(req.read_text())
                action, plug = str(r.get("action", "")), str(r.get("plug", ""))
            except (OSError, ValueError, AttributeError) as exc:
                action, plug, r = "", "", {"error": str(exc)}
            t0 = time.monotonic()
            ans = carry_out(lab, action, plug) if action else {
                "ok": False, "detail": f"unreadable request: {r}"}
            _write_atomically(req.with_suffix(".ans"), ans)
            req.unlink(missing_ok=True)
            log.write(json.dumps({"t": time.time(), "from": asker, "action": action,
                                  "plug": plug, "took_s": round(time.monotonic() - t0, 3),
                                  **ans}) + "\n")
            log.flush()
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m hsp_rdma.lab.fenced LAB_DIR", file=sys.stderr)
        return 64
    lab_dir = Path(argv[0])
    lab = Lab(lab_dir.name, lab_dir.parent.parent)  # LAB_DIR = ROOT/labs/LAB_ID
    with open(lab.dir / "fenced.log", "a") as log:
        while lab.state() is not None:  # the lab went down: so does its fence device
            serve_once(lab, log)
            time.sleep(POLL_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
