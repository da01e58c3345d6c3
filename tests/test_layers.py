"""The layers of DESIGN.md as a test: imports point one way.

`cext/` imports nothing of the project but the exception tree; `ha/` (the engine, which runs
on real hosts) imports neither the lab nor the CLIs; nothing below the tools layer imports it;
`core/` (sans-IO) imports no I/O layer.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "hsp_rdma"


def project_imports(path: Path) -> set[str]:
    """The hsp_rdma modules PATH imports (absolute names), at any depth of the file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".pyx", ".pxd"):
        return set(re.findall(r"^\s*(?:from|import|cimport)\s+(hsp_rdma[\w.]*)", text, re.MULTILINE))
    found = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                raise AssertionError(f"{path}: relative import; write hsp_rdma.… in full")
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "hsp_rdma" or m.startswith("hsp_rdma.")}


def imports_of(folder: str) -> dict[str, set[str]]:
    root = PKG / folder
    files = [p for p in root.rglob("*") if p.suffix in (".py", ".pyx", ".pxd")]
    assert files, f"no sources under {root}"
    return {str(p.relative_to(PKG.parent)): project_imports(p) for p in files}


def offenders(folder: str, allowed) -> list[str]:
    return [f"{f} imports {m}" for f, mods in imports_of(folder).items() for m in sorted(mods)
            if not allowed(m)]


def test_cext_imports_only_itself_and_errors() -> None:
    assert offenders("cext", lambda m: m in ("hsp_rdma.errors",)
                     or m.startswith("hsp_rdma.cext")) == []


@pytest.mark.parametrize("folder", ["ha", "core", "via"])
def test_engine_and_below_never_import_lab_cli_or_tools(folder: str) -> None:
    upward = ("hsp_rdma.lab", "hsp_rdma.cli", "hsp_rdma.tools")
    assert offenders(folder, lambda m: not m.startswith(upward)) == []


# The compiled CRC32C does no I/O (pure computation in C): the one cext module core may use.
PURE_CEXT = ("hsp_rdma.cext.crc32c",)


def test_core_is_sans_io() -> None:
    io_layers = ("hsp_rdma.via", "hsp_rdma.cext", "hsp_rdma.ha", "hsp_rdma.lab")
    assert offenders("core", lambda m: m in PURE_CEXT or not m.startswith(io_layers)) == []


def test_lab_does_not_import_the_engine_or_above() -> None:
    above = ("hsp_rdma.ha", "hsp_rdma.cli", "hsp_rdma.tools", "hsp_rdma.via")
    assert offenders("lab", lambda m: not m.startswith(above)) == []


def test_tools_never_import_the_clis() -> None:
    assert offenders("tools", lambda m: not m.startswith("hsp_rdma.cli")) == []
