"""What the calls return: plain, frozen dataclasses built from the weir.v1 messages.

Field names are those of proto/weir/v1/control.proto; maps become dicts, repeated fields
lists, enums lower-case names (`kind="vm"`, `Event.kind="workload_attached"`).
"""

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Type, TypeVar

from .v1 import control_pb2 as pb

T = TypeVar("T")


def _kind(value: int) -> str:
    """A WorkloadKind as "container" or "vm" (UNSPECIFIED is a container)."""
    return "vm" if value == pb.WORKLOAD_KIND_VM else "container"


def _event_kind(value: int) -> str:
    """An EventKind in lower case; one newer than these stubs as "unknown_<number>"."""
    try:
        return pb.EventKind.Name(value).lower()
    except ValueError:
        return f"unknown_{value}"


def _convert(cls: Type[T], msg: Any, **overrides: Any) -> T:
    """`cls` from the message's fields of the same names (maps → dict, repeated → list)."""
    values: Dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name in overrides:
            values[f.name] = overrides[f.name]
            continue
        v = getattr(msg, f.name)
        if hasattr(v, "items"):
            v = dict(v.items())
        elif hasattr(v, "extend") and not isinstance(v, (str, bytes)):
            v = list(v)
        values[f.name] = v
    return cls(**values)  # type: ignore[call-arg]


@dataclass(frozen=True)
class RunnerStatus:
    name: str
    id: int
    subnet: str
    gateway: str
    physical_ip: str
    active: bool
    #: Unix time in milliseconds of the last registration or heartbeat.
    last_seen_unix_ms: int
    labels: Dict[str, str]
    #: The runner has a live session with the host.
    connected: bool
    #: An allocation recovered from the kernel at host start, not yet claimed by a runner.
    placeholder: bool
    workloads: int
    #: The runner's `weir` version at its last registration (empty for a placeholder).
    version: str

    @classmethod
    def from_pb(cls, m: "pb.RunnerStatus") -> "RunnerStatus":
        return _convert(cls, m)


@dataclass(frozen=True)
class NetworkStatus:
    name: str
    #: "overlay" or "isolated".
    mode: str
    plan: str
    host_ip: str
    vxlan_id_base: int
    masquerade: bool
    #: "runner-nat" or "via-host".
    egress: str
    runners: int
    workloads: int
    reservations: int
    max_runners: int

    @classmethod
    def from_pb(cls, m: "pb.NetworkStatus") -> "NetworkStatus":
        return _convert(cls, m)


@dataclass(frozen=True)
class Status:
    #: The primary network's plan, e.g. "10.128.0.0/12/6/14"; empty in isolated mode.
    plan: str
    host_ip: str
    overlay_enabled: bool
    runners: List[RunnerStatus]
    max_runners: int
    active_runners: int
    workloads: int
    reservations: int
    inactive_runners: int
    placeholders: int
    #: Every network, the primary one first.
    networks: List[NetworkStatus]
    #: Watch with `after=last_event_seq` to see exactly the changes since this snapshot.
    last_event_seq: int
    #: The host's `weir` version, e.g. "0.1.0" (empty from a host older than this field).
    host_version: str

    @classmethod
    def from_pb(cls, m: "pb.GetStatusResponse") -> "Status":
        return _convert(cls, m, runners=[RunnerStatus.from_pb(r) for r in m.runners],
                        networks=[NetworkStatus.from_pb(n) for n in m.networks])


@dataclass(frozen=True)
class Attachment:
    """An acknowledged attach: the workload's interface and addresses."""

    workload_id: str
    runner: str
    network: str
    #: Address with prefix, e.g. "10.128.64.2/18".
    ip: str
    gateway: str
    mtu: int
    host_ip: str
    #: eth0 inside a container, or the tap device of a VM on the runner.
    ifname: str
    prefix: int
    mac: str
    dns: List[str]
    #: "container" or "vm".
    kind: str
    host_ifname: str
    default_route: bool
    host_mac: str

    @property
    def address(self) -> str:
        """The address without its prefix."""
        return self.ip.split("/")[0]

    @classmethod
    def from_pb(cls, m: "pb.AttachWorkloadResponse") -> "Attachment":
        return _convert(cls, m, kind=_kind(m.kind))


@dataclass(frozen=True)
class Workload:
    workload_id: str
    runner: str
    network: str
    ip: str
    #: "container" or "vm".
    kind: str
    netns: str
    ifname: str
    labels: Dict[str, str]
    mac: str
    created_unix_ms: int
    #: The reservation it consumed, if any.
    reservation_id: str
    #: "scheduler", or a container engine's plugin ("cni/NET", "docker/ID", "netavark/NET").
    origin: str

    @classmethod
    def from_pb(cls, m: "pb.Workload") -> "Workload":
        return _convert(cls, m, kind=_kind(m.kind))


@dataclass(frozen=True)
class WorkloadPage:
    workloads: List[Workload]
    #: Pass as `page_token` for the next page; empty on the last page.
    next_page_token: str


@dataclass(frozen=True)
class ReservedAddress:
    """The answer of `reserve`: an address held for a later attach, and its token."""

    ip: str
    token: str
    expires_unix_ms: int
    reservation_id: str

    @classmethod
    def from_pb(cls, m: "pb.ReserveAddressResponse") -> "ReservedAddress":
        return _convert(cls, m)


@dataclass(frozen=True)
class Reservation:
    reservation_id: str
    runner: str
    network: str
    ip: str
    expires_unix_ms: int
    #: "reserved" (unused) or "used" (a workload holds it).
    state: str
    #: The workload using it, once used.
    workload_id: str

    @classmethod
    def from_pb(cls, m: "pb.Reservation") -> "Reservation":
        return _convert(cls, m)


@dataclass(frozen=True)
class ReleasedRunner:
    released_id: int
    workloads_removed: int

    @classmethod
    def from_pb(cls, m: "pb.ReleaseRunnerResponse") -> "ReleasedRunner":
        return _convert(cls, m)


@dataclass(frozen=True)
class Event:
    #: Strictly increasing; pass the last one seen as `after` to resume.
    seq: int
    unix_ms: int
    #: The EventKind in lower case: "workload_attached", "reservation_made", … (a kind newer
    #: than these stubs: "unknown_<number>").
    kind: str
    runner: str
    runner_id: int
    network: str
    workload_id: str
    ip: str
    reservation_id: str
    detail: str
    plugin: str
    origin: str

    @classmethod
    def from_pb(cls, m: "pb.Event") -> "Event":
        return _convert(cls, m, kind=_event_kind(m.kind))


@dataclass(frozen=True)
class Finding:
    """A difference `diagnose` found between the host's records and a runner's kernel."""

    runner: str
    network: str
    workload_id: str
    kind: str
    detail: str

    @classmethod
    def from_pb(cls, m: "pb.Finding") -> "Finding":
        return _convert(cls, m)


@dataclass(frozen=True)
class Diagnosis:
    findings: List[Finding]
    #: Runners whose kernel was read.
    checked: List[str] = field(default_factory=list)

    @classmethod
    def from_pb(cls, m: "pb.DiagnoseResponse") -> "Diagnosis":
        return cls(findings=[Finding.from_pb(f) for f in m.findings], checked=list(m.checked))
