"""What a drill runner must give back and how a drill is judged: ``DrillRunner.run(scenario)``
returns a ``DrillResult`` (what was measured); ``judge`` holds it against the scenario's
checks. Running a drill needs the node engine (hsp_rdma.ha.node) and the failover machine
(hsp_rdma.core.failover); until a runner is built on them, ``make_runner`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hsp_rdma.errors import HspError
from hsp_rdma.tools.drills.scenario import Scenario

# the --json fields of one drill, in the order
REPORT_FIELDS = ("name", "passed", "acknowledged", "lost", "two_actives", "blackout_ms",
                 "detect_ms", "resync_bytes", "audit_repairs")


class DrillsUnavailable(HspError):
    """Drills cannot run here (yet): what is missing and what to do."""

    exit_code = 69  # sysexits EX_UNAVAILABLE


@dataclass(frozen=True, slots=True)
class LabTarget:
    """The built-in two-node lab of soft-RDMA ``kind`` (rxe or siw)."""

    kind: str
    lab_id: str


@dataclass(frozen=True, slots=True)
class HostsTarget:
    """Two real hosts, each named by its node TOML (hsp_rdma.ha.config)."""

    configs: tuple[Path, Path]


Target = LabTarget | HostsTarget


@dataclass(frozen=True, slots=True)
class DrillResult:
    """What one drill measured. Times come from the driver's own clock: ``blackout_ms`` from
    the last ack before the first fault to the first ack after it, ``detect_ms`` from the
    fault to the survivor's suspicion; None when the drill had no such moment."""

    name: str
    acknowledged: int  # transfers in the driver's ack log
    lost: int  # of those, missing from the survivor's ledger or journal
    two_actives: bool  # two nodes acknowledged, or were active, in one epoch or overlapping
    blackout_ms: float | None
    detect_ms: float | None
    resync_bytes: int
    audit_repairs: int
    failover: bool  # a standby promoted itself
    resync: bool  # a resync ran
    problems: tuple[str, ...] = ()  # what the runner saw go wrong (ledger damage, errors)


class DrillRunner(Protocol):
    """Runs one scenario against a pair in the right roles (or refuses before any step) and
    verifies the survivor with tools.drills.ledger.verify_acked."""

    def run(self, scenario: Scenario) -> DrillResult: ...


def judge(scenario: Scenario, result: DrillResult) -> list[str]:
    """Why the drill failed; empty when it passed."""
    c = scenario.checks
    failed = list(result.problems)
    if result.acknowledged == 0:
        failed.append("no transfer was acknowledged: the workload never ran, so nothing "
                      "was shown")
    if result.lost > c.lost:
        failed.append(f"{result.lost} acknowledged transfer(s) lost (allowed: {c.lost})")
    if result.two_actives:
        failed.append("two actives")
    for what, value, bound in (("blackout", result.blackout_ms, c.max_blackout_ms),
                               ("detection", result.detect_ms, c.max_detect_ms)):
        if bound is None:
            continue
        if value is None:
            failed.append(f"no {what} time was measured (bound {bound:g} ms)")
        elif value > bound:
            failed.append(f"{what} {value:.0f} ms > {bound:g} ms")
    for what, happened, wanted in (("failover", result.failover, c.failover),
                                   ("resync", result.resync, c.resync)):
        if wanted is not None and happened != wanted:
            failed.append(f"{what} {'happened' if happened else 'did not happen'}, expected "
                          f"{'one' if wanted else 'none'}")
    if c.audit_repairs is not None and result.audit_repairs != c.audit_repairs:
        failed.append(f"audit repaired {result.audit_repairs} chunk(s), expected "
                      f"{c.audit_repairs}")
    return failed


def report(result: DrillResult, failures: list[str]) -> dict[str, Any]:
    """One drill's --json object: REPORT_FIELDS, then ``failures`` (why it did not pass)."""
    row = {"name": result.name, "passed": not failures}
    row.update({f: getattr(result, f) for f in REPORT_FIELDS[2:]})
    row["failures"] = failures
    return row


@dataclass(frozen=True, slots=True)
class SoftTarget:
    """Two node processes on this host over the soft VIA provider (no RDMA, no lab)."""


def make_runner(target: Target | SoftTarget) -> DrillRunner:
    """The runner for ``target``: this host over soft and the built-in lab run the drills
    the node engine can run today; two real hosts have no runner yet (a pass is never
    pretended)."""
    if isinstance(target, SoftTarget):
        from hsp_rdma.tools.drills.soft_runner import SoftRunner
        return SoftRunner()
    if isinstance(target, LabTarget):
        from hsp_rdma.tools.drills.lab_runner import LabRunner
        return LabRunner(target.kind, target.lab_id)
    where = "the two hosts of " + " and ".join(str(p) for p in target.configs)
    raise DrillsUnavailable(
        f"running drills on {where} is not built yet: the node engine and its failover "
        "engine run (hsp_rdma.ha.failover_engine), but the runner that starts drill nodes "
        "on real hosts and streams their acknowledgements to this driver is missing "
        "(issue 12); none was run. Run them in the lab (--lab rxe|siw) or on this host over "
        "the soft provider (--provider soft)")


def why_unavailable(target: Target | SoftTarget, scenario: Scenario) -> str | None:
    """Why ``scenario`` cannot run on ``target`` today (None: it can)."""
    if isinstance(target, (SoftTarget, LabTarget)):
        from hsp_rdma.tools.drills.soft_runner import unsupported
        return unsupported(scenario)
    return None
