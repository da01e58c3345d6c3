"""fence_hsp_lab: a fence agent for the lab's fence device, in the ClusterLabs fence-agents
convention, run inside a lab guest: options as `key=value` lines on stdin (`action=off|on|
reboot|status|monitor|outdate|unoutdate|metadata`, `plug=a|b|...` (any node of the lab),
optional `timeout=SECONDS`, `share=/hsp`; `nodename=` is accepted and not needed: the device
knows the asking node from the share its request comes through).
Exit 0 = done (for status/monitor: 0 = on, 2 = off; outdate: marked; unoutdate: cleared),
1 = failed or refused (the device's reason on stdout: "node b is Outdated (by a): it may not
fence").

    python -I -S /path/to/hsp_rdma/lab/fence_agent.py <<< $'action=off\nplug=a'   # COMMAND
    python -m hsp_rdma.lab.fence_agent <<< $'action=off\nplug=a'                  # same, slower

The host's listener (hsp_rdma.lab.fenced) answers through the node's 9p share. The agent runs
in a TCG guest that reads every module over 9p, where each import costs ~30x the host's: it
imports nothing but os, sys and time (no json, pathlib or re; request and answer are
`key=value` lines), so `COMMAND` (a script path, -I -S: no site, no editable finder, no
package) starts in a fraction of the time `-m` takes. Its one line on stdout names the time
each hop took (the device's notice of the request, its action, the agent's own run).
"""

import os
import sys
import time

T0 = time.monotonic()  # the agent's own clock starts here (the interpreter's start-up is before)

# the lab's fence action, as a fence-agents command line (FenceAgent.parse / [fence] action)
COMMAND = f"{sys.executable} -I -S {os.path.abspath(__file__)}"
# the same agent in POSIX sh (fence_hsp_lab.sh beside this file): no interpreter to start
SH_COMMAND = f"/bin/sh {os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fence_hsp_lab.sh')}"

ACTIONS = ("off", "on", "reboot", "status", "monitor", "outdate", "unoutdate", "metadata")
POLL_S = 0.01  # one stat over 9p per look: the answer comes from a host poll of a few ms

METADATA = """<?xml version="1.0" ?>
<resource-agent name="fence_hsp_lab" shortdesc="Fence agent for the hsp_rdma QEMU lab">
<parameters>
<parameter name="action" unique="0" required="1"><content type="string" default="reboot"/></parameter>
<parameter name="plug" unique="0" required="1"><content type="string"/></parameter>
<parameter name="timeout" unique="0" required="0"><content type="second" default="60"/></parameter>
<parameter name="nodename" unique="0" required="0"><content type="string"/></parameter>
</parameters>
<actions><action name="on"/><action name="off"/><action name="reboot"/><action name="status"/>
<action name="monitor"/><action name="outdate"/><action name="unoutdate"/><action name="metadata"/></actions>
</resource-agent>"""


def read_options(text: str) -> dict[str, str]:
    opts = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            opts[key.strip()] = value.strip()
    return opts


def _fail(msg: str) -> int:
    print(f"fence_hsp_lab: {msg}", file=sys.stderr)
    return 1


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def main() -> int:
    opts = read_options(sys.stdin.read() if not sys.stdin.isatty() else "")
    action = opts.get("action", "reboot")
    if action == "metadata":
        print(METADATA)
        return 0
    if action not in ACTIONS:
        return _fail(f"unknown action={action!r}: one of {', '.join(ACTIONS)}")
    plug = opts.get("plug") or opts.get("port", "")
    if not plug:
        return _fail("no plug= given (the node to fence: a, b, ... any node of the lab)")
    if not plug.replace("-", "").replace("_", "").isalnum():
        return _fail(f"plug={plug!r} is not a node name (a, b, ... any node of the lab)")
    try:
        timeout = float(opts.get("timeout", "60"))
    except ValueError:
        return _fail(f"timeout={opts['timeout']!r} is not a number of seconds")
    folder = os.path.join(opts.get("share", "/hsp"), "fence")
    try:
        os.makedirs(folder, exist_ok=True)
        rid = f"{os.uname().nodename}-{os.getpid()}-{time.monotonic_ns()}"
        base = os.path.join(folder, rid)
        with open(base + ".tmp", "w") as f:
            f.write(f"action={action}\nplug={plug}\nreply=kv\nend=1\n")
        os.replace(base + ".tmp", base + ".req")
    except OSError as exc:
        return _fail(f"cannot ask the lab's fence device through {folder}: {exc}")
    t_req = time.monotonic()
    ans_path = base + ".ans"
    deadline = t_req + timeout
    while True:
        try:
            with open(ans_path) as f:
                text = f.read()
            break
        except FileNotFoundError:
            if time.monotonic() > deadline:
                try:  # no late power action from a request its asker gave up on
                    os.unlink(base + ".req")
                except OSError:
                    pass
                return _fail(f"the lab's fence device gave no answer in {timeout:g} s "
                             "(is the lab's fenced running?)")
            time.sleep(POLL_S)
    t_ans = time.monotonic()
    try:
        os.unlink(ans_path)
    except OSError:
        pass
    ans = read_options(text)
    hops = (f"agent {_ms(t_ans - T0)}: device answered {_ms(t_ans - t_req)} after the request"
            + (f" (noticed it after {ans['noticed_ms']} ms, action {ans['took_ms']} ms)"
               if "noticed_ms" in ans and "took_ms" in ans else ""))
    print(f"fence_hsp_lab: {action} {plug}: {ans.get('detail', '')} [{hops}]")
    if ans.get("ok") != "1":
        return 1
    if action in ("status", "monitor"):
        return 0 if ans.get("power") == "on" else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
