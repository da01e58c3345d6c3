"""Shared fixtures: `lab`, a running two-node pair per rdma kind (rxe, then siw).

The pair boots once per kind per test run (session scope; pytest groups the tests by kind).
When the lab cannot run, its tests fail under CI=true and skip with the reason elsewhere:
a verbs test that did not run is never reported as passed.
"""

from __future__ import annotations

import os

import pytest

from hsp_rdma.errors import LabError
from hsp_rdma.lab import RDMA_KINDS, Lab
from hsp_rdma.lab.prepare import prepare

LAB_ID = os.environ.get("HSP_TEST_LAB_ID", "pytest")
_prepared: list[object] = []


def lab_unavailable(reason: str) -> None:
    """Fail under CI (a lab test that cannot run is a failure there), skip elsewhere."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"lab cannot run (CI=true, so this fails): {reason}", pytrace=False)
    pytest.skip(f"lab cannot run: {reason}")


@pytest.fixture(scope="session")
def lab_artefacts():
    """The prepared lab cache (kernel, siw, vmlinux, initramfs)."""
    if not _prepared:
        try:
            _prepared.append(prepare())
        except LabError as exc:
            lab_unavailable(str(exc))
    return _prepared[0]


@pytest.fixture(scope="session", params=RDMA_KINDS)
def lab(request: pytest.FixtureRequest, lab_artefacts):
    """A booted pair (nodes a, b; fabrics x, y) with rdma_rxe or siw devices."""
    rdma = request.param
    try:
        lab = Lab(LAB_ID)
        if lab.running():
            lab.down()  # a previous run was interrupted: start clean
        lab.up(rdma=rdma, fabrics=2)
    except LabError as exc:
        Lab(LAB_ID).down()
        lab_unavailable(str(exc))
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture
def healthy_lab(lab: Lab):
    """The session lab, with both nodes powered, running and cabled before and after a test
    (as the drill runner heals it before each drill)."""
    from hsp_rdma.tools.drills.lab_runner import heal

    heal(lab)
    yield lab
    heal(lab)
