"""What the RDMA Write benches' server and writers agree on, declared once: the accept private
data (magic, buffer address, rkey, length) and the byte pattern the server checks after the
writes. Stdlib only, so the pyverbs reference stays free of our datapath."""

from __future__ import annotations

import struct

ACCEPT = struct.Struct("<4sQII")
ACCEPT_MAGIC = b"HCB1"


def chunks_in(region: int, size: int) -> int:
    """How many SIZE writes tile REGION (a whole multiple of SIZE; at least one)."""
    if region < size or region % size:
        raise ValueError(f"region of {region} bytes is not a whole multiple of the write "
                         f"size {size}")
    return region // size


def pattern(n: int) -> bytes:
    """What a writer writes (bytes 1..255 repeated), so the server can see the writes landed."""
    return (bytes(range(1, 256)) * (n // 255 + 1))[:n]
