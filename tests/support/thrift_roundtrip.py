#!/usr/bin/python3
"""Reads a ScaleOutRequest (Thrift binary protocol) written by C++, answers with an
OperationStatus built from it: the Python bindings and C++ agree on every field."""
import json
import sys

from thrift.protocol import TBinaryProtocol
from thrift.transport import TTransport

from modelcast_rpc import ttypes


def main(src, dst):
    with open(src, "rb") as f:
        req = ttypes.ScaleOutRequest()
        req.read(TBinaryProtocol.TBinaryProtocol(TTransport.TMemoryBuffer(f.read())))
    print(json.dumps({
        "model": req.model, "replicas": req.replicas, "token": req.header.token,
        "caller": req.header.caller, "request_id": req.header.request_id,
        "algorithm": req.options.algorithm, "targets": req.options.targets,
        "deadline_s": req.options.deadline_s, "dry_run": req.options.dry_run,
    }))
    status = ttypes.OperationStatus(
        id=req.header.request_id, kind=ttypes.OperationKind.SCALE_OUT, model=req.model,
        replicas=req.replicas, state=ttypes.OperationState.RUNNING, created_unix=1.5, replans=0,
        nodes=[ttypes.NodeProgress(node=t, role=ttypes.NodeRole.TARGET, slices_received=i, slices_total=10,
                                   bytes_received=i << 30, rate_bytes_per_s=2.5e9, state=ttypes.NodeState.RECEIVING)
               for i, t in enumerate(req.options.targets)])
    out = TTransport.TMemoryBuffer()
    status.write(TBinaryProtocol.TBinaryProtocol(out))
    with open(dst, "wb") as f:
        f.write(out.getvalue())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
