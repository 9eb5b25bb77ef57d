"""Figures, tables and pictures of a load-spike run (cluster in a box or simulator).

A mode's result is a dict:
  mode, requests: [{t, ttft, tpot, ok, error}] (t: sent, seconds from the start; ttft/tpot in
  seconds, None when it failed), timeline: [(t, loading, pipelines, local, gpus)] (a step
  function in the result's `unit`: loading (not serving yet), serving in pipelines (the box:
  nodes; the simulator: pipelines), serving as full local instances, and the GPUs held for the
  model in any state), end (when the mode's last answer came: GPU time is counted until then),
  decisions: the autoscaler's.
"""
import math
import os


def percentile(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    f = math.floor(k)
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)


def gpu_seconds(timeline, end):
    """GPU time held: every replica from when its load starts until it is released (any state)."""
    total = 0.0
    for i, p in enumerate(timeline):
        nxt = timeline[i + 1][0] if i + 1 < len(timeline) else end
        total += max(0.0, min(nxt, end) - p[0]) * p[4]
    return total


def summarize(result):
    reqs = result["requests"]
    ok = [r for r in reqs if r["ok"]]
    ttft = [r["ttft"] for r in ok]
    tpot = [r["tpot"] for r in ok if r.get("tpot") is not None]
    peak = max((p[4] for p in result["timeline"]), default=0)
    return {"mode": result["mode"], "requests": len(reqs), "failed": len(reqs) - len(ok),
            "timed_out": sum(1 for r in reqs if not r["ok"] and "timed out" in (r.get("error") or "")),
            "ttft_p50": percentile(ttft, 0.5), "ttft_p90": percentile(ttft, 0.9), "ttft_p99": percentile(ttft, 0.99),
            "tpot_p50": percentile(tpot, 0.5), "tpot_mean": sum(tpot) / len(tpot) if tpot else float("nan"),
            "gpu_s": gpu_seconds(result["timeline"], result["end"]), "peak_gpus": peak,
            "scale_outs": sum(1 for d in result.get("decisions", []) if d[1] == "out")}


def ratios(summaries, base="modelcast"):
    by = {s["mode"]: s for s in summaries}
    if base not in by:
        return {}
    b = by[base]
    out = {}
    for m, s in by.items():
        if m == base:
            continue
        out[m] = {"ttft_p90": b["ttft_p90"] / s["ttft_p90"] if s["ttft_p90"] > 0 else float("nan"),
                  "gpu_s": b["gpu_s"] / s["gpu_s"] if s["gpu_s"] > 0 else float("nan")}
    return out


def table(summaries, unit="s"):
    scale = 1000.0 if unit == "ms" else 1.0
    lines = ["| mode | requests | failed | TTFT p50 | p90 | p99 (%s) | TPOT p50 (ms) | GPU-s | peak GPUs | scale-outs |"
             % unit, "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append("| %s | %d | %d | %.3g | %.3g | %.3g | %.3g | %.1f | %d | %d |" % (
            s["mode"], s["requests"], s["failed"], s["ttft_p50"] * scale, s["ttft_p90"] * scale, s["ttft_p99"] * scale,
            s["tpot_p50"] * 1000, s["gpu_s"], s["peak_gpus"], s["scale_outs"]))
    return "\n".join(lines)


def ratio_lines(summaries):
    r = ratios(summaries)
    return ["modelcast / %s: p90 TTFT %.2f, GPU time %.2f" % (m, v["ttft_p90"], v["gpu_s"]) for m, v in r.items()]


def plot(results, rates, out_dir, title):
    """timeline.png (request rate and replicas by state over time, one panel per mode) and
    ttft_cdf.png. Returns the paths, or [] without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    os.makedirs(out_dir, exist_ok=True)
    n = len(results)
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.2 * n + 0.6), sharex=True, squeeze=False)
    for ax, res in zip(axes[:, 0], results):
        tl = res["timeline"] + [(res["end"],) + tuple(res["timeline"][-1][1:])] if res["timeline"] else []
        ts = [p[0] for p in tl]
        loading = [p[1] for p in tl]
        pipes = [p[2] for p in tl]
        local = [p[3] for p in tl]
        ax.stackplot(ts, local, pipes, loading, step="post", labels=["local", "in pipelines", "loading"],
                     colors=["#2b7bba", "#f0a030", "#cccccc"], alpha=0.85)
        ax.set_ylabel(res.get("unit", "replicas"))
        ax.set_title(res["mode"], fontsize=9, loc="left")
        ax2 = ax.twinx()
        ax2.plot([t for t, _ in rates], [r for _, r in rates], color="#c0392b", lw=1)
        ax2.set_ylabel("req/s", color="#c0392b")
    axes[0, 0].legend(loc="upper left", fontsize=7)
    axes[-1, 0].set_xlabel("seconds")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    timeline = os.path.join(out_dir, "timeline.png")
    fig.savefig(timeline, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    for res in results:
        xs = sorted(r["ttft"] for r in res["requests"] if r["ok"])
        if xs:
            ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=res["mode"])
    ax.set_xscale("log")
    ax.set_xlabel("TTFT (s)")
    ax.set_ylabel("fraction of requests")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    cdf = os.path.join(out_dir, "ttft_cdf.png")
    fig.savefig(cdf, dpi=110)
    plt.close(fig)
    return [timeline, cdf]
