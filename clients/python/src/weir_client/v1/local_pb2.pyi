from weir_client.v1 import control_pb2 as _control_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LocalAdoptRequest(_message.Message):
    __slots__ = ("network", "dry_run")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    network: str
    dry_run: bool
    def __init__(self, network: _Optional[str] = ..., dry_run: bool = ...) -> None: ...

class AdoptedContainer(_message.Message):
    __slots__ = ("workload_id", "ip", "netns", "ifname", "port", "mac")
    WORKLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    workload_id: str
    ip: str
    netns: str
    ifname: str
    port: str
    mac: str
    def __init__(self, workload_id: _Optional[str] = ..., ip: _Optional[str] = ..., netns: _Optional[str] = ..., ifname: _Optional[str] = ..., port: _Optional[str] = ..., mac: _Optional[str] = ...) -> None: ...

class UnadoptedPort(_message.Message):
    __slots__ = ("port", "reason")
    PORT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    port: str
    reason: str
    def __init__(self, port: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class LocalAdoptResponse(_message.Message):
    __slots__ = ("network", "adopted", "skipped", "failed")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ADOPTED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    network: str
    adopted: _containers.RepeatedCompositeFieldContainer[AdoptedContainer]
    skipped: _containers.RepeatedCompositeFieldContainer[UnadoptedPort]
    failed: _containers.RepeatedCompositeFieldContainer[UnadoptedPort]
    def __init__(self, network: _Optional[str] = ..., adopted: _Optional[_Iterable[_Union[AdoptedContainer, _Mapping]]] = ..., skipped: _Optional[_Iterable[_Union[UnadoptedPort, _Mapping]]] = ..., failed: _Optional[_Iterable[_Union[UnadoptedPort, _Mapping]]] = ...) -> None: ...

class LocalAttachRequest(_message.Message):
    __slots__ = ("origin", "workload_id", "netns", "network", "labels", "requested_ip", "reservation_token", "ifname", "handoff", "adopt_port", "mac")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_IP_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_FIELD_NUMBER: _ClassVar[int]
    ADOPT_PORT_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    origin: str
    workload_id: str
    netns: str
    network: str
    labels: _containers.ScalarMap[str, str]
    requested_ip: str
    reservation_token: str
    ifname: str
    handoff: bool
    adopt_port: str
    mac: str
    def __init__(self, origin: _Optional[str] = ..., workload_id: _Optional[str] = ..., netns: _Optional[str] = ..., network: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., requested_ip: _Optional[str] = ..., reservation_token: _Optional[str] = ..., ifname: _Optional[str] = ..., handoff: bool = ..., adopt_port: _Optional[str] = ..., mac: _Optional[str] = ...) -> None: ...

class LocalDetachRequest(_message.Message):
    __slots__ = ("workload_id", "network")
    WORKLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    workload_id: str
    network: str
    def __init__(self, workload_id: _Optional[str] = ..., network: _Optional[str] = ...) -> None: ...

class LocalCheckRequest(_message.Message):
    __slots__ = ("workload_id", "network")
    WORKLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    workload_id: str
    network: str
    def __init__(self, workload_id: _Optional[str] = ..., network: _Optional[str] = ...) -> None: ...

class LocalCheckResponse(_message.Message):
    __slots__ = ("workload",)
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    workload: _control_pb2.Workload
    def __init__(self, workload: _Optional[_Union[_control_pb2.Workload, _Mapping]] = ...) -> None: ...

class LocalListRequest(_message.Message):
    __slots__ = ("origin",)
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    origin: str
    def __init__(self, origin: _Optional[str] = ...) -> None: ...

class LocalStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LocalStatusResponse(_message.Message):
    __slots__ = ("ready", "reason", "runner")
    READY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    reason: str
    runner: str
    def __init__(self, ready: bool = ..., reason: _Optional[str] = ..., runner: _Optional[str] = ...) -> None: ...
