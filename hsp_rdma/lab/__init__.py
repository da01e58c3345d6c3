"""The two-node soft-RDMA lab: QEMU TCG guests on Debian's kernel with rxe or siw.

`setup` prepares the cache (kernel, siw, vmlinux, initramfs), `Lab` boots and drives a pair.
"""

from hsp_rdma.lab.lab import FABRICS, NODES, RDMA_KINDS, ExecResult, Job, Lab, fabric_plan

__all__ = ["FABRICS", "NODES", "RDMA_KINDS", "ExecResult", "Job", "Lab", "fabric_plan"]
