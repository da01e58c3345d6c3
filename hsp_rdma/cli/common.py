"""What every hsp CLI shares: documented exit codes, a parser that exits 64 on usage errors,
and one way to turn an HspError into a single clear line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from rich.console import Console

from hsp_rdma.errors import HspError, LabTimeout

EXIT_OK = 0
EXIT_FAILED = 1  # the check or the operation failed
EXIT_USAGE = 64  # sysexits EX_USAGE
EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE: a needed program, module or device is absent
EXIT_TIMEOUT = 124  # as timeout(1)

EXIT_CODES_HELP = (
    "exit codes: 0 ok, 1 failed, 64 usage error, 69 something needed is unavailable, "
    "124 timeout"
)

err_console = Console(stderr=True, highlight=False)


def make_console() -> Console:
    """stdout console; 120 columns when not a terminal (CI logs, pipes), so tables keep
    their perftest column words instead of being cut at rich's default of 80."""
    c = Console(highlight=False)
    if not c.is_terminal:
        c = Console(highlight=False, width=120)
    return c


class Parser(argparse.ArgumentParser):
    """argparse that exits with EX_USAGE (64), as sysexits documents, not argparse's 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        err_console.print(f"{self.prog}: error: {message}")
        sys.exit(EXIT_USAGE)


def bounded(kind: Callable[[str], float], lo: float, hi: float, name: str):
    """An argparse type that checks the bound at parse time (perftest's habit)."""

    def parse(text: str):
        try:
            val = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} '{text}' is not a number") from None
        if not lo <= val <= hi:
            raise argparse.ArgumentTypeError(f"{name} should be between {lo:g} and {hi:g}")
        return val

    return parse


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """Run BODY; an HspError becomes one line on stderr and its documented exit code."""
    try:
        return body()
    except LabTimeout as exc:
        err_console.print(f"[bold red]{prog}:[/] {exc}")
        return EXIT_TIMEOUT
    except HspError as exc:
        err_console.print(f"[bold red]{prog}:[/] {exc}")
        return getattr(exc, "exit_code", EXIT_FAILED)
    except KeyboardInterrupt:
        err_console.print(f"{prog}: interrupted")
        return 130
