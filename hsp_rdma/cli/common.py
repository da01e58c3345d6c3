"""What every hsp CLI shares: documented exit codes, a parser that exits 64 on usage errors
and shows every default in --help, consoles that print text as it is (no rich markup), and
one way to turn an HspError into a single clear line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import IO, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from hsp_rdma.errors import HspError, LabTimeout, UsageError
from hsp_rdma.lab.lab import check_lab_id

EXIT_OK = 0
EXIT_FAILED = 1  # the check or the operation failed
EXIT_USAGE = 64  # sysexits EX_USAGE
EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE: a needed program, module or device is absent
EXIT_TIMEOUT = 124  # as timeout(1)

EXIT_CODES_HELP = (
    "exit codes: 0 ok, 1 failed, 64 usage error, 69 something needed is unavailable, "
    "124 timeout"
)


def make_console(file: IO[str] | None = None, width: int | None = None,
                 stderr: bool = False, soft_wrap: bool = False) -> Console:
    """A console that prints strings literally: rich markup and emoji codes are off, so
    units in brackets ("t_min [msec]") and user text ("[/x]") survive; styles are given
    explicitly (style=, rich.text.Text). 120 columns when not a terminal (CI logs, pipes),
    so tables keep their perftest column words instead of being cut at rich's 80."""
    kw: dict[str, Any] = {"file": file, "stderr": stderr, "soft_wrap": soft_wrap,
                          "markup": False, "emoji": False, "highlight": False}
    c = Console(width=width, **kw)
    if width is None and not c.is_terminal:
        c = Console(width=120, **kw)
    return c


err_console = make_console(stderr=True, soft_wrap=True)  # an error stays one line for grep


def literal(update: Callable[..., object]) -> Callable[[str], None]:
    """A step callback for rich's status and progress texts, which parse markup whatever
    the console says: each message goes through as a Text, so it shows as written."""
    return lambda msg: update(Text(msg))


class HelpFormatter(argparse.HelpFormatter):
    """Appends " (default: X)" to an option's help unless the help already names its
    default or there is none worth naming (None, False, SUPPRESS)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or default is None or default is False
                or default == argparse.SUPPRESS or isinstance(action, argparse._HelpAction)):
            return text
        return text + " (default: %(default)s)"


class RawDescriptionHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """HelpFormatter for parsers whose description is preformatted (a module docstring)."""


class Parser(argparse.ArgumentParser):
    """argparse that exits with EX_USAGE (64), as sysexits documents, not argparse's 2, and
    shows defaults in --help (HelpFormatter unless told otherwise).

    ``checks`` run on the whole namespace once parsing is done (rules that join options);
    each returns what is wrong, or None. ``late_defaults`` of a subcommand are the defaults
    of options it shares with its parent (--lab-id before or after the subcommand): argparse
    would let the subcommand's default overwrite a value given before it, so the parent
    fills these in after parsing, only where neither place gave one."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.checks: list[Callable[[argparse.Namespace], str | None]] = []
        self.late_defaults: dict[str, Any] = {}

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        ns, rest = super().parse_known_args(args, namespace)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(ns, action.dest, None))
                for dest, value in getattr(chosen, "late_defaults", {}).items():
                    if not hasattr(ns, dest):
                        setattr(ns, dest, value)
        for check in self.checks:
            problem = check(ns)
            if problem:
                self.error(problem)
        return ns, rest

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        err_console.print(f"{self.prog}: error: {message}")
        sys.exit(EXIT_USAGE)


def bounded(kind: Callable[[str], float], lo: float, hi: float, name: str):
    """An argparse type that checks the bound at parse time (perftest's habit)."""
    what = "a whole number" if kind is int else "a number"

    def parse(text: str):
        try:
            val = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} '{text}' is not {what}") from None
        if not lo <= val <= hi:
            raise argparse.ArgumentTypeError(f"{name} should be between {lo:g} and {hi:g}")
        return val

    return parse


def lab_id_arg(text: str) -> str:
    """argparse type: a lab id, checked at parse time by the lab's own rule."""
    try:
        return check_lab_id(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_lab_id(parser: Parser, default: str | None, help: str,
               subcommand: bool = False) -> None:
    """--lab-id ID on PARSER. On a SUBCOMMAND its default is a late default (see Parser), so
    `tool --lab-id X cmd` and `tool cmd --lab-id X` both work and neither is overwritten."""
    if subcommand:
        parser.add_argument("--lab-id", type=lab_id_arg, metavar="ID", default=argparse.SUPPRESS,
                            help=help + (f" (default: {default})" if default else ""))
        if default is not None:
            parser.late_defaults["lab_id"] = default
    else:
        parser.add_argument("--lab-id", type=lab_id_arg, metavar="ID",
                            default=argparse.SUPPRESS if default is None else default,
                            help=help)


def table(title: str, *columns: str, justify: str = "right") -> Table:
    """A rich Table whose title and column headers are Text, so they stay literal ("t_min
    [msec]") on any console, markup on or off."""
    t = Table(title=Text(title))
    for col in columns:
        t.add_column(Text(col), justify=justify)  # type: ignore[arg-type]
    return t


def goal_cell(text: str, met: bool) -> Text:
    """A goal's cell: green when met, red when missed."""
    return Text(text, style="green" if met else "red")


def blackout_goal(r: dict) -> tuple[tuple[str, str], tuple[str, Text]]:
    """The GSO bench's blackout goal as two columns (headers, cells): each run's overhead
    (its blackout less its own copy and verify), and the verdict on their median."""
    over = r.get("overhead_ms") or {}
    slack = r.get("blackout_slack_ms", 20)
    return (("overhead: blackout - copy - verify, per run [msec]",
             f"goal: overhead t_typical <= {slack:g} [msec]"),
            (f"{over['p50']:.1f} (max {over['max']:.1f})" if over else "-",
             goal_cell("met" if r["blackout_goal_met"] else "missed", r["blackout_goal_met"])))


def copy_spread(r: dict) -> Text | None:
    """The GSO bench's per-run stop-and-copy rates as one line (min .. max; the table gives
    their median), so a reader sees how far one run is to be read; None under two runs."""
    per = [p["copy_MBps"] for p in r.get("per_run") or () if p.get("copy_MBps")]
    if len(per) < 2:
        return None
    return Text(f"stop-and-copy per run [MB/sec]: {min(per):.2f} .. {max(per):.2f} over "
                f"{len(per)} runs (the table: their median)", style="dim")


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """Run BODY; an HspError becomes one line on stderr and its documented exit code."""
    try:
        return body()
    except LabTimeout as exc:
        err_console.print(Text.assemble((f"{prog}:", "bold red"), f" {exc}"))
        return EXIT_TIMEOUT
    except HspError as exc:
        err_console.print(Text.assemble((f"{prog}:", "bold red"), f" {exc}"))
        return getattr(exc, "exit_code", EXIT_FAILED)
    except KeyboardInterrupt:
        err_console.print(f"{prog}: interrupted")
        return 130
