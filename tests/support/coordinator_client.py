#!/usr/bin/python3
"""A Python client of the coordinator (as an autoscaler would be): lists the models and the
cluster, printed as one JSON line. Usage: coordinator_client.py HOST PORT TOKEN"""
import json
import sys

from thrift.protocol import TBinaryProtocol, TMultiplexedProtocol
from thrift.transport import TSocket, TTransport

from modelcast_rpc import Coordinator, ttypes


def main(host, port, token):
    transport = TTransport.TFramedTransport(TSocket.TSocket(host, int(port)))
    protocol = TMultiplexedProtocol.TMultiplexedProtocol(TBinaryProtocol.TBinaryProtocol(transport), "Coordinator")
    client = Coordinator.Client(protocol)
    transport.open()
    header = ttypes.RequestHeader(token=token, caller="python-test")
    models = client.listModels(header)
    status = client.getClusterStatus(header)
    try:
        client.scaleOut(ttypes.ScaleOutRequest(header=header, model="nope", replicas=1))
        refused = None
    except ttypes.InvalidRequest as e:
        refused = {"code": ttypes.ErrorCode._VALUES_TO_NAMES[e.code], "message": e.message}
    try:
        client.listModels(ttypes.RequestHeader(caller="python-test"))
        denied = None
    except ttypes.NotAuthorized as e:
        denied = e.message
    print(json.dumps({"models": [m.summary.name for m in models], "cluster": status.cluster,
                      "nodes": sorted(n.name for n in status.nodes), "refused": refused, "denied": denied}))
    transport.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
