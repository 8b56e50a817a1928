"""A client of Weir's scheduler API, `weir.v1.Control`.

    from weir_client import Client
    with Client("unix:///run/weir/host.sock", token_file="/etc/weir/sched.token") as weir:
        res = weir.reserve("r1")
        master = weir.attach("r1", "job1-master", netns="/run/netns/m", reservation_token=res.token)
        for w in weir.workloads(labels={"job": "job1"}):
            print(w.workload_id, w.ip)

The generated stubs of every weir.v1 service are in `weir_client.v1` (control_pb2,
control_pb2_grpc, …) for calls the wrapper does not cover.
"""

from .client import (DEFAULT_HOST, DEFAULT_TIMEOUT, LEADER_RETRY, LEADER_WAIT, MAX_LEADER_HOPS, Client,
                     EventStream, Standby, Target, resolve_token, standby_of)
from .errors import (Aborted, AlreadyExists, ConfigurationError, DeadlineExceeded, FailedPrecondition,
                     InvalidArgument, NoLeader, NotFound, OutOfRange, PermissionDenied, ResourceExhausted,
                     Unauthenticated, Unavailable, WeirError)
from .types import (Attachment, Diagnosis, Event, Finding, NetworkStatus, ReleasedRunner, Reservation,
                    ReservedAddress, RunnerStatus, Status, Workload, WorkloadPage)

__version__ = "0.1.0"

__all__ = [
    "Client", "EventStream", "Target", "Standby", "standby_of", "resolve_token", "DEFAULT_HOST",
    "DEFAULT_TIMEOUT", "LEADER_WAIT", "LEADER_RETRY", "MAX_LEADER_HOPS",
    "WeirError", "ConfigurationError", "InvalidArgument", "NotFound", "AlreadyExists",
    "FailedPrecondition", "PermissionDenied", "Unauthenticated", "ResourceExhausted", "Unavailable",
    "NoLeader", "Aborted", "OutOfRange", "DeadlineExceeded",
    "Attachment", "Diagnosis", "Event", "Finding", "NetworkStatus", "ReleasedRunner", "Reservation",
    "ReservedAddress", "RunnerStatus", "Status", "Workload", "WorkloadPage",
]
