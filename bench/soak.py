#!/usr/bin/python3
"""Soak: repeated scale-out / scale-in cycles under load on a loopback cluster, watching the
daemons for leaks.

A coordinator (with its router) and N agents on 127.0.0.1, a synthesized model on node-1's
SSD. For --duration seconds: scale out to every other node and wait for the operation, scale
back in and wait, evict the copies from the targets (so that the next scale-out multicasts the
model again), again and again, while a client sends completions through the router's
OpenAI endpoint. After every cycle each daemon's resident memory (VmRSS), open file
descriptors and memory-map count are sampled from /proc, and the agents' fabric
registrations from their metrics. At the end, against the sample after the warm-up cycles:

- RSS growth of every daemon <= --max-rss-growth percent;
- no daemon holds more file descriptors, nor more registered fabric regions;
- every operation accounted for: each SUCCEEDED (none failed, none left running);
- no request failed.

Prints a table and writes --json; exits 1 when a check fails (naming it).
Used by scripts/dev.sh test for a short run (soak_test) and for the recorded 30-minute run
(docs/RELIABILITY.md): `bench/soak.py --duration 1800`.
"""
import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "loadspike"))
from box_cluster import BoxCluster, exit_on_sigterm, prepare_model, ROOT  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "build", "thrift", "gen-py"))


def proc_sample(pid):
    """VmRSS (kB), open fds and memory maps of a process."""
    with open("/proc/%d/status" % pid) as f:
        rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    fds = len(os.listdir("/proc/%d/fd" % pid))
    with open("/proc/%d/maps" % pid) as f:
        maps = sum(1 for _ in f)
    return {"rss_kb": rss, "fds": fds, "maps": maps}


def metric(url, name):
    """Sum of a Prometheus metric's samples; None when the endpoint or the metric is missing."""
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return None
    values = [float(line.split()[-1]) for line in text.splitlines()
              if line.startswith(name + " ") or line.startswith(name + "{")]
    return sum(values) if values else None


def evict(port, model, header):
    """Removes the model from an agent's store (every tier), retrying while a write-behind or a
    drain still holds it; the next scale-out then multicasts it again."""
    from thrift.protocol import TBinaryProtocol
    from thrift.transport import TSocket, TTransport
    from modelcast_rpc import Agent, ttypes
    transport = TTransport.TFramedTransport(TSocket.TSocket("127.0.0.1", port))
    client = Agent.Client(TBinaryProtocol.TBinaryProtocol(transport))
    transport.open()
    try:
        deadline = time.time() + 10
        while True:
            try:
                client.evict(ttypes.MoveRequest(header=header, model=model, blocks=[], tier=""))
                return
            except ttypes.InvalidRequest as e:
                if time.time() > deadline:
                    st = client.getStatus(header)
                    raise RuntimeError("evicting %s on port %d: %s (serving: %s; running: %s)" % (
                        model, port, e.message, st.serving, st.running_operations))
                time.sleep(0.05)
    finally:
        transport.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=1800, help="seconds of cycles [1800]")
    ap.add_argument("--nodes", type=int, default=4, help="agents (node-1 holds the model) [4]")
    ap.add_argument("--warmup", type=float, default=60,
                    help="seconds of cycles before the baseline sample [60]: the coordinator keeps the last "
                         "1000 finished operations for getOperation, and allocators settle")
    ap.add_argument("--rate", type=float, default=4, help="requests per second sent meanwhile [4]")
    ap.add_argument("--keep", action="store_true",
                    help="leave the targets' copies in their stores between cycles (scale-outs then load locally)")
    ap.add_argument("--max-rss-growth", type=float, default=5, help="percent [5]")
    ap.add_argument("--work", help="work directory [a fresh temporary one]")
    ap.add_argument("--json", help="write the samples and the verdict here")
    args = ap.parse_args()
    if args.nodes < 2:
        sys.exit("soak: --nodes must be at least 2")
    if args.duration <= 0:
        sys.exit("soak: --duration must be positive")
    work = args.work or tempfile.mkdtemp(prefix="soak-")
    model = prepare_model(work, "tiny", 2)
    vocab = json.load(open(os.path.join(work, "hf", "config.json")))["vocab_size"]
    from box import Coordinator, send  # noqa: E402 (needs the generated Thrift code on the path)

    metrics_port = {}
    c = BoxCluster(work, args.nodes, loopback=True, serving="max_batch: 4", ssd_copies=[1], prefix="msk",
                   host_capacity="256MiB", metrics=True)
    verdict = {"checks": [], "failed": []}
    try:
        c.mc(["models", "--register", os.path.join(work, "pkg")])
        c.wait_held(model, 1)
        coord = Coordinator(c.ip(1), 7300)
        daemons = {"coordinator": c.coordinator.pid}
        daemons.update({n: p.pid for n, p in c.agents.items()})
        for i in range(1, args.nodes + 1):
            with open(os.path.join(c.run_dir, "node-%d.log" % i)) as f:
                m = re.search(r"metrics on [\d.]+:(\d+)", f.read())
            if m:
                metrics_port["node-%d" % i] = int(m.group(1))

        # The model serving on node-1 first, so that requests always have somewhere to go.
        first = coord.scale_out(model, 1, None, ["node-1"])
        while coord.running(first):
            time.sleep(0.1)
        stop = threading.Event()
        requests = {"ok": 0, "failed": 0, "errors": []}

        class Req:
            prompt, output = 8, 8

        def load():
            i = 0
            while not stop.is_set():
                t0 = time.time()
                ok, _, _, err, _ = send(c.ip(1), model, Req, vocab, i)
                i += 1
                requests["ok" if ok else "failed"] += 1
                if not ok and len(requests["errors"]) < 5:
                    requests["errors"].append(err)
                stop.wait(max(0.0, 1.0 / args.rate - (time.time() - t0)))

        client = threading.Thread(target=load)
        client.start()
        ops, samples = [], []
        end = time.time() + args.duration
        cycle = 0
        others = ["node-%d" % i for i in range(2, args.nodes + 1)]
        started = time.time()
        base_cycle = None
        while time.time() < end or base_cycle is None or cycle <= base_cycle + 5:
            for kind in ("out", "in"):
                t0 = time.time()
                op = (coord.scale_out(model, len(others), None, others) if kind == "out"
                      else coord.scale_in(model, len(others)))
                deadline = time.time() + 120
                while coord.running(op) and time.time() < deadline:
                    time.sleep(0.05)
                st = coord.operation(op)
                state = coord.ttypes.OperationState._VALUES_TO_NAMES[st.state]
                ops.append({"id": op, "kind": kind, "state": state, "seconds": time.time() - t0,
                            "error": st.error})
                if kind == "in" and not args.keep:
                    for i in range(2, args.nodes + 1):
                        evict(c.agent_port(i), model, coord.header)
            sample = {"cycle": cycle, "t": time.time()}
            for name, pid in daemons.items():
                sample[name] = proc_sample(pid)
            for name, port in metrics_port.items():
                sample[name]["fabric_regions"] = metric("http://127.0.0.1:%d/metrics" % port,
                                                        "modelcast_fabric_registered_regions")
            samples.append(sample)
            if base_cycle is None and time.time() - started >= args.warmup:
                base_cycle = cycle
            cycle += 1
        stop.set()
        client.join()

        base, last = samples[base_cycle], samples[-1]
        rows = []
        for name in daemons:
            b, l = base[name], last[name]
            growth = 100.0 * (l["rss_kb"] - b["rss_kb"]) / b["rss_kb"]
            rows.append((name, b["rss_kb"], l["rss_kb"], growth, b["fds"], l["fds"], b.get("fabric_regions"),
                         l.get("fabric_regions")))
            verdict["checks"].append("%s RSS growth %.2f %% (<= %g)" % (name, growth, args.max_rss_growth))
            if growth > args.max_rss_growth:
                verdict["failed"].append("%s: RSS grew %.2f %% (%d -> %d kB)" % (name, growth, b["rss_kb"],
                                                                                   l["rss_kb"]))
            # A request or a call in flight holds a descriptor for a moment: a leak is the fewest
            # open at the end above the most open around the baseline.
            fds_base = max(x[name]["fds"] for x in samples[base_cycle:base_cycle + 5])
            fds_end = min(x[name]["fds"] for x in samples[-5:])
            if fds_end > fds_base:
                verdict["failed"].append("%s: file descriptors %d -> %d (the most around the baseline, the fewest "
                                         "in the last 5 cycles)" % (name, fds_base, fds_end))
            if (l.get("fabric_regions") or 0) > (b.get("fabric_regions") or 0):
                verdict["failed"].append("%s: registered fabric regions %s -> %s" % (
                    name, b.get("fabric_regions"), l.get("fabric_regions")))
        bad_ops = [o for o in ops if o["state"] != "SUCCEEDED"]
        if bad_ops:
            verdict["failed"].append("%d of %d operations did not succeed, first: %s" % (
                len(bad_ops), len(ops), json.dumps(bad_ops[0])))
        if requests["failed"]:
            verdict["failed"].append("%d of %d requests failed, first: %s" % (
                requests["failed"], requests["failed"] + requests["ok"], requests["errors"][:1]))
        print("soak: %d cycles (%d operations, all accounted for: %s) in %.0f s, baseline after cycle %d (%.0f s); "
              "%d requests, %d failed" % (cycle, len(ops), "yes" if not bad_ops else "no",
                                           samples[-1]["t"] - samples[0]["t"], base_cycle,
                                           base["t"] - samples[0]["t"], requests["ok"] + requests["failed"],
                                           requests["failed"]))
        print("%-12s %12s %12s %8s %6s %6s %8s %8s" % ("daemon", "RSS base kB", "RSS end kB", "growth", "fds",
                                                       "fds", "regions", "regions"))
        for r in rows:
            print("%-12s %12d %12d %7.2f%% %6d %6d %8s %8s" % r)
        for f in verdict["failed"]:
            print("soak: FAILED: " + f)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"samples": samples, "operations": ops, "requests": requests, "verdict": verdict,
                           "args": vars(args)}, f, indent=1)
    finally:
        c.down()
    return 1 if verdict["failed"] else 0


if __name__ == "__main__":
    exit_on_sigterm()
    sys.exit(main())
