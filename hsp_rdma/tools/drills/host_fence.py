"""fence_hsp_host: the fence agent of host drills (two node processes on one host), in the
fence-agents convention: options on stdin (``action=off``, ``plug=NODE``, ``dir=DIR``); the
node's process id is in ``DIR/NODE.pid``. ``off`` kills that process (SIGKILL, a stopped one
too) and exits 0 once it is gone; ``status`` says on/off."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (killed, not yet reaped by the driver) is off
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def main() -> int:
    opts = dict(line.split("=", 1) for line in sys.stdin.read().splitlines() if "=" in line)
    action, plug, folder = opts.get("action", "off"), opts.get("plug", ""), opts.get("dir", "")
    if not plug or not folder:
        print("fence_hsp_host: plug= and dir= are needed", file=sys.stderr)
        return 1
    try:
        pid = int((Path(folder) / f"{plug}.pid").read_text())
    except (OSError, ValueError) as exc:
        print(f"fence_hsp_host: no pid for node {plug}: {exc}", file=sys.stderr)
        return 1
    if action in ("status", "monitor"):
        print(f"Status: {'ON' if _alive(pid) else 'OFF'}")
        return 0
    if action != "off":
        print(f"fence_hsp_host: action {action} is not supported (off, status)", file=sys.stderr)
        return 1
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _alive(pid):
        if time.monotonic() > deadline:
            print(f"fence_hsp_host: node {plug} (pid {pid}) still runs", file=sys.stderr)
            return 1
        time.sleep(0.01)
    print(f"Success: Powered OFF (node {plug}, pid {pid})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
