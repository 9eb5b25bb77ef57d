"""The load-spike benchmark in the simulator: the same workload and autoscaler as the cluster in
a box, on a simulated cluster (a cluster YAML: the λScale testbed, 64 H100 nodes, ...).

Each scale-out is planned by modelcast's real planner and replayed by `modelcast-sim` (one call
per operation, cached): its capacity timeline says when each new full instance and each pipeline
of partial receivers can serve. Serving is an event simulation of continuous batching: every
serving unit (a full instance, or a pipeline) has `batch` slots; a request holds a slot for its
prefill (prompt / prefill rate) and one decode step per output token (batch / the unit's
tokens/s, from the same model of the GPU the simulator uses); the router sends a request to a
full instance first, then to a pipeline, least loaded first, else it queues (and times out after
queue_timeout). Nodes are the replicas: a node holds gpus GPUs from the start of the operation
that loads it until the autoscaler releases it.

Modes: modelcast (lambdapipe, pipelines serve while loading), no-ewl (lambdapipe, full copies
only), chain, binary-tree (full copies only), local (each node loads its own SSD copy, full
copies only), ideal (every node serving from the start).
"""
import heapq
import itertools
import json
import os
import subprocess

import policy
import report
from modes import ALGORITHM



class SimError(Exception):
    pass


class ScaleOutModel:
    """modelcast-sim's answer for (algorithm, sources, targets), cached."""

    def __init__(self, sim_bin, cluster, model, batch):
        self.sim_bin, self.cluster, self.model, self.batch = sim_bin, cluster, model, batch
        self.cache = {}

    def run(self, algo, sources, targets):
        key = (algo, sources, targets)
        if key not in self.cache:
            argv = [self.sim_bin, "--cluster", self.cluster, "--model", self.model, "--sources", str(sources),
                    "--targets", str(targets), "--algo", algo, "--batch", str(self.batch), "--json"]
            if algo == "local":
                argv += ["--local-tier", "ssd"]
            r = subprocess.run(argv, capture_output=True, text=True)
            if r.returncode != 0:
                raise SimError("%s failed: %s" % (" ".join(argv), r.stderr.strip()))
            self.cache[key] = json.loads(r.stdout.strip().splitlines()[-1])
        return self.cache[key]


class Unit:
    __slots__ = ("id", "kind", "step", "prefill", "free", "draining", "running", "op")

    def __init__(self, uid, kind, step, prefill, slots, op=None):
        self.id, self.kind, self.step, self.prefill = uid, kind, step, prefill
        self.free, self.draining, self.running, self.op = slots, False, 0, op


def simulate(mode, reqs, duration, nodes, min_nodes, scaler_args, model, queue_timeout=60.0, tick=0.5):
    """One mode on one workload. `model` is a ScaleOutModel; `nodes` the cluster's node count."""
    base = model.run("lambdapipe", 1, 1)  # the node's figures (the same whatever the sources)
    batch = model.batch
    per_node = base["instances_per_node"]
    gpus_per_node = per_node * base["gpus_per_instance"]
    inst_tps = base["instance_tokens_per_s"]
    prefill_tps = base["prefill_tokens_per_s"]
    step = batch / inst_tps
    scaler = policy.Autoscaler(**scaler_args)
    ids = itertools.count()
    seq = itertools.count()
    events = []  # (t, seq, kind, payload)

    def push(t, kind, payload=None):
        heapq.heappush(events, (t, next(seq), kind, payload))

    units = {}
    queue = []  # FIFO of request indexes
    qhead = 0
    out = [None] * len(reqs)
    state = {"local_nodes": min_nodes, "loading": 0, "op": None}
    timeline = []
    ops = {}

    def record(t):
        full = sum(1 for u in units.values() if u.kind == "local" and not u.draining)
        pipes = sum(1 for u in units.values() if u.kind == "pipe" and not u.draining)
        point = (t, state["loading"] * per_node, pipes, full, (state["local_nodes"] + state["loading"]) * gpus_per_node)
        if timeline and timeline[-1][1:] == point[1:]:
            return
        timeline.append(point)

    def add_unit(kind, unit_step, op=None):
        u = Unit(next(ids), kind, unit_step, prefill_tps, batch, op)
        units[u.id] = u
        return u

    def start(u, i, now):
        r = reqs[i]
        u.free -= 1
        u.running += 1
        pre = r.prompt / u.prefill
        ttft = now - r.t + pre + u.step
        out[i] = {"t": r.t, "ok": True, "ttft": ttft, "tpot": u.step, "served_by": u.kind}
        push(now + pre + r.output * u.step, "done", u.id)

    def pick():
        best = None
        for u in units.values():
            if u.draining or u.free <= 0:
                continue
            k = (0 if u.kind == "local" else 1, -u.free)
            if best is None or k < best[0]:
                best = (k, u)
        return best[1] if best else None

    def dispatch(now):
        nonlocal qhead
        while qhead < len(queue):
            i = queue[qhead]
            if now - reqs[i].t > queue_timeout:
                out[i] = {"t": reqs[i].t, "ok": False, "ttft": None, "tpot": None,
                          "error": "timed out after %gs in the queue" % queue_timeout}
                qhead += 1
                continue
            u = pick()
            if u is None:
                return
            qhead += 1
            start(u, i, now)

    for _ in range((nodes if mode == "ideal" else min_nodes) * per_node):
        add_unit("local", step)
    if mode == "ideal":
        state["local_nodes"] = nodes
    for i, r in enumerate(reqs):
        push(r.t, "arrive", i)
    push(0.0, "tick")
    record(0.0)

    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "arrive":
            scaler.arrived(now)
            queue.append(payload)
            dispatch(now)
        elif kind == "done":
            u = units[payload]
            u.free += 1
            u.running -= 1
            if u.draining and u.running == 0:
                del units[u.id]
            dispatch(now)
        elif kind == "capacity":
            op_id, full, pipes, pipe_tps = payload
            op = ops[op_id]
            while op["full"] < full:
                op["full"] += 1
                add_unit("local", step)
            live = [u for u in units.values() if u.op == op_id and u.kind == "pipe" and not u.draining]
            for u in live[pipes:]:
                u.draining = True
                if u.running == 0:
                    del units[u.id]
            for _ in range(pipes - len(live)):
                add_unit("pipe", batch / pipe_tps if pipe_tps > 0 else step, op=op_id)
            record(now)
            dispatch(now)
        elif kind == "op_done":
            op = ops.pop(payload)
            for u in [u for u in units.values() if u.op == payload]:
                u.draining = True
                if u.running == 0:
                    del units[u.id]
            while op["full"] < op["targets"] * per_node:
                op["full"] += 1
                add_unit("local", step)
            state["loading"] -= op["targets"]
            state["local_nodes"] += op["targets"]
            state["op"] = None
            record(now)
            dispatch(now)
        elif kind == "tick":
            if mode != "ideal":
                outstanding = (len(queue) - qhead) + sum(u.running for u in units.values())
                held = state["local_nodes"] + state["loading"]
                n = scaler.decide(now, outstanding, held, state["op"] is not None)
                if n > 0:
                    n = min(n, nodes - held)
                if n > 0:
                    res = model.run(ALGORITHM[mode], state["local_nodes"], n)["results"][ALGORITHM[mode]]
                    op_id = next(ids)
                    ops[op_id] = {"full": 0, "targets": n}
                    state["op"] = op_id
                    state["loading"] += n
                    for t, tps, full, pipes in res["capacity"]:
                        if mode != "modelcast":
                            pipes = 0
                        new_full = full * inst_tps
                        pipe_tps = (tps - res["base_tokens_per_s"] - new_full) / pipes if pipes else 0
                        push(now + t, "capacity", (op_id, full, pipes, pipe_tps))
                    push(now + res["completion_s"], "op_done", op_id)
                    record(now)
                elif n < 0:
                    release = min(-n, state["local_nodes"] - scaler.min)
                    locals_ = sorted((u for u in units.values() if u.kind == "local" and not u.draining),
                                     key=lambda u: u.running)
                    for u in locals_[:release * per_node]:
                        u.draining = True
                        if u.running == 0:
                            del units[u.id]
                    state["local_nodes"] -= release
                    record(now)
            if now < duration or qhead < len(queue) or any(u.running for u in units.values()):
                push(now + tick, "tick")
            dispatch(now)
    # GPU time counts until this mode's last answer: a mode still working off a backlog pays for it.
    end = max([duration] + [o["t"] + o["ttft"] + (reqs[i].output - 1) * o["tpot"] for i, o in enumerate(out)
                            if o and o["ok"]])
    for i, o in enumerate(out):
        if o is None:
            out[i] = {"t": reqs[i].t, "ok": False, "ttft": None, "tpot": None, "error": "never served"}
    return {"mode": mode, "requests": out, "timeline": timeline, "end": end, "decisions": scaler.decisions,
            "unit": "instances", "gpus_per_node": gpus_per_node, "instance_tokens_per_s": inst_tps,
            "prefill_tokens_per_s": prefill_tps, "step_s": step}


def capacity_rps(model, mean_prompt, mean_output):
    """Requests/s one node sustains with every slot busy."""
    base = model.run("lambdapipe", 1, 1)
    step = model.batch / base["instance_tokens_per_s"]
    per_request = mean_prompt / base["prefill_tokens_per_s"] + mean_output * step
    return base["instances_per_node"] * model.batch / per_request
