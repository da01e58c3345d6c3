"""GSO messages survive the wire, and anything malformed is a FrameError, never a crash."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsp_rdma.core.frames import Channel, Frame, encode
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
from hsp_rdma.core.gso_wire import GOODBYE_TEXT, Goodbye, Hello, decode_message, encode_message
from hsp_rdma.errors import FrameError

epochs = st.integers(1, 0xFFFF_FFFF)
messages = st.one_of(
    st.builds(StartGso, epoch=epochs, image_length=st.integers(0, 1 << 40),
              digest_algo=st.sampled_from(DigestAlgo), mode=st.sampled_from(GsoMode)),
    st.builds(Ready, epoch=epochs),
    st.builds(Sealed, epoch=epochs, address=st.integers(0, (1 << 64) - 1),
              handle=st.integers(0, (1 << 32) - 1), image_length=st.integers(0, 1 << 40),
              digest_algo=st.sampled_from(DigestAlgo)),
    st.builds(Digest, epoch=epochs, digest=st.binary(min_size=32, max_size=32)),
    st.builds(Done, epoch=epochs),
    st.builds(Abort, epoch=epochs, reason=st.sampled_from(AbortReason)),
    st.builds(Cancel, epoch=epochs, reason=st.sampled_from(AbortReason)),
    st.builds(Hello, region_addr=st.integers(0, (1 << 64) - 1),
              region_handle=st.integers(0, (1 << 32) - 1), region_size=st.integers(0, 1 << 40),
              marker_addr=st.integers(0, (1 << 64) - 1),
              marker_handle=st.integers(0, (1 << 32) - 1), serving=st.booleans(),
              active_since=st.integers(0, 1 << 48)),
    # at most 4 UTF-8 bytes a character: 48 of them always fit (longer text is cut)
    st.builds(Goodbye, reason=st.sampled_from(AbortReason),
              text=st.text(st.characters(exclude_characters="\0",
                                          exclude_categories=("Cs",)), max_size=48)),
)


@given(messages, st.integers(0, (1 << 64) - 1))
def test_round_trip(msg, seq) -> None:
    assert decode_message(encode_message(msg, seq)) == (msg, seq)


@given(messages, st.data())
def test_truncated_is_frame_error(msg, data) -> None:
    wire = encode_message(msg, 1)
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(FrameError):
        decode_message(wire[:cut])


def test_forged_frames_are_named() -> None:
    with pytest.raises(FrameError, match="unknown gso message type 99"):
        decode_message(encode(Frame(Channel.GSO, 99, 1, 1, b"")))
    with pytest.raises(FrameError, match="Ready: payload of 3 bytes"):
        decode_message(encode(Frame(Channel.GSO, 2, 1, 1, b"abc")))
    with pytest.raises(FrameError, match="channel PMEM on the gso channel"):
        decode_message(encode(Frame(Channel.PMEM, 2, 1, 1, b"")))
    with pytest.raises(FrameError, match="Abort"):
        decode_message(encode(Frame(Channel.GSO, 4, 1, 1, (999).to_bytes(2, "little"))))


def test_start_gso_with_digest_value_2_is_crc32c() -> None:
    """Digest value 2 is CRC32C again (the compiled CRC-32C): a Start-GSO carrying it decodes;
    an unknown value is still refused at decode, before anything stops."""
    import struct

    payload = struct.pack("<QHHB", 4096, 2, 1, 1)
    msg, _seq = decode_message(encode(Frame(Channel.GSO, 1, 1, 1, payload)))
    assert msg.digest_algo is DigestAlgo.CRC32C
    payload = struct.pack("<QHHB", 4096, 4, 1, 1)
    with pytest.raises(FrameError, match="StartGso: 4 is not a valid DigestAlgo"):
        decode_message(encode(Frame(Channel.GSO, 1, 1, 1, payload)))


def test_start_gso_with_an_unknown_mode_is_refused() -> None:
    import struct

    payload = struct.pack("<QHHB", 4096, 3, 1, 9)
    with pytest.raises(FrameError, match="StartGso: 9 is not a valid GsoMode"):
        decode_message(encode(Frame(Channel.GSO, 1, 1, 1, payload)))


def test_goodbye_text_is_cut_to_its_room_and_never_fails_to_decode() -> None:
    # a lone surrogate (an OS message about an undecodable file name) goes out as '?'
    odd, _seq = decode_message(encode_message(Goodbye(AbortReason.READY_TIMEOUT,
                                                      "bad \udcff name"), 1))
    assert odd.text == "bad ? name"
    long = Goodbye(AbortReason.IMAGE_TOO_LARGE, "é" * GOODBYE_TEXT)  # 2 bytes a character
    got, _seq = decode_message(encode_message(long, 7))
    assert got.reason is AbortReason.IMAGE_TOO_LARGE and got.text == "é" * (GOODBYE_TEXT // 2)
    cut, _seq = decode_message(encode_message(Goodbye(AbortReason.VERSION_MISMATCH,
                                                      "x" + "é" * GOODBYE_TEXT), 8))
    assert cut.text.startswith("x" + "é" * 90)  # a character cut in two decodes as U+FFFD


def test_digest_type_numbers_are_kept() -> None:
    # Old types keep their numbers; Digest is new (9); the old Sealed with a digest (54 bytes)
    # is refused by its length, never read as the new one.
    from hsp_rdma.core.gso_wire import LAYOUTS
    assert {cls.__name__: num for cls, (num, _st, _f) in LAYOUTS.items()} == {
        "StartGso": 1, "Ready": 2, "Done": 3, "Abort": 4, "Cancel": 5, "Hello": 6,
        "Sealed": 7, "Goodbye": 8, "Digest": 9, "Stripe": 10}
    old_sealed = encode(Frame(Channel.GSO, 7, 3, 1, bytes(54)))
    with pytest.raises(FrameError, match="Sealed: payload of 54 bytes, expected 22"):
        decode_message(old_sealed)
    with pytest.raises(FrameError, match="Digest: payload of 4 bytes, expected 32"):
        decode_message(encode(Frame(Channel.GSO, 9, 3, 1, bytes(4))))
    assert decode_message(encode_message(Digest(3, bytes(range(32))), 5)) == (
        Digest(3, bytes(range(32))), 5)


def test_stripe_round_trips_without_an_epoch() -> None:
    from hsp_rdma.core.gso_wire import Stripe
    msg = Stripe(region_handle=0xDEADBEEF, fence_addr=0x7F00_0000_1000, fence_handle=7)
    assert decode_message(encode_message(msg, 4)) == (msg, 4)
    with pytest.raises(FrameError, match="Stripe: payload of 3 bytes, expected 16"):
        decode_message(encode(Frame(Channel.GSO, 10, 0, 1, bytes(3))))
