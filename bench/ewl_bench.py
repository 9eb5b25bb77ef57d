#!/usr/bin/python3
"""ewl_bench: execute-while-load in the cluster in a box (network namespaces, shaped links).

For each K (running copies) it runs the same scale-out twice on a fresh cluster: once with
execute-while-load (the coordinator forms pipelines of the receivers as their holdings cover the
model) and once waiting for full copies (serving.pipelines: false). The K copies are on
the sources' SSDs, so every answer comes from new capacity (with --serve-copies they are loaded
and serving first, and clients overflow onto new capacity; in a box whose nodes share two
cores, the copies' compute then starves everything else, which a real cluster's GPUs do not). Figures, per K and mode: time
from scaleOut to the first token served by new capacity (not one of the K copies), the first
pipeline, the first full copy, and the capacity ramp (requests/s finished per second).
The ratio EWL / wait-for-full of the first-token time is the figure (target <= 0.6 at K = 2).

Needs root, iproute2 (ip netns, tc) and a build (build/bin). Run from the repository root:
  bench/ewl_bench.py [--ks 1,2] [--targets 8] [--rate 200mbit] [--preset small] [--work DIR]
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


def Cluster(args, work, k, pipelines):
    """A fresh cluster: the K copies on K nodes' SSD (cold), or (--serve-copies) loaded and
    serving from a first scale-out off an extra node that then leaves."""
    extra = 1 if args.serve_copies else 0
    c = BoxCluster(work, extra + k + args.targets, link=args.rate,
                   serving="max_batch: %d, pipelines: %s, lookahead: %gs" % (
                       args.max_batch, "true" if pipelines else "false", args.lookahead),
                   ssd_copies=range(1, (1 if args.serve_copies else k) + 1), cc=args.cc)
    c.extra = extra
    return c


def measure(args, work, k, pipelines):
    c = Cluster(args, work, k, pipelines)
    try:
        c.mc(["models", "--register", os.path.join(work, "pkg")])
        model = json.load(open(os.path.join(work, "pkg", "manifest.json")))["name"]
        copies = ["node-%d" % i for i in range(1, k + 1)]
        if args.serve_copies:
            # The K running copies: loaded from node-1's SSD, which then leaves the cluster.
            first = json.loads(c.mc(["scale-out", model, "-n", str(k), "--wait", "--json"]).stdout)
            if first["state"] != "SUCCEEDED":
                sys.exit("ewl_bench: loading the %d copies failed: %s" % (k, first))
            copies = [n["node"] for n in first["nodes"] if n["role"] == "TARGET"]
            c.agents["node-1"].send_signal(signal.SIGTERM)
            c.agents["node-1"].wait(timeout=30)
            c.wait_alive(c.nodes - 1)
        else:
            c.wait_held(model, k)
        prompts = [{"tokens": [1, 100 + i, 2000 + 37 * i, 5, 777 + i], "temperature": 0.0, "seed": i} for i in range(8)]
        with open(os.path.join(c.run_dir, "prompts.json"), "w") as f:
            json.dump(prompts, f)
        stop = os.path.join(c.run_dir, "stop")
        clients = []
        for j in range(args.clients):
            out = os.path.join(c.run_dir, "answers-%d.jsonl" % j)
            clients.append((out, subprocess.Popen(c.in_ns(1, [
                "/usr/bin/python3", os.path.join(ROOT, "tests", "support", "completion_client.py"),
                c.url(), TOKEN, model, os.path.join(c.run_dir, "prompts.json"),
                str(args.max_tokens), out, stop, "600", str(j)]), preexec_fn=die_with_parent)))
        time.sleep(2 if args.serve_copies else 0.5)  # the copies take the load first
        op = json.loads(c.mc(["scale-out", model, "-n", str(args.targets), "--wait", "--json"]).stdout)
        time.sleep(args.tail)
        open(stop, "w").close()
        for _, p in clients:
            p.wait(timeout=120)
        t0 = op["created_unix"]
        sources = {model + "@" + n for n in copies}
        answers = []
        for out, _ in clients:
            for line in open(out):
                a = json.loads(line)
                if a["status"] == 200:
                    answers.append(a)
        failed = sum(1 for out, _ in clients for line in open(out) if json.loads(line)["status"] not in (0, 200))
        new = [a for a in answers if a["served_by"] not in sources and a["end"] > t0]
        # A request's first token came ttft_s (the router's count, from its arrival) after it
        # was sent: the same clock, on one machine.
        first_new = min((a["start"] + a["ttft_s"] for a in new), default=float("nan")) - t0
        first_done = min((a["end"] for a in new), default=float("nan")) - t0
        completes = [n["complete_unix"] - t0 for n in op["nodes"] if n["role"] == "TARGET" and "complete_unix" in n]
        # A pipeline's step during the load: the decode steps of the answers pipelines served
        # (after the first token, one step per token).
        steps = sorted((a["end"] - a["start"] - a["ttft_s"]) / (len(a["tokens"]) - 1) for a in new
                       if "/p" in a["served_by"] and len(a["tokens"]) > 1)
        step = steps[len(steps) // 2] if steps else float("nan")
        blocks = op.get("first_pipeline_blocks_s")
        end = max(completes) + args.tail
        ramp = []
        width = 0.5
        t = -1.0
        while t < end:
            ramp.append({"t": round(t, 2), "rps": sum(1 for a in answers if t <= a["end"] - t0 < t + width) / width,
                         "new_rps": sum(1 for a in new if t <= a["end"] - t0 < t + width) / width})
            t += width
        return {"k": k, "mode": "ewl" if pipelines else "full", "scale_out_s": op.get("seconds"),
                "first_pipeline_s": op.get("first_pipeline_s"), "first_pipeline_blocks_s": blocks,
                "pipeline_step_s": step,
                "first_token_after_blocks_s": first_new - blocks if blocks is not None else None,
                "first_full_copy_s": min(completes),
                "first_new_token_s": first_new, "first_new_answer_s": first_done, "answers": len(answers), "failed": failed, "ramp": ramp}
    finally:
        c.down()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ks", default="1,2")
    ap.add_argument("--targets", type=int, default=8)
    ap.add_argument("--rate", default="200mbit")
    ap.add_argument("--cc", default="cubic", help="the nodes' TCP congestion control (scripts/netns-cluster.sh --cc)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--blocks", type=int, default=7)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--max-batch", type=int, default=4)
    ap.add_argument("--serve-copies", action="store_true",
                    help="the K copies serve (loaded first); on a 2-core box their compute starves the rest")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--lookahead", type=float, default=1.0,
                    help="serving.lookahead: seconds ahead of their blocks that pipelines are prepared (0: off)")
    ap.add_argument("--tail", type=float, default=4.0, help="seconds of load after the scale-out")
    ap.add_argument("--work", default="")
    ap.add_argument("--modes", default="ewl,full", help="ewl, full or both")
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="ewl-bench-")
    prepare_model(work, args.preset, args.blocks)
    results = []
    for k in [int(x) for x in args.ks.split(",")]:
        for pipelines in [m == "ewl" for m in args.modes.split(",")]:
            r = measure(args, work, k, pipelines)
            results.append(r)
            print("K=%d %-4s scale-out %.2f s  first pipeline %s  first full copy %.2f s  first token by new "
                  "capacity %.2f s, first whole answer %.2f s  (%d answers, %d failed)" % (
                      k, r["mode"], r["scale_out_s"],
                      "%.2f s" % r["first_pipeline_s"] if r["first_pipeline_s"] else "-", r["first_full_copy_s"],
                      r["first_new_token_s"], r["first_new_answer_s"], r["answers"], r["failed"]), flush=True)
            if r["first_pipeline_blocks_s"] is not None:
                print("      the first pipeline's last block landed at %.2f s; the first token %.2f s after it; "
                      "a pipeline's decode step during the load: %.3f s (median)" % (
                          r["first_pipeline_blocks_s"], r["first_token_after_blocks_s"], r["pipeline_step_s"]),
                      flush=True)
    summary = {"bench": "ewl_bench", "rate": args.rate, "targets": args.targets, "preset": args.preset,
               "runs": results, "ratios": {}}
    print("\ncapacity ramp (requests/s finished in each 0.5 s, from scaleOut):")
    for r in results:
        print("K=%d %-4s %s" % (r["k"], r["mode"], " ".join("%g" % p["rps"] for p in r["ramp"])))
    for k in sorted({r["k"] for r in results}):
        if len({r["mode"] for r in results if r["k"] == k}) < 2:
            continue
        e = next(r for r in results if r["k"] == k and r["mode"] == "ewl")
        f = next(r for r in results if r["k"] == k and r["mode"] == "full")
        ratio = e["first_new_token_s"] / f["first_new_token_s"]
        summary["ratios"]["k%d" % k] = ratio
        print("K=%d: first token by new capacity, execute-while-load / wait-for-full = %.2f" % (k, ratio))
    print(json.dumps(summary))
    silent = ["K=%d %s" % (r["k"], r["mode"]) for r in results if r["answers"] == 0]
    if silent:
        sys.exit("ewl_bench: no request was answered in %s (see the answers files under %s)" %
                 (", ".join(silent), work))


if __name__ == "__main__":
    exit_on_sigterm()
    main()
