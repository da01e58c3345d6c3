"""The lab's fence device, host side, the way fence_virtd serves VMs: a listener that powers a
named node off or on and answers. `python -m hsp_rdma.lab.fenced LAB_DIR` is started by
`Lab.up` under `timeout` and ended by `Lab.down` by its pid.

The channel from each guest is its own writable 9p share (the one the command channel already
uses): the guest's fence agent (`hsp_rdma.lab.fence_agent`) renames a request into
`fence/ID.req`; the listener carries it out and renames the answer into `fence/ID.ans`.
A request is JSON (`{"action", "plug"}`) or `key=value` lines ending with `end=1`, answered
in its own form (the agents then need no json in the guest). Every
answer names `noticed_ms` (the request's age when the listener saw it: its poll) and
`took_ms` (the action), which the agent reports with its own time.
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
POLL_S = 0.02  # a look is one state.json read and a glob per node: ~0.1 ms


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


INCOMPLETE_S = 5.0  # a key=value request without its end=1 line after this is unreadable


def _parse_request(text: str, age_s: float) -> dict | None:
    """The request; None while a key=value one is still being written (no end=1 line yet:
    the sh agent writes it in place, having no rename without running mv)."""
    if text.lstrip().startswith("{"):
        r = json.loads(text)
        if not isinstance(r, dict):
            raise ValueError(f"not a JSON object: {text[:80]!r}")
        return r
    r = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            r[key.strip()] = value.strip()
    if r.get("end") != "1":
        if age_s < INCOMPLETE_S:
            return None
        raise ValueError(f"no end=1 line after {age_s:.0f} s: {text[:80]!r}")
    return r


def _answer_text(ans: dict, kv: bool) -> str:
    if not kv:
        return json.dumps(ans)
    return "".join(f"{k}={int(v) if isinstance(v, bool) else ' '.join(str(v).split())}\n"
                   for k, v in ans.items())


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
            kv, noticed = False, 0.0
            try:
                noticed = max(0.0, time.time() - req.stat().st_mtime)
                text = req.read_text()
                kv = not text.lstrip().startswith("{")  # a key=value asker reads key=value
                r = _parse_request(text, noticed)
                if r is None:
                    continue  # still being written: the next look
                action, plug = str(r.get("action", "")), str(r.get("plug", ""))
            except (OSError, ValueError) as exc:
                action, plug, r = "", "", {"error": str(exc)}
            t0 = time.monotonic()
            ans = carry_out(lab, action, plug) if action else {
                "ok": False, "detail": f"unreadable request: {r}"}
            took = time.monotonic() - t0
            timing = {"noticed_ms": round(noticed * 1000, 1), "took_ms": round(took * 1000, 1)}
            _write_atomically(req.with_suffix(".ans"),
                              _answer_text({**ans, **timing}, kv))
            req.unlink(missing_ok=True)
            log.write(json.dumps({"t": time.time(), "from": asker, "action": action,
                                  "plug": plug, "took_s": round(took, 3), **timing,
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
