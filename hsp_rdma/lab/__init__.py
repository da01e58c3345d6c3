"""The two-node soft-RDMA lab: QEMU TCG guests on Debian's kernel with rxe or siw.

`setup` prepares the cache (kernel, siw, vmlinux, initramfs), `Lab` boots and drives a pair.
"""
