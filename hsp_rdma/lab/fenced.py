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

Besides power, DRBD's outdate-peer (`fencing resource-and-stonith`): `outdate` marks a node
Outdated (it keeps running), `unoutdate` clears the mark. The device arbitrates, knowing the
asker from the share its request came through: a request from a node that is Outdated, or that
the device powered off and that has not been on since, is refused (ok=0 and the reason), so an
outdated standby can never fence the active; `unoutdate` from the node that set the mark is
always taken; `status`/`monitor` are answered to anyone and say `outdated=1|0`. The marks live
in LAB_DIR/fence-state.json (written atomically: a restarted device keeps them; `hsp-lab down`
removes them with the lab).
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
STATE_FILE = "fence-state.json"  # in the lab dir: {"outdated": {node: {"by", "t"}}, "off": ...}
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


class UnreadableMarks(Exception):
    """The marks file is there and cannot be read: the message says which and what to do."""


def load_marks(lab: Lab) -> dict:
    """The device's marks: {"outdated": {node: {"by", "t"}}, "off": {node: {"by", "t",
    "started"}}}; empty when none was written. UnreadableMarks when the file is unreadable (a
    mark is never forgotten silently: requests are then refused until it is fixed)."""
    path = lab.dir / STATE_FILE
    try:
        marks = json.loads(path.read_text())
    except FileNotFoundError:
        return {"outdated": {}, "off": {}}
    except (OSError, ValueError) as exc:
        raise UnreadableMarks(f"the fence marks in {path} are unreadable ({exc}): fix or remove "
                         "that file") from None
    if not isinstance(marks, dict):
        raise UnreadableMarks(f"the fence marks in {path} are not a JSON object: fix or remove it")
    return {k: dict(marks.get(k) or {}) for k in ("outdated", "off")}


def clear_marks(lab: Lab) -> None:
    """Forget every mark (Outdated, powered off): for a lab healed between drills or tests,
    so one drill's outdated standby does not stay unable to fence in the next."""
    (lab.dir / STATE_FILE).unlink(missing_ok=True)


def _save_marks(lab: Lab, marks: dict) -> None:
    _write_atomically(lab.dir / STATE_FILE, json.dumps(marks, sort_keys=True))


def _started(lab: Lab, node: str):
    """When NODE's QEMU was last started (a new value on every boot, by whatever means)."""
    return ((lab.state() or {}).get("nodes", {}).get(node) or {}).get("started")


def _refusal(lab: Lab, marks: dict, asker: str) -> str | None:
    """Why a request from ASKER is refused, or None; forgets an off mark of a node that has
    been booted since (by this device's `on` or by the lab's own boot_node)."""
    out = marks["outdated"].get(asker)
    if out:
        return f"node {asker} is Outdated (by {out['by']}): it may not fence"
    off = marks["off"].get(asker)
    if off:
        if _started(lab, asker) != off.get("started") and lab.node_alive(asker):
            del marks["off"][asker]
            return None
        return (f"node {asker} was powered off (by {off['by']}) and has not been on since: "
                "it may not fence")
    return None


def carry_out(lab: Lab, action: str, plug: str, asker: str | None = None) -> dict:
    """One request of node ASKER (None: not known, no arbitration): {"ok", "power", "detail"}
    (status also "outdated"); never raises. A changed mark is kept before the answer."""
    nodes = lab.nodes  # a, b, or every node of a lab of 3+
    if plug not in nodes:
        return {"ok": False, "detail": f"unknown plug {plug!r}: the lab's nodes are "
                                       f"{', '.join(nodes)}"}
    if action not in ("off", "on", "reboot", "status", "monitor", "outdate", "unoutdate"):
        return {"ok": False, "detail": f"unknown action {action!r}: off, on, reboot, status, "
                                       "outdate, unoutdate"}
    try:
        marks = load_marks(lab)
    except UnreadableMarks as exc:
        return {"ok": False, "detail": str(exc)}
    before = json.dumps(marks, sort_keys=True)
    ans = _carry_out(lab, marks, action, plug, asker)
    if json.dumps(marks, sort_keys=True) != before:
        try:
            _save_marks(lab, marks)
        except OSError as exc:
            ans = {**ans, "ok": ans["ok"] and action not in ("outdate", "unoutdate"),
                   "detail": f"{ans['detail']}; but the mark could not be kept in "
                             f"{lab.dir / STATE_FILE}: {exc.strerror}"}
    return ans


def _carry_out(lab: Lab, marks: dict, action: str, plug: str, asker: str | None) -> dict:
    by = asker or "an unnamed asker"
    try:
        refused = _refusal(lab, marks, asker) if asker else None
        mark = marks["outdated"].get(plug)
        if action in ("status", "monitor"):
            power = "on" if lab.node_alive(plug) else "off"
            return {"ok": True, "power": power, "outdated": bool(mark),
                    "detail": f"node {plug} is {power}"
                              + (f", Outdated (by {mark['by']})" if mark else "")}
        if action == "unoutdate" and mark and mark["by"] == asker:
            refused = None  # the node that set the mark may always clear it
        if refused:
            return {"ok": False, "detail": refused}
        if action == "outdate":
            marks["outdated"][plug] = {"by": by, "t": time.time()}
            return {"ok": True, "outdated": True, "detail": f"node {plug} is Outdated (by {by})"}
        if action == "unoutdate":
            marks["outdated"].pop(plug, None)
            return {"ok": True, "outdated": False,
                    "detail": f"node {plug} is no longer Outdated" if mark
                    else f"node {plug} was not Outdated"}
        if action == "off":
            if lab.node_alive(plug):
                lab.fault(plug, "kill")
            off = not lab.node_alive(plug)
            if off:
                marks["off"][plug] = {"by": by, "t": time.time(), "started": _started(lab, plug)}
            return {"ok": off, "power": "off" if off else "on",
                    "detail": f"node {plug} is {'off' if off else 'still running'}"}
        if action == "on":
            if not lab.node_alive(plug):
                lab.boot_node(plug)
            marks["off"].pop(plug, None)
            return {"ok": True, "power": "on", "detail": f"node {plug} is on"}
        # reboot
        if lab.node_alive(plug):
            lab.fault(plug, "kill")
        lab.boot_node(plug)
        marks["off"].pop(plug, None)
        return {"ok": True, "power": "on", "detail": f"node {plug} rebooted"}
    except LabError as exc:
        return {"ok": False, "detail": str(exc)}


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
            ans = carry_out(lab, action, plug, asker) if action else {
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
