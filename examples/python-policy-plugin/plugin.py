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
    """The lowest free address from first to last, never the gateway or the host's .254."""
    subnet = ipaddress.IPv4Network(req.subnet, strict=False)
    host_side = subnet.network_address + 254
    taken = set(req.taken)
    first, last = int(ipaddress.IPv4Address(req.first)), int(ipaddress.IPv4Address(req.last))
    for n in range(first, last + 1):
        a = ipaddress.IPv4Address(n)
        if str(a) in taken or str(a) == req.gateway or a == host_side:
            continue
        return pb.AddressDecision(address=str(a))
    return pb.AddressDecision(deny=f"no free address left in {req.subnet}")


class Plugin(rpc.PolicyPluginServicer):
    def Configure(self, request, context):
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
        return pb.RouteDecision(peers={p.name: "via-hub" for p in request.peers}, egress="runner-nat")


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
