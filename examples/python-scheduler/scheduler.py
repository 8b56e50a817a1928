#!/usr/bin/env python3
"""A small scheduler that drives Weir the way KohakuRiver's host does.

It registers nothing itself; it uses `weir.v1.Control` to:
  1. reserve the master's address on one runner (so workers can be told it in advance),
  2. attach the master with the reservation token (it gets exactly that address),
  3. attach workers on other runners, passing the master's address as a label,
  4. watch the cluster's events while doing so,
  5. detach everything, and print a JSON summary.

Stubs are generated from ../../proto at start with grpcio-tools into a temporary directory
(nothing generated is committed). Usage:

  scheduler.py --host unix:///run/weir-lab/lab/host.sock --token-file control.token \
      --master r1=/run/netns/m --worker r2=/run/netns/w1 --worker r3=/run/netns/w2

With --otlp-endpoint (OpenTelemetry SDK and OTLP exporter installed), every call is a client
span whose W3C trace context travels in the call's metadata: Weir's host continues the trace,
and its runners continue the host's, so one attach is one trace from this script to the kernel.
The summary lists each call's trace id.
"""

import argparse
import importlib
import json
import os
import sys
import tempfile
import threading

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))


def load_stubs():
    """Compile weir/v1/*.proto into a temporary package and import it."""
    out = tempfile.mkdtemp(prefix="weir-stubs-")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    for name in ("agent", "control"):
        rc = protoc.main([
            "protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}",
            f"--grpc_python_out={out}", os.path.join(PROTO_ROOT, "weir", "v1", f"{name}.proto"),
        ])
        if rc != 0:
            sys.exit(f"protoc failed on {name}.proto")
    for d in ("weir", os.path.join("weir", "v1")):
        open(os.path.join(out, d, "__init__.py"), "a").close()
    sys.path.insert(0, out)
    return (importlib.import_module("weir.v1.control_pb2"),
            importlib.import_module("weir.v1.control_pb2_grpc"))


class Tracing:
    """Client spans around calls, with W3C trace context in the metadata (when enabled)."""

    def __init__(self, endpoint):
        self.traces = {}
        self.tracer = None
        if not endpoint:
            return
        try:
            from opentelemetry import propagate, trace
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as e:
            sys.exit(f"--otlp-endpoint needs opentelemetry-sdk and "
                     f"opentelemetry-exporter-otlp-proto-grpc ({e})")
        self.provider = TracerProvider(resource=Resource.create({"service.name": "python-scheduler"}))
        insecure = endpoint.startswith("http://")
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure)))
        self.tracer = self.provider.get_tracer("weir-example-scheduler")
        self.propagate, self.trace = propagate, trace

    def call(self, method, name, subject, request, auth):
        """Call `method`; traced, each call is the root of its own trace."""
        if self.tracer is None:
            return method(request, metadata=auth)
        kind = self.trace.SpanKind.CLIENT
        with self.tracer.start_as_current_span(f"weir.v1.Control/{name}", kind=kind,
                                               attributes={"rpc.system": "grpc", "weir.subject": subject}) as span:
            carrier = {}
            self.propagate.inject(carrier)
            self.traces[f"{name} {subject}"] = format(span.get_span_context().trace_id, "032x")
            return method(request, metadata=auth + list(carrier.items()))

    def shutdown(self):
        if self.tracer is not None:
            self.provider.shutdown()


def parse_placement(text):
    runner, _, netns = text.partition("=")
    if not runner or not netns:
        raise argparse.ArgumentTypeError(f"{text!r} is not RUNNER=NETNS_PATH")
    return runner, netns


def list_workloads(control, pb, auth, page_size=0, **filters):
    """Every workload matching the filters, fetching page after page."""
    token = ""
    while True:
        page = control.ListWorkloads(
            pb.ListWorkloadsRequest(page_size=page_size, page_token=token, **filters), metadata=auth)
        yield from page.workloads
        if not page.next_page_token:
            return
        token = page.next_page_token


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", required=True, help="unix:///path or HOST:PORT of `weir host`")
    ap.add_argument("--token-file", required=True, help="a file holding a control token")
    ap.add_argument("--master", required=True, type=parse_placement, help="RUNNER=NETNS of the master")
    ap.add_argument("--worker", action="append", default=[], type=parse_placement, help="RUNNER=NETNS of a worker")
    ap.add_argument("--job", default="job1", help="job name (workload ids derive from it)")
    ap.add_argument("--page-size", type=int, default=0,
                    help="workloads per ListWorkloads call (default: the host's, 1000)")
    ap.add_argument("--otlp-endpoint", help="send this script's spans to an OTLP/gRPC collector, "
                    "e.g. http://127.0.0.1:4317 (needs opentelemetry-sdk and "
                    "opentelemetry-exporter-otlp-proto-grpc)")
    args = ap.parse_args()

    pb, rpc = load_stubs()
    with open(args.token_file) as f:
        auth = [("authorization", "Bearer " + f.read().strip())]
    tracing = Tracing(args.otlp_endpoint)
    target = args.host[len("http://"):] if args.host.startswith("http://") else args.host
    # Over a unix socket grpcio would send the socket path as :authority, which is not a valid
    # HTTP/2 authority; name the host plainly.
    channel = grpc.insecure_channel(target, options=[("grpc.default_authority", "localhost")])
    control = rpc.ControlStub(channel)

    # Watch events in the background from this status snapshot on, so the summary shows what this
    # job caused. `after=last_event_seq` (not only_new) is what makes it exact: only_new starts
    # whenever the host sees the call, which may be after this script's first changes.
    status = control.GetStatus(pb.GetStatusRequest(), metadata=auth)
    seen = []
    done = threading.Event()
    mine = {f"{args.job}-master"} | {f"{args.job}-worker{i}" for i in range(len(args.worker))}

    def watch():
        stream = control.WatchEvents(pb.WatchEventsRequest(after=status.last_event_seq), metadata=auth)
        try:
            for e in stream:
                if e.workload_id in mine or e.kind in (pb.RESERVATION_MADE, pb.RESERVATION_USED):
                    seen.append({"seq": e.seq, "kind": pb.EventKind.Name(e.kind).lower(),
                                 "workload": e.workload_id, "ip": e.ip})
                detached = {x["workload"] for x in seen if x["kind"] == "workload_detached"}
                if mine <= detached:
                    done.set()
                    return
        except grpc.RpcError:
            pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    master_runner, master_netns = args.master
    res = tracing.call(control.ReserveAddress, "ReserveAddress", "master",
                       pb.ReserveAddressRequest(runner=master_runner, ttl_seconds=300), auth)
    master = tracing.call(control.AttachWorkload, "AttachWorkload", f"{args.job}-master", pb.AttachWorkloadRequest(
        runner=master_runner, workload_id=f"{args.job}-master", netns=master_netns,
        reservation_token=res.token, labels={"job": args.job, "role": "master"}), auth)
    master_ip = master.ip.split("/")[0]
    if master_ip != res.ip:
        sys.exit(f"the master got {master_ip}, not the reserved {res.ip}")

    workers = []
    for i, (runner, netns) in enumerate(args.worker):
        wid = f"{args.job}-worker{i}"
        w = tracing.call(control.AttachWorkload, "AttachWorkload", wid, pb.AttachWorkloadRequest(
            runner=runner, workload_id=wid, netns=netns,
            labels={"job": args.job, "role": "worker", "master_addr": master_ip}), auth)
        workers.append({"id": w.workload_id, "runner": runner, "ip": w.ip})

    listed = list_workloads(control, pb, auth, page_size=args.page_size, labels={"job": args.job})
    in_job = sorted(w.workload_id for w in listed)

    for wid in sorted(mine):
        tracing.call(control.DetachWorkload, "DetachWorkload", wid,
                     pb.DetachWorkloadRequest(workload_id=wid), auth)
    done.wait(10)
    tracing.shutdown()

    print(json.dumps({
        "plan": status.plan,
        "reserved_ip": res.ip,
        "master": {"id": master.workload_id, "runner": master_runner, "ip": master.ip},
        "workers": workers,
        "listed": in_job,
        "events": seen,
        "traces": tracing.traces,
    }, indent=2))


if __name__ == "__main__":
    main()
