from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConfigureRequest(_message.Message):
    __slots__ = ("config", "interface_version")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_VERSION_FIELD_NUMBER: _ClassVar[int]
    config: _containers.ScalarMap[str, str]
    interface_version: str
    def __init__(self, config: _Optional[_Mapping[str, str]] = ..., interface_version: _Optional[str] = ...) -> None: ...

class ConfigureResponse(_message.Message):
    __slots__ = ("error",)
    ERROR_FIELD_NUMBER: _ClassVar[int]
    error: str
    def __init__(self, error: _Optional[str] = ...) -> None: ...

class PolicyPlan(_message.Message):
    __slots__ = ("spec", "overlay", "max_runners")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNNERS_FIELD_NUMBER: _ClassVar[int]
    spec: str
    overlay: str
    max_runners: int
    def __init__(self, spec: _Optional[str] = ..., overlay: _Optional[str] = ..., max_runners: _Optional[int] = ...) -> None: ...

class TakenId(_message.Message):
    __slots__ = ("id", "runner", "physical_ip", "last_seen_ms", "active")
    ID_FIELD_NUMBER: _ClassVar[int]
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_IP_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    id: int
    runner: str
    physical_ip: str
    last_seen_ms: int
    active: bool
    def __init__(self, id: _Optional[int] = ..., runner: _Optional[str] = ..., physical_ip: _Optional[str] = ..., last_seen_ms: _Optional[int] = ..., active: bool = ...) -> None: ...

class RunnerRequest(_message.Message):
    __slots__ = ("network", "name", "physical_ip", "labels", "taken", "plan")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_IP_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TAKEN_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    network: str
    name: str
    physical_ip: str
    labels: _containers.ScalarMap[str, str]
    taken: _containers.RepeatedCompositeFieldContainer[TakenId]
    plan: PolicyPlan
    def __init__(self, network: _Optional[str] = ..., name: _Optional[str] = ..., physical_ip: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., taken: _Optional[_Iterable[_Union[TakenId, _Mapping]]] = ..., plan: _Optional[_Union[PolicyPlan, _Mapping]] = ...) -> None: ...

class RunnerDecision(_message.Message):
    __slots__ = ("id", "builtin", "deny")
    ID_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    DENY_FIELD_NUMBER: _ClassVar[int]
    id: int
    builtin: bool
    deny: str
    def __init__(self, id: _Optional[int] = ..., builtin: bool = ..., deny: _Optional[str] = ...) -> None: ...

class Origin(_message.Message):
    __slots__ = ("engine", "name")
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    engine: str
    name: str
    def __init__(self, engine: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class AddressRange(_message.Message):
    __slots__ = ("first", "last")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    first: int
    last: int
    def __init__(self, first: _Optional[int] = ..., last: _Optional[int] = ...) -> None: ...

class AddressRequest(_message.Message):
    __slots__ = ("network", "workload_id", "vm", "labels", "runner", "runner_labels", "subnet", "gateway", "first", "last", "free", "free_count", "pool_generation", "origin")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class RunnerLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    RUNNER_LABELS_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    FREE_COUNT_FIELD_NUMBER: _ClassVar[int]
    POOL_GENERATION_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    network: str
    workload_id: str
    vm: bool
    labels: _containers.ScalarMap[str, str]
    runner: str
    runner_labels: _containers.ScalarMap[str, str]
    subnet: str
    gateway: str
    first: str
    last: str
    free: _containers.RepeatedCompositeFieldContainer[AddressRange]
    free_count: int
    pool_generation: int
    origin: Origin
    def __init__(self, network: _Optional[str] = ..., workload_id: _Optional[str] = ..., vm: bool = ..., labels: _Optional[_Mapping[str, str]] = ..., runner: _Optional[str] = ..., runner_labels: _Optional[_Mapping[str, str]] = ..., subnet: _Optional[str] = ..., gateway: _Optional[str] = ..., first: _Optional[str] = ..., last: _Optional[str] = ..., free: _Optional[_Iterable[_Union[AddressRange, _Mapping]]] = ..., free_count: _Optional[int] = ..., pool_generation: _Optional[int] = ..., origin: _Optional[_Union[Origin, _Mapping]] = ...) -> None: ...

class AddressDecision(_message.Message):
    __slots__ = ("address", "next_free", "deny")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NEXT_FREE_FIELD_NUMBER: _ClassVar[int]
    DENY_FIELD_NUMBER: _ClassVar[int]
    address: str
    next_free: bool
    deny: str
    def __init__(self, address: _Optional[str] = ..., next_free: bool = ..., deny: _Optional[str] = ...) -> None: ...

class LabelSet(_message.Message):
    __slots__ = ("labels",)
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class FirewallRequest(_message.Message):
    __slots__ = ("network", "workload_id", "labels", "runner", "address", "groups", "origin")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    network: str
    workload_id: str
    labels: _containers.ScalarMap[str, str]
    runner: str
    address: str
    groups: _containers.RepeatedCompositeFieldContainer[LabelSet]
    origin: Origin
    def __init__(self, network: _Optional[str] = ..., workload_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., runner: _Optional[str] = ..., address: _Optional[str] = ..., groups: _Optional[_Iterable[_Union[LabelSet, _Mapping]]] = ..., origin: _Optional[_Union[Origin, _Mapping]] = ...) -> None: ...

class PortRange(_message.Message):
    __slots__ = ("first", "last")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    first: int
    last: int
    def __init__(self, first: _Optional[int] = ..., last: _Optional[int] = ...) -> None: ...

class Peer(_message.Message):
    __slots__ = ("labels", "cidr", "host", "wan", "any")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CIDR_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    WAN_FIELD_NUMBER: _ClassVar[int]
    ANY_FIELD_NUMBER: _ClassVar[int]
    labels: LabelSet
    cidr: str
    host: bool
    wan: bool
    any: bool
    def __init__(self, labels: _Optional[_Union[LabelSet, _Mapping]] = ..., cidr: _Optional[str] = ..., host: bool = ..., wan: bool = ..., any: bool = ...) -> None: ...

class Rule(_message.Message):
    __slots__ = ("direction", "peer", "protocol", "ports", "verdict")
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    direction: str
    peer: Peer
    protocol: str
    ports: _containers.RepeatedCompositeFieldContainer[PortRange]
    verdict: str
    def __init__(self, direction: _Optional[str] = ..., peer: _Optional[_Union[Peer, _Mapping]] = ..., protocol: _Optional[str] = ..., ports: _Optional[_Iterable[_Union[PortRange, _Mapping]]] = ..., verdict: _Optional[str] = ...) -> None: ...

class FirewallDecision(_message.Message):
    __slots__ = ("rules", "default_verdict")
    RULES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VERDICT_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[Rule]
    default_verdict: str
    def __init__(self, rules: _Optional[_Iterable[_Union[Rule, _Mapping]]] = ..., default_verdict: _Optional[str] = ...) -> None: ...

class RunnerInfo(_message.Message):
    __slots__ = ("name", "labels", "physical_ip", "id")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_IP_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    physical_ip: str
    id: int
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., physical_ip: _Optional[str] = ..., id: _Optional[int] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("network", "runner", "joined", "peer", "peers")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    JOINED_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    network: str
    runner: RunnerInfo
    joined: bool
    peer: RunnerInfo
    peers: _containers.RepeatedCompositeFieldContainer[RunnerInfo]
    def __init__(self, network: _Optional[str] = ..., runner: _Optional[_Union[RunnerInfo, _Mapping]] = ..., joined: bool = ..., peer: _Optional[_Union[RunnerInfo, _Mapping]] = ..., peers: _Optional[_Iterable[_Union[RunnerInfo, _Mapping]]] = ...) -> None: ...

class RouteDelta(_message.Message):
    __slots__ = ("paths", "egress")
    class PathsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PATHS_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    paths: _containers.ScalarMap[str, str]
    egress: str
    def __init__(self, paths: _Optional[_Mapping[str, str]] = ..., egress: _Optional[str] = ...) -> None: ...
