"""Small shared helpers any layer may use: byte sizes as people write them (16MiB, 64KiB,
1GiB, 4096) and back, and perftest's nearest-rank percentile."""

from __future__ import annotations

import argparse
import math
import re

_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|K|M|G)?\s*$", re.IGNORECASE)
_FACTOR = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
           "g": 1 << 30, "gib": 1 << 30}


def parse_size(text: str) -> int:
    """'16MiB' -> 16777216. Binary units only: RDMA people size buffers in powers of two."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"'{text}' is not a size: write e.g. 4096, 64KiB, 16MiB or 1GiB")
    return int(m.group(1)) * _FACTOR[(m.group(2) or "").lower()]


def format_size(n: int) -> str:
    for unit, f in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= f and n % f == 0:
            return f"{n // f}{unit}"
    return f"{n}B"


def size_arg(lo: int, hi: int, name: str):
    """argparse type: a size within [lo, hi], checked at parse time."""

    def parse(text: str) -> int:
        try:
            n = parse_size(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(
                f"{name} should be between {format_size(lo)} and {format_size(hi)}"
            )
        return n

    return parse


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (perftest's way): no interpolation between samples."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]
