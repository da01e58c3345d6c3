"""The SyncSource's answer to a SyncTarget's "full" request (``FailoverEngine._full``): one full
resync per target process; that target's later full requests go on from the bitmaps; the same
request asked twice (kept for the next StartResync, then taken) is answered the same."""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from hsp_rdma.ha.failover_engine import FailoverEngine


def engine() -> SimpleNamespace:
    return SimpleNamespace(_full_for=("", ""))


def full(eng, rid: str, asked: bool = True) -> bool:
    return FailoverEngine._full(eng, {"resync": "request", "full": asked, "id": rid})


def test_one_full_resync_per_target_process() -> None:
    eng = engine()
    assert full(eng, "b-1f-1") is True
    assert full(eng, "b-1f-1") is True  # the same request, taken again: the same answer
    assert full(eng, "b-1f-2") is False  # the same process asks again: from the bitmaps
    assert full(eng, "b-2e-1") is True  # restarted: a new incarnation, a new full resync
    assert full(eng, "b-2e-2", asked=False) is False
    assert full(eng, "a-b-c-1f-3") is True  # a node name with dashes: its incarnation decides
    assert full(eng, "a-b-c-1f-4") is False


def test_a_request_without_an_id_is_always_full() -> None:
    eng = engine()
    assert full(eng, "") is True and full(eng, "") is True


@given(st.lists(st.tuples(st.sampled_from(["b-1", "b-2", "c-1"]), st.integers(1, 4),
                          st.booleans()), max_size=30))
def test_never_full_unless_asked_and_one_request_per_process(asks) -> None:
    """Whatever the order: full only when asked; between two fulls of one process (no other
    process's full between) the request is the same one."""
    eng = engine()
    last = None  # (who, rid) of the last request answered full
    for who, n, asked in asks:
        rid = f"{who}-{n}"
        if not full(eng, rid, asked):
            continue
        assert asked
        if last is not None and last[0] == who:
            assert last[1] == rid, (last, rid)
        last = (who, rid)
