"""hsp-lab guest agent (stage 2, PID 1): brings up the fabrics and rdma devices, then runs jobs.

Runs inside the QEMU guest with Debian's /usr/bin/python3 and the stdlib only. It talks to the
host through the writable 9p share mounted at /hsp: config.json in, ready.json (or failed.json)
out, and one directory per job under /hsp/jobs (cmd.json in; stdout, stderr, status.json out).
"""

import json
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
import traceback

SHARE = "/hsp"
JOBS = os.path.join(SHARE, "jobs")
POLL_S = 0.05  # a stat of the jobs directory: one 9p round trip
SCAN_S = 1.0  # a full listing regardless, in case two changes fell in one mtime tick
JOB_PIDS = set()  # pids of running job commands, owned by their Job thread
JOB_LOCK = threading.Lock()  # held while a job starts, so reap() never sees it half-made


def sh(*argv, check=True):
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {res.returncode}: {res.stderr.strip()}")
    return res.stdout


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.rename(tmp, path)


def netdev_by_mac(mac):
    for dev in os.listdir("/sys/class/net"):
        try:
            with open(f"/sys/class/net/{dev}/address") as f:
                if f.read().strip().lower() == mac.lower():
                    return dev
        except OSError:
            continue
    raise RuntimeError(f"no network interface has MAC {mac}")


def port_state(ibdev):
    try:
        with open(f"/sys/class/infiniband/{ibdev}/ports/1/state") as f:
            return f.read().strip()
    except OSError:
        return "absent"


def gid_index(ibdev, rdma, ipv4):
    """rxe: the RoCE v2 GID of the IPv4 address; siw (iWARP): index 0."""
    if rdma == "siw":
        return 0
    want = "0000:0000:0000:0000:0000:ffff:" + "{:02x}{:02x}:{:02x}{:02x}".format(
        *map(int, ipv4.split("."))
    )
    base = f"/sys/class/infiniband/{ibdev}/ports/1"
    for i in range(16):
        try:
            with open(f"{base}/gids/{i}") as f:
                gid = f.read().strip()
            with open(f"{base}/gid_attrs/types/{i}") as f:
                kind = f.read().strip()
        except OSError:
            continue
        if gid == want and kind == "RoCE v2":
            return i
    return None


def bring_up(cfg):
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    with open("/proc/sys/kernel/hostname", "w") as f:
        f.write(cfg["node"])
    sh("ip", "link", "set", "lo", "up")
    sh("modprobe", "-a", "ib_uverbs", "rdma_ucm", "rdma_rxe" if cfg["rdma"] == "rxe" else "siw")
    out = []
    for fab in cfg["fabrics"]:
        dev = netdev_by_mac(fab["mac"])
        if dev != fab["netdev"]:
            sh("ip", "link", "set", dev, "name", fab["netdev"])
        sh("ip", "link", "set", fab["netdev"], "up")
        sh("ip", "addr", "add", fab["ipv4"] + "/24", "dev", fab["netdev"])
        sh("rdma", "link", "add", fab["rdma_dev"], "type", cfg["rdma"], "netdev", fab["netdev"])
    deadline = time.monotonic() + cfg.get("port_timeout", 30)
    for fab in cfg["fabrics"]:
        while "ACTIVE" not in port_state(fab["rdma_dev"]):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{fab['rdma_dev']} port 1 is '{port_state(fab['rdma_dev'])}', "
                    f"not ACTIVE after {cfg.get('port_timeout', 30)} s"
                )
            time.sleep(0.1)
        idx = None
        while idx is None and time.monotonic() <= deadline:
            idx = gid_index(fab["rdma_dev"], cfg["rdma"], fab["ipv4"])
            if idx is None:
                time.sleep(0.1)
        if idx is None:
            raise RuntimeError(f"{fab['rdma_dev']}: no RoCE v2 GID for {fab['ipv4']}")
        out.append(dict(fab, gid_index=idx, port_state=port_state(fab["rdma_dev"])))
    return out


class Job(threading.Thread):
    def __init__(self, jid):
        super().__init__(daemon=True)
        self.jid = jid
        self.dir = os.path.join(JOBS, jid)
        # Written to when the host posts jobs/<jid>.kill; the job sleeps on it and on a
        # pidfd, so a running job costs no polling.
        self.kill_r, self.kill_w = os.pipe()

    def request_kill(self):
        os.write(self.kill_w, b"k")

    def run(self):
        status = {"rc": None, "timed_out": False, "killed": False, "error": None}
        try:
            with open(os.path.join(self.dir, "cmd.json")) as f:
                cmd = json.load(f)
            with open(os.path.join(self.dir, "stdout"), "wb", buffering=0) as out, open(
                os.path.join(self.dir, "stderr"), "wb", buffering=0
            ) as err:
                proc = None
                try:
                    JOB_LOCK.acquire()
                    proc = subprocess.Popen(
                        cmd["argv"],
                        cwd=cmd.get("cwd") or "/",
                        env=cmd.get("env"),
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=err,
                        start_new_session=True,
                    )
                except OSError as exc:
                    cwd = cmd.get("cwd") or "/"
                    what = (f"working directory {cwd} does not exist in this node"
                            if not os.path.isdir(cwd) else exc.strerror)
                    status["error"] = f"cannot start {cmd['argv'][0]}: {what}"
                    status["rc"] = 127
                    return
                finally:
                    if proc is not None:
                        JOB_PIDS.add(proc.pid)
                    JOB_LOCK.release()
                deadline = time.monotonic() + cmd.get("timeout", 3600)
                pidfd = os.pidfd_open(proc.pid)
                try:
                    while proc.poll() is None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            status["timed_out"] = True
                        elif select.select([pidfd, self.kill_r], [], [], left)[0] == [
                            self.kill_r
                        ]:
                            status["killed"] = True
                        if status["timed_out"] or status["killed"]:
                            try:
                                os.killpg(proc.pid, signal.SIGKILL)
                            except ProcessLookupError:
                                pass
                            proc.wait()
                finally:
                    os.close(pidfd)
                status["rc"] = proc.returncode
                JOB_PIDS.discard(proc.pid)
                # Everything the command left behind in its session ends with it.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        except Exception as exc:  # noqa: BLE001 - reported to the host, never silent
            status["error"] = f"agent: {exc!r}"
        finally:
            write_json(os.path.join(self.dir, "status.json"), status)


def reap():
    """PID 1 duty: reap orphans re-parented to us, but never a job's own child (its Popen
    must see the real exit status). waitid(WNOWAIT) peeks without reaping; cheap, unlike a
    scan of /proc."""
    while True:
        time.sleep(1)
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                break
            if info is None:
                break
            with JOB_LOCK:
                if info.si_pid in JOB_PIDS:
                    break  # the job's thread collects it within POLL_S
                try:
                    os.waitpid(info.si_pid, os.WNOHANG)
                except ChildProcessError:
                    pass


def main():
    os.makedirs(JOBS, exist_ok=True)
    try:
        with open(os.path.join(SHARE, "config.json")) as f:
            cfg = json.load(f)
        t0 = time.monotonic()
        fabrics = bring_up(cfg)
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        write_json(
            os.path.join(SHARE, "ready.json"),
            {
                "node": cfg["node"],
                "rdma": cfg["rdma"],
                "fabrics": fabrics,
                "kernel": os.uname().release,
                "bring_up_s": round(time.monotonic() - t0, 2),
                "uptime_s": uptime,
            },
        )
    except Exception as exc:  # noqa: BLE001 - the host reads and reports this
        write_json(
            os.path.join(SHARE, "failed.json"),
            {"error": str(exc), "trace": traceback.format_exc()},
        )
        print(f"hsp-lab agent: bring-up failed: {exc}", file=sys.stderr, flush=True)
    threading.Thread(target=reap, daemon=True).start()
    # Polling a 9p directory costs guest CPU, and under TCG the guest CPU is what RDMA runs
    # on: look at the directory's stat every POLL_S and list it only when it changed.
    jobs = {}
    last_key, last_scan = None, 0.0
    while True:
        time.sleep(POLL_S)
        try:
            st = os.stat(JOBS)
            key = (st.st_mtime_ns, st.st_nlink, st.st_size)
        except OSError:
            key = None
        now = time.monotonic()
        if key == last_key and now - last_scan < SCAN_S:
            continue
        last_key, last_scan = key, now
        try:
            names = set(os.listdir(JOBS))
        except OSError:
            continue
        for name in names:
            if name.endswith(".kill"):
                job = jobs.get(name[: -len(".kill")])
                if job is not None:
                    job.request_kill()
            elif not name.endswith(".tmp") and name not in jobs:
                jobs[name] = Job(name)
                jobs[name].start()
        for jid in [j for j in jobs if j not in names]:
            job = jobs.pop(jid)
            os.close(job.kill_r)
            os.close(job.kill_w)


if __name__ == "__main__":
    main()
