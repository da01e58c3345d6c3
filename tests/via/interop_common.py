"""What the pyverbs peer and our VIA side agree on: patterns, sizes, message formats.

No RDMA library is imported here: each side brings its own (pyverbs or hsp_rdma.via).
"""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

# Each step's data: (pattern seed, length). Distinct seeds and lengths so that a buffer
# holding another step's bytes (or a stale one) never passes.
A = (11, 1500)  # ours sends -> pyverbs receives
B = (23, 3000)  # pyverbs sends -> ours receives
C = (37, 8192)  # pyverbs RDMA-writes into our memory
D = (53, 6000)  # pyverbs RDMA-reads our memory
E = (71, 7000)  # we RDMA-write into pyverbs memory
F = (89, 5000)  # we RDMA-read pyverbs memory
G = (101, 2500)  # pyverbs RDMA-writes with immediate into our memory (rxe)
IMM = 0x1234ABCD  # the immediate value (host order; network order on the wire)

MSG = 4096  # a receive slot: every message fits
GUARD = 64  # bytes after each RDMA target that must stay untouched
FILL = 0xEE  # what untouched memory holds

# Messages: an 8-byte tag, then fields. ADDRS carries two (address, rkey) pairs.
ADDRS = struct.Struct("<8sQIQI")
VERDICT = struct.Struct("<8sB")
TAG_PY_ADDRS = b"PYADDRS\0"  # pyverbs: its E target and F source
TAG_VI_ADDRS = b"VIADDRS\0"  # ours: our C target and D source (+ pattern A)
TAG_WROTE_C = b"WROTE-C\0"
TAG_READ_D = b"READ-D\0\0"  # + verdict
TAG_WROTE_E = b"WROTE-E\0"
TAG_CHECK_E = b"CHECK-E\0"  # + verdict
TAG_BYE = b"BYE\0\0\0\0\0"
TAG_IMM_ADDR = b"IMMADDR\0"  # ours: our G target (second connection)

STEPS = ("send_ours_to_pyverbs", "send_pyverbs_to_ours", "pyverbs_rdma_write",
         "pyverbs_rdma_read", "ours_rdma_write", "ours_rdma_read", "pyverbs_rdma_write_imm")


def is_iwarp(dev: str) -> bool:
    """iWARP devices (siw) are RNICs; RoCE (rxe) are CAs: no immediate data on iWARP."""
    return "RNIC" in Path(f"/sys/class/infiniband/{dev}/node_type").read_text()


def pattern(spec: tuple[int, int]) -> bytes:
    seed, n = spec
    return bytes((seed + i * 7 + (i >> 8)) % 251 for i in range(n))


def imm_discriminator(disc: bytes) -> bytes:
    return disc + b"/imm"


def first_diff(got: bytes, want: bytes) -> str:
    """Where two byte strings first differ (empty when equal)."""
    if got == want:
        return ""
    if len(got) != len(want):
        return f"length {len(got)} != {len(want)}"
    i = next(i for i in range(len(got)) if got[i] != want[i])
    return f"byte {i}: 0x{got[i]:02x} != 0x{want[i]:02x} ({sum(x != y for x, y in zip(got, want))}" \
        " bytes differ)"


class Report:
    """One JSON line per step on stdout; ok() at the end says whether every step matched."""

    def __init__(self, side: str, rdma: str = ""):
        self.side, self.rdma = side, rdma
        self.steps: dict[str, bool] = {}
        self.t0 = time.monotonic()

    def step(self, name: str, ok: bool, **detail) -> bool:
        self.steps[name] = bool(ok)
        self.emit({"step": name, "ok": bool(ok), **detail})
        return ok

    def emit(self, obj: dict) -> None:
        line = {"side": self.side, **obj, "t": round(time.monotonic() - self.t0, 3)}
        print(json.dumps(line), flush=True)

    def finish(self, error: str = "") -> int:
        ok = not error and bool(self.steps) and all(self.steps.values())
        self.emit({"done": True, "ok": ok, "rdma": self.rdma, "steps": self.steps,
                   "error": error})
        return 0 if ok else 1


def fail_exit(report: Report, exc: BaseException) -> None:
    import traceback
    traceback.print_exc(file=sys.stderr)
    sys.exit(report.finish(f"{type(exc).__name__}: {exc}"))
