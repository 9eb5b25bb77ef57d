"""What a load spike costs per scaling method at a TTFT SLO (issue 25).

Operators fix an SLO (p90 TTFT at most S seconds, no failed request) and pay what it takes to
hold it: with a slow way to add capacity they keep more replicas warm, scale out earlier (more
headroom) and keep replicas longer. So for each scaling mode the same autoscaler policy space is
searched, and the cheapest policy (GPU-seconds over the run) that holds the SLO is that mode's
cost at that SLO:

  warm      replicas kept serving at all times (the autoscaler's minimum, and the sources of the
            first scale-out)
  keep      keep-alive: seconds the want must stay below what is held before a scale-in
  util      headroom: the fraction of a replica's slots the autoscaler plans to keep busy (lower:
            it scales out earlier and further)

The workload's rate does not depend on the policy (it is `load` x one node's capacity x
`base_nodes`). Every (mode, policy) is simulated once (sim.simulate: the real planner and
modelcast-sim's timelines, cached per operation shape); the SLOs are then answered from the same
evaluations.
"""
import math

import report
import sim

SCALING_MODES = ["modelcast", "no-ewl", "chain", "binary-tree", "local"]
DEFAULT_KEEP = [0, 15, 30, 60, 120, 300]
DEFAULT_UTIL = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def default_warm(nodes):
    """1..8 replicas, then a geometric ladder up to every node."""
    ladder = [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 96, 128]
    return sorted({w for w in ladder if w <= nodes} | {nodes})


def evaluate(mode, reqs, duration, nodes, model, service_s, slots_per_node, policy):
    """One simulation: the policy's figures (p90 TTFT, failed requests, GPU-s)."""
    scaler = {"min_replicas": policy["warm"], "max_replicas": nodes, "per_replica": slots_per_node * policy["util"],
              "service_s": service_s, "keep_alive": policy["keep"]}
    r = sim.simulate(mode, reqs, duration, nodes, policy["warm"], scaler, model)
    return figures(policy, report.summarize(r))


def figures(policy, summary):
    """An evaluation: the policy and what a run under it measured (report.summarize's)."""
    return {"policy": policy, "ttft_p90": summary["ttft_p90"], "failed": summary["failed"], "gpu_s": summary["gpu_s"],
            "peak_gpus": summary["peak_gpus"], "scale_outs": summary["scale_outs"]}


def search(modes, reqs, duration, nodes, model, service_s, slots_per_node, warm, keeps, utils, progress=None):
    """Every (mode, policy) evaluated: {mode: [evaluation, ...]}."""
    out = {}
    for mode in modes:
        evals = []
        for w in warm:
            for k in keeps:
                for u in utils:
                    evals.append(evaluate(mode, reqs, duration, nodes, model, service_s, slots_per_node,
                                          {"warm": w, "keep": k, "util": u}))
        out[mode] = evals
        if progress:
            progress(mode, evals)
    return out


def search_smallest_warm(modes, evaluate_policy, warm, keeps, utils, slos, progress=None):
    """For a search where each evaluation is dear (the cluster in a box: a real run each): per mode,
    keep-alive, headroom and SLO, the smallest warm minimum that holds the SLO, found by bisection
    over `warm` (sorted), assuming more warm replicas never serve worse; runs are shared between
    the SLOs and all kept, so the cheapest holding policy is then chosen as in the simulator's
    full search. `evaluate_policy(mode, policy)` -> an evaluation as `evaluate` returns it."""
    out = {}
    for mode in modes:
        evals = []
        for k in keeps:
            for u in utils:
                done = {}

                def ev(i):
                    if i not in done:
                        done[i] = evaluate_policy(mode, {"warm": warm[i], "keep": k, "util": u})
                        evals.append(done[i])
                        if progress:
                            progress(mode, evals)
                    return done[i]

                for slo in slos:
                    lo, hi = 0, len(warm) - 1
                    if not holds(ev(hi), slo):
                        continue  # not even the most warm replicas hold it
                    while lo < hi:
                        mid = (lo + hi) // 2
                        if holds(ev(mid), slo):
                            hi = mid
                        else:
                            lo = mid + 1
        out[mode] = evals
    return out


def holds(e, slo):
    return e["failed"] == 0 and e["ttft_p90"] == e["ttft_p90"] and e["ttft_p90"] <= slo


def cheapest(evals, slo):
    """The cheapest evaluation that holds the SLO (ties: fewer warm replicas, shorter keep-alive),
    or None when no policy of the space holds it."""
    ok = [e for e in evals if holds(e, slo)]
    if not ok:
        return None
    return min(ok, key=lambda e: (e["gpu_s"], e["policy"]["warm"], e["policy"]["keep"], -e["policy"]["util"]))


def costs(evaluations, slos, base="modelcast"):
    """Per SLO: each mode's cheapest policy and cost, and `base`'s cost over each other mode's
    (keys "<base>_over_<mode>"; absent where either holds no policy)."""
    table = []
    for slo in slos:
        row = {"slo_s": slo, "modes": {}, "ratios": {}}
        for mode, evals in evaluations.items():
            best = cheapest(evals, slo)
            row["modes"][mode] = None if best is None else {
                "gpu_s": best["gpu_s"], "policy": best["policy"], "ttft_p90": best["ttft_p90"],
                "peak_gpus": best["peak_gpus"]}
        b = row["modes"].get(base)
        for mode, m in row["modes"].items():
            if mode != base and b and m and m["gpu_s"] > 0:
                row["ratios"]["%s_over_%s" % (base, mode)] = b["gpu_s"] / m["gpu_s"]
        others = [m["gpu_s"] for mode, m in row["modes"].items() if mode not in (base, "local") and m]
        if b and others:
            row["ratios"]["%s_over_best_other_multicast" % base] = b["gpu_s"] / min(others)
        table.append(row)
    return table


def markdown(table, modes):
    lines = ["| p90 TTFT SLO | " + " | ".join("%s GPU-s (warm, keep, util)" % m for m in modes) +
             " | modelcast / local | modelcast / best other multicast |",
             "|---|" + "---|" * (len(modes) + 2)]
    for row in table:
        cells = []
        for m in modes:
            c = row["modes"].get(m)
            cells.append("not held" if c is None else "%.0f (%d, %gs, %g)" % (
                c["gpu_s"], c["policy"]["warm"], c["policy"]["keep"], c["policy"]["util"]))
        r = row["ratios"]
        fmt = lambda x: "%.2f" % x if x is not None else "-"  # noqa: E731
        lines.append("| %g s | %s | %s | %s |" % (row["slo_s"], " | ".join(cells), fmt(r.get("modelcast_over_local")),
                                                  fmt(r.get("modelcast_over_best_other_multicast"))))
    return "\n".join(lines)


def plot(table, modes, path, title):
    """cost.png: GPU-s against the SLO, one line per mode (one SLO: a bar per mode). False without
    matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    if len(table) == 1:  # one SLO: a bar per mode
        row = table[0]
        held = [m for m in modes if row["modes"].get(m)]
        ax.bar(held, [row["modes"][m]["gpu_s"] for m in held], color=["C%d" % modes.index(m) for m in held])
        for i, m in enumerate(held):
            p = row["modes"][m]["policy"]
            ax.annotate("warm %d, keep %gs" % (p["warm"], p["keep"]), (i, row["modes"][m]["gpu_s"]), ha="center",
                        va="bottom", fontsize=8)
        ax.set_xlabel("mode (p90 TTFT <= %g s, 0 failed requests)" % row["slo_s"])
    else:
        lines(ax, table, modes)
    ax.set_ylabel("GPU-seconds to hold it")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def lines(ax, table, modes):
    """GPU-s against the SLO (log scale), a line per mode."""
    for m in modes:
        pts = [(row["slo_s"], row["modes"][m]["gpu_s"]) for row in table if row["modes"].get(m)]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
    ax.set_xscale("log")
    slos = [row["slo_s"] for row in table]
    ax.set_xticks(slos)
    ax.set_xticklabels(["%g" % x for x in slos])
    ax.minorticks_off()
    ax.set_xlabel("p90 TTFT SLO (s), 0 failed requests")
    ax.legend(fontsize=8)


def slo_list(text):
    try:
        slos = sorted(float(x) for x in text.split(",") if x)
    except ValueError:
        raise ValueError("--slo wants seconds separated by commas, got '%s'" % text)
    if not slos or any(not (s > 0) or math.isinf(s) for s in slos):
        raise ValueError("--slo wants positive seconds, got '%s'" % text)
    return slos
