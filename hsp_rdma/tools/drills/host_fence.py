"""fence_hsp_host: the fence agent of host drills (two node processes on one host), in the
fence-agents convention: options on stdin (``action=off``, ``plug=NODE``, ``dir=DIR``,
``nodename=ASKER``); the node's process id is in ``DIR/NODE.pid``. ``off`` kills that process
(SIGKILL, a stopped one too) and exits 0 once it is gone; ``status`` says on/off (exit 0).

It is also the drills' fence *device*, as DRBD's ``fencing resource-and-stonith`` wants one:
``outdate`` marks PLUG Outdated (its process keeps running; a dead one is marked too: the mark
is what matters), ``unoutdate`` clears the mark. A request from ASKER (``nodename=``) is
refused, exit 1 and the reason on stderr, while ASKER is Outdated or was powered off here and
has not run since (a new process in ``DIR/ASKER.pid``); ``unoutdate`` from the node that set
the mark is always taken; ``status`` answers anyone. Without ``nodename=`` nothing is refused
(an operator's call). The marks are kept in ``DIR/fence-state.json``; every call holds an
flock on ``DIR/fence-state.lock`` from its first look to its last write, so agents run at the
same time are served one after the other (the first wins)."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path

ACTIONS = ("off", "status", "monitor", "outdate", "unoutdate")
STATE_FILE = "fence-state.json"
LOCK_FILE = "fence-state.lock"
KILL_WAIT_S = 5.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user holds that pid: not our node
        return False
    try:  # a zombie (killed, not yet reaped by the driver) is off
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


class Refused(Exception):
    """The request is not carried out; the message says why."""


def _pid(folder: Path, node: str) -> int | None:
    try:
        return int((folder / f"{node}.pid").read_text())
    except (OSError, ValueError):
        return None


def _load(folder: Path) -> dict:
    try:
        marks = json.loads((folder / STATE_FILE).read_text())
    except FileNotFoundError:
        marks = {}
    except (OSError, ValueError) as exc:  # never forget a mark silently: refuse until fixed
        raise Refused(f"the fence marks in {folder / STATE_FILE} are unreadable ({exc}): "
                      "fix or remove that file") from None
    if not isinstance(marks, dict):
        raise Refused(f"the fence marks in {folder / STATE_FILE} are not a JSON object: "
                      "fix or remove that file")
    return {k: dict(marks.get(k) or {}) for k in ("outdated", "off")}


def _save(folder: Path, marks: dict) -> None:
    tmp = folder / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(marks, sort_keys=True))
    os.replace(tmp, folder / STATE_FILE)


def _check_asker(folder: Path, marks: dict, asker: str) -> None:
    """Raise Refused when ASKER may not fence; forget an off mark of a node that runs again
    (a new process)."""
    out = marks["outdated"].get(asker)
    if out:
        raise Refused(f"node {asker} is Outdated (by {out['by']}): it may not fence")
    off = marks["off"].get(asker)
    if off:
        pid = _pid(folder, asker)
        if pid is not None and pid != off.get("pid") and _alive(pid):
            del marks["off"][asker]
            return
        raise Refused(f"node {asker} was powered off (by {off['by']}) and has not been on "
                      "since: it may not fence")


def carry_out(folder: Path, marks: dict, action: str, plug: str, asker: str | None) -> str:
    """Do ACTION on PLUG, changing MARKS; the line to print; raises Refused."""
    by = asker or "an unnamed asker"
    mark = marks["outdated"].get(plug)
    pid = _pid(folder, plug)
    if action in ("status", "monitor"):
        if pid is None:
            raise Refused(f"no pid for node {plug} in {folder / (plug + '.pid')}")
        return (f"Status: {'ON' if _alive(pid) else 'OFF'}"
                + (f" (Outdated by {mark['by']})" if mark else ""))
    if asker and not (action == "unoutdate" and mark and mark["by"] == asker):
        _check_asker(folder, marks, asker)  # the node that set a mark may always clear it
    if action == "outdate":
        marks["outdated"][plug] = {"by": by, "t": time.time()}
        return f"Success: node {plug} is Outdated (by {by})"
    if action == "unoutdate":
        marks["outdated"].pop(plug, None)
        return f"Success: node {plug} {'is no longer' if mark else 'was not'} Outdated"
    # off
    if pid is None:
        raise Refused(f"no pid for node {plug} in {folder / (plug + '.pid')}")
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + KILL_WAIT_S
    while _alive(pid):
        if time.monotonic() > deadline:
            raise Refused(f"node {plug} (pid {pid}) still runs")
        time.sleep(0.01)
    marks["off"][plug] = {"by": by, "pid": pid, "t": time.time()}
    return f"Success: Powered OFF (node {plug}, pid {pid})"


def main() -> int:
    opts = {}
    for line in sys.stdin.read().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            opts[key.strip()] = value.strip()
    action, plug = opts.get("action", "off"), opts.get("plug") or opts.get("port", "")
    folder, asker = opts.get("dir", ""), opts.get("nodename") or None
    if action not in ACTIONS:
        print(f"fence_hsp_host: action {action} is not supported ({', '.join(ACTIONS)})",
              file=sys.stderr)
        return 1
    if not plug or not folder:
        print("fence_hsp_host: plug= and dir= are needed", file=sys.stderr)
        return 1
    for what, name in (("plug", plug), ("nodename", asker or "x")):
        if not name.replace("-", "").replace("_", "").isalnum():
            print(f"fence_hsp_host: {what}={name!r} is not a node name", file=sys.stderr)
            return 1
    path = Path(folder)
    try:
        with open(path / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released as the file closes
            marks = _load(path)
            before = json.dumps(marks, sort_keys=True)
            try:
                said = carry_out(path, marks, action, plug, asker)
            finally:  # an off mark forgotten on the way is kept even when refused
                if json.dumps(marks, sort_keys=True) != before:
                    _save(path, marks)
    except Refused as exc:
        print(f"fence_hsp_host: {action} {plug}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"fence_hsp_host: {action} {plug}: cannot keep the fence marks in {folder}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    print(said)
    return 0


if __name__ == "__main__":
    sys.exit(main())
