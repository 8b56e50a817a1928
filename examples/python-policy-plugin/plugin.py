#!/usr/bin/env python3
"""A Weir policy plugin served over gRPC (`weir.v1.PolicyPlugin`), written in Python.

It is the twin of the `default-allocator` WebAssembly plugin: the same decisions for the same
requests (the test suite checks that), plus an open firewall and hub routing.

  plugin.py --listen unix:///run/weir/policy.sock

and in the host's configuration:

  [[policy.plugins]]
  name = "py-alloc"
  endpoint = "unix:///run/weir/policy.sock"
  hooks = ["allocator"]
  on_error = "fallback"
  deadline = "200ms"
"""

import argparse
import importlib
import ipaddress
import os
import signal
import sys
import tempfile
from concurrent import futures

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))


def load_stubs():
    out = tempfile.mkdtemp(prefix="weir-policy-stubs-")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}",
                      f"--grpc_python_out={out}", os.path.join(PROTO_ROOT, "weir", "v1", "policy.proto")])
    if rc != 0:
        sys.exit("protoc failed on policy.proto")
    for d in ("weir", os.path.join("weir", "v1")):
        open(os.path.join(out, d, "__init__.py"), "a").close()
    sys.path.insert(0, out)
    return (importlib.import_module("weir.v1.policy_pb2"),
            importlib.import_module("weir.v1.policy_pb2_grpc"))


pb, rpc = load_stubs()


def assign_runner(req):
    """Known name keeps its id; a placeholder from the same physical IP is claimed; else the
    lowest free id; else the least recently seen inactive holder's id; else deny."""
    for t in req.taken:
        if t.runner == req.name:
            return pb.RunnerDecision(id=t.id)
    for t in req.taken:
        if not t.runner and t.physical_ip == req.physical_ip:
            return pb.RunnerDecision(id=t.id)
    used = {t.id for t in req.taken}
    for i in range(1, req.plan.max_runners + 1):
        if i not in used:
            return pb.RunnerDecision(id=i)
    inactive = sorted((t for t in req.taken if not t.active), key=lambda t: (t.last_seen_ms, t.id))
    if inactive:
        return pb.RunnerDecision(id=inactive[0].id)
    return pb.RunnerDecision(deny=f"no runner id is free: plan {req.plan.spec} allows at most "
                                  f"{req.plan.max_runners} runners and all are held by active runners")


def assign_address(req):
    """The lowest free address from first to last. The request carries the pool as its free
    ranges (ascending; the host leaves out the gateway, its .254 and every held address), so
    this reads one range, whatever the number of workloads."""
    first, last = int(ipaddress.IPv4Address(req.first)), int(ipaddress.IPv4Address(req.last))
    for r in req.free:
        lo = max(r.first, first)
        if lo <= min(r.last, last):
            return pb.AddressDecision(address=str(ipaddress.IPv4Address(lo)))
    return pb.AddressDecision(deny=f"no free address left in {req.subnet}")


class Plugin(rpc.PolicyPluginServicer):
    def Configure(self, request, context):
        if request.interface_version.split(".")[:2] != ["0", "2"]:
            return pb.ConfigureResponse(
                error=f"this plugin implements weir.v1 policy interface 0.2, the host speaks "
                      f"{request.interface_version or 'an older one'}")
        unknown = sorted(set(request.config) - {"note"})
        if unknown:
            return pb.ConfigureResponse(error=f"unknown settings: {', '.join(unknown)}")
        return pb.ConfigureResponse()

    def AssignRunner(self, request, context):
        return assign_runner(request)

    def AssignAddress(self, request, context):
        return assign_address(request)

    def Rules(self, request, context):
        return pb.FirewallDecision(default_verdict="allow")

    def Route(self, request, context):
        # Hub routing for everyone: nothing to change beyond the egress of a joining runner.
        return pb.RouteDelta(egress="runner-nat" if request.HasField("joined") else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", required=True, help="unix:///path or HOST:PORT")
    args = ap.parse_args()
    if args.listen.startswith("unix://"):
        path = args.listen[len("unix://"):]
        if os.path.exists(path):
            os.unlink(path)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    rpc.add_PolicyPluginServicer_to_server(Plugin(), server)
    server.add_insecure_port(args.listen)
    server.start()
    print("ready", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    server.wait_for_termination()


if __name__ == "__main__":
    main()
