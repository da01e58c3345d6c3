"""GSO control messages as Interface A frames on the `gso` channel, and back.

One table (``LAYOUTS``) says, per message type, its frame type number and payload struct;
``encode_message``/``decode_message`` are the only code that packs them. The epoch travels in
the frame header. A malformed payload is a FrameError naming the message type.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hsp_rdma.core.frames import PROTOCOL_VERSION, Channel, Frame, decode, encode
from hsp_rdma.core.gso import (
    Abort,
    AbortReason,
    Cancel,
    Digest,
    DigestAlgo,
    Done,
    GsoMode,
    Ready,
    Sealed,
    StartGso,
)
from hsp_rdma.errors import FrameError


@dataclass(frozen=True, slots=True)
class Hello:
    """Sent by each side when the gso channel connects: what the peer may RDMA-write into.

    ``serving`` and ``active_since`` double as the heart beat's role fields (PeerActive).
    """

    region_addr: int
    region_handle: int
    region_size: int
    marker_addr: int
    marker_handle: int
    serving: bool
    active_since: int
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Stripe:
    """Sent on the link, after Hello, by a node that stripes a push's copy across its two
    fabrics: on its other fabric (the one the link is not on) its image takes RDMA Writes
    with REGION_HANDLE (at Hello's region_addr), and FENCE_ADDR/FENCE_HANDLE is a word the
    peer may RDMA-Read there, the stripe's fence before the marker. Like Hello it belongs to
    the connection (no epoch, never fed to the machine)."""

    region_handle: int
    fence_addr: int
    fence_handle: int


GOODBYE_TEXT = 192  # bytes of UTF-8 reason a Goodbye carries (cut there, NUL-padded)


@dataclass(frozen=True, slots=True)
class Goodbye:
    """Sent by a node that ends the pair because the two can never switch over as they are
    (another protocol version, an image larger than the peer's region, two actives): the
    peer ends at once with REASON and TEXT, instead of waiting for a timeout to notice.
    Like Hello it belongs to the connection, not to a GSO: no epoch, never fed to the
    machine."""

    reason: AbortReason
    text: str


WireMessage = (StartGso | Ready | Sealed | Digest | Done | Abort | Cancel | Hello | Goodbye
               | Stripe)

# type number, payload struct, fields of the dataclass in payload order (epoch excluded).
LAYOUTS: dict[type, tuple[int, struct.Struct, tuple[str, ...]]] = {
    StartGso: (1, struct.Struct("<QHHB"), ("image_length", "digest_algo", "version", "mode")),
    Ready: (2, struct.Struct(""), ()),
    Done: (3, struct.Struct(""), ()),
    Abort: (4, struct.Struct("<H"), ("reason",)),
    Cancel: (5, struct.Struct("<H"), ("reason",)),
    Hello: (6, struct.Struct("<QIQQIBQH"), ("region_addr", "region_handle", "region_size",
                                            "marker_addr", "marker_handle", "serving",
                                            "active_since", "version")),
    # Sealed no longer carries the digest (it follows in Digest, type 9): a peer that sends
    # the old 54-byte Sealed is refused by its payload length.
    Sealed: (7, struct.Struct("<QIQH"), ("address", "handle", "image_length", "digest_algo")),
    Goodbye: (8, struct.Struct(f"<H{GOODBYE_TEXT}s"), ("reason", "text")),
    Digest: (9, struct.Struct("<32s"), ("digest",)),
    Stripe: (10, struct.Struct("<IQI"), ("region_handle", "fence_addr", "fence_handle")),
}
_BY_TYPE = {num: (cls, st, fields) for cls, (num, st, fields) in LAYOUTS.items()}
_CONVERT = {"digest_algo": DigestAlgo, "reason": AbortReason, "serving": bool,
            "mode": GsoMode}
_BYTES = frozenset({"digest"})  # packed as they are; text as UTF-8; everything else an int
_TEXT = frozenset({"text"})


def _pack_field(msg: WireMessage, name: str):
    value = getattr(msg, name)
    if name in _BYTES:
        return value
    if name in _TEXT:
        # "replace": a reason may carry a lone surrogate (an OS message about a file name
        # decoded with surrogateescape); a Goodbye must go out anyway
        return value.encode("utf-8", "replace")[:GOODBYE_TEXT]
    return int(value)


def encode_message(msg: WireMessage, sequence: int) -> bytes:
    """The frame bytes of MSG (channel gso)."""
    num, st, fields = LAYOUTS[type(msg)]
    epoch = getattr(msg, "epoch", 0)
    payload = st.pack(*(_pack_field(msg, f) for f in fields))
    return encode(Frame(Channel.GSO, num, epoch, sequence, payload))


def decode_message(buf: bytes | bytearray | memoryview) -> tuple[WireMessage, int]:
    """(message, sequence) from frame bytes; FrameError for anything malformed."""
    frame = decode(buf)
    if frame.channel is not Channel.GSO:
        raise FrameError(f"frame of channel {frame.channel.name} on the gso channel")
    try:
        cls, st, fields = _BY_TYPE[frame.type]
    except KeyError:
        raise FrameError(f"unknown gso message type {frame.type}") from None
    if len(frame.payload) != st.size:
        raise FrameError(f"{cls.__name__}: payload of {len(frame.payload)} bytes, "
                         f"expected {st.size}")
    values = dict(zip(fields, st.unpack(frame.payload)))
    try:
        for name, conv in _CONVERT.items():
            if name in values:
                values[name] = conv(values[name])
    except ValueError as exc:
        raise FrameError(f"{cls.__name__}: {exc}") from None
    for name in _TEXT & values.keys():
        values[name] = values[name].rstrip(b"\0").decode("utf-8", errors="replace")
    if cls not in (Hello, Goodbye, Stripe):
        values["epoch"] = frame.epoch
    return cls(**values), frame.sequence
