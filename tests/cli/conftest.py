"""Helpers for the CLI tests: run a tool as a user would, in a lab directory of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

MODULES = {"hsp-lab": "hsp_rdma.cli.lab", "hsp-bench": "hsp_rdma.cli.bench",
           "scripts/demo": "hsp_rdma.cli.demo"}


@pytest.fixture
def run(tmp_path: Path):
    """run(tool, *args): the tool in a subprocess, labs under a fresh HSP_LAB_DIR."""
    env = dict(os.environ, HSP_LAB_DIR=str(tmp_path / "labs"), COLUMNS="200")

    def go(tool: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", MODULES[tool], *args],
                              capture_output=True, text=True, timeout=60, env=env, check=False)

    return go
