"""Fence actions in the ClusterLabs fence-agents convention, so a real pair uses Debian's
`fence-agents` (`fence_ipmilan`, `fence_virsh`, ...) unchanged and the lab uses its own agent.

A fence action is a program; its options arrive on stdin as `key=value` lines (`action=off`,
`plug=NODE`, plus the site's own: `ip=`, `username=`, ...); exit status 0 means done. For
`off`, fence-agents confirm the power state before they exit 0.

Besides the power actions, DRBD's `fencing resource-and-stonith` idea, for a pair with one
fabric (where an active that loses its standby cannot tell "standby dead" from "link down"):
`outdate` marks PLUG Outdated at the fence device (the node keeps running; exit 0 = marked),
`unoutdate` clears the mark (exit 0 = cleared). The device arbitrates: a request from a node
that is Outdated, or that it powered off and not on since, is refused (exit 1), so an outdated
standby can never fence the active. The asking node is passed as `nodename=` (fence_scsi's
option name); the lab's device knows it from its channel instead.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass

from hsp_rdma.errors import ConfigError

ACTIONS = ("off", "on", "reboot", "status", "monitor", "outdate", "unoutdate")


@dataclass(frozen=True, slots=True)
class FenceResult:
    """What one fence action did: ``ok`` only when the agent exited 0 in time."""

    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class FenceAgent:
    """A fence program and the options every call passes (besides action and plug)."""

    program: str
    options: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, command: str, options: list[str] | tuple[str, ...] = ()) -> FenceAgent:
        """``command`` as a shell would split it; ``options`` as `key=value` strings."""
        argv = shlex.split(command)
        if not argv:
            raise ConfigError("the fence agent is empty: name a program, e.g. fence_ipmilan")
        if shutil.which(argv[0]) is None:
            raise ConfigError(f"fence agent {argv[0]!r} is not an executable on PATH: install "
                              "it (Debian: fence-agents) or give its full path")
        pairs = []
        for opt in options:
            key, sep, value = opt.partition("=")
            if not sep or not key.strip() or "\n" in opt:
                raise ConfigError(f"fence option {opt!r} is not one key=value line")
            if key.strip() in ("action", "plug"):
                raise ConfigError(f"fence option {key.strip()!r} is set by the engine per call")
            pairs.append((key.strip(), value))
        return cls(command, tuple(pairs))

    def run(self, action: str, plug: str | None, timeout_s: float,
            nodename: str | None = None) -> FenceResult:
        """Run the agent for ACTION on PLUG, as asked by node NODENAME when given (a
        `nodename=` line, replacing a configured one); never raises for the agent's own
        failures (a bad ACTION or NODENAME is the caller's: ValueError)."""
        if action not in ACTIONS:
            raise ValueError(f"fence action {action!r}: one of {', '.join(ACTIONS)}")
        if nodename is not None and (not nodename.strip() or "\n" in nodename):
            raise ValueError(f"fence nodename {nodename!r} is not one node name")
        lines = [f"action={action}", *([f"plug={plug}"] if plug else []),
                 *([f"nodename={nodename.strip()}"] if nodename is not None else []),
                 *(f"{k}={v}" for k, v in self.options
                   if nodename is None or k != "nodename")]
        try:
            res = subprocess.run(shlex.split(self.program), input="\n".join(lines) + "\n",
                                 capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return FenceResult(False, f"{self.program}: no answer in {timeout_s:g} s")
        except OSError as exc:
            return FenceResult(False, f"{self.program}: {exc.strerror}")
        said = (res.stdout.strip() or res.stderr.strip()).splitlines()
        tail = said[-1] if said else ""
        if res.returncode == 0:
            return FenceResult(True, f"{action} {plug or ''}: {tail or 'done'}".strip())
        return FenceResult(False, f"{self.program} {action} {plug or ''} exited "
                                  f"{res.returncode}: {tail or '(nothing said)'}")
