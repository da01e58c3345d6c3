"""The control endpoint: requests answered line by line, many clients at once; garbage, half
lines, huge lines and vanishing clients cost the node nothing; the socket file is 0600,
replaces a stale one, refuses a live one, and goes away on close; the client's errors say
what to check."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from hsp_rdma.errors import ConfigError, ControlError, ControlTimeout
from hsp_rdma.ha.control import ControlServer, control_request


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "a.sock"


def handlers() -> dict:
    def boom(req: dict) -> dict:
        raise ZeroDivisionError("division by zero")

    def bad_config(req: dict) -> dict:
        raise ConfigError("field x: wrong", "/etc/a.toml", 3)

    return {"status": lambda req: {"node": "a", "echo": req.get("n")},
            "big": lambda req: {"blob": "x" * (3 << 20)},
            "boom": boom, "bad_config": bad_config, "slow": lambda req: time.sleep(0.3) or {},
            "not_a_dict": lambda req: [1, 2], "says_no": lambda req: {"ok": False, "error": "no"}}


@pytest.fixture
def server(sock_path: Path):
    with ControlServer(sock_path, handlers()).start() as srv:
        yield srv


class Sock(socket.socket):
    reader = None


def raw(path: Path) -> Sock:
    s = Sock(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    return s


def read_line(s: Sock) -> dict:
    """The next answer line (bytes after it stay in the socket's reader)."""
    if s.reader is None:
        s.reader = s.makefile("rb")
    return json.loads(s.reader.readline())


def test_request_answered_with_ok_and_args(server, sock_path) -> None:
    assert control_request(sock_path, "status", n=7) == {"ok": True, "node": "a", "echo": 7}


def test_unknown_command_is_refused_naming_the_known_ones(server, sock_path) -> None:
    ans = control_request(sock_path, "audit")
    assert ans["ok"] is False
    assert "unknown command 'audit'" in ans["error"] and "status" in ans["error"]


def test_handler_failures_are_answers_and_the_node_keeps_serving(server, sock_path) -> None:
    assert control_request(sock_path, "boom") == {
        "ok": False, "error": "boom failed: ZeroDivisionError: division by zero"}
    assert control_request(sock_path, "bad_config")["error"] == "/etc/a.toml:3: field x: wrong"
    assert "not an object" in control_request(sock_path, "not_a_dict")["error"]
    assert control_request(sock_path, "says_no") == {"ok": False, "error": "no"}
    assert control_request(sock_path, "status")["ok"] is True


def test_an_answer_larger_than_the_socket_buffer_arrives_whole(server, sock_path) -> None:
    assert len(control_request(sock_path, "big")["blob"]) == 3 << 20


def test_concurrent_clients_each_get_their_own_answer(server, sock_path) -> None:
    answers: dict[int, list] = {}

    def client(i: int) -> None:
        answers[i] = [control_request(sock_path, "status", n=i * 100 + k)["echo"]
                      for k in range(10)]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert answers == {i: [i * 100 + k for k in range(10)] for i in range(20)}


def test_pipelined_requests_on_one_connection_answered_in_order(server, sock_path) -> None:
    with raw(sock_path) as s:
        s.sendall(b'{"cmd":"status","n":1}\n\n{"cmd":"status","n":2}\n{"cmd":"st')
        assert read_line(s)["echo"] == 1
        s.sendall(b'atus","n":3}\n')
        answers = [read_line(s) for _ in range(2)]
    assert [a["echo"] for a in answers] == [2, 3]


@pytest.mark.parametrize(("sent", "says"), [
    (b"hello\n", "not a JSON object on one line"),
    (b"\xff\xfe\x00garbage\n", "not a JSON object on one line"),
    (b"[1, 2]\n", 'a request is a JSON object with "cmd"'),
    (b'{"cmd": 5}\n', 'a request is a JSON object with "cmd"'),
])
def test_garbage_gets_an_error_and_the_connection_stays_usable(server, sock_path, sent,
                                                               says) -> None:
    with raw(sock_path) as s:
        s.sendall(sent)
        ans = read_line(s)
        assert ans["ok"] is False and says in ans["error"]
        s.sendall(b'{"cmd":"status"}\n')
        assert read_line(s)["ok"] is True


def test_a_client_that_sends_half_a_line_and_vanishes_changes_nothing(sock_path) -> None:
    calls = []
    with ControlServer(sock_path, {"status": lambda r: calls.append(r) or {}}).start():
        s = raw(sock_path)
        s.sendall(b'{"cmd": "stat')
        s.close()
        s = raw(sock_path)
        s.sendall(b'{"cmd": "status"}')  # a whole object, but no newline: not a request
        s.close()
        assert control_request(sock_path, "status")["ok"] is True
    assert len(calls) == 1


def test_a_silent_client_does_not_block_others_and_is_hung_up_on(sock_path) -> None:
    with ControlServer(sock_path, handlers(), idle_s=0.5).start(), raw(sock_path) as silent:
        silent.sendall(b'{"cmd": "sta')
        assert control_request(sock_path, "status")["ok"] is True
        silent.settimeout(5)
        assert silent.recv(100) == b""  # hung up after idle_s, the half line ignored


def test_a_huge_line_is_refused_and_the_connection_closed(sock_path) -> None:
    with ControlServer(sock_path, handlers(), max_request=4096).start():
        with raw(sock_path) as s:
            try:
                s.sendall(b"x" * 200_000)
            except (BrokenPipeError, ConnectionResetError):
                pass  # it may hang up before taking it all; the answer is still readable
            ans = read_line(s)
            assert ans == {"ok": False,
                           "error": "request longer than 4096 bytes without a newline: refused"}
            assert s.reader.read() == b""  # then our side is shut
        assert control_request(sock_path, "status")["ok"] is True


def test_clients_over_the_limit_wait_their_turn(sock_path) -> None:
    with ControlServer(sock_path, handlers(), max_clients=2).start():
        held = [raw(sock_path) for _ in range(2)]
        result: dict = {}
        waiting = threading.Thread(target=lambda: result.update(
            control_request(sock_path, "status", n=3)))
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive() and not result  # in the backlog, not refused
        held[0].close()
        waiting.join(5)
        assert result == {"ok": True, "node": "a", "echo": 3}
        held += [raw(sock_path), raw(sock_path)]  # full again, one more in the backlog
        with pytest.raises(ControlTimeout):
            control_request(sock_path, "status", timeout_s=0.3)
        for s in held:
            s.close()
        assert control_request(sock_path, "status")["ok"] is True


def test_socket_is_0600_and_removed_on_close(sock_path) -> None:
    srv = ControlServer(sock_path, handlers())
    mode = sock_path.lstat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    srv.close()
    srv.close()
    assert not sock_path.exists()


def test_a_stale_socket_file_is_replaced(sock_path) -> None:
    sock_path.parent.mkdir()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))
    dead.close()  # the file stays, nobody listens: a node that died
    with pytest.raises(ControlError, match="no node is listening on .*nobody answers"):
        control_request(sock_path, "status")
    with ControlServer(sock_path, handlers()).start():
        assert control_request(sock_path, "status")["ok"] is True


def test_a_live_socket_or_another_file_is_not_taken_over(server, sock_path,
                                                         tmp_path) -> None:
    with pytest.raises(ControlError, match="another process listens on .*already running"):
        ControlServer(sock_path, handlers())
    assert control_request(sock_path, "status")["ok"] is True
    other = tmp_path / "notes.txt"
    other.write_text("keep me")
    with pytest.raises(ControlError, match="exists and is not a socket"):
        ControlServer(other, handlers())
    assert other.read_text() == "keep me"


def test_close_leaves_a_successors_socket_alone(sock_path) -> None:
    first = ControlServer(sock_path, handlers())
    sock_path.unlink()  # an operator removed it; a new node took the path
    with ControlServer(sock_path, handlers()).start():
        first.close()
        assert control_request(sock_path, "status")["ok"] is True


def test_a_path_too_long_for_a_unix_socket_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ControlError, match="cannot listen on .*control_socket"):
        ControlServer(tmp_path / ("d" * 120) / "a.sock", handlers())


def test_served_from_the_callers_event_loop(sock_path) -> None:
    srv = ControlServer(sock_path, handlers())
    result: dict = {}
    client = threading.Thread(target=lambda: result.update(control_request(sock_path,
                                                                           "status", n=1)))
    client.start()
    deadline = time.monotonic() + 5
    while client.is_alive() and time.monotonic() < deadline:
        ready, _, _ = select.select([srv.fileno()], [], [], 0.5)
        if ready:
            srv.handle_ready()
        client.join(0)
    srv.close()
    assert result == {"ok": True, "node": "a", "echo": 1}


def test_no_socket_says_no_node_is_listening(tmp_path) -> None:
    path = tmp_path / "a.sock"
    with pytest.raises(ControlError) as exc:
        control_request(path, "status")
    assert str(exc.value) == (f"no node is listening on {path}: is it running? (its config's "
                              "[node].control_socket)")


def test_a_node_that_never_answers_is_a_timeout(tmp_path) -> None:
    path = tmp_path / "mute.sock"
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(str(path))
    mute.listen(1)
    try:
        started = time.monotonic()
        with pytest.raises(ControlTimeout, match="did not answer 'status' within 0.3 s"):
            control_request(path, "status", timeout_s=0.3)
        assert time.monotonic() - started < 2
    finally:
        mute.close()


def test_a_slow_handler_answer_past_the_timeout_is_a_timeout(server, sock_path) -> None:
    with pytest.raises(ControlTimeout):
        control_request(sock_path, "slow", timeout_s=0.1)
    assert control_request(sock_path, "status")["ok"] is True


def test_another_user_is_not_allowed_in(tmp_path) -> None:
    """The socket is 0600: a user other than the node's cannot connect. As root the client
    runs as nobody; otherwise the mode is taken away from ourselves."""
    shared = Path(tempfile.mkdtemp(prefix="hsp-ctl-"))  # traversable by anyone
    shared.chmod(0o755)
    path = shared / "a.sock"
    try:
        with ControlServer(path, handlers()).start():
            if os.geteuid() == 0:
                code = ("from hsp_rdma.ha.control import control_request\n"
                        "from hsp_rdma.errors import ControlError\n"
                        f"try: control_request({str(path)!r}, 'status')\n"
                        "except ControlError as e: print(e)\n")
                res = subprocess.run([sys.executable, "-c", code], user=65534,
                                     capture_output=True, text=True, timeout=30,
                                     cwd=Path(__file__).parents[2], check=False)
                said = res.stdout + res.stderr
            else:
                path.chmod(0)
                with pytest.raises(ControlError) as exc:
                    control_request(path, "status")
                said = str(exc.value)
                path.chmod(0o600)
            assert f"not allowed to connect to {path} (the socket is mode 0600)" in said, said
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_close_does_not_hang_on_a_stuck_handler(sock_path) -> None:
    release = threading.Event()
    srv = ControlServer(sock_path, {"stuck": lambda req: release.wait(30) and {}}).start()
    srv.close_wait_s = 0.3
    with pytest.raises(ControlTimeout):
        control_request(sock_path, "stuck", timeout_s=0.2)
    started = time.monotonic()
    srv.close()
    assert time.monotonic() - started < 2 and not sock_path.exists()
    release.set()
