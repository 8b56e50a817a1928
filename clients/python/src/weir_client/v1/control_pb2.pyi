from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkloadKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKLOAD_KIND_UNSPECIFIED: _ClassVar[WorkloadKind]
    WORKLOAD_KIND_CONTAINER: _ClassVar[WorkloadKind]
    WORKLOAD_KIND_VM: _ClassVar[WorkloadKind]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    RUNNER_JOINED: _ClassVar[EventKind]
    RUNNER_LEFT: _ClassVar[EventKind]
    RUNNER_ACTIVE: _ClassVar[EventKind]
    RUNNER_INACTIVE: _ClassVar[EventKind]
    WORKLOAD_ATTACHED: _ClassVar[EventKind]
    WORKLOAD_DETACHED: _ClassVar[EventKind]
    RESERVATION_MADE: _ClassVar[EventKind]
    RESERVATION_USED: _ClassVar[EventKind]
    RESERVATION_EXPIRED: _ClassVar[EventKind]
    RESERVATION_RELEASED: _ClassVar[EventKind]
    ALLOCATION_CHANGED: _ClassVar[EventKind]
    PLUGIN_FAULT: _ClassVar[EventKind]
    PLUGIN_RELOADED: _ClassVar[EventKind]
    ADDRESS_CONFLICT: _ClassVar[EventKind]
    LEADER_ELECTED: _ClassVar[EventKind]
WORKLOAD_KIND_UNSPECIFIED: WorkloadKind
WORKLOAD_KIND_CONTAINER: WorkloadKind
WORKLOAD_KIND_VM: WorkloadKind
EVENT_KIND_UNSPECIFIED: EventKind
RUNNER_JOINED: EventKind
RUNNER_LEFT: EventKind
RUNNER_ACTIVE: EventKind
RUNNER_INACTIVE: EventKind
WORKLOAD_ATTACHED: EventKind
WORKLOAD_DETACHED: EventKind
RESERVATION_MADE: EventKind
RESERVATION_USED: EventKind
RESERVATION_EXPIRED: EventKind
RESERVATION_RELEASED: EventKind
ALLOCATION_CHANGED: EventKind
PLUGIN_FAULT: EventKind
PLUGIN_RELOADED: EventKind
ADDRESS_CONFLICT: EventKind
LEADER_ELECTED: EventKind

class GetPluginsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PluginInfo(_message.Message):
    __slots__ = ("name", "hooks", "version", "mode", "on_error", "loaded_unix_ms", "decisions", "faults", "source", "last_error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOOKS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ON_ERROR_FIELD_NUMBER: _ClassVar[int]
    LOADED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    hooks: _containers.RepeatedScalarFieldContainer[str]
    version: str
    mode: str
    on_error: str
    loaded_unix_ms: int
    decisions: int
    faults: int
    source: str
    last_error: str
    def __init__(self, name: _Optional[str] = ..., hooks: _Optional[_Iterable[str]] = ..., version: _Optional[str] = ..., mode: _Optional[str] = ..., on_error: _Optional[str] = ..., loaded_unix_ms: _Optional[int] = ..., decisions: _Optional[int] = ..., faults: _Optional[int] = ..., source: _Optional[str] = ..., last_error: _Optional[str] = ...) -> None: ...

class GetPluginsResponse(_message.Message):
    __slots__ = ("plugins",)
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    plugins: _containers.RepeatedCompositeFieldContainer[PluginInfo]
    def __init__(self, plugins: _Optional[_Iterable[_Union[PluginInfo, _Mapping]]] = ...) -> None: ...

class ReloadPluginsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadOutcome(_message.Message):
    __slots__ = ("name", "result", "version", "error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    result: str
    version: str
    error: str
    def __init__(self, name: _Optional[str] = ..., result: _Optional[str] = ..., version: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class ReloadPluginsResponse(_message.Message):
    __slots__ = ("plugins",)
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    plugins: _containers.RepeatedCompositeFieldContainer[ReloadOutcome]
    def __init__(self, plugins: _Optional[_Iterable[_Union[ReloadOutcome, _Mapping]]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("plan", "host_ip", "overlay_enabled", "runners", "max_runners", "active_runners", "workloads", "reservations", "inactive_runners", "placeholders", "networks", "last_event_seq", "host_version", "hosts", "leader_term")
    PLAN_FIELD_NUMBER: _ClassVar[int]
    HOST_IP_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_ENABLED_FIELD_NUMBER: _ClassVar[int]
    RUNNERS_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNNERS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_RUNNERS_FIELD_NUMBER: _ClassVar[int]
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    INACTIVE_RUNNERS_FIELD_NUMBER: _ClassVar[int]
    PLACEHOLDERS_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    HOST_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    LEADER_TERM_FIELD_NUMBER: _ClassVar[int]
    plan: str
    host_ip: str
    overlay_enabled: bool
    runners: _containers.RepeatedCompositeFieldContainer[RunnerStatus]
    max_runners: int
    active_runners: int
    workloads: int
    reservations: int
    inactive_runners: int
    placeholders: int
    networks: _containers.RepeatedCompositeFieldContainer[NetworkStatus]
    last_event_seq: int
    host_version: str
    hosts: _containers.RepeatedCompositeFieldContainer[HostStatus]
    leader_term: int
    def __init__(self, plan: _Optional[str] = ..., host_ip: _Optional[str] = ..., overlay_enabled: bool = ..., runners: _Optional[_Iterable[_Union[RunnerStatus, _Mapping]]] = ..., max_runners: _Optional[int] = ..., active_runners: _Optional[int] = ..., workloads: _Optional[int] = ..., reservations: _Optional[int] = ..., inactive_runners: _Optional[int] = ..., placeholders: _Optional[int] = ..., networks: _Optional[_Iterable[_Union[NetworkStatus, _Mapping]]] = ..., last_event_seq: _Optional[int] = ..., host_version: _Optional[str] = ..., hosts: _Optional[_Iterable[_Union[HostStatus, _Mapping]]] = ..., leader_term: _Optional[int] = ...) -> None: ...

class HostStatus(_message.Message):
    __slots__ = ("name", "role", "url", "underlay_ip", "version", "term", "refusal")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    UNDERLAY_IP_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    url: str
    underlay_ip: str
    version: str
    term: int
    refusal: str
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., url: _Optional[str] = ..., underlay_ip: _Optional[str] = ..., version: _Optional[str] = ..., term: _Optional[int] = ..., refusal: _Optional[str] = ...) -> None: ...

class NetworkStatus(_message.Message):
    __slots__ = ("name", "mode", "plan", "host_ip", "vxlan_id_base", "masquerade", "egress", "runners", "workloads", "reservations", "max_runners")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    HOST_IP_FIELD_NUMBER: _ClassVar[int]
    VXLAN_ID_BASE_FIELD_NUMBER: _ClassVar[int]
    MASQUERADE_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    RUNNERS_FIELD_NUMBER: _ClassVar[int]
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNNERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    mode: str
    plan: str
    host_ip: str
    vxlan_id_base: int
    masquerade: bool
    egress: str
    runners: int
    workloads: int
    reservations: int
    max_runners: int
    def __init__(self, name: _Optional[str] = ..., mode: _Optional[str] = ..., plan: _Optional[str] = ..., host_ip: _Optional[str] = ..., vxlan_id_base: _Optional[int] = ..., masquerade: bool = ..., egress: _Optional[str] = ..., runners: _Optional[int] = ..., workloads: _Optional[int] = ..., reservations: _Optional[int] = ..., max_runners: _Optional[int] = ...) -> None: ...

class RunnerStatus(_message.Message):
    __slots__ = ("name", "id", "subnet", "gateway", "physical_ip", "active", "last_seen_unix_ms", "labels", "connected", "placeholder", "workloads", "version")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_IP_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    PLACEHOLDER_FIELD_NUMBER: _ClassVar[int]
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: int
    subnet: str
    gateway: str
    physical_ip: str
    active: bool
    last_seen_unix_ms: int
    labels: _containers.ScalarMap[str, str]
    connected: bool
    placeholder: bool
    workloads: int
    version: str
    def __init__(self, name: _Optional[str] = ..., id: _Optional[int] = ..., subnet: _Optional[str] = ..., gateway: _Optional[str] = ..., physical_ip: _Optional[str] = ..., active: bool = ..., last_seen_unix_ms: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., connected: bool = ..., placeholder: bool = ..., workloads: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...

class ListRunnersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRunnersResponse(_message.Message):
    __slots__ = ("runners",)
    RUNNERS_FIELD_NUMBER: _ClassVar[int]
    runners: _containers.RepeatedCompositeFieldContainer[RunnerStatus]
    def __init__(self, runners: _Optional[_Iterable[_Union[RunnerStatus, _Mapping]]] = ...) -> None: ...

class ReleaseRunnerRequest(_message.Message):
    __slots__ = ("runner",)
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    runner: str
    def __init__(self, runner: _Optional[str] = ...) -> None: ...

class ReleaseRunnerResponse(_message.Message):
    __slots__ = ("released_id", "workloads_removed")
    RELEASED_ID_FIELD_NUMBER: _ClassVar[int]
    WORKLOADS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    released_id: int
    workloads_removed: int
    def __init__(self, released_id: _Optional[int] = ..., workloads_removed: _Optional[int] = ...) -> None: ...

class CleanupInactiveRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CleanupInactiveResponse(_message.Message):
    __slots__ = ("released", "runners")
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    RUNNERS_FIELD_NUMBER: _ClassVar[int]
    released: int
    runners: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, released: _Optional[int] = ..., runners: _Optional[_Iterable[str]] = ...) -> None: ...

class AttachWorkloadRequest(_message.Message):
    __slots__ = ("runner", "workload_id", "netns", "pid", "network", "labels", "requested_ip", "reservation_token", "kind")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_IP_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    runner: str
    workload_id: str
    netns: str
    pid: int
    network: str
    labels: _containers.ScalarMap[str, str]
    requested_ip: str
    reservation_token: str
    kind: WorkloadKind
    def __init__(self, runner: _Optional[str] = ..., workload_id: _Optional[str] = ..., netns: _Optional[str] = ..., pid: _Optional[int] = ..., network: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., requested_ip: _Optional[str] = ..., reservation_token: _Optional[str] = ..., kind: _Optional[_Union[WorkloadKind, str]] = ...) -> None: ...

class AttachWorkloadResponse(_message.Message):
    __slots__ = ("workload_id", "runner", "network", "ip", "gateway", "mtu", "host_ip", "ifname", "prefix", "mac", "dns", "kind", "host_ifname", "default_route", "host_mac")
    WORKLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    HOST_IP_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    DNS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    HOST_IFNAME_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ROUTE_FIELD_NUMBER: _ClassVar[int]
    HOST_MAC_FIELD_NUMBER: _ClassVar[int]
    workload_id: str
    runner: str
    network: str
    ip: str
    gateway: str
    mtu: int
    host_ip: str
    ifname: str
    prefix: int
    mac: str
    dns: _containers.RepeatedScalarFieldContainer[str]
    kind: WorkloadKind
    host_ifname: str
    default_route: bool
    host_mac: str
    def __init__(self, workload_id: _Optional[str] = ..., runner: _Optional[str] = ..., network: _Optional[str] = ..., ip: _Optional[str] = ..., gateway: _Optional[str] = ..., mtu: _Optional[int] = ..., host_ip: _Optional[str] = ..., ifname: _Optional[str] = ..., prefix: _Optional[int] = ..., mac: _Optional[str] = ..., dns: _Optional[_Iterable[str]] = ..., kind: _Optional[_Union[WorkloadKind, str]] = ..., host_ifname: _Optional[str] = ..., default_route: bool = ..., host_mac: _Optional[str] = ...) -> None: ...

class DetachWorkloadRequest(_message.Message):
    __slots__ = ("runner", "workload_id", "network")
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    runner: str
    workload_id: str
    network: str
    def __init__(self, runner: _Optional[str] = ..., workload_id: _Optional[str] = ..., network: _Optional[str] = ...) -> None: ...

class DetachWorkloadResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWorkloadsRequest(_message.Message):
    __slots__ = ("runner", "labels", "network", "page_size", "page_token")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runner: str
    labels: _containers.ScalarMap[str, str]
    network: str
    page_size: int
    page_token: str
    def __init__(self, runner: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., network: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class Workload(_message.Message):
    __slots__ = ("workload_id", "runner", "network", "ip", "kind", "netns", "ifname", "labels", "mac", "created_unix_ms", "reservation_id", "origin")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    workload_id: str
    runner: str
    network: str
    ip: str
    kind: WorkloadKind
    netns: str
    ifname: str
    labels: _containers.ScalarMap[str, str]
    mac: str
    created_unix_ms: int
    reservation_id: str
    origin: str
    def __init__(self, workload_id: _Optional[str] = ..., runner: _Optional[str] = ..., network: _Optional[str] = ..., ip: _Optional[str] = ..., kind: _Optional[_Union[WorkloadKind, str]] = ..., netns: _Optional[str] = ..., ifname: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., mac: _Optional[str] = ..., created_unix_ms: _Optional[int] = ..., reservation_id: _Optional[str] = ..., origin: _Optional[str] = ...) -> None: ...

class ListWorkloadsResponse(_message.Message):
    __slots__ = ("workloads", "next_page_token")
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    workloads: _containers.RepeatedCompositeFieldContainer[Workload]
    next_page_token: str
    def __init__(self, workloads: _Optional[_Iterable[_Union[Workload, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ReserveAddressRequest(_message.Message):
    __slots__ = ("runner", "ip", "ttl_seconds", "network")
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    runner: str
    ip: str
    ttl_seconds: int
    network: str
    def __init__(self, runner: _Optional[str] = ..., ip: _Optional[str] = ..., ttl_seconds: _Optional[int] = ..., network: _Optional[str] = ...) -> None: ...

class ReserveAddressResponse(_message.Message):
    __slots__ = ("ip", "token", "expires_unix_ms", "reservation_id")
    IP_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    ip: str
    token: str
    expires_unix_ms: int
    reservation_id: str
    def __init__(self, ip: _Optional[str] = ..., token: _Optional[str] = ..., expires_unix_ms: _Optional[int] = ..., reservation_id: _Optional[str] = ...) -> None: ...

class ValidateReservationRequest(_message.Message):
    __slots__ = ("token", "runner")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    token: str
    runner: str
    def __init__(self, token: _Optional[str] = ..., runner: _Optional[str] = ...) -> None: ...

class Reservation(_message.Message):
    __slots__ = ("reservation_id", "runner", "network", "ip", "expires_unix_ms", "state", "workload_id")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    runner: str
    network: str
    ip: str
    expires_unix_ms: int
    state: str
    workload_id: str
    def __init__(self, reservation_id: _Optional[str] = ..., runner: _Optional[str] = ..., network: _Optional[str] = ..., ip: _Optional[str] = ..., expires_unix_ms: _Optional[int] = ..., state: _Optional[str] = ..., workload_id: _Optional[str] = ...) -> None: ...

class ReleaseReservationRequest(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class ReleaseReservationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListReservationsRequest(_message.Message):
    __slots__ = ("runner",)
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    runner: str
    def __init__(self, runner: _Optional[str] = ...) -> None: ...

class ListReservationsResponse(_message.Message):
    __slots__ = ("reservations",)
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    reservations: _containers.RepeatedCompositeFieldContainer[Reservation]
    def __init__(self, reservations: _Optional[_Iterable[_Union[Reservation, _Mapping]]] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("after", "only_new")
    AFTER_FIELD_NUMBER: _ClassVar[int]
    ONLY_NEW_FIELD_NUMBER: _ClassVar[int]
    after: int
    only_new: bool
    def __init__(self, after: _Optional[int] = ..., only_new: bool = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "unix_ms", "kind", "runner", "runner_id", "network", "workload_id", "ip", "reservation_id", "detail", "plugin", "origin")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    RUNNER_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    seq: int
    unix_ms: int
    kind: EventKind
    runner: str
    runner_id: int
    network: str
    workload_id: str
    ip: str
    reservation_id: str
    detail: str
    plugin: str
    origin: str
    def __init__(self, seq: _Optional[int] = ..., unix_ms: _Optional[int] = ..., kind: _Optional[_Union[EventKind, str]] = ..., runner: _Optional[str] = ..., runner_id: _Optional[int] = ..., network: _Optional[str] = ..., workload_id: _Optional[str] = ..., ip: _Optional[str] = ..., reservation_id: _Optional[str] = ..., detail: _Optional[str] = ..., plugin: _Optional[str] = ..., origin: _Optional[str] = ...) -> None: ...

class DiagnoseRequest(_message.Message):
    __slots__ = ("runner",)
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    runner: str
    def __init__(self, runner: _Optional[str] = ...) -> None: ...

class Finding(_message.Message):
    __slots__ = ("runner", "network", "workload_id", "kind", "detail")
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    runner: str
    network: str
    workload_id: str
    kind: str
    detail: str
    def __init__(self, runner: _Optional[str] = ..., network: _Optional[str] = ..., workload_id: _Optional[str] = ..., kind: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class DiagnoseResponse(_message.Message):
    __slots__ = ("findings", "checked")
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    CHECKED_FIELD_NUMBER: _ClassVar[int]
    findings: _containers.RepeatedCompositeFieldContainer[Finding]
    checked: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, findings: _Optional[_Iterable[_Union[Finding, _Mapping]]] = ..., checked: _Optional[_Iterable[str]] = ...) -> None: ...
