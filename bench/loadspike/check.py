"""The simulator checked against the cluster in a box (`loadspike.py check`, issue 25 part 4).

The load-spike simulator (sim.py) models every scale-out by `modelcast-sim`: the real planner's
plan replayed on a simulated cluster. Here the same scale-outs run for real in the box (real
coordinator and agents in network namespaces behind shaped links), and each is replayed by the
simulator given the box's own figures:

- the links: iperf3's goodput between two of the box's namespaces, measured in the same run;
- the model: the very package the box moves (its slices and blocks);
- the control overhead the simulator does not model: from the operation's creation to its first
  byte (planning, dispatch), and from its last slice landing to the operation's end (the agents'
  reports), each the median over this run's operations.

Per operation it compares the data-plane time (first byte to the last target's last slice)
with the simulator's completion, the whole operation (created to finished, what an autoscaler
waits for) with the prediction plus the measured overheads, and the first pipeline's blocks
(when the first pipeline the coordinator formed had every block) with the simulator's first
pipeline. Between operations the new copies are released (scaleIn) and removed from the
targets' stores (Agent.evict), so that every operation starts from the same sources.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from box_cluster import ROOT, TOKEN, BoxCluster, prepare_model, run  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "build", "thrift", "gen-py"))
from box import Coordinator, Netns  # noqa: E402
import sim  # noqa: E402

DEFAULT_SHAPES = "lambdapipe:1:1,lambdapipe:1:3,lambdapipe:1:6,chain:1:6,binary-tree:1:6,unicast:1:3,lambdapipe:2:5"
TOLERANCE = 0.15


def parse_shapes(text, nodes):
    """'algo:sources:targets,...' -> [(algo, sources, targets)]; errors name the entry."""
    out = []
    for item in [x for x in text.split(",") if x]:
        parts = item.split(":")
        try:
            if len(parts) != 3:
                raise ValueError
            algo, s, t = parts[0], int(parts[1]), int(parts[2])
        except ValueError:
            raise ValueError("--shapes: '%s' is not algorithm:sources:targets" % item)
        if s < 1 or t < 1:
            raise ValueError("--shapes: '%s' needs at least one source and one target" % item)
        if 1 + s + t > nodes:
            raise ValueError("--shapes: '%s' needs %d workers; the box has %d (--nodes %d, node-1 is the head)" % (
                item, s + t, nodes - 1, nodes))
        if algo not in ("lambdapipe", "binomial", "binary-tree", "chain", "unicast"):
            raise ValueError("--shapes: '%s': unknown algorithm '%s'" % (item, algo))
        out.append((algo, s, t))
    if not out:
        raise ValueError("--shapes: no scale-out given")
    return out


def goodput(c, seconds):
    """iperf3's goodput from node-2 to node-1 (bytes/s), the median of 3 runs of `seconds`."""
    runs = []
    for _ in range(3):
        server = subprocess.Popen(c.in_ns(1, ["iperf3", "-s", "-1", "-p", "15211"]), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            end = time.time() + 10  # until the server listens (a client too early gets an "error")
            while True:
                r = run(c.in_ns(2, ["iperf3", "-c", c.ip(1), "-p", "15211", "-t", str(seconds), "-J"]), check=False,
                        timeout=60)
                try:
                    got = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 8
                    break
                except (ValueError, KeyError):
                    if time.time() > end or server.poll() is not None:
                        sys.exit("loadspike check: iperf3 between node-2 and node-1 failed: %s" % r.stdout[-300:])
                time.sleep(0.1)
            runs.append(got)
        finally:
            if server.poll() is None:
                server.kill()
            server.wait()
    return sorted(runs)[1]


def cluster_yaml(nodes, bytes_per_s):
    """The box as the simulator sees it: its nodes, links of the measured goodput."""
    y = ("name: box-check\ndefaults: {gpus: 1, gpu_memory: 4GiB, gpu_hbm: 10GB/s, gpu_tflops: 0.2, host_memory: 8GiB, "
         "nic: %dbit, pcie: 10GB/s, ssd: 1GB/s, latency: 100us}\nnodes:\n" % round(bytes_per_s * 8))
    y += "".join("  - {name: node-%d}\n" % i for i in range(1, nodes + 1))
    return y + "network: {per_transfer_overhead: 100us}\n"


class Agents:
    """Thrift clients of the agents (Agent.evict), one connection per call."""

    def __init__(self, c):
        self.c = c

    def evict(self, node_index, model, timeout=30):
        """Removes the model from the node's store; a released instance still draining holds its
        blocks a little longer (refused as "in use"): tried again until `timeout`."""
        from thrift.protocol import TBinaryProtocol
        from thrift.transport import TSocket, TTransport
        from modelcast_rpc import Agent, ttypes
        end = time.time() + timeout
        while True:
            t = TTransport.TFramedTransport(TSocket.TSocket(self.c.ip(node_index), self.c.agent_port(node_index)))
            t.open()
            try:
                Agent.Client(TBinaryProtocol.TBinaryProtocol(t)).evict(ttypes.MoveRequest(
                    header=ttypes.RequestHeader(token=TOKEN, caller="loadspike-check"), model=model, blocks=[],
                    tier=""))
                return
            except ttypes.InvalidRequest as e:
                if "in use" not in e.message or time.time() > end:
                    raise
            finally:
                t.close()
            time.sleep(0.1)


def wait_holders(coord, model, holders, timeout=60):
    """Until exactly `holders` hold the model (any tier) and serve it."""
    end = time.time() + timeout
    want = set(holders)
    while time.time() < end:
        info = [m for m in coord.client.listModels(coord.header) if m.summary.name == model]
        held = set(info[0].gpu_holders) | set(info[0].host_holders) | set(info[0].ssd_holders) if info else set()
        serving = {i.node for i in coord.instances(model)}
        if held == want and serving <= want:
            return
        time.sleep(0.2)
    sys.exit("loadspike check: the copies were not back to %s after %d s (held %s, serving %s)" % (
        sorted(want), timeout, sorted(held), sorted(serving)))


class Ops:
    """The scale-outs and releases of one box, each waited for to its end."""

    def __init__(self, coord, agents, model, timeout):
        self.coord, self.agents, self.model, self.timeout = coord, agents, model, timeout

    def scale_out(self, nodes, algorithm=None):
        """New replicas on `nodes` (indexes): (the response, the finished operation's status)."""
        t = self.coord.ttypes
        with self.coord.lock:
            r = self.coord.client.scaleOut(t.ScaleOutRequest(
                header=self.coord.header, model=self.model, replicas=len(nodes),
                options=t.ScaleOptions(algorithm=algorithm, targets=["node-%d" % i for i in nodes])))
        return r, self.coord.wait(r.operation_id, self.timeout, "the scale-out onto %s" % nodes)

    def release(self, nodes):
        """The replicas on `nodes` released and their copies removed."""
        t = self.coord.ttypes
        with self.coord.lock:
            op = self.coord.client.scaleIn(t.ScaleInRequest(header=self.coord.header, model=self.model,
                                                             replicas=len(nodes),
                                                             nodes=["node-%d" % i for i in nodes]))
        self.coord.wait(op, self.timeout, "the release of %s" % nodes)
        for i in nodes:
            self.agents.evict(i, self.model)


def measure(ops, algo, sources, targets):
    """One timed scale-out onto `targets` (node indexes) from the copies on `sources`; then back."""
    r, st = ops.scale_out(targets, algo)
    done = [n.complete_unix for n in st.nodes if n.complete_unix]
    row = {"algorithm": algo, "sources": sorted(r.sources), "targets": sorted(r.targets), "operation": r.operation_id,
           "created_unix": st.created_unix, "first_byte_unix": st.first_byte_unix, "finished_unix": st.finished_unix,
           "last_landed_unix": max(done) if done else None, "first_pipeline_s": st.first_pipeline_s,
           "first_pipeline_blocks_s": st.first_pipeline_blocks_s}
    ops.release(targets)  # back to the sources only
    wait_holders(ops.coord, ops.model, ["node-%d" % i for i in sources])
    return row


def predict(rows, model_spec, yaml_path, batch, sim_bin):
    """The simulator's figures for each row, the overheads it is given, and the comparisons."""
    scale = sim.ScaleOutModel(sim_bin, yaml_path, model_spec, batch)
    dispatch = statistics.median(r["first_byte_unix"] - r["created_unix"] for r in rows)
    report_lag = statistics.median(r["finished_unix"] - r["last_landed_unix"] for r in rows)
    for r in rows:
        p = scale.run(r["algorithm"], len(r["sources"]), len(r["targets"]))["results"][r["algorithm"]]
        r["sim_completion_s"] = p["completion_s"]
        r["sim_first_pipeline_s"] = p.get("first_pipeline_s")
        r["transfer_s"] = r["last_landed_unix"] - r["first_byte_unix"]
        r["operation_s"] = r["finished_unix"] - r["created_unix"]
        r["sim_operation_s"] = dispatch + p["completion_s"] + report_lag
        r["transfer_over_sim"] = r["transfer_s"] / p["completion_s"]
        r["operation_over_sim"] = r["operation_s"] / r["sim_operation_s"]
        if r["first_pipeline_blocks_s"] is not None and r["sim_first_pipeline_s"] is not None:
            r["pipeline_blocks_s"] = r["created_unix"] + r["first_pipeline_blocks_s"] - r["first_byte_unix"]
            r["pipeline_over_sim"] = r["pipeline_blocks_s"] / r["sim_first_pipeline_s"]
    return {"dispatch_s": dispatch, "report_lag_s": report_lag}


def table(rows):
    lines = ["| algorithm | sources | targets | transfer (s) | simulated | ratio | operation (s) | simulated + overheads | "
             "ratio | first pipeline's blocks (s) | simulated | ratio |", "|" + "---|" * 12]
    for r in rows:
        pipe = ("%.2f | %.2f | %.2f" % (r["pipeline_blocks_s"], r["sim_first_pipeline_s"], r["pipeline_over_sim"])
                if "pipeline_over_sim" in r else "- | - | -")
        lines.append("| %s | %d | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %s |" % (
            r["algorithm"], len(r["sources"]), len(r["targets"]), r["transfer_s"], r["sim_completion_s"],
            r["transfer_over_sim"], r["operation_s"], r["sim_operation_s"], r["operation_over_sim"], pipe))
    return "\n".join(lines)


def summary(rows):
    def worst(key):
        v = [r[key] for r in rows if key in r]
        return max(v, key=lambda x: abs(x - 1)) if v else None

    def within(key):
        v = [r[key] for r in rows if key in r]
        return "%d/%d" % (sum(1 for x in v if abs(x - 1) <= TOLERANCE), len(v))

    return {k: {"worst": worst(k), "within_15pct": within(k)}
            for k in ("transfer_over_sim", "operation_over_sim", "pipeline_over_sim")}


def cmd_check(args):
    if os.geteuid() != 0:
        sys.exit("loadspike check: needs root (network namespaces)")
    try:
        shapes = parse_shapes(args.shapes, args.nodes)
    except ValueError as e:
        sys.exit("loadspike check: %s" % e)
    if args.reps < 1:
        sys.exit("loadspike check: --reps must be at least 1")
    work = args.work or tempfile.mkdtemp(prefix="loadspike-check-")
    os.makedirs(work, exist_ok=True)
    model = prepare_model(work, args.preset, args.blocks, slice_mib=args.slice_mib)
    pkg = os.path.join(work, "pkg")
    serving = "max_batch: 4, pipelines: true, emulate: {step: 150ms, token: 1ms}"
    c = BoxCluster(work, args.nodes, link=args.link, serving=serving, ssd_copies=[1], prefix="mlc")
    rows = []
    try:
        b = goodput(c, args.iperf_seconds)
        print("links shaped to %s: iperf3 goodput %.1f MB/s (median of 3)" % (args.link, b / 1e6), flush=True)
        c.mc(["models", "--register", pkg])
        c.wait_held(model, 1)
        with Netns("mlc-n1"):
            ops = Ops(Coordinator(c.ip(1), 7300), Agents(c), model, args.timeout)
            most = max(s for _, s, _ in shapes)
            # The sources: node-2.. loaded from the head (untimed); then the head's copy removed,
            # so that every timed operation is fed by those sources only.
            for k in range(2, 2 + most):
                ops.scale_out([k])
            ops.agents.evict(1, model)
            for rep in range(args.reps):
                for algo, s, n in shapes:
                    # Sources beyond this shape's are released for it and loaded again after.
                    sources = list(range(2, 2 + s))
                    extra = list(range(2 + s, 2 + most))
                    if extra:
                        ops.release(extra)
                    wait_holders(ops.coord, model, ["node-%d" % i for i in sources])
                    row = measure(ops, algo, sources, list(range(2 + s, 2 + s + n)))
                    row["rep"] = rep + 1
                    rows.append(row)
                    print("  %-11s %d -> %d: %.2f s (first byte after %.2f s)" % (
                        algo, s, n, row["last_landed_unix"] - row["first_byte_unix"],
                        row["first_byte_unix"] - row["created_unix"]), flush=True)
                    for i in extra:  # the sources back for the next shape
                        ops.scale_out([i])
    finally:
        c.down()
    yaml_path = os.path.join(work, "box-sim.yaml")
    with open(yaml_path, "w") as f:
        f.write(cluster_yaml(args.nodes, b))
    overheads = predict(rows, pkg, yaml_path, 4, args.sim_bin)
    text = table(rows)
    summ = summary(rows)
    os.makedirs(args.out or work, exist_ok=True)
    out = args.out or work
    with open(os.path.join(out, "check.md"), "w") as f:
        f.write("# The simulator against the cluster in a box\n\nCommand: `%s`\n\nLinks %s, iperf3 goodput %.1f MB/s; "
                "overheads given to the simulator (medians of this run): %.3f s created -> first byte, %.3f s "
                "last slice -> finished.\n\n%s\n" % (" ".join(sys.argv), args.link, b / 1e6, overheads["dispatch_s"],
                                                     overheads["report_lag_s"], text))
    print(text)
    print("overheads: %.3f s created -> first byte, %.3f s last slice -> finished (medians)" % (
        overheads["dispatch_s"], overheads["report_lag_s"]))
    print(json.dumps({"bench": "loadspike-check", "link": args.link, "iperf3_bytes_per_s": b, "model": model,
                      "nodes": args.nodes, **overheads, "summary": summ, "operations": rows}))
