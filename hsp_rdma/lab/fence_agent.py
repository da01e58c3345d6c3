"""fence_hsp_lab: a fence agent for the lab's fence device, in the ClusterLabs fence-agents
convention, run inside a lab guest: options as `key=value` lines on stdin (`action=off|on|
reboot|status|monitor|metadata`, `plug=a|b|...` (any node of the lab), optional
`timeout=SECONDS`, `share=/hsp`).
Exit 0 = done (for status/monitor: 0 = on, 2 = off), 1 = failed.

    python -m hsp_rdma.lab.fence_agent <<< $'action=off\nplug=a'

It standalone-runs in the guest with the stdlib only; the host's listener
(hsp_rdma.lab.fenced) answers through the node's 9p share.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

METADATA = """<?xml version="1.0" ?>
<resource-agent name="fence_hsp_lab" shortdesc="Fence agent for the hsp_rdma QEMU lab">
<parameters>
<parameter name="action" unique="0" required="1"><content type="string" default="reboot"/></parameter>
<parameter name="plug" unique="0" required="1"><content type="string"/></parameter>
<parameter name="timeout" unique="0" required="0"><content type="second" default="60"/></parameter>
</parameters>
<actions><action name="on"/><action name="off"/><action name="reboot"/><action name="status"/>
<action name="monitor"/><action name="metadata"/></actions>
</resource-agent>"""


def read_options(text: str) -> dict[str, str]:
    opts = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            opts[key.strip()] = value.strip()
    return opts


def main() -> int:
    opts = read_options(sys.stdin.read() if not sys.stdin.isatty() else "")
    action = opts.get("action", "reboot")
    if action == "metadata":
        print(METADATA)
        return 0
    plug = opts.get("plug") or opts.get("port", "")
    if not plug:
        print("fence_hsp_lab: no plug= given (the node to fence: a, b, ... any node of the lab)", file=sys.stderr)
        return 1
    timeout = float(opts.get("timeout", "60"))
    folder = Path(opts.get("share", "/hsp")) / "fence"
    folder.mkdir(exist_ok=True)
    rid = f"{os.uname().nodename}-{os.getpid()}-{time.monotonic_ns()}"
    tmp = folder / f"{rid}.tmp"
    tmp.write_text(json.dumps({"action": action, "plug": plug}))
    os.replace(tmp, folder / f"{rid}.req")
    ans_path = folder / f"{rid}.ans"
    deadline = time.monotonic() + timeout
    while not ans_path.exists():
        if time.monotonic() > deadline:
            print(f"fence_hsp_lab: the lab's fence device gave no answer in {timeout:g} s "
                  "(is the lab's fenced running?)", file=sys.stderr)
            return 1
        time.sleep(0.05)
    ans = json.loads(ans_path.read_text())
    ans_path.unlink(missing_ok=True)
    print(f"fence_hsp_lab: {action} {plug}: {ans.get('detail', '')}")
    if not ans.get("ok"):
        return 1
    if action in ("status", "monitor"):
        return 0 if ans.get("power") == "on" else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
