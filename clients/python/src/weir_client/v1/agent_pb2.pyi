from weir_client.v1 import policy_pb2 as _policy_pb2
from weir_client.v1 import control_pb2 as _control_pb2
from weir_client.v1 import local_pb2 as _local_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NetworkMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NETWORK_MODE_UNSPECIFIED: _ClassVar[NetworkMode]
    NETWORK_MODE_OVERLAY: _ClassVar[NetworkMode]
    NETWORK_MODE_ISOLATED: _ClassVar[NetworkMode]
NETWORK_MODE_UNSPECIFIED: NetworkMode
NETWORK_MODE_OVERLAY: NetworkMode
NETWORK_MODE_ISOLATED: NetworkMode

class RelayReserveRequest(_message.Message):
    __slots__ = ("runner", "network", "ip", "ttl_seconds")
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    runner: SessionHello
    network: str
    ip: str
    ttl_seconds: int
    def __init__(self, runner: _Optional[_Union[SessionHello, _Mapping]] = ..., network: _Optional[str] = ..., ip: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class RelayReleaseRequest(_message.Message):
    __slots__ = ("runner", "token")
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    runner: SessionHello
    token: str
    def __init__(self, runner: _Optional[_Union[SessionHello, _Mapping]] = ..., token: _Optional[str] = ...) -> None: ...

class RelayAttachRequest(_message.Message):
    __slots__ = ("runner", "attach")
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    ATTACH_FIELD_NUMBER: _ClassVar[int]
    runner: SessionHello
    attach: _local_pb2.LocalAttachRequest
    def __init__(self, runner: _Optional[_Union[SessionHello, _Mapping]] = ..., attach: _Optional[_Union[_local_pb2.LocalAttachRequest, _Mapping]] = ...) -> None: ...

class RelayDetachRequest(_message.Message):
    __slots__ = ("runner", "detach")
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    DETACH_FIELD_NUMBER: _ClassVar[int]
    runner: SessionHello
    detach: _local_pb2.LocalDetachRequest
    def __init__(self, runner: _Optional[_Union[SessionHello, _Mapping]] = ..., detach: _Optional[_Union[_local_pb2.LocalDetachRequest, _Mapping]] = ...) -> None: ...

class RelayListRequest(_message.Message):
    __slots__ = ("runner", "origin", "workload_id", "network")
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    runner: SessionHello
    origin: str
    workload_id: str
    network: str
    def __init__(self, runner: _Optional[_Union[SessionHello, _Mapping]] = ..., origin: _Optional[str] = ..., workload_id: _Optional[str] = ..., network: _Optional[str] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("name", "physical_ip", "labels", "version")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_IP_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    physical_ip: str
    labels: _containers.ScalarMap[str, str]
    version: str
    def __init__(self, name: _Optional[str] = ..., physical_ip: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., version: _Optional[str] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("runner_id", "generation", "host_physical_ip", "networks", "workload_grace_ms")
    RUNNER_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    HOST_PHYSICAL_IP_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_GRACE_MS_FIELD_NUMBER: _ClassVar[int]
    runner_id: int
    generation: int
    host_physical_ip: str
    networks: _containers.RepeatedCompositeFieldContainer[NetworkAssignment]
    workload_grace_ms: int
    def __init__(self, runner_id: _Optional[int] = ..., generation: _Optional[int] = ..., host_physical_ip: _Optional[str] = ..., networks: _Optional[_Iterable[_Union[NetworkAssignment, _Mapping]]] = ..., workload_grace_ms: _Optional[int] = ...) -> None: ...

class NetworkAssignment(_message.Message):
    __slots__ = ("network", "mode", "plan", "overlay_cidr", "subnet", "gateway", "host_ip", "host_ip_on_subnet", "vni", "vxlan_id_base", "vxlan_port", "mtu", "tunnel_name", "bridge_name", "masquerade", "egress", "direct_prefix")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_CIDR_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    HOST_IP_FIELD_NUMBER: _ClassVar[int]
    HOST_IP_ON_SUBNET_FIELD_NUMBER: _ClassVar[int]
    VNI_FIELD_NUMBER: _ClassVar[int]
    VXLAN_ID_BASE_FIELD_NUMBER: _ClassVar[int]
    VXLAN_PORT_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    TUNNEL_NAME_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_NAME_FIELD_NUMBER: _ClassVar[int]
    MASQUERADE_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    DIRECT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    network: str
    mode: NetworkMode
    plan: str
    overlay_cidr: str
    subnet: str
    gateway: str
    host_ip: str
    host_ip_on_subnet: str
    vni: int
    vxlan_id_base: int
    vxlan_port: int
    mtu: int
    tunnel_name: str
    bridge_name: str
    masquerade: bool
    egress: str
    direct_prefix: str
    def __init__(self, network: _Optional[str] = ..., mode: _Optional[_Union[NetworkMode, str]] = ..., plan: _Optional[str] = ..., overlay_cidr: _Optional[str] = ..., subnet: _Optional[str] = ..., gateway: _Optional[str] = ..., host_ip: _Optional[str] = ..., host_ip_on_subnet: _Optional[str] = ..., vni: _Optional[int] = ..., vxlan_id_base: _Optional[int] = ..., vxlan_port: _Optional[int] = ..., mtu: _Optional[int] = ..., tunnel_name: _Optional[str] = ..., bridge_name: _Optional[str] = ..., masquerade: bool = ..., egress: _Optional[str] = ..., direct_prefix: _Optional[str] = ...) -> None: ...

class RunnerMessage(_message.Message):
    __slots__ = ("hello", "heartbeat", "result", "gone")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    GONE_FIELD_NUMBER: _ClassVar[int]
    hello: SessionHello
    heartbeat: Heartbeat
    result: CommandResult
    gone: WorkloadsGone
    def __init__(self, hello: _Optional[_Union[SessionHello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., result: _Optional[_Union[CommandResult, _Mapping]] = ..., gone: _Optional[_Union[WorkloadsGone, _Mapping]] = ...) -> None: ...

class WorkloadsGone(_message.Message):
    __slots__ = ("workloads",)
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    workloads: _containers.RepeatedCompositeFieldContainer[GoneWorkload]
    def __init__(self, workloads: _Optional[_Iterable[_Union[GoneWorkload, _Mapping]]] = ...) -> None: ...

class GoneWorkload(_message.Message):
    __slots__ = ("network", "workload_id", "reason")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    network: str
    workload_id: str
    reason: str
    def __init__(self, network: _Optional[str] = ..., workload_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SessionHello(_message.Message):
    __slots__ = ("name", "runner_id", "generation")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RUNNER_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    runner_id: int
    generation: int
    def __init__(self, name: _Optional[str] = ..., runner_id: _Optional[int] = ..., generation: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class HostMessage(_message.Message):
    __slots__ = ("accepted", "command", "revoked", "cancel")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    accepted: SessionAccepted
    command: Command
    revoked: AllocationRevoked
    cancel: CancelCommand
    def __init__(self, accepted: _Optional[_Union[SessionAccepted, _Mapping]] = ..., command: _Optional[_Union[Command, _Mapping]] = ..., revoked: _Optional[_Union[AllocationRevoked, _Mapping]] = ..., cancel: _Optional[_Union[CancelCommand, _Mapping]] = ...) -> None: ...

class CancelCommand(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class SessionAccepted(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AllocationRevoked(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("id", "attach", "detach", "sync", "peers", "routes", "underlay", "inspect", "trace_context", "valid_ms")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    ATTACH_FIELD_NUMBER: _ClassVar[int]
    DETACH_FIELD_NUMBER: _ClassVar[int]
    SYNC_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    UNDERLAY_FIELD_NUMBER: _ClassVar[int]
    INSPECT_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    VALID_MS_FIELD_NUMBER: _ClassVar[int]
    id: int
    attach: WorkloadSpec
    detach: WorkloadRef
    sync: WorkloadSet
    peers: PeerDirectory
    routes: RoutePlan
    underlay: UnderlayPeers
    inspect: Inspect
    trace_context: _containers.ScalarMap[str, str]
    valid_ms: int
    def __init__(self, id: _Optional[int] = ..., attach: _Optional[_Union[WorkloadSpec, _Mapping]] = ..., detach: _Optional[_Union[WorkloadRef, _Mapping]] = ..., sync: _Optional[_Union[WorkloadSet, _Mapping]] = ..., peers: _Optional[_Union[PeerDirectory, _Mapping]] = ..., routes: _Optional[_Union[RoutePlan, _Mapping]] = ..., underlay: _Optional[_Union[UnderlayPeers, _Mapping]] = ..., inspect: _Optional[_Union[Inspect, _Mapping]] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., valid_ms: _Optional[int] = ...) -> None: ...

class Inspect(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PeerDirectory(_message.Message):
    __slots__ = ("full", "upsert", "remove")
    FULL_FIELD_NUMBER: _ClassVar[int]
    UPSERT_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    full: bool
    upsert: _containers.RepeatedCompositeFieldContainer[PeerEntry]
    remove: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, full: bool = ..., upsert: _Optional[_Iterable[_Union[PeerEntry, _Mapping]]] = ..., remove: _Optional[_Iterable[str]] = ...) -> None: ...

class PeerEntry(_message.Message):
    __slots__ = ("network", "address", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    network: str
    address: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, network: _Optional[str] = ..., address: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RoutePlan(_message.Message):
    __slots__ = ("direct", "egress", "network_egress")
    class NetworkEgressEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DIRECT_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_EGRESS_FIELD_NUMBER: _ClassVar[int]
    direct: _containers.RepeatedCompositeFieldContainer[DirectPeer]
    egress: str
    network_egress: _containers.ScalarMap[str, str]
    def __init__(self, direct: _Optional[_Iterable[_Union[DirectPeer, _Mapping]]] = ..., egress: _Optional[str] = ..., network_egress: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DirectPeer(_message.Message):
    __slots__ = ("network", "runner_id", "physical_ip", "subnet", "vni")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    RUNNER_ID_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_IP_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    VNI_FIELD_NUMBER: _ClassVar[int]
    network: str
    runner_id: int
    physical_ip: str
    subnet: str
    vni: int
    def __init__(self, network: _Optional[str] = ..., runner_id: _Optional[int] = ..., physical_ip: _Optional[str] = ..., subnet: _Optional[str] = ..., vni: _Optional[int] = ...) -> None: ...

class UnderlayPeers(_message.Message):
    __slots__ = ("addresses",)
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class WorkloadSpec(_message.Message):
    __slots__ = ("network", "workload_id", "netns", "ifname", "address", "gateway", "mtu", "default_route", "vm", "firewall", "firewall_monitor", "source_table", "overlay_cidr", "netns_id", "handoff", "adopt_port")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ROUTE_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    FIREWALL_FIELD_NUMBER: _ClassVar[int]
    FIREWALL_MONITOR_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TABLE_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_CIDR_FIELD_NUMBER: _ClassVar[int]
    NETNS_ID_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_FIELD_NUMBER: _ClassVar[int]
    ADOPT_PORT_FIELD_NUMBER: _ClassVar[int]
    network: str
    workload_id: str
    netns: str
    ifname: str
    address: str
    gateway: str
    mtu: int
    default_route: bool
    vm: bool
    firewall: _policy_pb2.FirewallDecision
    firewall_monitor: bool
    source_table: int
    overlay_cidr: str
    netns_id: NetnsIdentity
    handoff: bool
    adopt_port: str
    def __init__(self, network: _Optional[str] = ..., workload_id: _Optional[str] = ..., netns: _Optional[str] = ..., ifname: _Optional[str] = ..., address: _Optional[str] = ..., gateway: _Optional[str] = ..., mtu: _Optional[int] = ..., default_route: bool = ..., vm: bool = ..., firewall: _Optional[_Union[_policy_pb2.FirewallDecision, _Mapping]] = ..., firewall_monitor: bool = ..., source_table: _Optional[int] = ..., overlay_cidr: _Optional[str] = ..., netns_id: _Optional[_Union[NetnsIdentity, _Mapping]] = ..., handoff: bool = ..., adopt_port: _Optional[str] = ...) -> None: ...

class NetnsIdentity(_message.Message):
    __slots__ = ("dev", "ino")
    DEV_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    dev: int
    ino: int
    def __init__(self, dev: _Optional[int] = ..., ino: _Optional[int] = ...) -> None: ...

class WorkloadRef(_message.Message):
    __slots__ = ("network", "workload_id", "give_back")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    GIVE_BACK_FIELD_NUMBER: _ClassVar[int]
    network: str
    workload_id: str
    give_back: bool
    def __init__(self, network: _Optional[str] = ..., workload_id: _Optional[str] = ..., give_back: bool = ...) -> None: ...

class WorkloadSet(_message.Message):
    __slots__ = ("workloads",)
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    workloads: _containers.RepeatedCompositeFieldContainer[WorkloadSpec]
    def __init__(self, workloads: _Optional[_Iterable[_Union[WorkloadSpec, _Mapping]]] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("id", "error", "netns_id", "held", "nothing_applied")
    ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    NETNS_ID_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    NOTHING_APPLIED_FIELD_NUMBER: _ClassVar[int]
    id: int
    error: str
    netns_id: NetnsIdentity
    held: HeldWorkloads
    nothing_applied: bool
    def __init__(self, id: _Optional[int] = ..., error: _Optional[str] = ..., netns_id: _Optional[_Union[NetnsIdentity, _Mapping]] = ..., held: _Optional[_Union[HeldWorkloads, _Mapping]] = ..., nothing_applied: bool = ...) -> None: ...

class HeldWorkloads(_message.Message):
    __slots__ = ("workloads",)
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    workloads: _containers.RepeatedCompositeFieldContainer[HeldWorkload]
    def __init__(self, workloads: _Optional[_Iterable[_Union[HeldWorkload, _Mapping]]] = ...) -> None: ...

class HeldWorkload(_message.Message):
    __slots__ = ("network", "workload_id", "address", "netns", "netns_id", "problem", "vm", "handoff")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    NETNS_ID_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_FIELD_NUMBER: _ClassVar[int]
    network: str
    workload_id: str
    address: str
    netns: str
    netns_id: NetnsIdentity
    problem: str
    vm: bool
    handoff: bool
    def __init__(self, network: _Optional[str] = ..., workload_id: _Optional[str] = ..., address: _Optional[str] = ..., netns: _Optional[str] = ..., netns_id: _Optional[_Union[NetnsIdentity, _Mapping]] = ..., problem: _Optional[str] = ..., vm: bool = ..., handoff: bool = ...) -> None: ...
