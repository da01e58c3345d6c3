"""Hardware profiles: the shipped files load, bad files are refused with file, line and field."""

from __future__ import annotations

import dataclasses
import pathlib
import re
import tomllib

import pytest

import hsp_rdma
from hsp_rdma.core import profiles as profiles_module
from hsp_rdma.core.profiles import (
    FIELDS,
    PACKAGED_PROFILE_DIR,
    GidRule,
    MarkerPoll,
    PollMode,
    Profile,
    Transport,
    check_unique,
    load_profile,
    load_profiles,
    parse_profile,
    pick_profile,
    profile_dirs,
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
    profiles = load_profiles(PACKAGED_PROFILE_DIR)
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
    # measured in a lab guest and on the host: the compiled CRC-32C beats zlib's CRC-32
    soft = pick_profile("soft:a", profiles)
    assert (rxe.digest, siw.digest, soft.digest, mlx5.digest) == (
        "crc32c", "crc32c", "crc32c", "crc32")
    # measured in the lab: rxe writes 1 MiB at once faster, reads 64 KiB faster; siw writes
    # 256 KiB faster
    assert (rxe.chunk_size, rxe.read_chunk, siw.chunk_size, siw.read_chunk) == (
        1 << 20, 64 << 10, 256 << 10, 64 << 10)


def test_no_profile_for_device_names_the_known_globs():
    with pytest.raises(ConfigError, match=r"no hardware profile matches device 'bnxt_re0'.*rxe\*"):
        pick_profile("bnxt_re0", load_profiles(PACKAGED_PROFILE_DIR))


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
    assert p.digest == "crc32"  # optional too
    assert (p.read_chunk_size, p.read_chunk) == (0, 65536)  # a pull reads chunk_size too
    p = parse_profile(GOOD + "read_chunk_size = 8192\n")
    assert (p.chunk_size, p.read_chunk) == (65536, 8192)


@pytest.mark.parametrize("key, value", [
    ("completion_wait", '"spin"'),
    ("digest", '"md5"'),
    ("mtu", "1500"),  # not an IB MTU
    ("mtu", '"1024"'),  # wrong type
    ("transport", '"tcp"'),
    ("gid_index_rule", '"first"'),
    ("gid_index_rule", "256"),
    ("max_inline", "-1"),
    ("max_inline", "true"),  # a bool is not an integer here
    ("chunk_size", "1024"),
    ("read_chunk_size", "1024"),
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


# Each field's good value (GOOD's, or the dataclass default for the optional ones).
GOOD_VALUES = tomllib.loads(GOOD) | {
    f.name: f.default for f in dataclasses.fields(Profile) if f.name in FIELDS
    and f.default is not dataclasses.MISSING}


@pytest.mark.parametrize("key", FIELDS)
def test_wrong_type_in_every_field_names_it_and_its_allowed_values(key):
    # a string where the field takes a number or boolean, a number where it takes a string
    wrong = "7" if not isinstance(GOOD_VALUES[key], str) else 7
    value = f'"{wrong}"' if isinstance(wrong, str) else str(wrong)
    text = with_field(key, value)
    with pytest.raises(ConfigError) as err:
        parse_profile(text, "typed.toml")
    assert f"field {key} = {wrong!r}: should be {FIELDS[key][1]}" in str(err.value)
    assert err.value.line == text.splitlines().index(f"{key} = {value}") + 1


ROCE_GIDS = [("fe80:0000:0000:0000:5054:00ff:fe12:3456", "IB/RoCE v1"),
             ("fe80:0000:0000:0000:5054:00ff:fe12:3456", "RoCE v2"),
             ("0000:0000:0000:0000:0000:ffff:0a4d:0001", "IB/RoCE v1"),
             ("0000:0000:0000:0000:0000:ffff:0a4d:0001", "RoCE v2")]


def test_roce_v2_gid_rule_finds_the_ipv4_gid():
    rxe = pick_profile("rxe0", load_profiles(PACKAGED_PROFILE_DIR))
    assert rxe.gid_index(ROCE_GIDS) == 3
    with pytest.raises(ConfigError, match="no RoCE v2 GID of an IPv4 address"):
        rxe.gid_index(ROCE_GIDS[:3])


def test_mlx5_gid_follows_the_link_layer():
    mlx5 = pick_profile("mlx5_0", load_profiles(PACKAGED_PROFILE_DIR))
    assert mlx5.gid_index_rule is GidRule.BY_LINK_LAYER
    # Ethernet (RoCE v2): the RoCE v2 GID of the IPv4 address, as before
    assert mlx5.gid_index(ROCE_GIDS) == mlx5.gid_index(ROCE_GIDS, "Ethernet") == 3
    assert mlx5.gid_index(ROCE_GIDS, "ethernet") == 3
    with pytest.raises(ConfigError, match="no RoCE v2 GID of an IPv4 address"):
        mlx5.gid_index(ROCE_GIDS[:3], "Ethernet")
    # InfiniBand: index 0, whatever the table holds (an IB GID is subnet prefix + GUID)
    ib_gids = [("fe80:0000:0000:0000:0c42:a103:0012:3456", "IB/RoCE v1")]
    for layer in ("InfiniBand", "infiniband", "IB", "ib"):
        assert mlx5.gid_index(ib_gids, layer) == 0
    with pytest.raises(ConfigError, match="link layer 'Unspecified'"):
        mlx5.gid_index(ib_gids, "Unspecified")


def test_by_link_layer_is_an_allowed_rule():
    p = parse_profile(with_field("gid_index_rule", '"by_link_layer"'))
    assert p.gid_index_rule is GidRule.BY_LINK_LAYER
    assert '"by_link_layer"' in FIELDS["gid_index_rule"][1]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read profile"):
        load_profile(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="no hardware profiles"):
        load_profiles(tmp_path)
    (tmp_path / "a.toml").write_text(with_field("mtu", "3"))
    with pytest.raises(ConfigError, match=r"a\.toml:10: field mtu = 3: should be one of 256"):
        load_profiles(tmp_path)


# --- where profiles come from -----------------------------------------------------------

@pytest.fixture
def search(monkeypatch, tmp_path):
    """A clean search path: no HSP_PROFILES, no /etc directory; packaged dir unchanged."""
    monkeypatch.delenv("HSP_PROFILES", raising=False)
    monkeypatch.setattr(profiles_module, "SYSTEM_PROFILE_DIR", tmp_path / "etc-absent")
    return monkeypatch


def profile_dir(path, **named_texts):
    path.mkdir(parents=True, exist_ok=True)
    for file_name, text in named_texts.items():
        (path / f"{file_name}.toml").write_text(text)
    return path


def rxe_override(max_inline: int) -> str:
    text = (PACKAGED_PROFILE_DIR / "rxe.toml").read_text()
    return text.replace("max_inline = 512", f"max_inline = {max_inline}")


def test_packaged_profiles_are_in_the_package():
    assert PACKAGED_PROFILE_DIR == pathlib.Path(hsp_rdma.__file__).resolve().parent / "hw-profiles"
    assert {p.name for p in load_profiles(PACKAGED_PROFILE_DIR)} >= {"rxe", "siw", "mlx5"}


def test_default_search_is_the_packaged_profiles(search):
    assert profile_dirs() == [PACKAGED_PROFILE_DIR]
    assert {p.name for p in load_profiles()} == {
        p.name for p in load_profiles(PACKAGED_PROFILE_DIR)}


def test_user_dir_overrides_a_packaged_profile_by_name(search, tmp_path):
    user = profile_dir(tmp_path / "mine", my_rxe=rxe_override(128))
    assert profile_dirs(user) == [user, PACKAGED_PROFILE_DIR]
    profiles = load_profiles(user_dir=user)
    assert [p.name for p in profiles].count("rxe") == 1
    rxe = pick_profile("rxe0", profiles)
    assert (rxe.max_inline, rxe.path) == (128, str(user / "my_rxe.toml"))
    assert pick_profile("siw0", profiles).path.startswith(str(PACKAGED_PROFILE_DIR))


def test_hsp_profiles_dirs_in_order_after_the_user_dir(search, tmp_path):
    first = profile_dir(tmp_path / "first", rxe=rxe_override(100))
    second = profile_dir(tmp_path / "second", rxe=rxe_override(200),
                         extra=with_field("name", '"extra"'))
    etc = profile_dir(tmp_path / "etc", rxe=rxe_override(300))
    search.setattr(profiles_module, "SYSTEM_PROFILE_DIR", etc)
    search.setenv("HSP_PROFILES", f"{first}:{second}")
    assert profile_dirs() == [first, second, etc, PACKAGED_PROFILE_DIR]
    profiles = load_profiles()
    assert pick_profile("rxe0", profiles).max_inline == 100
    assert pick_profile("tst0", profiles).path == str(second / "extra.toml")
    user = profile_dir(tmp_path / "user", rxe=rxe_override(50))
    assert profile_dirs(user)[:2] == [user, first]
    assert pick_profile("rxe0", load_profiles(user_dir=user)).max_inline == 50
    search.setenv("HSP_PROFILES", f"{second}:{first}")
    assert pick_profile("rxe0", load_profiles()).max_inline == 200


def test_missing_system_dir_is_skipped_but_a_missing_given_dir_is_an_error(search, tmp_path):
    assert profile_dirs() == [PACKAGED_PROFILE_DIR]  # the fixture's /etc dir does not exist
    absent = tmp_path / "no-such-dir"
    with pytest.raises(ConfigError, match="--profiles.*not an existing directory") as err:
        load_profiles(user_dir=absent)
    assert err.value.path == str(absent) and str(absent) in str(err.value)
    search.setenv("HSP_PROFILES", f"{tmp_path}:{absent}")
    with pytest.raises(ConfigError, match="HSP_PROFILES is not an existing directory") as err:
        profile_dirs()
    assert err.value.path == str(absent)


def test_same_name_twice_in_one_directory_is_still_an_error(search, tmp_path):
    user = profile_dir(tmp_path / "mine", a=rxe_override(1), b=rxe_override(2))
    with pytest.raises(ConfigError, match="profile name 'rxe' also used by"):
        load_profiles(user_dir=user)


def test_invalid_profile_in_user_dir_names_file_and_line(search, tmp_path):
    user = profile_dir(tmp_path / "mine", broken=with_field("queue_depth", "0"))
    with pytest.raises(ConfigError) as err:
        load_profiles(user_dir=user)
    assert (err.value.path, err.value.line) == (str(user / "broken.toml"), 10)
    assert f"{user / 'broken.toml'}:10: field queue_depth = 0" in str(err.value)


def test_no_match_names_the_search_path_and_how_to_add(search, tmp_path):
    user = profile_dir(tmp_path / "mine", extra=with_field("name", '"extra"'))
    dirs = profile_dirs(user)
    with pytest.raises(ConfigError) as err:
        pick_profile("bnxt_re0", load_profiles(user_dir=user), searched=dirs)
    message = str(err.value)
    assert f"searched, first wins: {user}, {PACKAGED_PROFILE_DIR}" in message
    assert "--profiles DIR" in message and "HSP_PROFILES" in message
    assert "/etc/hsp/hw-profiles" in message
    # without searched=, the directories the profiles came from
    with pytest.raises(ConfigError, match=re.escape(f"searched, first wins: {user}, ")):
        pick_profile("bnxt_re0", load_profiles(user_dir=user))


def test_queue_depth_is_bounded_by_what_a_vi_carries():
    from hsp_rdma.core.profiles import MAX_QUEUE_DEPTH

    assert parse_profile(with_field("queue_depth", str(MAX_QUEUE_DEPTH))).queue_depth == 238
    with pytest.raises(ConfigError, match=f"between 1 and {MAX_QUEUE_DEPTH}"):
        parse_profile(with_field("queue_depth", str(MAX_QUEUE_DEPTH + 1)))
