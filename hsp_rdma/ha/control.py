"""A node's control endpoint: a UNIX stream socket that answers one JSON object per line.

``hsp status`` and the tools ask a running node through it: a request ``{"cmd": "status"}``
(plus arguments), an answer ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. The
server runs in its own daemon thread (``start()``), or inside the node's event loop: its
``fileno()`` becomes readable when anything is to be done, then call ``handle_ready()``.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from hsp_rdma.errors import ControlError, ControlTimeout, HspError

Handler = Callable[[dict], dict]

MAX_REQUEST = 64 << 10  # bytes of one request line; a longer one is refused
MAX_ANSWER = 16 << 20  # bytes of one answer line the client accepts
MAX_CLIENTS = 32  # served at once; more wait in the backlog
IDLE_S = 30.0  # a client that sends nothing for this long is hung up on
_RECV = 64 << 10


def _line(answer: dict) -> bytes:
    try:
        return (json.dumps(answer, default=str, separators=(",", ":")) + "\n").encode()
    except (TypeError, ValueError) as exc:  # circular, or a key that is not a string
        return _line({"ok": False, "error": f"the answer cannot be written as JSON: {exc}"})


class _Client:
    __slots__ = ("closing", "inbuf", "last", "outbuf", "shut", "sock")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.inbuf = b""
        self.outbuf = b""
        self.last = time.monotonic()
        self.closing = False  # answer no more; once outbuf is sent, shut our side
        self.shut = False  # our side shut: what it still sends is read and dropped


class ControlServer:
    """Listens on PATH (mode 0600; a stale socket file left by a dead node is replaced, a live
    one or any other file is refused) and answers each request line with HANDLERS[cmd]
    (request) -> dict, ``ok`` added. A handler's HspError (or any other exception) becomes an
    ``ok: false`` answer; the server keeps serving. Handlers run one at a time, in the thread
    that serves (``start()``'s, or the one calling ``handle_ready()``)."""

    close_wait_s = 5.0  # how long close() waits for a handler that is still running

    def __init__(self, path: str | Path, handlers: dict[str, Handler], *,
                 max_request: int = MAX_REQUEST, idle_s: float = IDLE_S,
                 max_clients: int = MAX_CLIENTS):
        self.path = Path(path)
        self.handlers = dict(handlers)
        self.max_request, self.idle_s, self.max_clients = max_request, idle_s, max_clients
        self._clients: dict[int, _Client] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._sel = selectors.EpollSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self._listener, self._inode = self._bind()
        except BaseException:
            self._sel.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise
        self._sel.register(self._listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")

    # ---- life ---------------------------------------------------------------------------
    def _bind(self) -> tuple[socket.socket, int]:
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ControlError(f"cannot create the control socket's directory "
                               f"{path.parent}: {exc.strerror}") from None
        self._clear_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(str(path))
            # refused until listen(): nobody connects before the mode is 0600
            os.chmod(path, 0o600)
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
            return sock, os.stat(path).st_ino
        except OSError as exc:
            sock.close()
            raise ControlError(f"cannot listen on {path}: {exc.strerror or exc}; set the "
                               "node's [node].control_socket to a path it may create") from None

    @staticmethod
    def _clear_stale(path: Path) -> None:
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ControlError(f"{path} exists and is not a socket: remove it, or set the "
                               "node's [node].control_socket to another path")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink(missing_ok=True)  # left by a node that died: nobody listens
            return
        except OSError:
            pass  # someone may own it (permission, timeout): do not take it over
        finally:
            probe.close()
        raise ControlError(f"another process listens on {path}: is this node already "
                           "running? Stop it, or give this one another [node].control_socket")

    def start(self) -> Self:
        """Serve in a daemon thread until ``close()``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=f"control {self.path}",
                                            daemon=True)
            self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._closed:
            self.handle_ready(timeout=1.0)

    def close(self) -> None:
        """Stop serving, hang up on every client, remove the socket file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.close_wait_s)
        # a handler stuck in the serving thread keeps the lock: then leave its sockets to the
        # daemon thread and the process, but still take the path away
        if self._lock.acquire(timeout=self.close_wait_s):
            try:
                for client in list(self._clients.values()):
                    self._drop(client)
                self._sel.close()
                self._listener.close()
                os.close(self._wake_r)
                os.close(self._wake_w)
            finally:
                self._lock.release()
        try:  # only our own socket: a successor may have taken the path since
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        except OSError:
            pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- event loop -----------------------------------------------------------------------
    def fileno(self) -> int:
        """A descriptor that is readable when ``handle_ready()`` has work (an epoll fd)."""
        return self._sel.fileno()

    def handle_ready(self, timeout: float = 0.0) -> None:
        """Accept, read, answer and write what is ready (waiting up to TIMEOUT seconds),
        then hang up on clients idle for longer than ``idle_s``."""
        with self._lock:
            if self._closed:
                return
            for key, events in self._sel.select(timeout):
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    self._drain_wake()
                else:
                    client = key.data
                    if events & selectors.EVENT_READ and self._live(client):
                        self._read(client)
                    if events & selectors.EVENT_WRITE and self._live(client):
                        self._flush(client)
            deadline = time.monotonic() - self.idle_s
            for client in [c for c in self._clients.values() if c.last < deadline]:
                self._drop(client)

    def _live(self, client: _Client) -> bool:
        return self._clients.get(client.sock.fileno()) is client

    def _drain_wake(self) -> None:
        try:
            os.read(self._wake_r, 64)
        except BlockingIOError:
            pass

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return  # try again on the next wake-up; the node keeps running
                raise
            sock.setblocking(False)
            client = _Client(sock)
            self._clients[sock.fileno()] = client
            self._sel.register(sock, selectors.EVENT_READ, client)
            if len(self._clients) >= self.max_clients:
                # full: later clients wait in the listen backlog (their own timeout applies)
                # until one hangs up
                self._sel.unregister(self._listener)
                return

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # gone, perhaps mid-line: nothing of a half request is acted on
            self._drop(client)
            return
        if client.closing:  # drained, not answered; idle_s from the refusal ends it
            return
        client.last = time.monotonic()
        client.inbuf += data
        while b"\n" in client.inbuf:
            line, client.inbuf = client.inbuf.split(b"\n", 1)
            if line.strip():
                client.outbuf += _line(self._answer(line))
        if len(client.inbuf) > self.max_request:
            client.inbuf = b""
            client.outbuf += _line({"ok": False, "error": f"request longer than "
                                    f"{self.max_request} bytes without a newline: refused"})
            client.closing = True
        self._flush(client)

    def _answer(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
        except ValueError:
            return {"ok": False, "error": 'not a JSON object on one line: send e.g. '
                                          '{"cmd": "status"} and a newline'}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": 'a request is a JSON object with "cmd" (a string), '
                                          'e.g. {"cmd": "status"}'}
        cmd = request["cmd"]
        handler = self.handlers.get(cmd)
        if handler is None:
            known = ", ".join(sorted(self.handlers)) or "none"
            return {"ok": False, "error": f"unknown command {cmd!r}: this node knows {known}"}
        try:
            result = handler(request)
        except HspError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a bad request must not end the node
            return {"ok": False, "error": f"{cmd} failed: {type(exc).__name__}: {exc}"}
        if not isinstance(result, dict):
            return {"ok": False, "error": f"{cmd} answered {type(result).__name__}, not an "
                                          "object (a bug in the node)"}
        return {"ok": True, **result} if "ok" not in result else result

    def _flush(self, client: _Client) -> None:
        while client.outbuf:
            try:
                sent = client.sock.send(client.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(client)
                return
            client.outbuf = client.outbuf[sent:]
        if not client.outbuf and client.closing and not client.shut:
            # not close(): closing with its unread bytes queued would reset the connection
            # and the client would lose the answer that says why
            client.shut = True
            try:
                client.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._drop(client)
                return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbuf else 0)
        if self._sel.get_key(client.sock).events != want:
            self._sel.modify(client.sock, want, client)
        if len(client.outbuf) > MAX_ANSWER:  # it asks and never reads: stop feeding it
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if self._clients.pop(fd, None) is None:
            return
        try:
            self._sel.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()
        if len(self._clients) == self.max_clients - 1:
            self._sel.register(self._listener, selectors.EVENT_READ, "listen")


def control_request(path: str | Path, cmd: str, timeout_s: float = 5, **args: Any) -> dict:
    """Send ``{"cmd": CMD, **ARGS}`` to the node listening on PATH and return its answer
    (``ok`` false included: that is the node's word). Unreachable, silent or garbled nodes
    raise ControlError / ControlTimeout saying which and what to check."""
    path = Path(path)
    if not isinstance(cmd, str):
        raise ControlError(f"cannot send command {cmd!r}: a command is a string")
    request = _line({"cmd": cmd, **args})
    deadline = time.monotonic() + timeout_s
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout_s)
    try:
        try:
            _connect(sock, path, deadline)
        except FileNotFoundError:
            raise ControlError(f"no node is listening on {path}: is it running? (its "
                               "config's [node].control_socket)") from None
        except ConnectionRefusedError:
            raise ControlError(f"no node is listening on {path} (the file is there, nobody "
                               "answers: a node that stopped, or not a socket): is it "
                               "running? (its config's [node].control_socket)") from None
        except PermissionError:
            raise ControlError(f"not allowed to connect to {path} (the socket is mode 0600): "
                               "run this as the user that runs the node") from None
        except TimeoutError:
            raise ControlTimeout(f"the node at {path} did not accept the connection within "
                                 f"{timeout_s:g} s: it may be hung") from None
        except OSError as exc:
            raise ControlError(f"cannot connect to {path}: {exc.strerror or exc}") from None
        answer = b""
        try:
            sock.sendall(request)
            while b"\n" not in answer:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                data = sock.recv(_RECV)
                if not data:
                    raise ControlError(f"the node at {path} hung up without answering "
                                       f"{cmd!r}" + (f" (it said: {answer[:200]!r})"
                                                     if answer else ""))
                answer += data
                if len(answer) > MAX_ANSWER:
                    raise ControlError(f"the node at {path} answered more than "
                                       f"{MAX_ANSWER} bytes without a newline")
        except TimeoutError:
            raise ControlTimeout(f"the node at {path} did not answer {cmd!r} within "
                                 f"{timeout_s:g} s: it may be busy or hung") from None
        except OSError as exc:
            raise ControlError(f"talking to the node at {path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        reply = json.loads(answer.split(b"\n", 1)[0])
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise ControlError(f"the node at {path} answered something that is not a JSON "
                           f"object: {answer[:200]!r}")
    return reply


def _connect(sock: socket.socket, path: Path, deadline: float) -> None:
    """connect(), again while the listener's backlog is full (EAGAIN) until DEADLINE."""
    while True:
        try:
            sock.connect(str(path))
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError from None
            time.sleep(0.01)
