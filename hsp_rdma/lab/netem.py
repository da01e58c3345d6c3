"""Netem on a lab node's fabric, with pyroute2: `python -m hsp_rdma.lab.netem eth0 "delay 5ms loss 1%"`.

Runs inside a guest (hsp-lab fault NODE netem x|y SPEC). The SPEC grammar is tc's, reduced to
what fault drills use: delay TIME [JITTER], loss P%, duplicate P%, corrupt P%, reorder P%,
limit N; or `clear` to remove the qdisc.
"""

from __future__ import annotations

import re
import subprocess
import sys

from hsp_rdma.errors import LabError

_TIME = re.compile(r"^(\d+(?:\.\d+)?)(us|ms|s)$")
_PCT = re.compile(r"^(\d+(?:\.\d+)?)%$")
_SCALE_US = {"us": 1, "ms": 1000, "s": 1_000_000}


def _time_us(tok: str, what: str) -> int:
    m = _TIME.match(tok)
    if not m:
        raise LabError(f"netem: {what} '{tok}' is not a time like 5ms, 200us or 1s")
    return int(float(m.group(1)) * _SCALE_US[m.group(2)])


def _percent(tok: str, what: str) -> float:
    m = _PCT.match(tok)
    if not m or not 0 <= float(m.group(1)) <= 100:
        raise LabError(f"netem: {what} '{tok}' is not a percentage like 1% (0-100%)")
    return float(m.group(1))


def parse_spec(spec: str) -> dict[str, float]:
    """tc-style SPEC -> pyroute2 netem keyword arguments (times in µs, rates in %)."""
    toks = spec.split()
    if not toks:
        raise LabError("netem: empty spec; e.g. \"delay 5ms loss 1%\" or clear")
    out: dict[str, float] = {}
    i = 0
    while i < len(toks):
        key = toks[i]
        if i + 1 >= len(toks):
            raise LabError(f"netem: '{key}' needs a value")
        val = toks[i + 1]
        i += 2
        if key == "delay":
            out["delay"] = _time_us(val, "delay")
            if i < len(toks) and _TIME.match(toks[i]):
                out["jitter"] = _time_us(toks[i], "jitter")
                i += 1
        elif key == "loss":
            out["loss"] = _percent(val, "loss")
        elif key == "duplicate":
            # pyroute2 passes duplicate through raw: scale the percentage to a u32 fraction.
            out["duplicate"] = int(_percent(val, "duplicate") / 100 * 0xFFFFFFFF)
        elif key == "corrupt":
            out["prob_corrupt"] = _percent(val, "corrupt")
        elif key == "reorder":
            out["prob_reorder"] = _percent(val, "reorder")
        elif key == "limit":
            if not val.isdigit():
                raise LabError(f"netem: limit '{val}' is not a packet count")
            out["limit"] = int(val)
        else:
            raise LabError(
                f"netem: unknown parameter '{key}': use delay, loss, duplicate, corrupt, "
                "reorder or limit"
            )
    if "prob_reorder" in out and "delay" not in out:
        raise LabError("netem: reorder needs a delay (as in tc)")
    return out


def apply(netdev: str, spec: str) -> str:
    """Replace NETDEV's root qdisc by netem SPEC, or remove it when SPEC is 'clear'."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    subprocess.run(["modprobe", "sch_netem"], check=False, capture_output=True)
    with IPRoute() as ipr:
        links = ipr.link_lookup(ifname=netdev)
        if not links:
            raise LabError(f"netem: no network interface '{netdev}' in this node")
        idx = links[0]
        try:
            ipr.tc("del", index=idx, root=True)
        except NetlinkError:
            pass  # no root qdisc of ours yet
        if spec.strip() == "clear":
            return f"{netdev}: netem cleared"
        ipr.tc("add", "netem", index=idx, handle="1:", root=True, **parse_spec(spec))
    return f"{netdev}: netem {spec}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m hsp_rdma.lab.netem NETDEV 'SPEC'|clear", file=sys.stderr)
        return 64
    try:
        print(apply(args[0], args[1]))
    except LabError as exc:
        print(f"hsp-lab: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
