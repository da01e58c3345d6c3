"""The one exception tree of hsp_rdma, rooted at HspError.

Every error a user can meet says what failed and what to do about it; lower layers raise
the subclass that names their domain (verbs, VIA, configuration, lab).
"""

from __future__ import annotations


class HspError(Exception):
    """Root of every error raised on purpose by hsp_rdma."""


class UsageError(HspError):
    """The caller asked for something malformed (a bad lab id, wrong fault arguments); exit 64."""

    exit_code = 64  # sysexits EX_USAGE


class ConfigError(HspError):
    """A configuration or profile file is wrong; names the file and line when known, and
    carries the field (dotted, e.g. "fabric.x.local") when one is to blame."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = path
        self.line = line
        self.field = field


class LabError(HspError):
    """The soft-RDMA lab could not do what was asked (setup, boot, exec, fault)."""


class LabTimeout(LabError):
    """A lab operation did not finish within its timeout."""


class LabUnavailable(LabError):
    """The lab cannot run on this host: a program, package or artefact is missing."""

    exit_code = 69  # sysexits EX_UNAVAILABLE


class ProtocolError(HspError):
    """A peer or a caller broke a protocol rule (bad frame, illegal transition)."""


class FrameError(ProtocolError):
    """A received frame cannot be decoded: truncated, bad magic, length or CRC."""


class VersionMismatch(FrameError):
    """The peer speaks another protocol version; carries both numbers."""

    def __init__(self, theirs: int, ours: int):
        super().__init__(
            f"peer speaks protocol version {theirs}, we speak {ours}: "
            "upgrade one side so both run the same hsp_rdma protocol"
        )
        self.theirs = theirs
        self.ours = ours


class IllegalTransition(ProtocolError):
    """An event arrived in a state whose table has no entry for it; the machine is now broken."""


class ControlError(HspError):
    """A node's control endpoint (its UNIX socket) could not be reached or answered badly."""


class ControlTimeout(ControlError):
    """A node's control endpoint did not answer in time."""

    exit_code = 124  # as timeout(1)


class GsoRefused(HspError):
    """A Graceful Switch Over was refused before anything stopped; says why."""


# errno -> what a user can do about it, for the verbs calls that commonly fail.
_VERBS_HINTS = {
    12: "raise the memlock limit (ulimit -l) or register less memory",  # ENOMEM
    13: "run as root or give the user access to /dev/infiniband",  # EACCES
    19: "the RDMA device is gone (module unloaded or device removed)",  # ENODEV
    22: "an argument is out of the device's limits (see VipQueryNic)",  # EINVAL
    110: "the peer did not answer in time (is it up, and is the link up?)",  # ETIMEDOUT
    111: "nothing listens at that address and discriminator",  # ECONNREFUSED
    113: "no route to the peer on this fabric (link down or wrong address)",  # EHOSTUNREACH
}


class VerbsError(HspError):
    """A libibverbs or librdmacm call failed; carries the call and errno."""

    def __init__(self, call: str, errno: int, detail: str = ""):
        import os

        self.call = call
        self.errno = errno
        msg = f"{call}: {os.strerror(errno) if errno else 'failed'}"
        if detail:
            msg += f" ({detail})"
        hint = _VERBS_HINTS.get(errno)
        if hint:
            msg += f" — {hint}"
        super().__init__(msg)
