"""A process the tools run on a node (a lab guest or a real host) that prints one JSON object
per line: its events, collected live as its output streams in."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class GuestRun:
    """One process on node NAME: its job and the JSON events it printed so far."""

    name: str
    job: Any = None
    events: list[dict] = field(default_factory=list)
    on_event: Callable[[str, dict], None] | None = None
    _partial: bytes = b""

    def feed(self, chunk: bytes) -> None:
        """Take a chunk of stdout; every complete line that is a JSON object is an event."""
        self._partial += chunk
        *lines, self._partial = self._partial.split(b"\n")
        for line in lines:
            if line.startswith(b"{"):
                ev = json.loads(line)
                self.events.append(ev)
                if self.on_event:
                    self.on_event(self.name, ev)

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]
