"""A node's configuration: one TOML file drives the node and every tool that talks to it.

This module holds the *shape* (frozen dataclasses, the contract between the loader and the
engine) and the loader ``load_node_config(path)``, which names the file, line and field of a
wrong or missing value, like the hw-profiles loader. Example (every key shown; those with a
default may be left out)::

    [node]
    name = "a"                      # this node; letters, digits, '-', '_'
    peer = "b"                      # the other node of the pair
    role = "active"                 # the role it starts in: active | standby
    state_dir = "/var/lib/hsp/a"    # epochs, dirty bitmaps (fsync'd)
    control_socket = "/run/hsp/a.sock"   # default: <state_dir>/control.sock
    manager = "self"                # self | pacemaker (who decides promotions)

    [fabric.x]                      # one table per fabric: x, then optionally y
    rdma_device = "rxe0"            # a verbs device, or soft:NAME for the software provider
    local = "10.0.0.1"              # IPv4 of this node on that fabric
    peer = "10.0.0.2"               # IPv4 of the peer on that fabric
    port = 7471                     # rdma_cm port base of Interface A (default 7471)

    [pmem]
    size = "16 MiB"                 # the protected memory region (also the GSO state image)

    [[disk]]                        # zero or more replicated files or block devices
    name = "data"
    path = "/dev/ram0"
    size = "64 MiB"                 # optional: default is the file's / device's size

    [replication]
    commit = "applied"              # async | received | applied (DRBD protocols A, B, C)
    message_size = "64 KiB"         # one receive buffer; larger messages are fragmented
    credits = 32                    # receives posted per channel = sends the peer may have out

    [timeouts]                      # milliseconds
    heartbeat_interval = 100
    heartbeat_timeout = 1000
    commit = 5000                   # a commit not acknowledged in this time fails
    connect = 10000

    [fence]                         # optional: fence-agents convention (ha/fence.py)
    action = "fence_ipmilan"        # program
    options = { ip = "10.1.1.1", username = "admin" }
    timeout = 30000
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ROLES = ("active", "standby")
COMMIT_MODES = ("async", "received", "applied")
MANAGERS = ("self", "pacemaker")
FABRICS = ("x", "y")
DEFAULT_PORT = 7471


@dataclass(frozen=True, slots=True)
class FabricConfig:
    name: str              # "x" or "y"
    rdma_device: str       # "rxe0", "mlx5_0", or "soft:NAME"
    local: str             # IPv4
    peer: str              # IPv4
    port: int = DEFAULT_PORT


@dataclass(frozen=True, slots=True)
class DiskConfig:
    name: str
    path: Path
    size: int | None = None  # bytes; None: the file's or device's size


@dataclass(frozen=True, slots=True)
class ReplicationConfig:
    commit: str = "applied"
    message_size: int = 64 * 1024
    credits: int = 32


@dataclass(frozen=True, slots=True)
class TimeoutsConfig:  # all in milliseconds
    heartbeat_interval: int = 100
    heartbeat_timeout: int = 1000
    commit: int = 5000
    connect: int = 10000


@dataclass(frozen=True, slots=True)
class FenceConfig:
    action: str
    options: tuple[tuple[str, str], ...] = ()
    timeout: int = 30000  # ms


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str
    peer: str
    role: str
    state_dir: Path
    fabrics: tuple[FabricConfig, ...]      # x first, then y when configured
    pmem_size: int
    control_socket: Path | None = None     # None: state_dir / "control.sock"
    manager: str = "self"
    disks: tuple[DiskConfig, ...] = ()
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    fence: FenceConfig | None = None
    source: Path | None = None             # the file it was loaded from

    @property
    def socket_path(self) -> Path:
        return self.control_socket or self.state_dir / "control.sock"
