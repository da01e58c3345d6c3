"""Hardware profiles: the shipped files load, bad files are refused with file, line and field."""

from __future__ import annotations

import pytest

from hsp_rdma.core.profiles import (
    FIELDS,
    PROFILE_DIR,
    GidRule,
    MarkerPoll,
    PollMode,
    Transport,
    check_unique,
    load_profile,
    load_profiles,
    parse_profile,
    pick_profile,
)
from hsp_rdma.errors import ConfigError

GOOD = """\
name = "test"
match = "tst*"
transport = "roce_v2"
mtu = 1024
gid_index_rule = 1
max_inline = 64
chunk_size = 65536
queue_depth = 16
rdma_read = true
marker_poll = "sleep_us:50"
"""


def with_field(key: str, value: str) -> str:
    lines = [line for line in GOOD.splitlines() if not line.startswith(f"{key} =")]
    return "\n".join(lines + [f"{key} = {value}"]) + "\n"


def test_shipped_profiles_load_and_pick_by_device():
    profiles = load_profiles(PROFILE_DIR)
    assert {p.name for p in profiles} >= {"rxe", "siw", "mlx5"}
    rxe = pick_profile("rxe0", profiles)
    assert (rxe.transport, rxe.gid_index_rule, rxe.rdma_read) == (
        Transport.ROCE_V2, GidRule.ROCE_V2_IPV4, True)
    assert rxe.marker_poll.mode is not PollMode.BUSY  # one vCPU: LAB.md
    siw = pick_profile("siw_eth0", profiles)
    assert (siw.transport, siw.gid_index(()), siw.rdma_read) == (Transport.IWARP, 0, True)
    mlx5 = pick_profile("mlx5_1", profiles)
    assert (mlx5.max_inline, mlx5.mtu) == (220, 4096)
    # measured in the lab: a busy writer starves siw's kernel threads
    assert (rxe.completion_wait, siw.completion_wait, mlx5.completion_wait) == (
        "busy", "event", "busy")


def test_no_profile_for_device_names_the_known_globs():
    with pytest.raises(ConfigError, match=r"no hardware profile matches device 'bnxt_re0'.*rxe\*"):
        pick_profile("bnxt_re0", load_profiles(PROFILE_DIR))


def test_two_matching_profiles_are_refused():
    a = parse_profile(GOOD)
    b = parse_profile(with_field("name", '"other"'))
    with pytest.raises(ConfigError, match="matches several profiles"):
        pick_profile("tst0", [a, b])
    with pytest.raises(ConfigError, match="also used by"):
        check_unique([a, a])


def test_good_text_parses():
    p = parse_profile(GOOD, "x.toml")
    assert p.match == ("tst*",) and p.gid_index_rule == 1
    assert p.marker_poll == MarkerPoll(PollMode.SLEEP, 50)
    assert p.notes == "" and p.completion_wait == "busy"  # both optional


@pytest.mark.parametrize("key, value", [
    ("completion_wait", '"spin"'),
    ("mtu", "1500"),  # not an IB MTU
    ("mtu", '"1024"'),  # wrong type
    ("transport", '"tcp"'),
    ("gid_index_rule", '"first"'),
    ("gid_index_rule", "256"),
    ("max_inline", "-1"),
    ("max_inline", "true"),  # a bool is not an integer here
    ("chunk_size", "1024"),
    ("queue_depth", "0"),
    ("rdma_read", '"yes"'),
    ("marker_poll", '"sleep_us:0"'),
    ("marker_poll", '"spin"'),
    ("match", "[]"),
    ("name", '"Bad Name"'),
])
def test_bad_value_names_field_line_and_allowed_values(key, value):
    text = with_field(key, value)
    with pytest.raises(ConfigError) as err:
        parse_profile(text, "bad.toml")
    line = text.splitlines().index(f"{key} = {value}") + 1
    assert err.value.path == "bad.toml" and err.value.line == line
    assert f"field {key}" in str(err.value) and "should be" in str(err.value)


def test_unknown_field_is_refused_with_its_line():
    with pytest.raises(ConfigError, match="unknown field 'max_inlne'") as err:
        parse_profile(GOOD + "max_inlne = 3\n", "typo.toml")
    assert err.value.line == len(GOOD.splitlines()) + 1


def test_missing_field_and_bad_toml():
    with pytest.raises(ConfigError, match="missing field.*queue_depth"):
        parse_profile("\n".join(line for line in GOOD.splitlines()
                                if not line.startswith("queue_depth")))
    with pytest.raises(ConfigError, match="not valid TOML") as err:
        parse_profile(GOOD + "mtu = = 3\n", "broken.toml")
    assert err.value.line == len(GOOD.splitlines()) + 1


def test_every_field_is_documented_with_its_allowed_values():
    assert all(allowed for _, allowed in FIELDS.values())


def test_roce_v2_gid_rule_finds_the_ipv4_gid():
    rxe = pick_profile("rxe0", load_profiles(PROFILE_DIR))
    gids = [("fe80:0000:0000:0000:5054:00ff:fe12:3456", "IB/RoCE v1"),
            ("fe80:0000:0000:0000:5054:00ff:fe12:3456", "RoCE v2"),
            ("0000:0000:0000:0000:0000:ffff:0a4d:0001", "IB/RoCE v1"),
            ("0000:0000:0000:0000:0000:ffff:0a4d:0001", "RoCE v2")]
    assert rxe.gid_index(gids) == 3
    with pytest.raises(ConfigError, match="no RoCE v2 GID of an IPv4 address"):
        rxe.gid_index(gids[:3])


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read profile"):
        load_profile(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="no hardware profiles"):
        load_profiles(tmp_path)
    (tmp_path / "a.toml").write_text(with_field("mtu", "3"))
    with pytest.raises(ConfigError, match=r"a\.toml:10: field mtu = 3: should be one of 256"):
        load_profiles(tmp_path)
