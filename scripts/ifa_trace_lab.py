"""Where one Interface A commit's time goes, in the lab: timestamps along the path of each
transaction on both nodes, the loop threads' CPU at a fixed rate, and (--profile) a cProfile
of the standby's loop thread. Not a test, not a bench: a measuring harness (it wraps the
node's and the verbs provider's methods, so every figure carries a few us of its own).

Standby on lab node a, then the active on b (run both under flock /tmp/hsp-bench.lock):

    hsp-lab --lab-id L exec a -- env PYTHONPATH=/work/main .venv/bin/python \
        scripts/ifa_trace_lab.py --role standby --name a --peer-name b --device rxe0 \
        --local 10.77.1.1 --peer 10.77.1.2 [--profile]
    hsp-lab --lab-id L exec b -- env PYTHONPATH=/work/main .venv/bin/python \
        scripts/ifa_trace_lab.py --role active --name b --peer-name a --device rxe0 \
        --local 10.77.1.2 --peer 10.77.1.1 [--mode applied|received] [--n 300] [--rate 700]

Marks: active C0 commit called, S/Se around its post_send, W its loop woken (take_event),
R/Re around _on_recv, C1 commit returned; standby W woken, R frame in hand, A/Ae around
_apply, S/Se around the ack's post_send. Medians of each step are printed.
"""
import argparse
import cProfile
import io
import pstats
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--role"); p.add_argument("--device"); p.add_argument("--local"); p.add_argument("--peer")
p.add_argument("--name"); p.add_argument("--peer-name"); p.add_argument("--n", type=int, default=300)
p.add_argument("--rate", type=int, default=700); p.add_argument("--rate-s", type=float, default=6)
p.add_argument("--profile", action="store_true"); p.add_argument("--mode", default="applied")
a = p.parse_args()
from hsp_rdma.ha import node as N
from hsp_rdma.tools import ifa_pair
from hsp_rdma.via.providers import verbs as V

ns = time.perf_counter_ns
T = []
ON = [False]
def rec(tag):
    if ON[0]: T.append((tag, ns()))
orig_take = V.CompletionQueue.take_event
def take_event(self):
    rec("W"); return orig_take(self)
V.CompletionQueue.take_event = take_event
orig_onrecv = N.Node._on_recv
def _on_recv(self, *args):
    rec("R"); r = orig_onrecv(self, *args); rec("Re"); return r
N.Node._on_recv = _on_recv
orig_apply = N.Node._apply
def _apply(self, *args):
    rec("A"); r = orig_apply(self, *args); rec("Ae"); return r
N.Node._apply = _apply
orig_ps = N.Node._post_send
def _post_send(self, *args):
    rec("S"); r = orig_ps(self, *args); rec("Se"); return r
N.Node._post_send = _post_send
prof = cProfile.Profile()
orig_body = N.Node._loop_body
def _loop_body(self):
    if a.profile:
        prof.enable()
    try:
        return orig_body(self)
    finally:
        if a.profile:
            prof.disable()
N.Node._loop_body = _loop_body

ns_args = ["--name", a.name, "--peer-name", a.peer_name, "--role", a.role, "--device", a.device,
           "--local", a.local, "--peer", a.peer, "--state-dir", f"/tmp/ifa-trace-{a.name}"]
pa = argparse.Namespace(name=a.name, peer_name=a.peer_name, role=a.role, device=a.device, local=a.local,
    peer=a.peer, state_dir=f"/tmp/ifa-trace-{a.name}", pmem=4<<20, disk_size=0, message_size=65536,
    credits=16, commit_timeout=30000, connect_timeout=120000)
node = N.Node(ifa_pair._config(pa)).start()
print("started", a.role, flush=True)
def cpu():
    return time.clock_gettime(time.pthread_getcpuclockid(node._thread.ident)), time.monotonic(), time.process_time()
if a.role == "standby":
    while True:
        try:
            m = node.oam.recv(timeout=1)
        except N.NodeError:
            continue
        if m == b"on":
            ON[0] = True
        elif m == b"off":
            ON[0] = False
        elif m == b"cpu0":
            c0 = cpu()
        elif m == b"cpu1":
            c1 = cpu()
            print("standby loop cpu % over", round(c1[1]-c0[1],2), "s:", round(100*(c1[0]-c0[0])/(c1[1]-c0[1]),1),
                  "process %", round(100*(c1[2]-c0[2])/(c1[1]-c0[1]),1), flush=True)
        elif m == b"quit":
            break
    time.sleep(0.2)
    # per-wake analysis: W ... R .. A .. Ae .. S Se
    rows = []; cur = None
    for tag, t in T:
        if tag == "W": cur = {"W": t}; rows.append(cur)
        elif cur is not None and tag not in cur: cur[tag] = t
    def med(xs):
        xs = sorted(xs); return xs[len(xs)//2] / 1000 if xs else None
    full = [r for r in rows if all(k in r for k in ("R", "A", "Ae", "S", "Se"))]
    print("standby wakes", len(rows), "with apply+ack", len(full))
    for k0, k1 in (("W", "R"), ("R", "A"), ("A", "Ae"), ("Ae", "S"), ("S", "Se"), ("W", "Se")):
        print(f"  standby {k0}->{k1} median us {med([r[k1]-r[k0] for r in full])}")
    node.close()
    if a.profile:
        s = io.StringIO(); pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(35); print(s.getvalue())
        s = io.StringIO(); pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(40); print(s.getvalue())
    sys.exit(0)
# active
for i in range(50):
    with node.pmem.transaction(commit=a.mode) as t: t.write(0, b"L"*64)
node.oam.send(b"on"); time.sleep(0.3)
ON[0] = True
lat = []
for i in range(a.n):
    rec("C0")
    with node.pmem.transaction(commit=a.mode) as t: t.write((i*64) % (1<<20), b"L"*64)
    rec("C1")
ON[0] = False
node.oam.send(b"off")
rows = []; cur = None
for tag, t in T:
    if tag == "C0": cur = {"C0": t}; rows.append(cur)
    elif cur is not None and tag not in cur: cur[tag] = t
def med(xs):
    xs = sorted(xs); return xs[len(xs)//2] / 1000 if xs else None
full = [r for r in rows if all(k in r for k in ("S", "Se", "W", "R", "Re", "C1"))]
print("active commits", len(rows), "full", len(full))
for k0, k1 in (("C0", "S"), ("S", "Se"), ("Se", "W"), ("W", "R"), ("R", "Re"), ("Re", "C1"), ("C0", "C1")):
    print(f"  active {k0}->{k1} median us {med([r[k1]-r[k0] for r in full])}")
print("  other tags seen", sorted({t for r in rows for t in r}))
# rate phase for cpu
node.oam.send(b"cpu0"); time.sleep(0.3)
c0 = cpu(); n = 0; t0 = time.monotonic()
while time.monotonic() - t0 < a.rate_s:
    due = t0 + n / a.rate
    now = time.monotonic()
    if due > now: time.sleep(due - now)
    with node.pmem.transaction(commit="async") as t: t.write((n*64) % (1<<20), b"C"*64)
    n += 1
node.sync(); c1 = cpu()
print("active rate", round(n/(c1[1]-c0[1]),1), "loop cpu %", round(100*(c1[0]-c0[0])/(c1[1]-c0[1]),1),
      "process %", round(100*(c1[2]-c0[2])/(c1[1]-c0[1]),1), flush=True)
node.oam.send(b"cpu1"); time.sleep(0.5)
node.oam.send(b"quit"); time.sleep(1)
node.close()
