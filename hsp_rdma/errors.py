"""The one exception tree of hsp_rdma, rooted at HspError.

Every error a user can meet says what failed and what to do about it; lower layers raise
the subclass that names their domain (verbs, VIA, configuration, lab).
"""

from __future__ import annotations


class HspError(Exception):
    """Root of every error raised on purpose by hsp_rdma."""


class ConfigError(HspError):
    """A configuration or profile file is wrong; names the file and line when known."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = path
        self.line = line


class LabError(HspError):
    """The soft-RDMA lab could not do what was asked (setup, boot, exec, fault)."""


class LabTimeout(LabError):
    """A lab operation did not finish within its timeout."""
