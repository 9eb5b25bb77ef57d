"""Workloads for the load-spike benchmark: real traces from ../shared/traces (their README gives
the formats and quirks) or a synthetic step or burst, cut to a window, scaled in time and rate to
the cluster under test, with each request's prompt and output lengths scaled to the model.

A workload is a list of Request(t, prompt, output): t seconds from the start of the run, prompt
and output lengths in tokens, sorted by t.
"""
import bisect
import collections
import csv
import datetime
import functools
import gzip
import json
import math
import os
import random

Request = collections.namedtuple("Request", "t prompt output")

TRACES = os.environ.get("MODELCAST_TRACES",
                        os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "traces"))
AZURE = "AzureLLMInferenceTrace_conv_2023.csv"
MOONCAKE = "mooncake_conversation_trace.jsonl"
SERVEGEN = "servegen_client_windows.csv.gz"


class WorkloadError(Exception):
    pass


def _trace_path(name):
    p = os.path.join(TRACES, name)
    if not os.path.exists(p):
        raise WorkloadError("trace %s not found (set MODELCAST_TRACES to the folder holding it)" % p)
    return p


@functools.lru_cache(maxsize=None)  # read once per process: a run builds a workload more than once
def load_azure():
    """(t, prompt, output) rows of the Azure 2023 conversation trace, t from its first request
    The loaders return tuples: one read is shared by every caller."""
    rows = []
    with open(_trace_path(AZURE)) as f:
        for r in csv.DictReader(f):
            ts = r["TIMESTAMP"]
            # Seven fractional digits: more than strptime's %f takes.
            base, frac = ts.split(".") if "." in ts else (ts, "0")
            t = datetime.datetime.strptime(base, "%Y-%m-%d %H:%M:%S").timestamp() + float("0." + frac)
            rows.append((t, int(r["ContextTokens"]), int(r["GeneratedTokens"])))
    t0 = rows[0][0]
    return tuple((t - t0, p, o) for t, p, o in rows)


@functools.lru_cache(maxsize=None)  # read once per process: a run builds a workload more than once
def load_mooncake():
    """Mooncake's conversation trace (timestamps in ms, quantized to ~3 s buckets)."""
    rows = []
    with open(_trace_path(MOONCAKE)) as f:
        for line in f:
            j = json.loads(line)
            rows.append((j["timestamp"] / 1000.0, int(j["input_length"]), int(j["output_length"])))
    rows.sort()
    return tuple(rows)


@functools.lru_cache(maxsize=None)  # read once per process: a run builds a workload more than once
def load_servegen(model, start, end, seed):
    """Arrivals drawn the way ServeGen's generator draws them: per client and 600-s window, gaps
    from the window's fitted Gamma or Weibull, rescaled to the window's rate. The trace has no
    lengths: prompt and output lengths are drawn from the Azure conversation trace."""
    rng = random.Random(seed)
    windows = collections.defaultdict(list)
    with gzip.open(_trace_path(SERVEGEN), "rt") as f:
        for r in csv.DictReader(f):
            if r["model"] != model:
                continue
            w = int(r["window_start_s"])
            if w + 600 <= start or w >= end:
                continue
            rate = float(r["rate_rps"])
            if rate > 0 and r["iat_dist"]:
                windows[w].append((rate, r["iat_dist"], float(r["iat_shape"]), float(r["iat_scale"])))
    if not windows:
        raise WorkloadError("servegen: no windows of model '%s' between %g and %g s (models: m-large, m-mid, "
                            "m-small, deepseek-r1, mm-image)" % (model, start, end))
    times = []
    for w, clients in windows.items():
        for rate, dist, shape, scale in clients:
            draw = (lambda: rng.gammavariate(shape, scale)) if dist == "Gamma" else (
                lambda: rng.weibullvariate(scale, shape))
            mean = scale * shape if dist == "Gamma" else scale * math.gamma(1 + 1 / shape)
            k = (1.0 / rate) / mean if mean > 0 else 1.0  # rescale the gaps to the window's rate
            t = w + rng.random() / rate
            while t < w + 600:
                if start <= t < end:
                    times.append(t - start)
                t += draw() * k
    times.sort()
    lengths = [(p, o) for _, p, o in load_azure()]
    return tuple((t,) + lengths[rng.randrange(len(lengths))] for t in times)


def synthetic(kind, base, peak, duration, spike_at, spike_len, seed):
    """Poisson arrivals at `base` req/s with a step (or a burst: a short spike) to `peak`.
    Lengths drawn from the Azure conversation trace."""
    rng = random.Random(seed)
    lengths = [(p, o) for _, p, o in load_azure()]
    out, t = [], 0.0
    while True:
        in_spike = spike_at <= t < spike_at + spike_len
        rate = peak if in_spike else base
        t += rng.expovariate(rate)
        if t >= duration:
            return out
        out.append((t,) + lengths[rng.randrange(len(lengths))])


def largest_spike(rows, window):
    """Start of the `window`-second stretch whose second half has the most arrivals over its first."""
    times = [r[0] for r in rows]
    best, best_t = -1.0, 0.0
    t = times[0]
    while t + window <= times[-1]:
        half = window / 2
        a = bisect.bisect_left(times, t + half) - bisect.bisect_left(times, t)
        b = bisect.bisect_left(times, t + window) - bisect.bisect_left(times, t + half)
        score = (b + 1) / (a + 1)
        if score > best:
            best, best_t = score, t
        t += window / 20
    return best_t


def build(spec, duration, rate, max_prompt, max_output, prompt_div=1.0, output_div=1.0, seed=1, window=None):
    """The workload `spec` names, lasting `duration` seconds of the run.

    spec: azure | mooncake | servegen:MODEL | step | burst. For a trace, `window` (seconds of
    the trace, default: the stretch with the sharpest rise, twice `duration` long) is compressed
    into `duration` and thinned or repeated to `rate` mean req/s. For step/burst, `rate` is the base
    and the spike is 5x (step: from 30% of the run to its end less 30%; burst: 10% of the run).
    Lengths are divided by prompt_div/output_div and clipped to [1, max]."""
    rng = random.Random(seed)
    if not (duration > 0 and rate > 0):
        raise WorkloadError("duration and rate must be more than 0")
    if spec in ("step", "burst"):
        spike_len = duration * (0.4 if spec == "step" else 0.1)
        rows = synthetic(spec, rate, rate * 5, duration, duration * 0.3, spike_len, seed)
        source = "%s: %g req/s, 5x from %.0f s for %.0f s" % (spec, rate, duration * 0.3, spike_len)
    else:
        if spec == "azure":
            rows = load_azure()
        elif spec == "mooncake":
            rows = load_mooncake()
        elif spec.startswith("servegen:"):
            model = spec.split(":", 1)[1]
            # The model's largest step-up between consecutive 600-s windows, from the README.
            steps = {"m-large": 844200, "m-small": 794400, "deepseek-r1": 33000, "mm-image": 67200, "m-mid": 845400}
            if model not in steps:
                raise WorkloadError("servegen: unknown model '%s' (known: %s)" % (model, ", ".join(sorted(steps))))
            lo = window[0] if window else steps[model] - 1200
            hi = window[1] if window else steps[model] + 1200
            rows = load_servegen(model, lo, hi, seed)
            window = (0, hi - lo)
        else:
            raise WorkloadError("unknown workload '%s' (azure, mooncake, servegen:MODEL, step, burst)" % spec)
        if window is None:
            span = min(rows[-1][0], max(60.0, 20 * duration))
            start = largest_spike(rows, span)
            window = (start, start + span)
        lo, hi = window
        if not (hi > lo):
            raise WorkloadError("window %g:%g is empty" % (lo, hi))
        rows = [r for r in rows if lo <= r[0] < hi]
        if not rows:
            raise WorkloadError("no requests in the window %g:%g of %s" % (lo, hi, spec))
        scale = duration / (hi - lo)
        rows = [((t - lo) * scale, p, o) for t, p, o in rows]
        # Thin (or repeat) each request to the wanted mean rate, keeping the trace's shape.
        factor = rate * duration / len(rows)
        out = []
        for t, p, o in rows:
            n = int(factor) + (1 if rng.random() < factor - int(factor) else 0)
            for i in range(n):
                out.append((t + i * 1e-3, p, o))
        rows = sorted(out)
        source = "%s, trace seconds %.0f-%.0f compressed %.1fx, thinned to %g req/s mean" % (
            spec, lo, hi, 1 / scale, rate)
    reqs = [Request(t, max(1, min(max_prompt, int(round(p / prompt_div)))),
                    max(1, min(max_output, int(round(o / output_div))))) for t, p, o in rows]
    return reqs, source


def rate_series(reqs, duration, step=1.0):
    """Arrivals per second in consecutive `step`-second bins."""
    bins = [0] * (int(math.ceil(duration / step)) + 1)
    for r in reqs:
        bins[min(len(bins) - 1, int(r.t / step))] += 1
    return [(i * step, n / step) for i, n in enumerate(bins)]
