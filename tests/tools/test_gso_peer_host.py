"""The two-host GSO bench's orchestration (`hsp-bench serve` / `gso --peer`) on the host, with
a stand-in ib_write_bw on PATH that hangs, rejects or measures as each test plans it: a stuck
run is ended and tried again on both sides, every retry is counted, and nothing is left
running. (The real two-host run is tests/ha/test_gso_lab.py::test_bench_on_two_hosts...)"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from hsp_rdma.errors import HspError
from hsp_rdma.tools import gso_bench

FAKE = textwrap.dedent('''\
    #!{python}
    """ib_write_bw stand-in: the Nth client (last argument an address) or server run does
    what word N of $FAKE_CLIENT / $FAKE_SERVER says (the last word repeats)."""
    import os, sys, time
    client = sys.argv[-1].count(".") == 3
    role = "client" if client else "server"
    d = os.environ["FAKE_DIR"]
    log = os.path.join(d, role + ".log")
    with open(log, "a") as f:
        f.write(str(os.getpid()) + "\\n")
    n = sum(1 for _ in open(log)) - 1
    plan = os.environ["FAKE_" + role.upper()].split(",")
    what = plan[min(n, len(plan) - 1)]
    if what == "hang":
        time.sleep(600)
    elif what == "reject":
        print("Unexpected CM event bl blka 8\\n Unable to perform rdma_client function",
              file=sys.stderr)
        sys.exit(1)
    elif what == "nodev":
        print(" Did not detect devices \\n If device exists, check if driver is up\\n"
              " Unable to find the Infiniband/RoCE device", file=sys.stderr)
        sys.exit(1)
    elif what == "fail":
        print("Couldn't listen to port 18515", file=sys.stderr)
        sys.exit(1)
    elif what == "zero":
        print(" #bytes #iterations BW peak[MB/sec] BW average[MB/sec] MsgRate[Mpps]")
        print(" 4096 50 0.00 0.00 0.000000")
    elif client:
        print(" #bytes #iterations BW peak[MB/sec] BW average[MB/sec] MsgRate[Mpps]")
        print(" 4096 50 %d.00 %d.00 0.100000" % (100 + n, 100 + n))
    else:
        time.sleep(0.2)
    ''')


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir, state = tmp_path / "bin", tmp_path / "state"
    bindir.mkdir()
    state.mkdir()
    exe = bindir / "ib_write_bw"
    exe.write_text(FAKE.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DIR", str(state))
    monkeypatch.setattr(gso_bench, "PERFTEST_ROUND_S", 1.0)
    monkeypatch.setattr(gso_bench, "SETTLE_S", 0.05)
    return state


def args(**kw) -> SimpleNamespace:
    return SimpleNamespace(**{"device": "rxe0", "profiles": None, "size": 4096, "chunk": 4096,
                              "depth": 4, "runs": 2, "peer": "127.0.0.1",
                              "local_ip": "127.0.0.1", "wait": 5.0} | kw)


def pids(state: Path, role: str) -> list[int]:
    log = state / f"{role}.log"
    return [int(x) for x in log.read_text().split()] if log.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in \
        Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_stuck_and_a_rejected_client_run_are_retried_and_counted(fake, monkeypatch):
    monkeypatch.setenv("FAKE_CLIENT", "hang,reject,ok,zero,ok,ok")
    t0 = time.monotonic()
    bw, retries = gso_bench._baseline_rounds(args(), 4096, 4)
    # runs 3, 5 and 6 measured (102, 104, 105 MB/s): the median; hang, reject, zero retried
    assert bw == 104.0 and retries == 3
    assert time.monotonic() - t0 < 10
    assert not any(alive(p) for p in pids(fake, "client")), "the stuck client was left running"


def test_a_peer_that_never_measures_is_a_clear_error_not_a_hang(fake, monkeypatch):
    monkeypatch.setenv("FAKE_CLIENT", "reject")
    with pytest.raises(HspError, match=r"0 of 3 runs measured in 13 attempts; is 'hsp-bench "
                                       r"serve' running there.*Unexpected CM event"):
        gso_bench._baseline_rounds(args(), 4096, 4)


def node_stub(monkeypatch, seconds: float, events: str) -> None:
    code = f"import time, sys; time.sleep({seconds}); print({events!r}); sys.exit(0)"
    monkeypatch.setattr(gso_bench, "_node_argv",
                        lambda *_a, **_k: [sys.executable, "-c", code])


def test_serve_restarts_a_stuck_server_and_serves_until_its_gso_node_ends(fake, monkeypatch):
    monkeypatch.setenv("FAKE_SERVER", "hang,ok")
    node_stub(monkeypatch, 3.0, '{"event": "gso"}\n{"event": "gso"}')
    r = gso_bench.serve_peer(args())
    assert r["served"] == 2 and r["errors"] == []
    # the first server hung and was ended at 1.2 s; the next ones completed, one after another
    assert r["baseline_runs"] >= 3
    assert not any(alive(p) for p in pids(fake, "server")), "a server was left running"


def test_serve_gives_up_on_a_server_that_cannot_start(fake, monkeypatch):
    monkeypatch.setenv("FAKE_SERVER", "fail")
    node_stub(monkeypatch, 30.0, '{"event": "gso"}')
    t0 = time.monotonic()
    with pytest.raises(HspError, match=r"ib_write_bw server on rxe0 failed 5 times in a row: "
                                       r"Couldn't listen to port 18515"):
        gso_bench.serve_peer(args())
    assert time.monotonic() - t0 < 10, "the gso_node was waited for"


def test_a_gso_node_that_outlives_the_wait_is_ended(fake, monkeypatch):
    monkeypatch.setenv("FAKE_SERVER", "ok")
    node_stub(monkeypatch, 600.0, '{"event": "gso"}')
    monkeypatch.setattr(gso_bench, "NODE_GRACE_S", 0.0)
    with pytest.raises(HspError, match="gso_node gave no result in"):
        gso_bench.serve_peer(args(wait=1.0, runs=1, size=4096))


def test_no_device_ends_the_baseline_at_once_with_what_to_check(fake, monkeypatch):
    monkeypatch.setenv("FAKE_CLIENT", "nodev")
    with pytest.raises(HspError, match=r"(?s)ib_write_bw on rxe0: exit 1: Did not detect devices.*"
                                       r"check --device \(ibv_devices"):
        gso_bench._baseline_rounds(args(), 4096, 4)
    assert len(pids(fake, "client")) == 1, "retried a missing device"


def test_a_node_that_crashed_is_reported_by_its_last_line(fake, monkeypatch):
    monkeypatch.setenv("FAKE_SERVER", "ok")
    code = ("import sys; sys.stderr.write('Traceback (most recent call last):\\n  File x\\n"
            "VipErrorResource: rdma_get_devices: No such device\\n'); sys.exit(1)")
    monkeypatch.setattr(gso_bench, "_node_argv", lambda *_a, **_k: [sys.executable, "-c", code])
    with pytest.raises(HspError) as exc:
        gso_bench.serve_peer(args())
    assert str(exc.value) == "gso_node exited 1: VipErrorResource: rdma_get_devices: No such device"


def test_no_server_runs_once_the_peers_gso_runs_connect(fake, monkeypatch):
    """The baseline is over when the peer's GSO node connects: the server then running is
    ended and none starts while the GSOs run (they would take the CPU they measure)."""
    monkeypatch.setenv("FAKE_SERVER", "ok")
    log = fake / "server.log"
    code = textwrap.dedent(f"""\
        import sys, time
        def count():
            try:
                return len(open({str(log)!r}).read().split())
            except FileNotFoundError:
                return 0
        time.sleep(1.0)
        print('{{"event": "connected", "t": 0}}', flush=True)
        time.sleep(0.5)
        first = count()
        time.sleep(1.5)
        open({str(fake / "counts")!r}, "w").write("%d %d" % (first, count()))
        print('{{"event": "gso"}}', flush=True)
        """)
    monkeypatch.setattr(gso_bench, "_node_argv", lambda *_a, **_k: [sys.executable, "-c", code])
    r = gso_bench.serve_peer(args(runs=1))
    assert r["served"] == 1 and r["baseline_runs"] >= 1
    first, last = map(int, (fake / "counts").read_text().split())
    assert first >= 1 and last == first, "a server started after the peer's GSOs connected"
    assert not any(alive(p) for p in pids(fake, "server")), "a server was left running"


def test_the_connected_event_is_read_without_moving_the_writers_offset(tmp_path):
    with open(tmp_path / "out", "w+") as out:
        out.write('{"event": "started"}\n')
        out.flush()
        assert not gso_bench._said_connected(out)
        out.write('{"event": "connected", "t": 1}\n')
        out.flush()
        at = out.tell()
        assert gso_bench._said_connected(out) and out.tell() == at
