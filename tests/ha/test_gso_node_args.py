"""gso_node's options across each other: a stripe needs fabric y (exit 2 with the reason, from
argparse, before anything opens a device)."""

from __future__ import annotations

import pytest

from hsp_rdma.ha import gso_node

BASE = ["--name", "a", "--device", "soft:a", "--local-ip", "127.0.0.1"]


def test_stripe_without_fabric_y_is_refused_with_the_reason(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        gso_node.parse_args([*BASE, "--stripe"])
    assert exc.value.code == 2
    assert "--stripe needs fabric y (--y-device, --y-local-ip)" in capsys.readouterr().err


def test_stripe_follows_the_profile_unless_told() -> None:
    y = ["--y-device", "soft:ay", "--y-local-ip", "127.0.0.3"]
    assert gso_node.parse_args([*BASE, *y]).stripe is None  # the hw profile's stripe
    assert gso_node.parse_args([*BASE, *y, "--stripe"]).stripe is True
    assert gso_node.parse_args([*BASE, *y, "--no-stripe"]).stripe is False
