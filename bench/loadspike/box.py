"""The load-spike benchmark on the cluster in a box: real coordinator, router and agents (in
network namespaces behind shaped links, or on loopback), a synthesized model, and per mode:

1. a fresh cluster: node-1 is the head (coordinator + an agent whose SSD holds the package, at
   full speed); node-2..N are the workers, whose SSDs read at the emulated --ssd-rate (in `local`
   mode every worker's SSD holds the package); the router's engines step no faster than an
   emulated accelerator (--step + --token per token), so that eight instances on two cores behave
   like eight GPUs and one instance saturates under the spike;
2. min-nodes replicas loaded (ideal: every worker), untimed;
3. the workload replayed open-loop through POST /v1/completions (streaming: TTFT and time per
   output token measured by the client), while the autoscaler (policy.py) polls listInstances
   and calls scaleOut (the mode's algorithm, workers only) and scaleIn over Thrift.
"""
import concurrent.futures
import ctypes
import http.client
import json
import os
import random
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from box_cluster import ROOT, TOKEN, BoxCluster, prepare_model  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "build", "thrift", "gen-py"))
import policy  # noqa: E402
from modes import ALGORITHM  # noqa: E402
import workload  # noqa: E402


def duration_s(text):
    for suffix, k in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0)):
        if text.endswith(suffix):
            return float(text[:-len(suffix)]) * k
    return float(text)


class Coordinator:
    """The autoscaler's Thrift client of the coordinator (one connection, one caller at a time)."""

    def __init__(self, host, port):
        from thrift.protocol import TBinaryProtocol, TMultiplexedProtocol
        from thrift.transport import TSocket, TTransport
        from modelcast_rpc import Coordinator as C, ttypes
        self.ttypes = ttypes
        self.transport = TTransport.TFramedTransport(TSocket.TSocket(host, port))
        proto = TMultiplexedProtocol.TMultiplexedProtocol(TBinaryProtocol.TBinaryProtocol(self.transport),
                                                          "Coordinator")
        self.client = C.Client(proto)
        self.transport.open()
        self.header = ttypes.RequestHeader(token=TOKEN, caller="loadspike-autoscaler")
        self.lock = threading.Lock()

    def instances(self, model):
        with self.lock:
            return self.client.listInstances(self.header, model)

    def scale_out(self, model, n, algorithm, targets):
        t = self.ttypes
        with self.lock:
            r = self.client.scaleOut(t.ScaleOutRequest(header=self.header, model=model, replicas=n,
                                                       options=t.ScaleOptions(algorithm=algorithm, targets=targets)))
        return r.operation_id

    def scale_in(self, model, n):
        with self.lock:
            return self.client.scaleIn(self.ttypes.ScaleInRequest(header=self.header, model=model, replicas=n))

    def operation(self, op):
        with self.lock:
            return self.client.getOperation(self.header, op)

    def running(self, op):
        s = self.operation(op)
        return self.ttypes.OperationState._VALUES_TO_NAMES[s.state] in ("PENDING", "PLANNING", "RUNNING")

    def wait(self, op, timeout, what):
        """The operation's status once it has ended; exits naming `what` if it failed or ran past
        `timeout` seconds."""
        end = time.time() + timeout
        while self.running(op):
            if time.time() > end:
                sys.exit("loadspike: %s (%s) still running after %.0f s" % (what, op, timeout))
            time.sleep(0.1)
        st = self.operation(op)
        if self.ttypes.OperationState._VALUES_TO_NAMES[st.state] != "SUCCEEDED":
            sys.exit("loadspike: %s (%s) failed: %s" % (what, op, st.error))
        return st


class Netns:
    """Moves this thread (and the threads it starts from now on) into a network namespace, and
    back on exit: the head's address is reachable only from inside the cluster's namespaces."""
    CLONE_NEWNET = 0x40000000

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        if self.name is None:
            return self
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        self._set(os.open("/var/run/netns/" + self.name, os.O_RDONLY))
        return self

    def _set(self, fd):
        try:
            if self.libc.setns(fd, self.CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into %s" % self.name)
        finally:
            os.close(fd)

    def __exit__(self, *exc):
        if self.name is not None:
            self._set(self.orig)


def send(host, model, req, vocab, rng_seed):
    """One streamed completion; returns (ok, ttft, tpot, error, served_by)."""
    rng = random.Random(rng_seed)
    body = json.dumps({"model": model, "prompt": [rng.randrange(3, vocab) for _ in range(req.prompt)],
                       "max_tokens": req.output, "temperature": 0.0, "stream": True})
    t0 = time.time()
    first = last = None
    n = 0
    try:
        c = http.client.HTTPConnection(host, 8000, timeout=900)
        c.request("POST", "/v1/completions", body, {"Content-Type": "application/json",
                                                      "Authorization": "Bearer " + TOKEN})
        r = c.getresponse()
        if r.status != 200:
            return False, None, None, "HTTP %d: %s" % (r.status, r.read()[:200].decode(errors="replace")), None
        served_by = None
        for line in r:
            line = line.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if "error" in ev:
                return False, None, None, json.dumps(ev["error"]), None
            if ev.get("modelcast"):
                served_by = ev["modelcast"].get("served_by", served_by)
            if ev.get("choices") and ev["choices"][0].get("tokens"):
                now = time.time()
                n += len(ev["choices"][0]["tokens"])
                first = first or now
                last = now
        c.close()
    except Exception as e:  # noqa: BLE001 (every failure counts, named)
        return False, None, None, "%s: %s" % (type(e).__name__, e), None
    if first is None:
        return False, None, None, "no token", None
    return True, first - t0, (last - first) / (n - 1) if n > 1 else None, None, served_by


def run_mode(args, work, model, mode, reqs, vocab):
    workers_i = range(2, args.nodes + 1)
    workers = ["node-%d" % i for i in workers_i]
    serving = ("max_batch: %d, queue_timeout: 900s, pipelines: %s, emulate: {step: %s, token: %s}" %
               (args.batch, "true" if mode == "modelcast" else "false", args.step, args.token))
    c = BoxCluster(work, args.nodes, link=args.link, loopback=args.loopback, serving=serving,
                   ssd_copies=range(1, args.nodes + 1) if mode == "local" else [1],
                   store_extra="ssd_read_rate: %s" % args.ssd_rate, store_extra_nodes=workers_i, prefix="mls",
                   ssd=args.ssd_rate)
    try:
        # The head reads its SSD at full speed: it is the model's origin, not a worker.
        c.mc(["models", "--register", os.path.join(work, "pkg")])
        c.wait_held(model, args.nodes if mode == "local" else 1)
        with Netns(None if args.loopback else "mls-n1"):
            return drive(args, c, model, mode, reqs, vocab, workers)
    finally:
        c.down()


def drive(args, c, model, mode, reqs, vocab, workers):
    coord = Coordinator(c.ip(1), 7300)
    initial = len(workers) if mode == "ideal" else args.min_nodes
    # The replicas serving before the workload (not timed): multicast from the head in every mode.
    coord.wait(coord.scale_out(model, initial, "lambdapipe", workers), 900, "loading the first %d replicas" % initial)
    print("%s: %d replicas serving; replaying %d requests" % (mode, initial, len(reqs)), flush=True)
    step = duration_s(args.step)
    token = duration_s(args.token)
    mean_p = sum(r.prompt for r in reqs) / len(reqs)
    mean_o = sum(r.output for r in reqs) / len(reqs)
    service = (mean_o + 1) * step + (mean_p + mean_o) * token
    scaler = policy.Autoscaler(min_replicas=args.min_nodes, max_replicas=len(workers),
                               per_replica=args.batch * getattr(args, "util", 0.75), service_s=service,
                               keep_alive=args.keep_alive)
    out = [None] * len(reqs)
    outstanding = [0]
    lock = threading.Lock()
    timeline = []
    stop = threading.Event()
    t_start = time.time() + 0.5

    def one(i):
        ok, ttft, tpot, err, by = send(c.ip(1), model, reqs[i], vocab, args.seed * 1000003 + i)
        with lock:
            outstanding[0] -= 1
            out[i] = {"t": reqs[i].t, "ok": ok, "ttft": ttft, "tpot": tpot, "error": err, "served_by": by}

    def autoscale():
        op = None
        while not stop.is_set():
            now = time.time() - t_start
            inst = coord.instances(model)
            names = coord.ttypes.InstanceState._VALUES_TO_NAMES
            states = [names[x.state] for x in inst]
            held = sum(1 for s in states if s != "DRAINING")
            # Nodes loading (not serving yet), serving in pipelines, serving whole; GPUs held.
            timeline.append((max(0.0, now), states.count("LOADING"), states.count("PIPELINE"),
                             states.count("LOCAL"), len(states)))
            busy = op is not None and coord.running(op)
            if not busy:
                op = None
            if mode != "ideal" and now >= 0:
                with lock:
                    n = scaler.decide(now, outstanding[0], held, busy)
                try:
                    if n > 0:
                        op = coord.scale_out(model, n, ALGORITHM[mode], workers)
                    elif n < 0:
                        op = coord.scale_in(model, -n)
                except coord.ttypes.InvalidRequest as e:
                    print("%s: the coordinator refused (%s)" % (mode, e.message), flush=True)
            stop.wait(0.5)

    scaler_thread = threading.Thread(target=autoscale)
    scaler_thread.start()
    with concurrent.futures.ThreadPoolExecutor(max_workers=512) as pool:
        for i, r in enumerate(reqs):
            delay = t_start + r.t - time.time()
            if delay > 0:
                time.sleep(delay)
            with lock:
                outstanding[0] += 1
                scaler.arrived(time.time() - t_start)
            pool.submit(one, i)
    end = time.time() - t_start
    stop.set()
    scaler_thread.join()
    failed = sum(1 for o in out if not o["ok"])
    print("%s: done in %.0f s, %d failed" % (mode, end, failed), flush=True)
    # GPU time counts until this mode's last answer: a mode still working off a backlog pays for it.
    return {"mode": mode, "requests": out, "timeline": timeline, "end": max(args.duration, end),
            "decisions": scaler.decisions, "unit": "replicas (nodes)", "drain_s": end - args.duration}


class Setup:
    """What a box run starts from: its folder, the prepared model and the workload."""

    def __init__(self, args):
        self.work = args.work or tempfile.mkdtemp(prefix="loadspike-")
        os.makedirs(self.work, exist_ok=True)
        self.model = prepare_model(self.work, args.preset, args.blocks)
        self.vocab = json.load(open(os.path.join(self.work, "hf", "config.json")))["vocab_size"]
        self.reqs, self.source = workload.build(args.workload, args.duration, args.rate, args.max_prompt,
                                                args.max_output, args.prompt_div, args.output_div, args.seed,
                                                window=args.window)

    def run_mode(self, args, mode):
        return run_mode(args, self.work, self.model, mode, self.reqs, self.vocab)


def run(args, modes, write_outputs):
    setup = Setup(args)
    model, reqs, source = setup.model, setup.reqs, setup.source
    results = []
    os.makedirs(args.out, exist_ok=True)
    for mode in modes:
        results.append(setup.run_mode(args, mode))
        with open(os.path.join(args.out, "mode-%s.json" % mode), "w") as f:  # kept if a later mode fails
            json.dump(results[-1], f)
    where = "loopback" if args.loopback else "netns, %s links" % args.link
    title = "cluster in a box (%s): %d nodes, %s, %s" % (where, args.nodes, model, args.workload)
    write_outputs(args, results, reqs, source, title,
                  {"nodes": args.nodes, "link": args.link, "ssd_rate": args.ssd_rate, "step": args.step,
                   "token": args.token, "batch": args.batch, "rate_rps": args.rate})


def evaluate(setup, args, mode, policy, out_dir=None):
    """One box run of `mode` under an autoscaler policy (warm, keep, util; cost.py's): its p90
    TTFT, failed requests and GPU-s, as cost.evaluate gives them for the simulator."""
    import copy
    import cost
    import report
    a = copy.copy(args)
    a.min_nodes, a.keep_alive, a.util = policy["warm"], policy["keep"], policy["util"]
    r = setup.run_mode(a, mode)
    if out_dir:
        with open(os.path.join(out_dir, "box-%s-w%d-k%g-u%g.json" % (mode, policy["warm"], policy["keep"],
                                                                        policy["util"])), "w") as f:
            json.dump(r, f)
    e = cost.figures(policy, report.summarize(r))
    print("  %-11s warm %d, keep %gs, util %g: p90 TTFT %.3f s, %d failed, %.0f GPU-s" % (
        mode, policy["warm"], policy["keep"], policy["util"], e["ttft_p90"], e["failed"], e["gpu_s"]), flush=True)
    return e
