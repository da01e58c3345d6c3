"""FenceAgent (hsp_rdma.ha.fence), on the host: the fence-agents convention (options on stdin,
exit 0 = done), the `outdate`/`unoutdate` actions and the asking node's `nodename=` line, and
its rule that an agent's own failure is a FenceResult, never an exception."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hsp_rdma.errors import ConfigError
from hsp_rdma.ha.fence import ACTIONS, FenceAgent


def _recorder(tmp_path: Path, said: str = "Success: done", rc: int = 0) -> tuple[str, Path]:
    log = tmp_path / "stdin.log"
    script = tmp_path / "agent.sh"
    script.write_text(f"#!/bin/sh\ncat > {log}\necho '{said}'\nexit {rc}\n")
    script.chmod(0o755)
    return str(script), log


def test_outdate_and_unoutdate_are_actions() -> None:
    assert {"off", "on", "status", "outdate", "unoutdate"} <= set(ACTIONS)


def test_nodename_is_passed_as_a_line_and_replaces_a_configured_one(tmp_path) -> None:
    prog, log = _recorder(tmp_path, "marked")
    agent = FenceAgent.parse(prog, ["ip=10.0.0.9", "nodename=configured"])
    res = agent.run("outdate", "b", 5, nodename="a")
    assert res.ok and res.detail == "outdate b: marked"
    assert log.read_text().splitlines() == ["action=outdate", "plug=b", "nodename=a",
                                            "ip=10.0.0.9"]
    agent.run("unoutdate", "b", 5)  # no nodename: the configured one goes as it is
    assert log.read_text().splitlines() == ["action=unoutdate", "plug=b", "ip=10.0.0.9",
                                            "nodename=configured"]


def test_a_refusal_is_a_failed_result_with_the_device_s_reason(tmp_path) -> None:
    prog, _ = _recorder(tmp_path, "node b is Outdated (by a): it may not fence", rc=1)
    res = FenceAgent.parse(prog).run("off", "a", 5, nodename="b")
    assert not res.ok and "exited 1: node b is Outdated (by a): it may not fence" in res.detail


def test_agent_failures_never_raise(tmp_path) -> None:
    slow = FenceAgent.parse(f"{sys.executable} -c 'import time; time.sleep(5)'")
    res = slow.run("outdate", "b", 0.2, nodename="a")
    assert not res.ok and "no answer in 0.2 s" in res.detail
    gone = tmp_path / "gone"
    gone.write_text("#!/bin/sh\n")
    gone.chmod(0o755)
    agent = FenceAgent.parse(str(gone))
    gone.unlink()  # removed after the config was read
    res = agent.run("unoutdate", "b", 1, nodename="a")
    assert not res.ok and "No such file" in res.detail


def test_bad_action_or_nodename_is_the_caller_s_error(tmp_path) -> None:
    agent = FenceAgent.parse(_recorder(tmp_path)[0])
    with pytest.raises(ValueError, match="outdate, unoutdate"):
        agent.run("explode", "b", 1)
    with pytest.raises(ValueError, match="not one node name"):
        agent.run("outdate", "b", 1, nodename="a\naction=off")
    with pytest.raises(ConfigError, match="set by the engine"):
        FenceAgent.parse(_recorder(tmp_path)[0], ["plug=x"])
