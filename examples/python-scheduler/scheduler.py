#!/usr/bin/env python3
"""A small scheduler that drives Weir the way KohakuRiver's host does.

It registers nothing itself; it uses `weir.v1.Control` to:
  1. reserve the master's address on one runner (so workers can be told it in advance),
  2. attach the master with the reservation token (it gets exactly that address),
  3. attach workers on other runners, passing the master's address as a label,
  4. watch the cluster's events while doing so,
  5. detach everything, and print a JSON summary.

It uses the `weir_client` package (clients/python): from a checkout, the one next to it;
elsewhere an installed one (pip install weir-client / ./clients/python). Usage:

  scheduler.py --host unix:///run/weir-lab/lab/host.sock --token-file control.token \
      --master r1=/run/netns/m --worker r2=/run/netns/w1 --worker r3=/run/netns/w2

With --otlp-endpoint (OpenTelemetry SDK and OTLP exporter installed), every call is a client
span whose W3C trace context travels in the call's metadata: Weir's host continues the trace,
and its runners continue the host's, so one attach is one trace from this script to the kernel.
The summary lists each call's trace id.
"""

import argparse
import json
import os
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT_CLIENT = os.path.normpath(os.path.join(HERE, "..", "..", "clients", "python", "src"))
if os.path.isdir(os.path.join(CHECKOUT_CLIENT, "weir_client")):
    # Run from a checkout: the package as it is here, not an installed (maybe older) one, and
    # no bytecode left in the checkout.
    sys.dont_write_bytecode = True
    sys.path.insert(0, CHECKOUT_CLIENT)

import weir_client  # noqa: E402


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

    def call(self, method, name, subject, *args, **kwargs):
        """Call the client's `method`; traced, each call is the root of its own trace."""
        if self.tracer is None:
            return method(*args, **kwargs)
        kind = self.trace.SpanKind.CLIENT
        with self.tracer.start_as_current_span(f"weir.v1.Control/{name}", kind=kind,
                                               attributes={"rpc.system": "grpc", "weir.subject": subject}) as span:
            carrier = {}
            self.propagate.inject(carrier)
            self.traces[f"{name} {subject}"] = format(span.get_span_context().trace_id, "032x")
            return method(*args, metadata=list(carrier.items()), **kwargs)

    def shutdown(self):
        if self.tracer is not None:
            self.provider.shutdown()


def parse_placement(text):
    runner, _, netns = text.partition("=")
    if not runner or not netns:
        raise argparse.ArgumentTypeError(f"{text!r} is not RUNNER=NETNS_PATH")
    return runner, netns


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", required=True, help="unix:///PATH, http://HOST:PORT or https://HOST:PORT of `weir host`")
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

    tracing = Tracing(args.otlp_endpoint)
    try:
        weir = weir_client.Client(args.host, token_file=args.token_file)
    except weir_client.ConfigurationError as e:
        sys.exit(f"scheduler: {e}")

    # Watch events in the background from this status snapshot on, so the summary shows what this
    # job caused. `after=last_event_seq` (not only_new) is what makes it exact: only_new starts
    # whenever the host sees the call, which may be after this script's first changes.
    status = weir.status()
    seen = []
    done = threading.Event()
    mine = {f"{args.job}-master"} | {f"{args.job}-worker{i}" for i in range(len(args.worker))}
    events = weir.watch(after=status.last_event_seq)

    def watch():
        try:
            for e in events:
                if e.workload_id in mine or e.kind in ("reservation_made", "reservation_used"):
                    seen.append({"seq": e.seq, "kind": e.kind, "workload": e.workload_id, "ip": e.ip})
                detached = {x["workload"] for x in seen if x["kind"] == "workload_detached"}
                if mine <= detached:
                    done.set()
                    return
        except weir_client.WeirError:
            pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    try:
        master_runner, master_netns = args.master
        res = tracing.call(weir.reserve, "ReserveAddress", "master", master_runner, ttl_seconds=300)
        master = tracing.call(weir.attach, "AttachWorkload", f"{args.job}-master", master_runner,
                              f"{args.job}-master", netns=master_netns, reservation_token=res.token,
                              labels={"job": args.job, "role": "master"})
        if master.address != res.ip:
            sys.exit(f"the master got {master.address}, not the reserved {res.ip}")

        workers = []
        for i, (runner, netns) in enumerate(args.worker):
            wid = f"{args.job}-worker{i}"
            w = tracing.call(weir.attach, "AttachWorkload", wid, runner, wid, netns=netns,
                             labels={"job": args.job, "role": "worker", "master_addr": master.address})
            workers.append({"id": w.workload_id, "runner": runner, "ip": w.ip})

        listed = weir.workloads(page_size=args.page_size, labels={"job": args.job})
        in_job = sorted(w.workload_id for w in listed)

        for wid in sorted(mine):
            tracing.call(weir.detach, "DetachWorkload", wid, wid)
    except weir_client.WeirError as e:
        sys.exit(f"scheduler: {e}")
    done.wait(10)
    events.cancel()
    tracing.shutdown()
    weir.close()

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
