#!/usr/bin/python3
"""serving_share: does a node that serves requests keep its serving throughput while it sends a
multicast? (issue 23, serving-safe senders)

The cluster in a box (bench/box_cluster.py: real coordinator, router, HTTP endpoint and agents,
each node in its own network namespace behind a shaped link). node-1 holds two models on its
SSD: A, which it serves (a local instance: `scale-out A --targets node-1`), and B, which it is
the only holder of. Clients keep node-1 busy with completions of A. The run alternates idle
windows (node-1 only serves) with sending windows (a scale-out of B to fresh targets: node-1
feeds the multicast while it serves; the targets then leave, so that node-1 stays B's only
source). Serving throughput is the tokens node-1 produced per second in each window (each
answer's tokens spread over the time from its first token to its end), summed over the
windows of each kind: the figure is sending / idle (target >= 0.9).

node-1's agent runs alone on CPU 0 (taskset) and everything else on the other CPUs, so that the
node's serving competes only with its own fabric, as on a machine of its own (and each node's
network work runs on its own CPUs: see steer_network_work). Each configuration of `--configs`
runs on a fresh cluster: `default` (the agent's defaults: the fabric at nice 10), `nice<N>`
(fabric.nice: N; nice0 puts the fabric at the serving's priority), `rate:<link rate>`
(fabric.max_send_rate, e.g. rate:1gbit), and `cpus:<list>` (fabric.cpus: node-1's fabric on
CPUs of its own, e.g. cpus:1, a node with a core for its fabric). Each window's line shows
where CPU 0's time went (and the other CPUs' load), node-1's agent's threads' share of it, and
the softirqs CPU 0 ran.

Needs root, iproute2, taskset, and a build (build/bin). Run from the repository root:
  bench/serving_share.py [--configs default,nice0,cpus:1] [--rate 2gbit] [--reps 3] [--work DIR]
The last line printed is one JSON object with every figure.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from box_cluster import ROOT, TOKEN, BoxCluster, die_with_parent, exit_on_sigterm, prepare_model  # noqa: E402


def fabric_extra(config):
    if config == "default":
        return ""
    if config.startswith("nice"):
        return "nice: " + config[len("nice"):]
    if config.startswith("rate:"):
        return "max_send_rate: " + config[len("rate:"):]
    if config.startswith("cpus:"):
        return "cpus: '%s'" % config[len("cpus:"):]
    sys.exit("serving_share: unknown configuration '%s' (default, nice<N>, rate:<link rate>, cpus:<list>)" % config)


def cpu_mask(cpus):
    """taskset's list ("1-3,5") -> the hex mask rps_cpus takes."""
    mask = 0
    for part in cpus.split(","):
        lo, _, hi = part.partition("-")
        for c in range(int(lo), int(hi or lo) + 1):
            mask |= 1 << c
    return "%x" % mask


def cpu_snapshot(pid):
    """CPU 0's time by kind (/proc/stat) and node-1's agent's threads' time by name, in ticks."""
    cpu0, others = None, [0] * 7
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu0 "):
                v = [int(x) for x in line.split()[1:8]]
                cpu0 = dict(zip(["user", "nice", "system", "idle", "iowait", "irq", "softirq"], v))
            elif line.startswith("cpu") and not line.startswith("cpu "):
                others = [a + int(b) for a, b in zip(others, line.split()[1:8])]
    softirqs = {}
    with open("/proc/softirqs") as f:
        for line in list(f)[1:]:
            parts = line.split()
            softirqs[parts[0].rstrip(":")] = int(parts[1])  # CPU 0's count
    threads, switches = {}, {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        # Threads by what they do: the fabric's (ucx-, mux-, and the unnamed ones the agent's
        # fragment runs and checksums use) against the rest.
        group = name.split("-")[0] if "-" in name else name
        threads[group] = threads.get(group, 0) + int(fields[11]) + int(fields[12])
        try:
            with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        key = group + (":vcs" if line.startswith("vol") else ":ivcs")
                        switches[key] = switches.get(key, 0) + int(line.split()[1])
        except OSError:
            pass
    return {"cpu0": cpu0, "others": others, "threads": threads, "switches": switches, "softirqs": softirqs, "t": time.time()}


def cpu_between(a, b):
    ticks = {k: b["cpu0"][k] - a["cpu0"][k] for k in a["cpu0"]}
    total = max(1, sum(ticks.values()))
    threads = {k: b["threads"].get(k, 0) - a["threads"].get(k, 0) for k in b["threads"]}
    other = [y - x for x, y in zip(a["others"], b["others"])]
    dt = b["t"] - a["t"]
    switches = {k: round((b["switches"].get(k, 0) - a["switches"].get(k, 0)) / dt) for k in b["switches"]}
    return {"cpu0_share": {k: round(v / total, 3) for k, v in ticks.items() if v},
            "other_cpus_busy": round(1 - other[3] / max(1, sum(other)), 3),
            "context_switches_per_s": {k: v for k, v in sorted(switches.items()) if v},
            "cpu0_softirqs_per_s": {k: round((b["softirqs"][k] - a["softirqs"][k]) / dt) for k in b["softirqs"]
                                    if b["softirqs"][k] > a["softirqs"][k]},
            "agent_threads_cpu": {k: round(v / total, 3) for k, v in sorted(threads.items()) if v > 0}}


def steer_network_work(c, nodes, rate, other_mask, node1_mask):
    """Each node's network work on its own CPUs, as on machines of their own. In the box a veth
    hands a packet to its peer on the sending CPU, and tc's tbf sends what it held back from a
    timer, in softirq: without this, shaping node-1's uplink, the bridge's forwarding and every
    target's receive path would run on node-1's CPU, in softirq, which no nice value bounds (on
    a real node, the NIC does that work, and the peers' CPUs theirs). So node-1's uplink is
    shaped where it enters the bridge instead of on node-1's eth0 (the same rate), and receive
    packet steering (rps_cpus) puts the bridge's ports and the other nodes' interfaces on the
    other CPUs, node-1's own on `node1_mask` (CPU 0, or its fabric's CPUs when it has its own, as
    an operator steers a NIC's interrupts). node-1 keeps its TCP sends (its fabric threads')
    and everything it receives."""
    def sh(ns, script):
        subprocess.run(["ip", "netns", "exec", ns, "sh", "-ec", script], check=True)

    def rps(ns, dev, mask):
        sh(ns, "for q in /sys/class/net/%s/queues/rx-*; do echo %s > $q/rps_cpus; done" % (dev, mask))
    br = c.prefix + "-br"
    burst = max(65536, int(float(rate.lower().replace("gbit", "e9").replace("mbit", "e6")) / 8 / 100))
    sh("%s-n1" % c.prefix, "tc qdisc del dev eth0 root")
    sh(br, "ip link add ifbv1 type ifb; ip link set ifbv1 up; tc qdisc add dev v1 handle ffff: ingress; "
           "tc filter add dev v1 parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev ifbv1; "
           "tc qdisc add dev ifbv1 root tbf rate %s burst %d latency 50ms" % (rate, burst))
    rps(br, "ifbv1", other_mask)
    for i in range(1, nodes + 1):
        rps(br, "v%d" % i, other_mask)
        for dev in ("eth0", "ifb0"):
            rps("%s-n%d" % (c.prefix, i), dev, node1_mask if i == 1 else other_mask)


def tokens_in(answers, t0, t1):
    """Tokens produced in [t0, t1): each answer's tokens spread evenly from its first token to its end."""
    total = 0.0
    for a in answers:
        first = a["start"] + a["ttft_s"]
        end = max(a["end"], first + 1e-6)
        overlap = max(0.0, min(end, t1) - max(first, t0))
        total += len(a["tokens"]) * overlap / (end - first)
    return total


def measure(args, work, config, model_a, model_b):
    nodes = 1 + args.targets * args.reps
    c = BoxCluster(work, nodes, link=args.rate, serving="max_batch: %d, pipelines: false" % args.max_batch,
                   ssd_copies=[1], packages=["pkg-a", "pkg-b"], fabric_extra=fabric_extra(config),
                   host_capacity=args.host_capacity, host_capacities={1: args.source_capacity},
                   cpus={"node-1": "0"}, other_cpus="1-%d" % (os.cpu_count() - 1), prefix="mcv",
                   niceness={"node-%d" % i: 19 for i in range(2, nodes + 1)} if args.quiet_targets else None,
                   cc=args.cc)
    clients = []
    try:
        if args.steer:
            others = "1-%d" % (os.cpu_count() - 1)
            steer_network_work(c, nodes, args.rate, cpu_mask(others),
                               cpu_mask(config[len("cpus:"):]) if config.startswith("cpus:") else "1")
        for pkg in ("pkg-a", "pkg-b"):
            c.mc(["models", "--register", os.path.join(work, pkg)])
        c.wait_held(model_b, 1)
        first = json.loads(c.mc(["scale-out", model_a, "-n", "1", "--targets", "node-1", "--wait", "--json"]).stdout)
        if first["state"] != "SUCCEEDED":
            sys.exit("serving_share: node-1 could not load %s: %s" % (model_a, first))
        prompts = [{"tokens": [1, 100 + i, 2000 + 37 * i, 5, 777 + i], "temperature": 0.0, "seed": i} for i in range(8)]
        with open(os.path.join(c.run_dir, "prompts.json"), "w") as f:
            json.dump(prompts, f)
        stop = os.path.join(c.run_dir, "stop")
        for j in range(args.clients):
            out = os.path.join(c.run_dir, "answers-%d.jsonl" % j)
            clients.append((out, subprocess.Popen(c.pinned("client", c.in_ns(1, [
                "/usr/bin/python3", os.path.join(ROOT, "tests", "support", "completion_client.py"),
                c.url(), TOKEN, model_a, os.path.join(c.run_dir, "prompts.json"),
                str(args.max_tokens), out, stop, "900", str(j)])), preexec_fn=die_with_parent)))
        time.sleep(args.warmup)
        windows = []  # (kind, t0, t1, cpu use)
        transfers = []
        pid = c.agents["node-1"].pid
        for r in range(args.reps):
            t0, s0 = time.time(), cpu_snapshot(pid)
            time.sleep(args.idle)
            windows.append(("idle", t0, time.time(), cpu_between(s0, cpu_snapshot(pid))))
            s0 = cpu_snapshot(pid)
            targets = ["node-%d" % (2 + r * args.targets + k) for k in range(args.targets)]
            op = json.loads(c.mc(["scale-out", model_b, "-n", str(args.targets), "--targets", ",".join(targets),
                                  "--wait", "--json"]).stdout)
            if op["state"] != "SUCCEEDED":
                sys.exit("serving_share: the multicast of %s failed: %s" % (model_b, op))
            sources = sorted(n["node"] for n in op["nodes"] if n["role"] != "TARGET")
            if sources != ["node-1"]:
                sys.exit("serving_share: the multicast was fed by %s, not node-1 alone" % sources)
            windows.append(("sending", op["created_unix"], op["created_unix"] + op["seconds"],
                            cpu_between(s0, cpu_snapshot(pid))))
            transfers.append(op["seconds"])
            # The targets leave: node-1 stays the only holder of B for the next repetition.
            for t in targets:
                c.agents[t].send_signal(signal.SIGTERM)
                c.agents[t].wait(timeout=30)
            c.wait_alive(nodes - (r + 1) * args.targets)
        t0, s0 = time.time(), cpu_snapshot(pid)
        time.sleep(args.idle)
        windows.append(("idle", t0, time.time(), cpu_between(s0, cpu_snapshot(pid))))
        open(stop, "w").close()
        for _, p in clients:
            p.wait(timeout=180)
        answers, failed = [], 0
        for out, _ in clients:
            for line in open(out):
                a = json.loads(line)
                if a["status"] == 200 and a["served_by"].endswith("@node-1"):
                    answers.append(a)
                elif a["status"] != 200:
                    failed += 1
        per = {"idle": [0.0, 0.0], "sending": [0.0, 0.0]}
        rows = []
        for kind, t0, t1, cpu in windows:
            tok = tokens_in(answers, t0, t1)
            per[kind][0] += tok
            per[kind][1] += t1 - t0
            rows.append(dict(kind=kind, seconds=round(t1 - t0, 3), tokens_per_s=round(tok / (t1 - t0), 2), **cpu))
        idle = per["idle"][0] / per["idle"][1]
        sending = per["sending"][0] / per["sending"][1]
        b_bytes = json.load(open(os.path.join(work, "pkg-b", "manifest.json")))
        size = sum(b["file_bytes"] for b in b_bytes["blocks"])
        return {"config": config, "idle_tokens_per_s": idle, "sending_tokens_per_s": sending, "ratio": sending / idle,
                "transfer_s": transfers, "transfer_gbit_s": [size * 8 / 1e9 / t for t in transfers],
                "answers": len(answers), "failed": failed, "windows": rows}
    finally:
        for _, p in clients:
            if p.poll() is None:
                p.kill()
                p.wait()
        c.down()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default="default,nice0")
    ap.add_argument("--rate", default="2gbit", help="every node's link (tc)")
    ap.add_argument("--cc", default="cubic", help="the nodes' TCP congestion control (scripts/netns-cluster.sh --cc)")
    ap.add_argument("--preset", default="medium", help="both models' size (synthetic preset)")
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--targets", type=int, default=2, help="receivers of each multicast")
    ap.add_argument("--reps", type=int, default=3, help="sending windows per configuration")
    ap.add_argument("--idle", type=float, default=6.0, help="seconds of each idle window")
    ap.add_argument("--warmup", type=float, default=4.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--host-capacity", default="2GiB")
    ap.add_argument("--source-capacity", default="3GiB", help="node-1's host memory (both models)")
    ap.add_argument("--quiet-targets", type=int, default=1,
                    help="1: the targets' agents run at nice 19, so that on the box's shared CPUs they do not slow "
                         "the router and clients (which stand for other machines)")
    ap.add_argument("--steer", type=int, default=1,
                    help="1: each node's network work on its own CPUs (node-1's uplink shaped at the bridge, "
                         "receive packet steering)")
    ap.add_argument("--work", default="")
    args = ap.parse_args()
    if os.cpu_count() < 2:
        sys.exit("serving_share: needs 2 CPUs or more (node-1 on one, the rest on the others)")
    work = args.work or tempfile.mkdtemp(prefix="serving-share-")
    model_a = prepare_model(work, args.preset, args.blocks, name="serve-" + args.preset, pkg="pkg-a")
    model_b = prepare_model(work, args.preset, args.blocks, name="send-" + args.preset, pkg="pkg-b")
    results = []
    for config in args.configs.split(","):
        r = measure(args, work, config, model_a, model_b)
        results.append(r)
        print("%-12s node-1 serves %.1f tokens/s idle, %.1f while sending: %.3f  (transfers %s s; %d answers, %d "
              "failed)" % (config, r["idle_tokens_per_s"], r["sending_tokens_per_s"], r["ratio"],
                           ", ".join("%.2f" % t for t in r["transfer_s"]), r["answers"], r["failed"]), flush=True)
        for w in r["windows"]:
            print("    %-7s %5.1f s %6.1f tokens/s  cpu0 %s  node-1's threads (of one CPU) %s" % (
                w["kind"], w["seconds"], w["tokens_per_s"],
                " ".join("%s %.0f%%" % (k, 100 * v) for k, v in w["cpu0_share"].items()) +
                ", other CPUs %.0f%% busy" % (100 * w["other_cpus_busy"]),
                " ".join("%s %.0f%%" % (k, 100 * v) for k, v in w["agent_threads_cpu"].items())), flush=True)
            print("            switches/s %s; CPU 0's softirqs/s %s" % (w["context_switches_per_s"], w["cpu0_softirqs_per_s"]))
    print(json.dumps({"bench": "serving_share", "rate": args.rate, "preset": args.preset, "targets": args.targets,
                      "runs": results, "ratios": {r["config"]: r["ratio"] for r in results}}))
    bad = [r["config"] for r in results if r["answers"] == 0 or r["failed"]]
    if bad:
        sys.exit("serving_share: requests failed or none answered in %s (see %s)" % (", ".join(bad), work))


if __name__ == "__main__":
    exit_on_sigterm()
    main()
