"""Run perftest (ib_write_bw, ib_send_lat, …) between two lab nodes and parse its result table.

The server starts first; a client that the server rejects because it is not listening yet is
retried, and every retry is counted in the result (LAB.md pitfall 1), never hidden.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from hsp_rdma.errors import LabError
from hsp_rdma.lab.lab import FABRICS, ExecResult, Lab

BW_COLUMNS = ("bytes", "iterations", "bw_peak_MBps", "bw_avg_MBps", "msg_rate_Mpps")
LAT_COLUMNS = ("bytes", "iterations", "t_min_us", "t_max_us", "t_typical_us", "t_avg_us",
               "t_stdev_us", "p99_us", "p99_9_us")
# What a client prints when the server's rdma_cm listener is not there (yet).
_NOT_LISTENING = ("REJECTED", "Unable to perform rdma_client", "Couldn't connect",
                  "Failed to connect", "ADDR_ERROR", "UNREACHABLE")
# A run that broke while the two perftest ends set up or exchanged their parameters (seen on
# siw in a heavily loaded host: "Bad wc status -- 5", "Failed to exchange data between server
# and clients"): no measurement was made; run again and say so.
_BROKEN_SETUP = ("Bad wc status", "Failed to exchange data", "Unable to read from socket")


@dataclass
class PerftestResult:
    tool: str
    fabric: str
    device: str
    row: dict[str, float]
    retries: int
    server: ExecResult
    client: ExecResult
    notes: list[str] = field(default_factory=list)


def parse_table(tool: str, text: str) -> dict[str, float]:
    """The numbers under perftest's '#bytes' header, named by BW_COLUMNS or LAT_COLUMNS."""
    cols = LAT_COLUMNS if tool.endswith("_lat") else BW_COLUMNS
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("#bytes"):
            for row in lines[i + 1:]:
                parts = row.split()
                if not parts:
                    continue
                try:
                    values = [float(p) for p in parts[: len(cols)]]
                except ValueError:
                    break
                if len(values) == len(cols):
                    return dict(zip(cols, values))
                break
    raise LabError(f"{tool}: no result table in its output:\n{text.strip()[-600:]}")


def device_args(lab: Lab, node: str, fabric: str) -> list[str]:
    info = lab.info()
    f = info[node][fabric]
    return ["-d", f["rdma_dev"], "-x", str(f["gid_index"]), "-R", "-F"]


def run(lab: Lab, tool: str, fabric: str = "x", args: tuple[str, ...] = (),
        server: str = "a", client: str = "b", timeout: float = 120.0,
        retries: int = 3) -> PerftestResult:
    """TOOL from CLIENT to SERVER on FABRIC (perftest over rdma_cm, -R); parsed client table."""
    if fabric not in FABRICS:
        raise LabError(f"unknown fabric '{fabric}'")
    info = lab.info()
    target = info[server][fabric]["ipv4"]
    srv_argv = [tool, *device_args(lab, server, fabric), *args]
    cli_argv = [tool, *device_args(lab, client, fabric), *args, target]
    notes: list[str] = []
    for attempt in range(retries + 1):
        srv = lab.spawn(server, srv_argv, timeout=timeout)
        time.sleep(0.5 + attempt)
        cli = lab.exec(client, cli_argv, timeout=timeout)
        if cli.ok:
            srv_res = srv.wait(timeout=timeout)
            row = parse_table(tool, cli.stdout)
            if row.get("bw_avg_MBps", 1.0) > 0 and row.get("t_typical_us", 1.0) > 0:
                return PerftestResult(tool, fabric, info[client][fabric]["rdma_dev"], row,
                                      attempt, srv_res, cli, notes)
            # Seen under TCG: a run that completes but reports a 0.00 average. It is not a
            # measurement; run again, and say so.
            notes.append(f"attempt {attempt + 1}: {tool} completed but reported a zero "
                         "result; retried")
            continue
        srv.kill()
        srv_res = srv.wait(timeout=30)
        text = cli.stdout + cli.stderr
        broke = next((s for s in _BROKEN_SETUP if s in text), None)
        if broke and not cli.timed_out:
            notes.append(f"attempt {attempt + 1}: {tool} broke before measuring ({broke!r}); "
                         "retried")
            continue
        if cli.timed_out or not any(s in text for s in _NOT_LISTENING):
            raise LabError(
                f"{tool} {client}->{server} on fabric {fabric} failed "
                f"({'timed out' if cli.timed_out else f'exit {cli.rc}'}):\n"
                f"{text.strip()[-800:]}\nserver said:\n"
                f"{(srv_res.stdout + srv_res.stderr).strip()[-400:]}"
            )
        notes.append(f"attempt {attempt + 1}: client rejected (server not listening yet); retried")
    raise LabError(f"{tool} on fabric {fabric}: no measurement in {retries + 1} attempts: "
                   + "; ".join(notes))


RPING_PORT = 7174  # rping's own default; pair i of one call listens on RPING_PORT + i


@dataclass
class RpingResult:
    """One rping between two lab nodes on one fabric: did RDMA get through?"""

    server: str
    client: str
    fabric: str
    ok: bool
    retries: int
    client_result: ExecResult
    server_result: ExecResult | None
    notes: list[str] = field(default_factory=list)

    @property
    def detail(self) -> str:
        c = self.client_result
        why = "timed out" if c.timed_out else f"exit {c.rc}"
        return (f"rping {self.client}->{self.server} on fabric {self.fabric}: {why}; "
                f"{(c.stdout + c.stderr).strip()[-300:]}")


# What an rping client prints when the server's listener is not there yet: rdma_cm's reject
# (rxe) or a TCP reset (siw). The client may then hang: it is killed and the pair retried.
_RPING_NOT_LISTENING = ("REJECTED", "Connection refused")

# rping before rdma-core 61 (Debian bookworm ships 44) has a teardown race: its CM thread may
# call rdma_get_cm_event on the channel the main thread has just destroyed, and exits 255
# after a run that succeeded (fixed upstream by f3ae6534a, "rping: terminate CM event thread
# before exiting"). Only a client that printed every ping and then only this is taken as ok.
_RPING_TEARDOWN_RACE = "rdma_get_cm_event: Bad file descriptor"


def _rping_ok(rc: int | None, said: str, count: int) -> tuple[bool, str | None]:
    """Did this rping client get COUNT pings through? (ok, a note when the teardown race of
    old rping was forgiven)."""
    pings = said.count("ping data")
    if rc == 0:
        return pings >= count, None
    if rc == 255 and pings >= count and said.rstrip().endswith(_RPING_TEARDOWN_RACE):
        return True, (f"all {pings} pings done; exit 255 from rping's teardown race "
                      f"('{_RPING_TEARDOWN_RACE}', fixed in rdma-core 61) forgiven")
    return False, None


def rping_pairs(lab: Lab, pairs: list[tuple[str, str, str]], count: int = 3,
                timeout: float = 20.0, retries: int = 2) -> list[RpingResult]:
    """rping (RDMA SEND + READ + WRITE over rdma_cm) for every (SERVER, CLIENT, FABRIC) in
    PAIRS, all at once; each client gets TIMEOUT s. A client the server refused because it
    was not listening yet is killed and retried (counted in the result); any other failure, a
    timeout included, is the result (ok False): a cut fabric shows as a timed-out client."""
    info = lab.info()
    for server, client, fabric in pairs:
        for node in (server, client):
            if node not in info or fabric not in info[node]:
                raise LabError(f"rping: node {node} has no fabric {fabric} in this lab "
                               f"(nodes {', '.join(k for k in info if k != 'rdma')})")
    results: dict[int, RpingResult] = {}
    todo = list(range(len(pairs)))
    tries = {i: 0 for i in todo}
    notes: dict[int, list[str]] = {i: [] for i in todo}
    while todo:
        started = []
        for i in todo:
            server, client, fabric = pairs[i]
            addr, port = info[server][fabric]["ipv4"], str(RPING_PORT + i)
            srv = lab.spawn(server, ["rping", "-s", "-a", addr, "-p", port, "-C", str(count),
                                     "-v"], timeout=timeout + 10)
            started.append((i, srv, addr, port))
        # the servers' head start: every one is a process start in a TCG guest
        time.sleep(1.0 + 0.1 * len(todo) + max(tries[i] for i in todo))
        running = {i: (srv, lab.spawn(pairs[i][1], ["rping", "-c", "-a", addr, "-p", port,
                                                     "-C", str(count), "-v"], timeout=timeout))
                   for i, srv, addr, port in started}
        todo = []
        late = time.monotonic() + timeout + 15  # the node's agent went quiet: Job.wait says so
        while running:
            for i, (srv, cli) in list(running.items()):
                cres = cli.poll() if time.monotonic() < late else cli.wait(timeout=1)
                said = "".join(cli.output()) if cres is None else cres.stdout + cres.stderr
                refused = any(s in said for s in _RPING_NOT_LISTENING)
                if cres is None and not (refused and tries[i] < retries):
                    continue
                del running[i]
                if cres is None:  # refused and hanging: end it, then retry
                    cli.kill()
                    cres = cli.wait(timeout=30)
                ok, forgiven = _rping_ok(None if cres.timed_out else cres.rc, said, count)
                if forgiven:
                    notes[i].append(forgiven)
                if not ok:
                    srv.kill()
                sres = srv.wait(timeout=30)
                if not ok and refused and tries[i] < retries:
                    tries[i] += 1
                    notes[i].append(f"attempt {tries[i]}: client refused (server not listening "
                                    "yet); retried")
                    todo.append(i)
                    continue
                results[i] = RpingResult(*pairs[i], ok, tries[i], cres, sres, notes[i])
            time.sleep(0.1)
    return [results[i] for i in range(len(pairs))]
