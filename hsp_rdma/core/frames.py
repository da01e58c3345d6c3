"""The Interface A frame: one fixed little header, then the payload.

The layout is declared once (``HEADER_FIELDS`` next to ``HEADER_FORMAT``); ``encode`` and
``decode`` are the only code that packs it. CRC32C covers the header (CRC field zero) and payload.
``decode`` checks integrity first (magic, length, CRC32C), then meaning (version, channel).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from hsp_rdma.errors import FrameError, VersionMismatch

MAGIC = 0x4853  # "HS" when read as big-endian text; any other value is not our frame
PROTOCOL_VERSION = 1
MAX_EPOCH = 0xFFFF_FFFF
MAX_SEQUENCE = 0xFFFF_FFFF_FFFF_FFFF
MAX_TYPE = 0xFFFF
# A control frame fits one receive descriptor; bulk state travels over Interface B, not here.
MAX_PAYLOAD = 1 << 20

# Little-endian, no padding: the wire layout does not depend on the host.
HEADER_FIELDS = ("magic", "version", "channel", "type", "epoch", "sequence", "length", "crc32c")
HEADER_FORMAT = "<HBBHIQII"
HEADER = struct.Struct(HEADER_FORMAT)
HEADER_SIZE = HEADER.size
_CRC_OFFSET = HEADER_SIZE - 4  # crc32c is the last header field


class Channel(enum.IntEnum):
    """The logical pipes that share one physical port; the listener picks by this value."""

    HEALTH = 1
    OAM = 2
    PMEM = 3
    DISK = 4
    CONFIG = 5
    GSO = 6


def _crc32c_table() -> tuple[int, ...]:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c_reference(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC32C (Castagnoli) of ``data``, continuing from ``crc``: the pure-Python reference.

    Table-driven, about 10 MB/s: the tests hold the compiled ``crc32c`` to it.
    """
    table = _CRC32C_TABLE
    crc ^= 0xFFFF_FFFF
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFF_FFFF


# The compiled CRC (hsp_rdma/cext/crc32c.pyx: SSE4.2 or slice-by-8, GBs/s) is pure computation,
# no I/O, so the sans-IO core may use it (tests/test_layers.py allows exactly this module).
# A checkout whose extension is not built yet still works, slowly, on the reference.
try:
    from hsp_rdma.cext.crc32c import crc32c as _crc32c_native
except ImportError:  # pragma: no cover - only before `pip install -e .` built the extension
    _crc32c_native = None

NATIVE_CRC32C = _crc32c_native is not None


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC32C (Castagnoli) of ``data``, continuing from ``crc`` (pass a previous result)."""
    if _crc32c_native is not None:
        return _crc32c_native(data, crc)
    return crc32c_reference(data, crc)


@dataclass(frozen=True, slots=True)
class Frame:
    """One Interface A message as it travels; ``length`` and ``crc32c`` are derived on encode."""

    channel: Channel
    type: int
    epoch: int
    sequence: int
    payload: bytes = b""

    def __post_init__(self) -> None:
        _check_range("type", self.type, MAX_TYPE)
        _check_range("epoch", self.epoch, MAX_EPOCH)
        _check_range("sequence", self.sequence, MAX_SEQUENCE)
        if len(self.payload) > MAX_PAYLOAD:
            raise ValueError(f"payload of {len(self.payload)} bytes exceeds {MAX_PAYLOAD}")
        object.__setattr__(self, "channel", Channel(self.channel))
        object.__setattr__(self, "payload", bytes(self.payload))


def _check_range(name: str, value: int, maximum: int) -> None:
    if not 0 <= value <= maximum:
        raise ValueError(f"{name} should be between 0 and {maximum}, got {value}")


def encode(frame: Frame) -> bytes:
    """The wire bytes of ``frame``: header with CRC32C over header and payload, then payload."""
    fields = {
        "magic": MAGIC,
        "version": PROTOCOL_VERSION,
        "channel": int(frame.channel),
        "type": frame.type,
        "epoch": frame.epoch,
        "sequence": frame.sequence,
        "length": len(frame.payload),
        "crc32c": 0,
    }
    header = HEADER.pack(*(fields[name] for name in HEADER_FIELDS))
    crc = crc32c(frame.payload, crc32c(header))
    return header[:_CRC_OFFSET] + crc.to_bytes(4, "little") + frame.payload


def decode(buf: bytes | bytearray | memoryview) -> Frame:
    """The frame in ``buf`` (exactly one frame); raises FrameError naming what is wrong."""
    buf = bytes(buf)
    if len(buf) < HEADER_SIZE:
        raise FrameError(f"truncated frame: {len(buf)} bytes, the header alone is {HEADER_SIZE}")
    fields = dict(zip(HEADER_FIELDS, HEADER.unpack_from(buf)))
    if fields["magic"] != MAGIC:
        raise FrameError(
            f"bad magic 0x{fields['magic']:04x} (expected 0x{MAGIC:04x}): not an hsp_rdma frame"
        )
    length = fields["length"]
    if length > MAX_PAYLOAD:
        raise FrameError(f"bad length {length}: a payload is at most {MAX_PAYLOAD} bytes")
    available = len(buf) - HEADER_SIZE
    if available < length:
        raise FrameError(f"truncated frame: header announces {length} payload bytes, {available} came")
    if available > length:
        raise FrameError(f"bad length {length}: {available} payload bytes follow the header")
    unsummed = buf[:_CRC_OFFSET] + b"\0\0\0\0" + buf[HEADER_SIZE:]
    crc = crc32c(unsummed)
    if crc != fields["crc32c"]:
        raise FrameError(f"bad CRC32C 0x{fields['crc32c']:08x}, computed 0x{crc:08x}: frame corrupted")
    # Only an intact frame can tell us the peer's version: a flipped bit is corruption, not a
    # peer to upgrade.
    if fields["version"] != PROTOCOL_VERSION:
        raise VersionMismatch(fields["version"], PROTOCOL_VERSION)
    try:
        channel = Channel(fields["channel"])
    except ValueError:
        raise FrameError(f"unknown channel {fields['channel']}") from None
    return Frame(channel, fields["type"], fields["epoch"], fields["sequence"], buf[HEADER_SIZE:])
