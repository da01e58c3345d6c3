"""The two-node soft-RDMA lab: QEMU TCG guests on Debian's kernel with rxe or siw.

`setup` prepares the cache (kernel, siw, vmlinux, initramfs), `Lab` boots and drives a pair
(or, with `up(nodes=N)`, N nodes on shared fabrics).
"""

from hsp_rdma.lab.lab import (
    ALL_NODES,
    FABRICS,
    MAX_NODES,
    NODES,
    RDMA_KINDS,
    ExecResult,
    Job,
    Lab,
    fabric_plan,
    node_names,
)

__all__ = ["ALL_NODES", "FABRICS", "MAX_NODES", "NODES", "RDMA_KINDS", "ExecResult", "Job", "Lab",
           "fabric_plan", "node_names"]
