"""Audit: both sides digest P.mem and every disk in chunks at a transaction fence; the standby
says which chunks differ; the active (authoritative) sends those chunks again.

One audit run, on the active (``Auditor.start_run``, ``node.audit_now()``, ``hsp audit --now``
or every ``audit_interval``), in its own thread:

1. Digest. For each target (P.mem, then each disk) in slices of ``SLICE_CHUNKS`` chunks of
   ``CHUNK`` bytes: under ``node._lock`` the slice's CRC32C per chunk is taken and submitted
   at once as one AUDIT transaction (``core/ifa.encode_audit``, commit mode async) on the
   channel that carries that target's writes (pmem or disk). Digest and stream position
   agree: every transaction of that channel submitted before is already in the active's
   copy, and the standby digests its copy when it applies the AUDIT, in stream order, so
   after exactly those. Between slices the lock is released and the run sleeps as the rate
   (``audit_rate`` bytes of region per second) says, so a big region never stalls the
   node's loop nor the application's commits for long.
2. The standby (``answer``, called from the node's ``_apply``) digests the same chunks of
   its copy and replies on oam as a system message ``{"audit": "diff", "id", "target",
   "first", "count", "chunks": [differing chunk numbers]}``, one per AUDIT transaction.
3. Verify. The node writes its own copy under its lock right before the submit
   (``Node._commit``'s ``local``), so a slice digested under the lock is at an exact
   transaction fence. As a second line (a write made outside those paths, e.g. straight into
   ``node.pmem.buf``), the differing chunks are audited again, the same
   way, ``VERIFY_DELAY_S`` apart, up to ``VERIFY_ROUNDS`` rounds: a chunk the standby no
   longer reports is clean; one it still reports while the active's bytes of it did not
   change since the round before is damaged (no local write was pending on it, unless one
   stayed pending across the whole delay); one whose bytes changed meanwhile (written again:
   maybe in passing again) goes to the next round, and is repaired if it still differs in
   the last (a repair is always correct, only its count could be one too many). Exact would
   needs the node to say which local writes are not yet submitted (a hook in its write paths).
4. Repair. Each confirmed chunk goes as an ordinary transaction with the active's current
   bytes (P.mem write; disk write with flush), under the lock: whatever the stream carries
   later overwrites it in order, so a later snapshot is correct. The run waits until the
   standby applied them, then records ``audit_done`` (repairs, chunks) in the failover
   engine's history when one is attached, in ``status()["audit"]``, and tells the standby
   (``{"audit": "done", ...}`` on oam, which the standby keeps in ``node.oam.events``).

Counters (``status()``): runs, the last run (chunks, repairs, took_ms, bytes, error), the
total of repairs and the bytes the audits sent (digests and repairs); on the standby the
AUDIT transactions answered and the chunks found differing.
"""

from __future__ import annotations

import os
import threading
import time
from array import array

from hsp_rdma.core import ifa
from hsp_rdma.core.frames import Channel
from hsp_rdma.core.ifa import Commit
from hsp_rdma.ha.node import NodeError

CHUNK = 4096  # bytes of one audited chunk: a P.mem page, a disk block
SLICE_CHUNKS = 256  # chunks digested per hold of the node's lock = per AUDIT transaction
DEFAULT_RATE = 64 << 20  # bytes of region digested per second, when the config says nothing
REPLY_WAIT_S = 30.0  # the standby's next answer comes within this of the last one or request
VERIFY_MAX = 4096  # differing chunks verified before repair; more: a divergence, repaired at once
VERIFY_ROUNDS = 4  # verify rounds at most; a chunk still differing after the last is repaired
VERIFY_DELAY_S = 0.05  # between two rounds (longer than a local write waits for its submit)
REPAIR_CHUNKS = 16  # contiguous chunks in one repair transaction (64 KiB)
DONE_LIST_MAX = 64  # chunk numbers per target named in the "done" message


def _config_value(config, name: str):
    """An audit field of the node's TOML: ``[replication] NAME`` or a top-level NAME (the
    configuration loader may place it either way); None when absent."""
    for holder in (getattr(config, "replication", None), config):
        value = getattr(holder, name, None)
        if value is not None:
            return value
    return None


def _runs(chunks: list[int], most: int) -> list[tuple[int, int]]:
    """Sorted chunk numbers as (first, count) runs of contiguous chunks, COUNT <= MOST."""
    out: list[tuple[int, int]] = []
    for c in chunks:
        if out and out[-1][0] + out[-1][1] == c and out[-1][1] < most:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((c, 1))
    return out


class AuditFailed(NodeError):
    pass


class Auditor:
    """The node's audits: the active's runs and the standby's answers (``node.auditor``)."""

    def __init__(self, node, chunk: int = CHUNK, slice_chunks: int = SLICE_CHUNKS,
                 rate: int | None = None, interval_s: float | None = None):
        self.node = node
        self.chunk = chunk
        self.slice_chunks = slice_chunks
        cfg_rate = _config_value(node.config, "audit_rate")
        self.rate = int(rate or cfg_rate or DEFAULT_RATE)
        if interval_s is None:
            ms = _config_value(node.config, "audit_interval")
            interval_s = ms / 1000 if ms else None
        self.interval_s = interval_s
        self._cv = threading.Condition()  # never taken around node._lock's acquisition
        self._thread: threading.Thread | None = None
        self._next_id = 1
        self._queued: int | None = None  # a run asked for while one runs: it starts after
        self._current: dict | None = None  # the running run's state (id, round, diffs, ...)
        self.runs = 0
        self.last: dict | None = None
        self.total_repairs = 0
        self.bytes = 0
        self.answered = 0  # standby: AUDIT transactions answered
        self.differing = 0  # standby: chunks found differing
        self.last_done: dict | None = None  # standby: the active's last "done" message
        self._periodic: threading.Thread | None = None

    # ---- targets ----------------------------------------------------------------------------
    def _targets(self) -> list[tuple[int, str, int, Channel]]:
        node = self.node
        out = [(ifa.AUDIT_PMEM, "pmem", len(node._pmem), Channel.PMEM)]
        out += [(i, d.config.name, d.size, Channel.DISK) for i, d in enumerate(node._disks)]
        return [t for t in out if t[2] > 0]

    def _name(self, target: int) -> str:
        return "pmem" if target == ifa.AUDIT_PMEM else self.node._disks[target].config.name

    def _read(self, target: int, offset: int, length: int) -> bytes:
        node = self.node
        if target == ifa.AUDIT_PMEM:
            return node._pmem[offset:offset + length]
        disk = node._disks[target]
        length = max(0, min(length, disk.size - offset))
        data = os.pread(disk.fd, length, offset)
        return data + bytes(length - len(data))  # a short file reads as zeros past its end

    def _digests(self, target: int, first: int, count: int) -> list[int]:
        return ifa.audit_digests(self._read(target, first * self.chunk, count * self.chunk),
                                 self.chunk)

    # ---- standby: answer an AUDIT transaction (node._apply, in the loop, under the lock) ----
    def answer(self, req: ifa.AuditRequest) -> None:
        mine = ifa.audit_digests(self._read(req.target, req.first * req.chunk,
                                            len(req.crcs) * req.chunk), req.chunk)
        chunks = [req.first + i for i, (a, b) in enumerate(zip(mine, req.crcs)) if a != b]
        self.answered += 1
        self.differing += len(chunks)
        self.node._report({"audit": "diff", "id": req.audit_id, "t": req.target,
                           "target": self._name(req.target), "first": req.first,
                           "count": len(req.crcs), "chunks": chunks})

    # ---- active: the standby's words (node._apply's OAM_SYSTEM dispatch, under the lock) ----
    def on_message(self, event: dict) -> None:
        kind = event.get("audit")
        if kind == "done":
            self.last_done = event
            self.node.oam.keep(event)
            return
        if kind != "diff":
            self.node._alarm(f"audit: an oam message of unknown kind {kind!r} was ignored")
            return
        with self._cv:
            cur = self._current
            if cur is None or event.get("id") != cur["id"]:
                return  # an answer to a run that was given up
            try:
                target = int(event["t"])
                chunks = [int(c) for c in event["chunks"]]
            except (KeyError, TypeError, ValueError):
                self.node._alarm(f"audit {cur['id']}: a malformed answer was ignored: {event}")
                return
            cur["diffs"].setdefault(target, set()).update(chunks)
            cur["outstanding"] -= 1
            cur["answered_at"] = time.monotonic()
            self._cv.notify_all()

    # ---- active: runs -----------------------------------------------------------------------
    def _refusal(self) -> str | None:
        """Why no audit can run now (None: it can). Called under node._lock."""
        node = self.node
        if node.role != "active":
            return (f"node {node.config.name} is the {node.role}: run the audit on the "
                    "active (it is authoritative)")
        if node._dead:
            return node._dead
        fo = node.failover
        if fo is not None:
            state = getattr(getattr(fo, "machine", None), "state", None)
            name = getattr(state, "value", str(state))
            if name != "ACTIVE":
                return (f"the pair is not in step (failover state {name}): an audit runs "
                        "only while the standby is connected and consistent")
        for ch in (Channel.OAM, Channel.PMEM, Channel.DISK):
            link = node.session.streams[ch].link
            if link is None or not link.synced or not node._port.links[ch].up:
                return f"channel {ch.name.lower()} is not connected to the peer"
        return None

    def start_run(self) -> int:
        """Start an audit now (a run already going: the next one starts when it ends); its id.
        Raises NodeError saying why when none can run on this node now."""
        with self.node._lock:
            why = self._refusal()
        if why is not None:
            raise NodeError(f"no audit: {why}")
        with self._cv:
            if self._thread is not None and self._thread.is_alive():
                if self._queued is None:
                    self._queued = self._next_id
                    self._next_id += 1
                return self._queued
            audit_id = self._next_id
            self._next_id += 1
            self._thread = threading.Thread(target=self._runner, args=(audit_id,),
                                            name=f"hsp-audit-{self.node.config.name}",
                                            daemon=True)
            self._thread.start()
            return audit_id

    def wait(self, audit_id: int, timeout: float) -> dict | None:
        """The record of run AUDIT_ID once it ended (None if not within TIMEOUT)."""
        end = time.monotonic() + timeout
        with self._cv:
            while self.last is None or self.last["id"] < audit_id:
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(min(left, 0.5))
            return dict(self.last)

    def _runner(self, audit_id: int) -> None:
        while audit_id is not None:
            self._one(audit_id)
            with self._cv:
                audit_id, self._queued = self._queued, None

    def _one(self, audit_id: int) -> None:
        node = self.node
        t0 = time.monotonic()
        rec = {"id": audit_id, "chunks": 0, "repairs": 0, "took_ms": 0, "bytes": 0,
               "verified": 0, "repaired": {}, "error": None}
        with self._cv:
            self._current = {"id": audit_id, "diffs": {}, "outstanding": 0,
                             "answered_at": t0}
        try:
            targets = self._targets()
            chans = {t: ch for t, _n, _s, ch in targets}
            # 1. every chunk of every target, slice by slice
            digested = 0
            mine: dict[int, array] = {}  # the active's digests of this round, per chunk
            for target, _name, size, ch in targets:
                nchunks = -(-size // self.chunk)
                mine[target] = array("I", bytes(4 * nchunks))
                for first in range(0, nchunks, self.slice_chunks):
                    count = min(self.slice_chunks, nchunks - first)
                    sent, crcs = self._audit_tx(audit_id, target, ch, first, count)
                    mine[target][first:first + count] = array("I", crcs)
                    rec["bytes"] += sent
                    rec["chunks"] += count
                    digested += min(count * self.chunk, size - first * self.chunk)
                    self._pace(t0, digested)
            candidates = self._await_answers(audit_id)
            # 2. verify what differed (see the module's text)
            if sum(len(c) for c in candidates.values()) > VERIFY_MAX:
                confirmed, candidates = candidates, {}  # a divergence, not a race
            else:
                confirmed = {}
            for rnd in range(1, VERIFY_ROUNDS + 1):
                if not candidates:
                    break
                time.sleep(VERIFY_DELAY_S)
                with self._cv:
                    self._current["diffs"] = {}
                now: dict[int, dict[int, int]] = {}
                for target, chunks in candidates.items():
                    for first, count in _runs(sorted(chunks), self.slice_chunks):
                        sent, crcs = self._audit_tx(audit_id, target, chans[target], first,
                                                    count)
                        now.setdefault(target, {}).update(
                            zip(range(first, first + count), crcs))
                        rec["bytes"] += sent
                        rec["verified"] += count
                answers = self._await_answers(audit_id)
                left: dict[int, set[int]] = {}
                for target, chunks in candidates.items():
                    for c in answers.get(target, set()) & chunks:
                        # the same bytes here as last round, and still different there
                        # (or differing every round): damaged, not a write in passing
                        if now[target][c] == mine[target][c] or rnd == VERIFY_ROUNDS:
                            confirmed.setdefault(target, set()).add(c)
                        else:
                            left.setdefault(target, set()).add(c)
                        mine[target][c] = now[target][c]
                candidates = left
            # 3. repair from the active's current bytes
            rec["bytes"] += self._repair(confirmed, rec)
        except Exception as exc:  # noqa: BLE001 - recorded, alarmed, the node keeps running
            rec["error"] = str(exc)
            with node._lock:
                node._alarm(f"audit {audit_id} failed: {exc}")
        rec["took_ms"] = round((time.monotonic() - t0) * 1000, 1)
        with node._lock:
            self._finish(rec)

    def _audit_tx(self, audit_id: int, target: int, ch: Channel, first: int,
                  count: int) -> tuple[int, list[int]]:
        """Digest chunks FIRST.. of TARGET and submit them, under the lock; the bytes sent
        and the digests."""
        node = self.node
        if node._stop:
            raise AuditFailed("the node is closing")
        with node._lock:
            why = self._refusal()
            if why is not None:
                raise AuditFailed(why)
            # a transaction fence: the node writes its copy under this lock right before it
            # submits, so every write in the copy is in the stream, and only those
            return self._submit_audit(audit_id, target, ch, first, count)

    def _submit_audit(self, audit_id: int, target: int, ch: Channel, first: int,
                      count: int) -> tuple[int, list[int]]:
        """Under the lock, at a transaction fence: digest and submit."""
        node = self.node
        crcs = self._digests(target, first, count)
        msg = ifa.encode_audit(audit_id, target, self.chunk, first, crcs)
        with self._cv:
            self._current["outstanding"] += 1
            self._current["answered_at"] = time.monotonic()  # (the wait counts from here)
        _, actions = node.session.submit(ch, msg, Commit.ASYNC)
        node._run(actions)
        return len(msg), crcs

    def _pace(self, t0: float, digested: int) -> None:
        ahead = digested / self.rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)

    def _await_answers(self, audit_id: int) -> dict[int, set[int]]:
        with self._cv:
            cur = self._current
            while cur["outstanding"] > 0:
                if self.node._stop:
                    raise AuditFailed("the node is closing")
                if time.monotonic() - cur["answered_at"] > REPLY_WAIT_S:
                    raise AuditFailed(f"the standby did not answer {cur['outstanding']} audit "
                                      f"transaction(s) within {REPLY_WAIT_S:.0f} s")
                self._cv.wait(0.2)
            return {t: set(c) for t, c in cur["diffs"].items() if c}

    def _repair(self, confirmed: dict[int, set[int]], rec: dict) -> int:
        node = self.node
        sent = 0
        last: dict[Channel, int] = {}
        for target, chunks in sorted(confirmed.items()):
            ch = Channel.PMEM if target == ifa.AUDIT_PMEM else Channel.DISK
            size = len(node._pmem) if target == ifa.AUDIT_PMEM else node._disks[target].size
            for first, count in _runs(sorted(chunks), REPAIR_CHUNKS):
                off = first * self.chunk
                length = min(count * self.chunk, size - off)
                with node._lock:
                    why = self._refusal()
                    if why is not None:
                        raise AuditFailed(f"repair stopped: {why}")
                    data = self._read(target, off, length)
                    msg = (ifa.encode_pmem([(off, data)]) if target == ifa.AUDIT_PMEM else
                           ifa.encode_disk([(target, off, data)], flush=True))
                    # applied: the run ends when the standby holds them (the ack comes with
                    # the peer's next frame; async would leave it to some later one)
                    txid, actions = node.session.submit(ch, msg, Commit.APPLIED)
                    node._run(actions)
                last[ch] = txid
                sent += len(msg)
            rec["repairs"] += len(chunks)
            rec["repaired"][self._name(target)] = sorted(chunks)[:DONE_LIST_MAX]
        end = time.monotonic() + node.config.timeouts.commit / 1000 + REPLY_WAIT_S
        with node._cv:
            for ch, txid in last.items():
                while node._marks[ch][2] < txid:
                    left = end - time.monotonic()
                    if left <= 0 or node._dead:
                        raise AuditFailed(f"the standby did not apply the repairs on "
                                          f"{ch.name.lower()} in time")
                    node._cv.wait(min(left, 0.5))
        return sent

    def _finish(self, rec: dict) -> None:
        """Record run REC (under node._lock): status, the engine's note, the standby told."""
        node = self.node
        with self._cv:
            self._current = None
            self.runs += 1
            self.total_repairs += rec["repairs"]
            self.bytes += rec["bytes"]
            self.last = rec
            self._cv.notify_all()
        if rec["error"] is None:
            fo = node.failover
            if fo is not None:
                fo._note("audit_done", fo.clock(), repairs=rec["repairs"], chunks=rec["chunks"])
            node._report({"audit": "done", "id": rec["id"], "repairs": rec["repairs"],
                          "chunks": rec["chunks"], "repaired": rec["repaired"]})

    # ---- periodic ---------------------------------------------------------------------------
    def start_periodic(self) -> None:
        if not self.interval_s or self._periodic is not None:
            return
        self._periodic = threading.Thread(target=self._every, daemon=True,
                                          name=f"hsp-audit-every-{self.node.config.name}")
        self._periodic.start()

    def _every(self) -> None:
        node = self.node
        next_at = time.monotonic() + self.interval_s
        while not node._stop:
            time.sleep(min(1.0, max(0.0, next_at - time.monotonic())))
            if time.monotonic() < next_at:
                continue
            next_at = time.monotonic() + self.interval_s
            with node._lock:
                why = self._refusal()
            busy = self._thread is not None and self._thread.is_alive()
            if why is None and not busy:
                try:
                    self.start_run()
                except NodeError:
                    pass  # the pair moved meanwhile: the next period tries again

    # ---- status -----------------------------------------------------------------------------
    def status(self) -> dict:
        running = self._thread is not None and self._thread.is_alive()
        st = {"runs": self.runs, "running": running, "total_repairs": self.total_repairs,
              "bytes": self.bytes, "chunk": self.chunk, "rate": self.rate,
              "interval_s": self.interval_s}
        if self.last is not None:
            last = self.last
            st["last"] = {k: last[k] for k in ("id", "chunks", "repairs", "took_ms", "bytes",
                                               "verified", "error")}
        if self.answered:
            st["answered"] = self.answered
            st["differing"] = self.differing
        if self.last_done is not None:
            st["last_done"] = {k: self.last_done.get(k) for k in ("id", "repairs", "chunks")}
        return st

    def control(self, request: dict) -> dict:
        """The control socket's "audit": start one, wait up to ``wait_s`` (default 30) for
        its end, answer its record (or that it still runs)."""
        audit_id = self.start_run()
        wait_s = request.get("wait_s", 30.0)
        try:
            wait_s = max(0.0, min(float(wait_s), 3600.0))
        except (TypeError, ValueError):
            raise NodeError(f"wait_s should be a number of seconds, not {wait_s!r}") from None
        rec = self.wait(audit_id, wait_s) if wait_s > 0 else None
        if rec is None:
            return {"id": audit_id, "done": False,
                    "detail": f"audit {audit_id} runs; hsp status shows its end"}
        if rec["error"] is not None:
            raise NodeError(f"audit {audit_id} failed: {rec['error']}")
        return {"done": True, **rec}
