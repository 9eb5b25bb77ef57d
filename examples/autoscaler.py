#!/usr/bin/python3
"""An example autoscaler for modelcast, in Python through the generated Thrift bindings.

It watches a request rate and keeps enough replicas of a model for it: replicas wanted =
ceil(rate / per_replica_rps), at least --min. When more are wanted than exist, it calls
scaleOut and follows the operation; when fewer, scaleIn. The rate comes from an LLM request
trace replayed in accelerated time (the Azure conversation trace's CSV: TIMESTAMP first), or
from a file holding the current requests/s that the serving layer updates.

  PYTHONPATH=build/thrift/gen-py /usr/bin/python3 examples/autoscaler.py \\
      --coordinator 127.0.0.1:7300 --token-file /tmp/modelcast-local/token --model llama-small \\
      --trace ../shared/traces/AzureLLMInferenceTrace_conv_2023.csv --speedup 60 --per-replica-rps 2

A replicated head: --coordinator h1:7300,h2:7300 lists every coordinator; it talks to whichever
listens (the leader), and when the leader dies mid-call it reconnects to the next one and calls
again (a scale request carries an idempotency key, so a repeated one acts once).

Needs Debian's python3-thrift; the bindings are generated into build/thrift/gen-py.
"""
import argparse
import csv
import datetime
import math
import sys
import time
import uuid

from thrift.protocol import TBinaryProtocol, TMultiplexedProtocol
from thrift.transport import TSocket, TTransport

from modelcast_rpc import Coordinator, ttypes


def trace_rates(path, window_s, speedup):
    """Yields (trace time, requests/s over the last window) every window, in accelerated time."""
    with open(path, newline="") as f:
        rows = csv.reader(f)
        next(rows)
        times = [datetime.datetime.fromisoformat(r[0][:26]).timestamp() for r in rows]
    start, end, i = times[0], times[-1], 0
    t = start + window_s
    while t <= end:
        j = i
        while j < len(times) and times[j] < t:
            j += 1
        yield t - start, (j - i) / window_s
        i = j
        time.sleep(window_s / speedup)
        t += window_s


def file_rates(path, window_s):
    while True:
        with open(path) as f:
            yield time.time(), float(f.read().strip() or 0)
        time.sleep(window_s)


class Leader:
    """The leading coordinator among `addresses` ("host:port,host:port"): standbys do not listen,
    so the first that accepts a connection leads. A call whose connection breaks (the leader
    died, or resigned) is made again on whichever leads next, for up to `patience` seconds."""

    def __init__(self, addresses, patience=30.0):
        self.addresses = []
        for a in addresses.split(","):
            host, _, port = a.strip().rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                sys.exit(f"autoscaler: --coordinator: '{a}' is not host:port")
            self.addresses.append((host, int(port)))
        self.patience = patience
        self.transport = self.client = None

    def connect(self):
        errors = []
        for host, port in self.addresses:
            transport = TTransport.TFramedTransport(TSocket.TSocket(host, port))
            try:
                transport.open()
            except TTransport.TTransportException as e:
                errors.append(f"{host}:{port}: {e}")
                continue
            self.transport = transport
            self.client = Coordinator.Client(TMultiplexedProtocol.TMultiplexedProtocol(
                TBinaryProtocol.TBinaryProtocol(transport), "Coordinator"))
            return
        raise TTransport.TTransportException(message="no coordinator answers (" + "; ".join(errors) + ")")

    def close(self):
        if self.transport:
            self.transport.close()
        self.transport = self.client = None

    def __getattr__(self, name):
        def call(*args):
            deadline = time.time() + self.patience
            while True:
                try:
                    if self.client is None:
                        self.connect()
                    return getattr(self.client, name)(*args)
                except (TTransport.TTransportException, OSError, EOFError):
                    self.close()
                    if time.time() > deadline:
                        raise
                    time.sleep(0.2)
        return call


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coordinator", default="127.0.0.1:7300",
                   help="host:port, or every coordinator of a replicated head, comma-separated")
    p.add_argument("--token-file", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--trace", help="a request trace CSV (TIMESTAMP first) to replay")
    p.add_argument("--rate-file", help="a file holding the current requests/s")
    p.add_argument("--speedup", type=float, default=60, help="trace seconds per wall second")
    p.add_argument("--window", type=float, default=60, help="seconds of trace per rate sample")
    p.add_argument("--per-replica-rps", type=float, default=2.0)
    p.add_argument("--min", type=int, default=1)
    p.add_argument("--max", type=int, default=64)
    p.add_argument("--dry-run", action="store_true", help="print decisions, call nothing that changes the cluster")
    p.add_argument("--once", action="store_true", help="one rate sample, then exit")
    a = p.parse_args()
    if bool(a.trace) == bool(a.rate_file):
        p.error("give --trace or --rate-file")

    client = Leader(a.coordinator)
    with open(a.token_file) as f:
        header = ttypes.RequestHeader(token=f.read().strip(), caller="autoscaler-example")

    def replicas():
        # The instances the coordinator placed (loading or serving), and any other node holding
        # the model in GPU memory (a copy started outside modelcast).
        info = [m for m in client.listModels(header) if m.summary.name == a.model]
        if not info:
            sys.exit(f"autoscaler: the coordinator has no model '{a.model}'")
        placed = {i.node for i in client.listInstances(header, a.model)
                  if i.state != ttypes.InstanceState.DRAINING}
        return len(placed | set(info[0].gpu_holders))

    act = act_factory(client, header, a.model)
    rates = trace_rates(a.trace, a.window, a.speedup) if a.trace else file_rates(a.rate_file, a.window)
    for t, rate in rates:
        have = replicas()
        want = max(a.min, min(a.max, math.ceil(rate / a.per_replica_rps)))
        print(f"t={t:8.0f}s  rate={rate:7.2f} req/s  replicas {have} -> {want}", flush=True)
        if want != have and not a.dry_run:
            act(have, want)
        if a.once:
            break

    client.close()


def act_factory(client, header, model):
    def act(have, want):
        try:
            # One key per decision: made again on the next leader, the request acts once.
            keyed = ttypes.RequestHeader(token=header.token, caller=header.caller, request_id=str(uuid.uuid4()))
            if want > have:
                op = client.scaleOut(ttypes.ScaleOutRequest(header=keyed, model=model, replicas=want - have))
                op_id = op.operation_id
            else:
                op_id = client.scaleIn(ttypes.ScaleInRequest(header=keyed, model=model, replicas=have - want))
            while True:
                status = client.getOperation(header, op_id)
                if status.state not in (ttypes.OperationState.PENDING, ttypes.OperationState.RUNNING):
                    break
                time.sleep(0.1)
            kind = ttypes.OperationKind._VALUES_TO_NAMES[status.kind].lower().replace("_", "-")
            print(f"  {op_id} ({kind} to {', '.join(n.node for n in status.nodes if n.role != ttypes.NodeRole.SOURCE)}): "
                  f"{ttypes.OperationState._VALUES_TO_NAMES[status.state]}"
                  f"{' (' + status.error + ')' if status.error else ''}", flush=True)
        except ttypes.InvalidRequest as e:
            print(f"  refused: {ttypes.ErrorCode._VALUES_TO_NAMES[e.code]}: {e.message}", flush=True)
        except ttypes.Unavailable as e:
            print(f"  coordinator unavailable: {e.message}", flush=True)

    return act


if __name__ == "__main__":
    main()
