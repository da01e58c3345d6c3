"""hsp_rdma: high-availability pairs over high-speed RDMA pipes.

Layers by folder: cext (Cython over rdma-core) -> via (VIPL mirror) -> core (sans-IO
protocols) / ha (engine) -> tools (benches, demo, drills) -> cli. See DESIGN.md in the shared
folder for the architecture.
"""

__version__ = "0.1.0"
