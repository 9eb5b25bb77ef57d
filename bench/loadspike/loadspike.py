#!/usr/bin/python3
"""loadspike: a load spike, end to end, against the systems a user would pick instead.

Replays a real trace (Azure 2023 conversation, Mooncake conversation, ServeGen) or a synthetic
step/burst through an autoscaler (queue length and arrival rate, keep-alive before scale-in)
that calls the coordinator's scaleOut/scaleIn, once per mode on the same cluster and workload:

  modelcast    lambdapipe multicast + execute-while-load (pipelines of partial receivers serve)
  no-ewl       lambdapipe multicast, only full copies serve
  chain        NCCL-style chain broadcast, full copies only
  binary-tree  FaaSNet's binary tree, full copies only
  local        every node loads its own SSD copy (ServerlessLLM-style), full copies only
  ideal        every node already serving (no scaling)

Per mode: TTFT p50/p90/p99, time per output token, failed and timed-out requests, GPU time held
(cost), and the scale-up timeline; pictures (timeline.png, ttft_cdf.png), results.json and
report.md in --out.

  loadspike.py sim --cluster cluster-configs/lambdascale-testbed.yaml --model llama-2-13b [...]
  loadspike.py box [--nodes 8] [--link 200mbit] [...]       (root: network namespaces)
  loadspike.py cost --workload azure --slo 0.5,1,2,5 [...]   (per mode, the GPU-seconds of the
               cheapest autoscaler policy that holds each p90 TTFT SLO with 0 failed requests:
               cost.py; simulator)
  loadspike.py check [--shapes lambdapipe:1:6,chain:1:6,...]  (root: the simulator's scale-outs
               against the same ones run in the box, given the box's measured links and
               overheads: check.py)
  loadspike.py demo                                          (loopback, modelcast vs local)
The last line printed is one JSON object with every figure.
"""
import argparse
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check  # noqa: E402
import cost  # noqa: E402
import report  # noqa: E402
import workload  # noqa: E402
from modes import MODES  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def window_arg(text):
    try:
        lo, hi = (float(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError("--window wants LO:HI in seconds of the trace, got '%s'" % text)
    return lo, hi


def parse_modes(text):
    modes = MODES if text == "all" else [m for m in text.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        sys.exit("loadspike: unknown mode(s) %s (known: %s)" % (", ".join(bad) or "none", ", ".join(MODES)))
    return modes


def write_outputs(args, results, reqs, source, title, extra):
    summaries = [report.summarize(r) for r in results]
    os.makedirs(args.out, exist_ok=True)
    pictures = report.plot(results, workload.rate_series(reqs, args.duration, max(1.0, args.duration / 120)),
                           args.out, title)
    unit = "ms" if all(s["ttft_p99"] < 1 for s in summaries if s["ttft_p99"] == s["ttft_p99"]) else "s"
    lines = ["# %s" % title, "", "Workload: %s; %d requests over %g s." % (source, len(reqs), args.duration), "",
             "Command: `%s`" % " ".join(sys.argv), "", report.table(summaries, unit), ""]
    lines += ["- " + x for x in report.ratio_lines(summaries)]
    lines += [""] + ["![%s](%s)" % (os.path.basename(p), os.path.basename(p)) for p in pictures]
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"workload": source, "title": title, "duration": args.duration, "summaries": summaries,
                   "results": results, **extra}, f)
    print(report.table(summaries, unit))
    for x in report.ratio_lines(summaries):
        print(x)
    print("report: %s%s" % (os.path.join(args.out, "report.md"),
                            (", pictures: " + ", ".join(pictures)) if pictures else " (no matplotlib: no pictures)"))
    print(json.dumps({"bench": "loadspike", "title": title, "workload": source, "summaries": summaries,
                      "ratios": report.ratios(summaries), **extra}))


class SimSetup:
    """What `sim` and `cost` both start from: the scale-out model, the node count, and the workload
    at `load` x the capacity of `rate_nodes` nodes, with its mean service time."""

    def __init__(self, args, rate_nodes):
        import sim
        self.model = sim.ScaleOutModel(args.sim_bin, args.cluster, args.model, args.batch)
        self.base = self.model.run("lambdapipe", 1, 1)  # the node's figures
        if args.nodes == 0:  # the cluster's node count: every other node as a target
            probe = self.model.run("lambdapipe", 1, 0)
            args.nodes = probe["sources"] + probe["targets"]
        self.nodes = args.nodes
        reqs0, _ = workload.build(args.workload, args.duration, 1.0, args.max_prompt, args.max_output,
                                  seed=args.seed, window=args.window)
        mean_p = sum(r.prompt for r in reqs0) / len(reqs0)
        mean_o = sum(r.output for r in reqs0) / len(reqs0)
        self.node_rps = sim.capacity_rps(self.model, mean_p, mean_o)
        self.rate = args.load * self.node_rps * rate_nodes
        self.reqs, self.source = workload.build(args.workload, args.duration, self.rate, args.max_prompt,
                                                args.max_output, seed=args.seed, window=args.window)
        self.service = (mean_p / self.base["prefill_tokens_per_s"] +
                        mean_o * args.batch / self.base["instance_tokens_per_s"])
        self.slots = self.base["instances_per_node"] * args.batch  # a node's serving slots


def cmd_sim(args):
    import sim
    setup = SimSetup(args, args.min_nodes)
    model, nodes, reqs, source, rate = setup.model, setup.nodes, setup.reqs, setup.source, setup.rate
    per_node_rps, service = setup.node_rps, setup.service
    scaler = {"min_replicas": args.min_nodes, "max_replicas": nodes,
              "per_replica": setup.slots * args.target_util, "service_s": service,
              "keep_alive": args.keep_alive}
    results = []
    for mode in parse_modes(args.modes):
        t0 = time.time()
        r = sim.simulate(mode, reqs, args.duration, nodes, args.min_nodes, scaler, model)
        s = report.summarize(r)
        print("%-11s simulated in %.1f s: p90 TTFT %.3f s, %d failed, %.0f GPU-s" % (
            mode, time.time() - t0, s["ttft_p90"], s["failed"], s["gpu_s"]), flush=True)
        results.append(r)
    title = "simulator: %s, %s on %d nodes, %s" % (os.path.basename(args.cluster), args.model, nodes, args.workload)
    write_outputs(args, results, reqs, source, title,
                  {"cluster": args.cluster, "model": args.model, "nodes": nodes, "rate_rps": rate,
                   "node_capacity_rps": per_node_rps, "scaler": scaler})


BOX_DEFAULTS = {"nodes": 8, "batch": 4, "max_prompt": 16, "max_output": 16, "slo": "2", "keep": "0,15",
                "util": "0.75", "modes": "modelcast,local"}
SIM_DEFAULTS = {"nodes": 0, "batch": 16, "max_prompt": 4096, "max_output": 1024, "slo": "0.5,1,2,5,10", "keep": "",
                "util": "", "modes": "all"}


def cmd_cost(args):
    for k, v in (BOX_DEFAULTS if args.box else SIM_DEFAULTS).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    try:
        slos = cost.slo_list(args.slo)
        lists = {name: sorted({float(x) for x in getattr(args, name).split(",") if x}) if getattr(args, name) else None
                 for name in ("warm", "keep", "util")}
    except ValueError as e:
        sys.exit("loadspike: %s" % e)
    modes = cost.SCALING_MODES if args.modes == "all" else parse_modes(args.modes)
    if "ideal" in modes:
        sys.exit("loadspike: cost compares scaling methods; 'ideal' never scales")
    if args.box:
        import box
        if os.geteuid() != 0 and not args.loopback:
            sys.exit("loadspike: cost --box needs root (network namespaces), or --loopback")
        setup = box.Setup(args)
        nodes = args.nodes - 1  # the workers: node-1 is the head
        reqs, source, rate = setup.reqs, setup.source, args.rate
    else:
        setup = SimSetup(args, args.base_nodes)
        nodes, reqs, source, rate = setup.nodes, setup.reqs, setup.source, setup.rate
    warm = [int(w) for w in lists["warm"]] if lists["warm"] else cost.default_warm(nodes)
    keeps = lists["keep"] or cost.DEFAULT_KEEP
    utils = lists["util"] or cost.DEFAULT_UTIL
    if any(w < 1 or w > nodes for w in warm):
        sys.exit("loadspike: --warm must be 1..%d replicas (the cluster's %s), got %s" % (
            nodes, "workers" if args.box else "nodes", warm))
    if any(k < 0 for k in keeps):
        sys.exit("loadspike: --keep must not be negative, got %s" % keeps)
    if any(not (0 < u <= 1) for u in utils):
        sys.exit("loadspike: --util must be in (0, 1], got %s" % utils)
    if not args.box and not (1 <= args.base_nodes <= nodes):
        sys.exit("loadspike: --base-nodes must be 1..%d" % nodes)
    print("cost%s: %d requests over %g s (%s), %d %s; policies (warm %s, keep %s, util %s)%s" % (
        " in the box" if args.box else "", len(reqs), args.duration, source, nodes,
        "workers" if args.box else "nodes", warm, keeps, utils,
        ": the smallest warm minimum holding each SLO, by bisection" if args.box else
        ": %d per mode" % (len(warm) * len(keeps) * len(utils))), flush=True)
    t0 = time.time()

    def progress(mode, evals):
        print("  %-11s %d policies %s (%.0f s so far)" % (mode, len(evals), "run" if args.box else "simulated",
                                                         time.time() - t0), flush=True)

    os.makedirs(args.out, exist_ok=True)
    if args.box:
        evaluations = cost.search_smallest_warm(
            modes, lambda mode, policy: box.evaluate(setup, args, mode, policy, args.out), warm, keeps, utils, slos,
            progress)
        where = "cluster in a box (%s, %d nodes, %s links)" % ("loopback" if args.loopback else "netns", args.nodes,
                                                              args.link)
        title = "cost at a p90 TTFT SLO: %s, %s, %s" % (where, setup.model, args.workload)
    else:
        evaluations = cost.search(modes, reqs, args.duration, nodes, setup.model, setup.service, setup.slots, warm,
                                  keeps, utils, progress)
        title = "cost at a p90 TTFT SLO: %s, %s on %d nodes, %s" % (os.path.basename(args.cluster), args.model, nodes,
                                                                    args.workload)
    table = cost.costs(evaluations, slos)
    md = cost.markdown(table, modes)
    picture = os.path.join(args.out, "cost.png")
    drew = cost.plot(table, modes, picture, title)
    with open(os.path.join(args.out, "cost.md"), "w") as f:
        f.write("# %s\n\nWorkload: %s; %d requests over %g s.\n\nCommand: `%s`\n\n%s\n%s" % (
            title, source, len(reqs), args.duration, " ".join(sys.argv), md,
            "\n![cost](cost.png)\n" if drew else ""))
    with open(os.path.join(args.out, "cost.json"), "w") as f:
        json.dump({"title": title, "workload": source, "table": table, "evaluations": evaluations}, f)
    print(md)
    print("report: %s%s" % (os.path.join(args.out, "cost.md"), ", picture: " + picture if drew else " (no matplotlib)"))
    print(json.dumps({"bench": "loadspike-cost", "title": title, "workload": source, "nodes": nodes,
                      "box": bool(args.box), "rate_rps": rate,
                      "policies_per_mode": {m: len(e) for m, e in evaluations.items()},
                      "slos": [{"slo_s": r["slo_s"], "ratios": r["ratios"],
                                **{m + "_gpu_s": (c["gpu_s"] if c else None) for m, c in r["modes"].items()},
                                **{m + "_policy": (c["policy"] if c else None) for m, c in r["modes"].items()}}
                               for r in table]}))


def cmd_report(args):
    """Tables and pictures again from a run's results.json (e.g. after a change to the report)."""
    j = json.load(open(args.results))
    results = j.pop("results")
    for r in results:  # the box's runs record how long the answers ran past the workload
        if "drain_s" in r:
            r["end"] = max(r["end"], args.duration + r["drain_s"])
    j.pop("summaries", None)
    reqs = [workload.Request(q["t"], 0, 0) for q in results[0]["requests"]]
    title = j.pop("title", os.path.basename(os.path.dirname(os.path.abspath(args.results))))
    write_outputs(args, results, reqs, j.pop("workload"), title, j)


def cmd_box(args):
    import box
    box.run(args, parse_modes(args.modes), write_outputs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p, duration, keep_alive, modes="all"):
        p.add_argument("--workload", default="step", help="azure, mooncake, servegen:MODEL, step or burst [step]")
        p.add_argument("--duration", type=float, default=duration, help="seconds of workload")
        p.add_argument("--modes", default=modes, help="comma list of %s, or all [%s]" % (
            ", ".join(MODES), modes or "all; cost --box: " + BOX_DEFAULTS["modes"]))
        if keep_alive is not None:  # cost searches keep-alives instead
            p.add_argument("--keep-alive", type=float, default=keep_alive, help="seconds before a scale-in")
        p.add_argument("--window", type=window_arg, default=None,
                       help="LO:HI seconds of the trace to replay [the sharpest rise]")
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--out", default="", help="folder for results.json, report.md and the pictures")

    def simulator(p, rate_nodes_help, shared=True):
        """`shared`: also the flags the box has too, with the simulator's defaults (cost takes them
        once, with defaults that depend on --box)."""
        p.add_argument("--cluster", default=os.path.join(ROOT, "cluster-configs", "lambdascale-testbed.yaml"))
        p.add_argument("--model", default="llama-2-13b")
        p.add_argument("--load", type=float, default=0.5, help="mean rate as a fraction of %s capacity" % rate_nodes_help)
        p.add_argument("--sim-bin", default=os.path.join(ROOT, "build", "bin", "modelcast-sim"))
        if shared:
            p.add_argument("--nodes", type=int, default=0, help="nodes to use (0: the cluster's)")
            p.add_argument("--batch", type=int, default=16, help="decode batch of a serving unit")
            p.add_argument("--max-prompt", type=int, default=4096)
            p.add_argument("--max-output", type=int, default=1024)

    def box_flags(p, shared=True):
        p.add_argument("--link", default="200mbit", help="each node's shaped link")
        p.add_argument("--ssd-rate", default="3MB/s", help="emulated SSD read rate (local mode's loads)")
        p.add_argument("--preset", default="small")
        p.add_argument("--blocks", type=int, default=8)
        p.add_argument("--step", default="150ms", help="emulated accelerator step")
        p.add_argument("--token", default="1ms", help="emulated time per token of a step")
        p.add_argument("--rate", type=float, default=4.0, help="mean req/s of the workload")
        p.add_argument("--prompt-div", type=float, default=256)
        p.add_argument("--output-div", type=float, default=16)
        p.add_argument("--loopback", action="store_true", help="no namespaces: every node on 127.0.0.1 (the demo)")
        p.add_argument("--work", default="")
        if shared:
            p.add_argument("--nodes", type=int, default=8)
            p.add_argument("--batch", type=int, default=4)
            p.add_argument("--max-prompt", type=int, default=16)
            p.add_argument("--max-output", type=int, default=16)

    s = sub.add_parser("sim", help="the simulator (modelcast-sim) at any scale")
    common(s, 300, 30)
    simulator(s, "the min nodes'")
    s.add_argument("--min-nodes", type=int, default=2, help="nodes serving before the spike (the sources)")
    s.add_argument("--target-util", type=float, default=0.8, help="the autoscaler's slots per replica wanted busy")
    s.set_defaults(fn=cmd_sim)

    b = sub.add_parser("box", help="the cluster in a box: real daemons in network namespaces")
    common(b, 120, 15)
    b.add_argument("--min-nodes", type=int, default=2)
    box_flags(b)
    b.set_defaults(fn=cmd_box)

    c = sub.add_parser("cost", help="per mode, the cheapest policy that holds each TTFT SLO (simulator, or --box)")
    common(c, 300, None, modes=None)
    c.add_argument("--box", action="store_true",
                   help="run each policy in the cluster in a box (root) instead of the simulator: per mode, keep and "
                        "util, the smallest warm minimum holding each SLO, by bisection")
    c.add_argument("--slo", default=None, help="p90 TTFT SLOs in seconds [0.5,1,2,5,10; --box: 2]")
    c.add_argument("--warm", default="", help="warm minimums to search [1..8, then a ladder to every node]")
    c.add_argument("--keep", default=None, help="keep-alives to search, seconds [%s; --box: %s]" % (",".join(
        "%g" % k for k in cost.DEFAULT_KEEP), BOX_DEFAULTS["keep"]))
    c.add_argument("--util", default=None, help="planned slot use per replica to search [%s; --box: %s]" % (
        ",".join("%g" % u for u in cost.DEFAULT_UTIL), BOX_DEFAULTS["util"]))
    simulator(c, "--base-nodes'", shared=False)
    box_flags(c, shared=False)
    c.add_argument("--nodes", type=int, default=None, help="nodes to use [the cluster's; --box: 8]")
    c.add_argument("--batch", type=int, default=None, help="decode batch of a serving unit [16; --box: 4]")
    c.add_argument("--max-prompt", type=int, default=None, help="[4096; --box: 16]")
    c.add_argument("--max-output", type=int, default=None, help="[1024; --box: 16]")
    c.add_argument("--base-nodes", type=int, default=2, help="the workload's mean rate is --load x this many nodes' capacity")
    c.set_defaults(fn=cmd_cost)

    k = sub.add_parser("check", help="the simulator's scale-outs against the same ones in the box (root)")
    k.add_argument("--nodes", type=int, default=8)
    k.add_argument("--link", default="200mbit", help="each node's shaped link")
    k.add_argument("--preset", default="small")
    k.add_argument("--blocks", type=int, default=8)
    k.add_argument("--slice-mib", type=float, default=1)
    k.add_argument("--shapes", default=check.DEFAULT_SHAPES, help="algorithm:sources:targets,... [%(default)s]")
    k.add_argument("--reps", type=int, default=1, help="times each shape runs")
    k.add_argument("--timeout", type=float, default=300, help="seconds one operation may take")
    k.add_argument("--iperf-seconds", type=int, default=4, help="length of each of the 3 iperf3 runs")
    k.add_argument("--sim-bin", default=os.path.join(ROOT, "build", "bin", "modelcast-sim"))
    k.add_argument("--work", default="")
    k.add_argument("--out", default="")
    k.set_defaults(fn=check.cmd_check)

    r = sub.add_parser("report", help="tables and pictures again from a run's results.json")
    r.add_argument("results")
    r.add_argument("--duration", type=float, required=True, help="the run's --duration")
    r.add_argument("--out", default="")
    r.set_defaults(fn=cmd_report)
    args = ap.parse_args()
    if not args.out:
        args.out = os.path.join(ROOT, "build", "loadspike", args.cmd + "-" + time.strftime("%Y%m%d-%H%M%S"))
    try:
        args.fn(args)
    except workload.WorkloadError as e:
        sys.exit("loadspike: %s" % e)


if __name__ == "__main__":
    # A SIGTERM ends the run through its `finally` blocks (the box's namespaces are removed; its
    # daemons die with this process either way: box_cluster.die_with_parent).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit("stopped by SIGTERM"))
    main()
