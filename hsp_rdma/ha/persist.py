"""What a node must remember across a crash before it acts: the GSO epoch, the highest epoch
it started, joined or refused (``seen``), and the epoch it became active in. Written to one
small JSON file under the node's state directory, atomically and fsync'd (file and directory)
before the actions that depend on it run, so a node that restarts refuses everything stale."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from hsp_rdma.errors import ConfigError

FILE = "gso-epoch.json"


@dataclass(frozen=True, slots=True)
class Epochs:
    epoch: int = 0
    seen: int = 0
    active_since: int = 0


class EpochStore:
    """One node's persisted epochs in DIRECTORY (created if missing)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the state directory: {exc.strerror}",
                              str(self.dir)) from None
        self.path = self.dir / FILE
        self.writes = 0

    def load(self) -> Epochs | None:
        """The persisted epochs, or None for a node that never ran here."""
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"unreadable epoch state ({exc}): a node that cannot tell "
                              "which epochs it saw must not join; restore or remove it "
                              "knowingly", str(self.path)) from None
        try:
            e = Epochs(int(raw["epoch"]), int(raw["seen"]), int(raw["active_since"]))
        except (KeyError, TypeError, ValueError):
            raise ConfigError("epoch state lacks epoch, seen or active_since",
                              str(self.path)) from None
        if not 0 <= e.epoch <= e.seen or e.active_since > e.seen:
            raise ConfigError(f"epoch state is inconsistent: {asdict(e)}", str(self.path))
        return e

    def save(self, e: Epochs) -> None:
        """Durably: write a temporary file, fsync it, rename it over, fsync the directory."""
        _durable_write(self.path, json.dumps(asdict(e)))
        self.writes += 1

    # The failover engine's data fitness (DRBD's disk state, reduced to what a restart needs):
    # "unfit" while this node's data is Inconsistent or Outdated, written before the actions
    # that act on it run, so a node whose resync was cut restarts Inconsistent.
    def load_unfit(self) -> bool:
        try:
            text = (self.dir / UNFIT_FILE).read_text().strip()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise ConfigError(f"unreadable data state ({exc.strerror})",
                              str(self.dir / UNFIT_FILE)) from None
        if text not in ("fit", "unfit"):
            raise ConfigError(f"data state is {text[:20]!r}, not fit or unfit: a node that "
                              "cannot tell whether its data is whole must not serve; remove "
                              "the file knowingly", str(self.dir / UNFIT_FILE))
        return text == "unfit"

    def save_unfit(self, unfit: bool) -> None:
        _durable_write(self.dir / UNFIT_FILE, "unfit" if unfit else "fit")
        self.writes += 1


UNFIT_FILE = "data-state"


def _durable_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
