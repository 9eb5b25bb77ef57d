"""The cluster in a box for the Python benchmarks: a coordinator (with its router) and agents as
real processes, each node in its own network namespace behind a shaped link
(scripts/netns-cluster.sh: root, iproute2), or all on 127.0.0.1 (loopback: no root, no shaping).
node-1 also runs the coordinator. Used by ewl_bench.py and loadspike/.
"""
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "build", "bin")
TOKEN = "box-bench-token-0123456789abcdef"


_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1
_STARTER = os.getpid()


def die_with_parent():
    """Popen's preexec_fn: the child gets SIGKILL when the benchmark's process ends, however it
    ends (kept across `ip netns exec`, which execs the command in place)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != _STARTER:  # the benchmark died between the fork and the request
        os._exit(126)


def exit_on_sigterm():
    """A SIGTERM (a timeout, an operator) ends the benchmark through its `finally` blocks, so its
    namespaces are removed too; SIGKILL still takes the daemons (die_with_parent)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit("stopped by SIGTERM"))


def run(argv, check=True, timeout=300):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        sys.exit("%s failed (%d): %s%s" % (" ".join(argv), r.returncode, r.stdout, r.stderr))
    return r


def prepare_model(work, preset, blocks, slice_mib=1, name=None, pkg="pkg"):
    """A synthesized model prepared into work/<pkg> under `name` (default llama-<preset>), kept
    between runs; returns its name."""
    pkg = os.path.join(work, pkg)
    hf = os.path.join(work, "hf")
    made = os.path.join(work, "hf.preset")  # which preset work/hf holds (packages of one share it)
    os.makedirs(work, exist_ok=True)
    if not os.path.exists(os.path.join(pkg, "manifest.json")):
        if not os.path.exists(made) or open(made).read() != preset:
            run([os.path.join(BIN, "modelcast"), "synth", "--preset", preset, "--out", hf, "--force"])
            with open(made, "w") as f:
                f.write(preset)
        run([os.path.join(BIN, "modelcast"), "prepare", hf, pkg, "--name", name or "llama-" + preset, "--blocks", str(blocks),
             "--slice-mib", str(slice_mib)])
    return json.load(open(os.path.join(pkg, "manifest.json")))["name"]


class BoxCluster:
    """`serving`: YAML text of coordinator.serving's extra keys (e.g. "max_batch: 4, pipelines: false");
    `ssd_copies`: node numbers (1-based) whose SSD holds work/pkg at the start; `store_extra`:
    YAML text added to the store section of the agents in `store_extra_nodes` (default: all), e.g.
    "ssd_read_rate: 3MB/s"; `metrics`: the agents serve /metrics (on a free port, announced in
    their logs); `packages`: the package folders under work that ssd_copies hold; `fabric_extra`: YAML
    text added to every agent's fabric section (e.g. "nice: 0"); `cpus`: process name (node-N,
    coordinator) -> the CPUs it may run on (taskset's list, e.g. "0"), `other_cpus` for the rest;
    `niceness`: process name -> the nice value it runs at;
    `host_capacities`: node number -> its host_capacity, where it differs; `cc`: the nodes' TCP
    congestion control (scripts/netns-cluster.sh --cc)."""

    def __init__(self, work, nodes, link="200mbit", loopback=False, serving="", ssd_copies=(), store_extra="",
                 prefix="mce", host_capacity="512MiB", store_extra_nodes=None, ssd="1GB/s",
                 metrics=False, packages=("pkg",), fabric_extra="", cpus=None, other_cpus=None,
                 host_capacities=None, niceness=None, cc="cubic"):
        self.work, self.nodes, self.loopback, self.prefix = work, nodes, loopback, prefix
        self.cpus, self.other_cpus, self.niceness = cpus or {}, other_cpus, niceness or {}
        self.procs = []
        self.run_dir = os.path.join(work, "run")
        shutil.rmtree(self.run_dir, ignore_errors=True)
        os.makedirs(self.run_dir)
        if not loopback:
            run([os.path.join(ROOT, "scripts", "netns-cluster.sh"), "up", str(nodes), "--rate", link, "--cc", cc,
                 "--prefix", prefix])
        self.token_file = os.path.join(self.run_dir, "token")
        with open(self.token_file, "w") as f:
            f.write(TOKEN)
        nic = link.replace("mbit", "Mbit").replace("gbit", "Gbit") if not loopback else "16Gbit"
        cfg = ("name: box\ndefaults: {gpus: 1, gpu_memory: 4GiB, gpu_hbm: 10GB/s, gpu_tflops: 0.2, host_memory: 8GiB, "
               "nic: %s, pcie: 10GB/s, ssd: %s, latency: 20us}\nnodes:\n" % (nic, ssd))
        for i in range(1, nodes + 1):
            cfg += "  - {name: node-%d%s}\n" % (i, ", address: 127.0.0.1, port: %d" % self.agent_port(i)
                                                 if loopback else "")
        fabric = "{listen: '%s:7600', tls: tcp%s}" % (self.ip(1), "" if loopback else ", net_devices: eth0")
        cfg += ("coordinator: {address: %s, port: 7300, state_dir: %s, heartbeat_interval: 200ms, "
                "heartbeat_deadline: 2s, security: {token_file: %s},\n  serving: {fabric: %s, http: {address: %s, "
                "port: 8000}%s}}\n" % (self.ip(1), os.path.join(self.run_dir, "coord"), self.token_file, fabric,
                                       self.ip(1), (", " + serving) if serving else ""))
        with open(os.path.join(self.run_dir, "cluster.yaml"), "w") as f:
            f.write(cfg)
        self.coordinator = self.start(1, [os.path.join(BIN, "modelcast-coordinator"), "--config",
                                           os.path.join(self.run_dir, "cluster.yaml")], "coordinator")
        for i in ssd_copies:
            for pkg in packages:
                run([os.path.join(BIN, "modelcast"), "store", "import", os.path.join(work, pkg), "--ssd-dir",
                     self.ssd(i)])
        self.agents = {}
        for i in range(1, nodes + 1):
            n = "node-%d" % i
            with open(os.path.join(self.run_dir, n + ".yaml"), "w") as f:
                f.write("node: %s\naddress: %s\nport: %d\ncoordinator: {address: %s, port: 7300}\n"
                        "fabric: {listen: '%s:%s', transport: ucx, tls: tcp%s%s}\n"
                        "store: {ssd_dir: %s, ssd_capacity: 4GiB, host_capacity: %s%s}\n"
                        "security: {token_file: %s}\n%s" % (
                            n, self.ip(i), self.agent_port(i), self.ip(1), self.ip(i),
                            "0" if loopback else "7500", "" if loopback else ", net_devices: eth0",
                            (", " + fabric_extra) if fabric_extra else "", self.ssd(i),
                            (host_capacities or {}).get(i, host_capacity), (", " + store_extra) if store_extra and (
                                store_extra_nodes is None or i in store_extra_nodes) else "", self.token_file,
                            "metrics: {address: %s, port: 0}\n" % self.ip(i) if metrics else ""))
            self.agents[n] = self.start(i, [os.path.join(BIN, "modelcast-agent"), "--config",
                                            os.path.join(self.run_dir, n + ".yaml")], n)
        self.wait_alive(nodes)

    def ip(self, i):
        return "127.0.0.1" if self.loopback else "10.77.0.%d" % (10 + i)

    def agent_port(self, i):
        return 7400 + i if self.loopback else 7400

    def ssd(self, i):
        return os.path.join(self.run_dir, "node-%d" % i)

    def in_ns(self, i, argv):
        return argv if self.loopback else ["ip", "netns", "exec", "%s-n%d" % (self.prefix, i)] + argv

    def url(self):
        return "http://%s:8000" % self.ip(1)

    def pinned(self, name, argv):
        """argv run on the CPUs given for `name` (or the others'), when any are given."""
        cpus = self.cpus.get(name, self.other_cpus)
        if name in self.niceness:
            argv = ["nice", "-n", str(self.niceness[name])] + argv
        return ["taskset", "-c", cpus] + argv if cpus else argv

    def start(self, i, argv, name):
        log = open(os.path.join(self.run_dir, name + ".log"), "w")
        # One BLAS thread per daemon: OpenBLAS's worker threads spin while they wait, and a box's
        # nodes share its few cores (each node stands for a machine of its own).
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        p = subprocess.Popen(self.pinned(name, self.in_ns(i, argv)), stdout=log, stderr=subprocess.STDOUT, env=env,
                             preexec_fn=die_with_parent)
        self.procs.append(p)
        return p

    def mc(self, args, check=True):
        return run(self.in_ns(1, [os.path.join(BIN, "modelcast")] + args +
                              ["--coordinator", self.ip(1) + ":7300", "--token-file", self.token_file]), check=check)

    def alive(self):
        r = self.mc(["cluster", "status", "--json"], check=False)
        if r.returncode != 0:
            return -1
        return sum(1 for n in json.loads(r.stdout)["nodes"] if n["alive"])

    def wait_alive(self, n, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            if self.alive() == n:
                return
            time.sleep(0.2)
        sys.exit("the agents did not join (see %s)" % self.run_dir)

    def wait_held(self, model, k, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            r = self.mc(["models", "--json"], check=False)
            if r.returncode == 0 and any(m["name"] == model and len(m.get("ssd", [])) >= k
                                         for m in json.loads(r.stdout)):
                return
            time.sleep(0.2)
        sys.exit("the copies on SSD were not reported (see %s)" % self.run_dir)

    def down(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if not self.loopback:
            run([os.path.join(ROOT, "scripts", "netns-cluster.sh"), "down", "--prefix", self.prefix], check=False)
