"""Interface A frames: round trips, and every damaged frame refused with FrameError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsp_rdma.core.frames import (
    HEADER,
    HEADER_FIELDS,
    HEADER_FORMAT,
    HEADER_SIZE,
    MAGIC,
    MAX_EPOCH,
    MAX_PAYLOAD,
    MAX_SEQUENCE,
    PROTOCOL_VERSION,
    Channel,
    Frame,
    crc32c,
    decode,
    encode,
)
from hsp_rdma.errors import FrameError, HspError, ProtocolError, VersionMismatch

frames = st.builds(
    Frame,
    channel=st.sampled_from(Channel),
    type=st.integers(0, 0xFFFF),
    epoch=st.integers(0, MAX_EPOCH),
    sequence=st.integers(0, MAX_SEQUENCE),
    payload=st.binary(max_size=64),
)


def test_crc32c_known_values():
    # RFC 3720 appendix B.4 check values, and the standard "123456789" check.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(b"6789", crc32c(b"12345")) == crc32c(b"123456789")


def test_header_declared_once():
    assert len(HEADER_FIELDS) == len(struct.Struct(HEADER_FORMAT).unpack(bytes(HEADER_SIZE)))
    assert set(Channel.__members__) == {"HEALTH", "OAM", "PMEM", "DISK", "CONFIG", "GSO"}


@given(frames)
def test_round_trip(frame):
    assert decode(encode(frame)) == frame


@settings(max_examples=30)
@given(frames)
def test_every_truncation_is_refused(frame):
    wire = encode(frame)
    for cut in range(len(wire)):
        with pytest.raises(FrameError, match="truncated"):
            decode(wire[:cut])


@settings(max_examples=30)
@given(frames)
def test_every_single_bit_flip_is_refused(frame):
    wire = encode(frame)
    for bit in range(len(wire) * 8):
        damaged = bytearray(wire)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(FrameError):
            decode(bytes(damaged))


def test_trailing_bytes_are_a_bad_length():
    with pytest.raises(FrameError, match="bad length"):
        decode(encode(Frame(Channel.GSO, 1, 1, 1, b"abc")) + b"x")


def test_oversized_length_is_refused():
    wire = bytearray(encode(Frame(Channel.PMEM, 1, 1, 1)))
    struct.pack_into("<I", wire, HEADER_SIZE - 8, MAX_PAYLOAD + 1)
    with pytest.raises(FrameError, match="bad length"):
        decode(bytes(wire))


def test_bad_magic():
    with pytest.raises(FrameError, match="bad magic"):
        decode(b"\0\0" + encode(Frame(Channel.OAM, 1, 1, 1))[2:])


def _wire_with_version(version: int, payload: bytes = b"") -> bytes:
    """A frame from a peer speaking ``version``, CRC32C computed the way ``encode`` does."""
    fields = {"magic": MAGIC, "version": version, "channel": int(Channel.HEALTH), "type": 1,
              "epoch": 1, "sequence": 1, "length": len(payload), "crc32c": 0}
    header = HEADER.pack(*(fields[name] for name in HEADER_FIELDS))
    crc = crc32c(payload, crc32c(header))
    return header[:HEADER_SIZE - 4] + crc.to_bytes(4, "little") + payload


def test_other_protocol_version_says_both_versions():
    wire = _wire_with_version(PROTOCOL_VERSION + 1)
    with pytest.raises(VersionMismatch) as err:
        decode(wire)
    assert f"peer speaks protocol version {PROTOCOL_VERSION + 1}, we speak {PROTOCOL_VERSION}" \
        in str(err.value)
    assert (err.value.theirs, err.value.ours) == (PROTOCOL_VERSION + 1, PROTOCOL_VERSION)
    assert isinstance(err.value, FrameError) and isinstance(err.value, ProtocolError)
    assert isinstance(err.value, HspError)


@pytest.mark.parametrize("version", [0, PROTOCOL_VERSION + 1, 0xFF])
def test_intact_frame_of_another_version_is_a_version_mismatch(version):
    with pytest.raises(VersionMismatch):
        decode(_wire_with_version(version, b"payload"))


@pytest.mark.parametrize("bit", range(8))
def test_flipped_bit_in_version_byte_is_corruption_not_a_version(bit):
    wire = bytearray(encode(Frame(Channel.HEALTH, 1, 1, 1, b"payload")))
    wire[struct.calcsize("<H")] ^= 1 << bit  # the version byte follows the 2-byte magic
    with pytest.raises(FrameError, match="bad CRC32C") as err:
        decode(bytes(wire))
    assert not isinstance(err.value, VersionMismatch)


def test_unknown_channel_with_good_crc():
    wire = bytearray(encode(Frame(Channel.HEALTH, 1, 1, 1)))
    wire[3] = 99
    wire[HEADER_SIZE - 4:HEADER_SIZE] = b"\0\0\0\0"
    wire[HEADER_SIZE - 4:HEADER_SIZE] = crc32c(bytes(wire)).to_bytes(4, "little")
    with pytest.raises(FrameError, match="unknown channel 99"):
        decode(bytes(wire))


@pytest.mark.parametrize("field, value", [("epoch", MAX_EPOCH + 1), ("sequence", -1),
                                          ("type", 0x10000)])
def test_frame_fields_out_of_range(field, value):
    kwargs = {"channel": Channel.GSO, "type": 1, "epoch": 1, "sequence": 1, field: value}
    with pytest.raises(ValueError, match=f"{field} should be between"):
        Frame(**kwargs)
