"""A minimal QMP client: one command per connection, events skipped, every read under a timeout.

Used for the faults that happen outside the guest: cable pull (set_link), pause (stop),
resume (cont), and for status (query-status).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from hsp_rdma.errors import LabError


def qmp(path: Path, command: str, timeout: float = 10.0, **arguments: Any) -> Any:
    """Run one QMP command on the socket at PATH and return its 'return' value."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(str(path))
    except OSError as exc:
        raise LabError(f"QMP socket {path}: {exc.strerror or exc}; is the node running?") from exc
    with sock:
        reader = sock.makefile("rb")

        def receive() -> dict:
            while True:
                try:
                    line = reader.readline()
                except (TimeoutError, OSError) as exc:
                    raise LabError(f"QMP {command}: no answer from QEMU in {timeout} s") from exc
                if not line:
                    raise LabError(f"QMP {command}: QEMU closed the connection")
                msg = json.loads(line)
                if "event" not in msg:
                    return msg

        receive()  # greeting
        for cmd, args in (("qmp_capabilities", {}), (command, arguments)):
            req: dict[str, Any] = {"execute": cmd}
            if args:
                req["arguments"] = args
            sock.sendall(json.dumps(req).encode() + b"\n")
            msg = receive()
            if "error" in msg:
                raise LabError(f"QMP {cmd}: {msg['error'].get('desc', msg['error'])}")
        return msg.get("return")
