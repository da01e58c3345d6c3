"""The shipped soft profile: it loads, and a soft NIC's name picks it (the GSO engine's way)."""

from __future__ import annotations

from hsp_rdma.core.profiles import (
    PACKAGED_PROFILE_DIR,
    PollMode,
    Transport,
    load_profiles,
    parse_profile,
    pick_profile,
)


def test_soft_profile_loads_and_picks_soft_devices():
    profiles = load_profiles(PACKAGED_PROFILE_DIR)
    soft = pick_profile("soft:a", profiles)
    assert (soft.name, soft.transport, soft.rdma_read) == ("soft", Transport.SOFT_TCP, True)
    assert soft.completion_wait == "event" and soft.marker_poll.mode is PollMode.SLEEP
    assert pick_profile("soft:standby-1", profiles) is soft
    # verbs devices keep theirs: the globs stay disjoint
    assert pick_profile("rxe0", profiles).name == "rxe"
    assert pick_profile("siw0", profiles).name == "siw"


def test_soft_transport_is_accepted_in_a_profile_file():
    text = (PACKAGED_PROFILE_DIR / "soft.toml").read_text()
    assert parse_profile(text.replace('name = "soft"', 'name = "mine"')).transport \
        is Transport.SOFT_TCP
