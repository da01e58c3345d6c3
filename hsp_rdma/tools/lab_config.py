"""Node configurations for a lab pair: one TOML file per node from ``Lab.info()``, so tests and
drills start Interface A nodes in one call.

Each file names the node's rdma device, the IPv4 of both nodes on fabric x (and on y when the
lab booted it), a state directory under the lab's directory (the guests see the host's paths;
what a node writes there stays in its own overlay), and the caller's choices of P.mem,
replication, timeouts, disks and fence. Every file is checked by the node's own loader before
it is written.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hsp_rdma.ha.config import FABRICS, SUN_PATH_MAX, parse_node_config
from hsp_rdma.lab import NODES, Lab


def _value(value: Any) -> str:
    """One TOML value: strings (JSON's escapes are TOML's), integers, booleans, inline
    tables of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) as a TOML value")


def _table(header: str, values: Mapping[str, Any]) -> list[str]:
    return [header, *(f"{k} = {_value(v)}" for k, v in values.items()), ""]


def node_config_text(info: Mapping[str, Any], node: str, state_root: Path, *,
                     active: str = "a", pmem_size: int | str = "16 MiB",
                     port: int | None = None, replication: Mapping[str, Any] | None = None,
                     timeouts: Mapping[str, Any] | None = None,
                     disks: list[Mapping[str, Any]] | None = None,
                     fence: Mapping[str, Any] | None = None,
                     control_socket: Path | None = None, pmem_persist: bool = False,
                     peer: str | None = None) -> str:
    """The TOML of NODE ("a" or "b") of the lab described by INFO (``Lab.info()``); with
    PEER, NODE's side of its pair with PEER, any two nodes of INFO (a lab of 3+ nodes, an
    n+1 drill: ``tools/drills/nplus1.py``)."""
    if peer is None:
        if node not in NODES:
            raise ValueError(f"a lab's nodes are {', '.join(NODES)}, not {node!r}")
        peer = NODES[1 - NODES.index(node)]
    elif peer == node:
        raise ValueError(f"node {node!r} cannot be its own peer")
    for who in (node, peer):
        if who not in info or "x" not in info[who]:
            raise ValueError(f"node {who} has no fabric x in the lab's info (not booted or "
                             "not ready): bring the lab up first")
    state_dir = state_root / node
    sock = control_socket or state_dir / "control.sock"
    if len(str(sock).encode()) > SUN_PATH_MAX:  # a deep HSP_LAB_DIR: a short path instead
        sock = Path("/tmp") / f"hsp-{zlib.crc32(str(state_root).encode()):08x}-{node}.sock"
    lines = _table("[node]", {"name": node, "peer": peer,
                              "role": "active" if node == active else "standby",
                              "state_dir": state_dir, "control_socket": sock})
    for fab in FABRICS:
        mine, theirs = info[node].get(fab), info[peer].get(fab)
        if not (mine and theirs):
            continue  # a one-fabric lab: y is left out
        values = {"rdma_device": mine["rdma_dev"], "local": mine["ipv4"],
                  "peer": theirs["ipv4"]}
        if port is not None:
            values["port"] = port
        lines += _table(f"[fabric.{fab}]", values)
    lines += _table("[pmem]", {"size": pmem_size, **({"persist": True} if pmem_persist else {})})
    for disk in disks or ():
        lines += _table("[[disk]]", disk)
    if replication:
        lines += _table("[replication]", replication)
    if timeouts:
        lines += _table("[timeouts]", timeouts)
    if fence:
        lines += _table("[fence]", fence)
    return "\n".join(lines)


def write_node_configs(info: Mapping[str, Any], lab_dir: Path, state_root: Path | None = None,
                       **choices: Any) -> dict[str, Path]:
    """Write ``LAB_DIR/node-config/{a,b}.toml`` (state under STATE_ROOT/<node>, by default
    ``LAB_DIR/node-state``) and return node -> path. CHOICES as ``node_config_text``'s; a
    choice the loader refuses is a ConfigError naming the file, line and field, and nothing
    is written."""
    out_dir = lab_dir / "node-config"
    root = state_root if state_root is not None else lab_dir / "node-state"
    texts = {node: node_config_text(info, node, root, **choices) for node in NODES}
    for node, text in texts.items():
        parse_node_config(text, out_dir / f"{node}.toml")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for node, text in texts.items():
        path = paths[node] = out_dir / f"{node}.toml"
        tmp = path.with_suffix(".toml.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return paths


def lab_node_configs(lab: Lab, **choices: Any) -> dict[str, Path]:
    """One call for tests and drills: the configurations of LAB's two nodes (it must be up),
    written under its directory; node -> path."""
    return write_node_configs(lab.info(), Path(lab.dir), **choices)
