"""The AUDIT transaction body (core/ifa.py encode_audit / decode_tx): round trip, and every
truncated, extended or forged body refused with a TxError that says what is wrong."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsp_rdma.core import ifa
from hsp_rdma.core.frames import crc32c

PMEM = 1 << 20
DISKS = (1 << 16, 10_000)  # the second not a multiple of the chunk


def test_round_trip_pmem_and_disk() -> None:
    body = ifa.encode_audit(9, ifa.AUDIT_PMEM, 4096, 3, [1, 2, 0xFFFF_FFFF])
    kind, [req] = ifa.decode_tx(body, PMEM, DISKS)
    assert kind is ifa.TxKind.AUDIT
    assert req == ifa.AuditRequest(9, ifa.AUDIT_PMEM, 4096, 3, (1, 2, 0xFFFF_FFFF))
    # disk 1 has 10 000 bytes: chunks 0, 1 and the short chunk 2
    kind, [req] = ifa.decode_tx(ifa.encode_audit(1, 1, 4096, 0, [5, 6, 7]), PMEM, DISKS)
    assert (req.target, req.first, req.crcs) == (1, 0, (5, 6, 7))


def test_digests_are_crc32c_per_chunk_the_last_shorter() -> None:
    data = bytes(range(256)) * 40  # 10 240 bytes
    assert ifa.audit_digests(data, 4096) == [crc32c(data[:4096]), crc32c(data[4096:8192]),
                                             crc32c(data[8192:])]
    assert ifa.audit_digests(b"", 4096) == []


@pytest.mark.parametrize(("body_args", "words"), [
    ((1, 2, 4096, 0, [1]), "disk 2, which does not exist"),
    ((1, 1, 4096, 3, [1]), "go beyond disk 1 (10000 bytes)"),
    ((1, 0, 4096, 15, [1, 2]), "chunks 15..16 of 4096 bytes go beyond disk 0"),
    ((1, ifa.AUDIT_PMEM, 4096, 256, [1]), "go beyond P.mem"),
])
def test_out_of_region_is_refused(body_args, words) -> None:
    with pytest.raises(ifa.TxError, match=words.replace(".", r"\.").replace("(", r"\(")
                       .replace(")", r"\)")):
        ifa.decode_tx(ifa.encode_audit(*body_args), PMEM, DISKS)


def test_encode_refuses_what_decode_would() -> None:
    with pytest.raises(ValueError, match="1 to 65536 digests, not 0"):
        ifa.encode_audit(1, 0, 4096, 0, [])
    with pytest.raises(ValueError, match="chunk is 1 to"):
        ifa.encode_audit(1, 0, 0, 0, [1])


def forged(count: int, audit_id: int = 1, target: int = ifa.AUDIT_PMEM, chunk: int = 4096,
           first: int = 0, crcs: int | None = None) -> bytes:
    n = count if crcs is None else crcs
    return (struct.pack("<BI", ifa.TxKind.AUDIT, count) +
            struct.pack("<QHIQ", audit_id, target, chunk, first) + bytes(4 * n))


def test_forged_bodies_are_refused_clearly() -> None:
    with pytest.raises(ifa.TxError, match="carries 0 digests"):
        ifa.decode_tx(forged(0), PMEM, DISKS)
    with pytest.raises(ifa.TxError, match="8 bytes of digests, 12 announced"):
        ifa.decode_tx(forged(3, crcs=2), PMEM, DISKS)
    with pytest.raises(ifa.TxError, match="16 bytes of digests, 12 announced"):
        ifa.decode_tx(forged(3, crcs=4), PMEM, DISKS)
    with pytest.raises(ifa.TxError, match="a chunk of 0 bytes"):
        ifa.decode_tx(forged(1, chunk=0), PMEM, DISKS)
    with pytest.raises(ifa.TxError, match="a chunk of 16777217 bytes"):
        ifa.decode_tx(forged(1, chunk=(1 << 24) + 1), 1 << 40, DISKS)
    with pytest.raises(ifa.TxError, match="carries 65537 digests"):
        ifa.decode_tx(forged(65537, crcs=0), PMEM, DISKS)
    with pytest.raises(ifa.TxError, match="truncated audit header"):
        ifa.decode_tx(forged(1)[:10], PMEM, DISKS)
    with pytest.raises(ifa.TxError, match="go beyond P.mem"):  # first * chunk overflowing
        ifa.decode_tx(forged(1, first=(1 << 64) - 1), PMEM, DISKS)


@settings(max_examples=300, deadline=None)
@given(audit_id=st.integers(0, (1 << 64) - 1),
       target=st.sampled_from([ifa.AUDIT_PMEM, 0, 1]),
       chunk=st.sampled_from([512, 4096, 65536]),
       crcs=st.lists(st.integers(0, 0xFFFF_FFFF), min_size=1, max_size=40),
       first=st.integers(0, 300))
def test_round_trip_or_a_clear_refusal(audit_id, target, chunk, crcs, first) -> None:
    body = ifa.encode_audit(audit_id, target, chunk, first, crcs)
    size = PMEM if target == ifa.AUDIT_PMEM else DISKS[target]
    if (first + len(crcs) - 1) * chunk >= size:
        with pytest.raises(ifa.TxError, match="go beyond"):
            ifa.decode_tx(body, PMEM, DISKS)
        return
    _kind, [req] = ifa.decode_tx(body, PMEM, DISKS)
    assert req == ifa.AuditRequest(audit_id, target, chunk, first, tuple(crcs))
    for cut in range(len(body)):  # every truncation is refused, never taken as shorter
        with pytest.raises(ifa.TxError):
            ifa.decode_tx(body[:cut], PMEM, DISKS)
    with pytest.raises(ifa.TxError):
        ifa.decode_tx(body + b"\0", PMEM, DISKS)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_garbage_after_the_kind_is_refused_or_well_formed(tail) -> None:
    body = struct.pack("<BI", ifa.TxKind.AUDIT, len(tail) // 4) + tail
    try:
        kind, [req] = ifa.decode_tx(body, PMEM, DISKS)
    except ifa.TxError:
        return
    assert kind is ifa.TxKind.AUDIT and len(req.crcs) >= 1
