"""`Client`: the common calls of weir.v1.Control over grpcio, typed.

Targets are URLs, as for the `weir` CLI:

- `unix:///run/weir/host.sock` — the host's control socket (plaintext; only root can open it).
  grpcio would send the socket path as the HTTP/2 `:authority`, which Weir's host (hyper/h2)
  refuses with `INTERNAL … RST_STREAM`; the client names the authority `localhost` instead
  (`grpc.default_authority`).
- `http://HOST:PORT` — plaintext TCP.
- `https://HOST:PORT` — TLS; `tls_ca` (PEM file; default: the system's roots), and for a host
  that requires client certificates `tls_cert` and `tls_key`.

Several targets: calls go to the current one; when a call fails with UNAVAILABLE the client moves
to the next and retries the call there, trying each target at most once per call, and stays on
the target that answered. That is all: it does not know which host leads (leader-following comes
with hosts that can fail over). A retried attach or detach is safe: both are idempotent on the
host (the same attach gets the same answer).
"""

import os
import threading
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import grpc

from . import errors
from .errors import ConfigurationError, WeirError  # noqa: F401 (re-exported)
from .types import (Attachment, Diagnosis, Event, ReleasedRunner, Reservation, ReservedAddress,
                    RunnerStatus, Status, Workload, WorkloadPage)
from .v1 import control_pb2 as pb
from .v1 import control_pb2_grpc as pb_grpc

#: The host's control socket when neither `hosts` nor WEIR_HOST says otherwise.
DEFAULT_HOST = "unix:///run/weir/host.sock"
#: Seconds a unary call may take (an attach waits for the runner: `host.command_timeout`).
DEFAULT_TIMEOUT = 30.0

Metadata = Sequence[Tuple[str, str]]
# `timeout` not given: the client's.
_CLIENT_TIMEOUT = object()


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigurationError(f"{what} {path}: {e.strerror or e}") from e


def resolve_token(token: Optional[str] = None, token_file: Optional[str] = None) -> str:
    """The control token: `token`, else the first line of `token_file`, else $WEIR_TOKEN."""
    if token is None and token_file is not None:
        token = _read(token_file, "token file").decode().strip()
        if not token:
            raise ConfigurationError(f"token file {token_file} is empty")
    if token is None:
        token = os.environ.get("WEIR_TOKEN")
    if not token:
        raise ConfigurationError("no control token: pass token= or token_file=, or set WEIR_TOKEN")
    return token.strip()


_FORMS = "unix:///PATH, http://HOST:PORT or https://HOST:PORT"


class Target:
    """One host URL and how grpcio reaches it."""

    def __init__(self, url: str):
        self.url = url
        if url.startswith("unix://"):
            path = url[len("unix://"):]
            if not path.startswith("/"):
                raise ConfigurationError(f"{url!r}: the socket path must be absolute ({_FORMS})")
            self.grpc_target = "unix://" + path
            self.tls = False
            # The socket path is not a valid :authority; hyper refuses it with RST_STREAM.
            self.options: List[Tuple[str, object]] = [("grpc.default_authority", "localhost")]
        elif url.startswith(("http://", "https://")):
            self.tls = url.startswith("https://")
            rest = url.split("://", 1)[1].rstrip("/")
            if not rest or "/" in rest:
                raise ConfigurationError(f"{url!r}: no HOST:PORT, or a path after it ({_FORMS})")
            self.grpc_target = rest
            self.options = []
        else:
            raise ConfigurationError(f"{url!r} is not a host URL ({_FORMS})")

    def __repr__(self) -> str:
        return f"Target({self.url!r})"


def _hosts(hosts: Union[str, Sequence[str], None]) -> List[str]:
    if hosts is None:
        hosts = os.environ.get("WEIR_HOST") or DEFAULT_HOST
    if isinstance(hosts, str):
        hosts = [h.strip() for h in hosts.split(",") if h.strip()]
    if not hosts:
        raise ConfigurationError("no host URL")
    return list(hosts)


class Client:
    """A client of `weir.v1.Control` on one or more hosts.

    hosts: a URL or a list of URLs (a string may list several, comma-separated); default
      $WEIR_HOST, else unix:///run/weir/host.sock.
    token / token_file: the control token; default $WEIR_TOKEN.
    tls_ca, tls_cert, tls_key: PEM files for https:// targets; default $WEIR_TLS_CA,
      $WEIR_TLS_CERT, $WEIR_TLS_KEY (as for the CLI).
    tls_server_name: check the host's certificate for this name instead of the URL's host.
    timeout: seconds per unary call (None: no deadline). watch() has no deadline.
    options: extra grpcio channel options, for every target.

    Use it as a context manager, or call close().
    """

    def __init__(self, hosts: Union[str, Sequence[str], None] = None, *, token: Optional[str] = None,
                 token_file: Optional[str] = None, tls_ca: Optional[str] = None,
                 tls_cert: Optional[str] = None, tls_key: Optional[str] = None,
                 tls_server_name: Optional[str] = None, timeout: Optional[float] = DEFAULT_TIMEOUT,
                 options: Sequence[Tuple[str, object]] = ()):
        self.targets = [Target(u) for u in _hosts(hosts)]
        self._token = resolve_token(token, token_file)
        self.timeout = timeout
        self._options = list(options)
        self._credentials: Optional[grpc.ChannelCredentials] = None
        if any(t.tls for t in self.targets):
            tls_ca = tls_ca or os.environ.get("WEIR_TLS_CA")
            tls_cert = tls_cert or os.environ.get("WEIR_TLS_CERT")
            tls_key = tls_key or os.environ.get("WEIR_TLS_KEY")
            if bool(tls_cert) != bool(tls_key):
                raise ConfigurationError("tls_cert and tls_key go together (a client certificate and its key)")
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(tls_ca, "tls_ca") if tls_ca else None,
                private_key=_read(tls_key, "tls_key") if tls_key else None,
                certificate_chain=_read(tls_cert, "tls_cert") if tls_cert else None)
            if tls_server_name:
                self._options.append(("grpc.ssl_target_name_override", tls_server_name))
        self._lock = threading.Lock()
        self._closed = False
        self._current = 0
        self._channels: Dict[int, grpc.Channel] = {}
        self._stubs: Dict[int, pb_grpc.ControlStub] = {}

    # -- plumbing -------------------------------------------------------------------------

    @property
    def target(self) -> str:
        """The URL calls go to now."""
        return self.targets[self._current].url

    def metadata(self, extra: Metadata = ()) -> List[Tuple[str, str]]:
        """The call metadata: the bearer token, then `extra` (e.g. a W3C traceparent)."""
        return [("authorization", "Bearer " + self._token), *extra]

    def channel(self, index: Optional[int] = None) -> grpc.Channel:
        """The grpcio channel of a target (default: the current one), for calls not wrapped here."""
        i = self._current if index is None else index
        with self._lock:
            if self._closed:
                raise ConfigurationError("the client is closed")
            ch = self._channels.get(i)
            if ch is None:
                t = self.targets[i]
                opts = t.options + self._options
                if t.tls:
                    assert self._credentials is not None
                    ch = grpc.secure_channel(t.grpc_target, self._credentials, options=opts)
                else:
                    ch = grpc.insecure_channel(t.grpc_target, options=opts)
                self._channels[i] = ch
                self._stubs[i] = pb_grpc.ControlStub(ch)
            return ch

    def stub(self, index: Optional[int] = None) -> pb_grpc.ControlStub:
        """The generated ControlStub of a target (default: the current one)."""
        i = self._current if index is None else index
        self.channel(i)
        return self._stubs[i]

    def _move_on(self, failed: int) -> int:
        """Make the target after `failed` current (unless another call already moved on)."""
        with self._lock:
            if self._current == failed:
                self._current = (failed + 1) % len(self.targets)
            return self._current

    def call(self, method: str, request, metadata: Metadata = (), timeout=_CLIENT_TIMEOUT):
        """Call a unary method of Control by name, moving to the next target on UNAVAILABLE."""
        deadline = self.timeout if timeout is _CLIENT_TIMEOUT else timeout
        i = self._current
        for attempt in range(len(self.targets)):
            try:
                return getattr(self.stub(i), method)(request, metadata=self.metadata(metadata),
                                                     timeout=deadline)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE and attempt + 1 < len(self.targets):
                    i = self._move_on(i)
                    continue
                raise errors.from_rpc_error(e, self.targets[i].url, method) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close every channel; a watch() being iterated ends."""
        with self._lock:
            self._closed = True
            for ch in self._channels.values():
                ch.close()
            self._channels.clear()
            self._stubs.clear()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- health ---------------------------------------------------------------------------

    def health(self, service: str = "") -> str:
        """grpc.health.v1.Health/Check on the current target (no token needed): "SERVING", …"""
        name = service.encode()
        if len(name) > 127:
            raise ConfigurationError("health: a service name of at most 127 bytes")
        # HealthCheckRequest{service = 1} and HealthCheckResponse{status = 1}, encoded by hand:
        # the client has no other use for grpcio-health-checking.
        req = b"\x0a" + bytes([len(name)]) + name if name else b""
        check = self.channel().unary_unary("/grpc.health.v1.Health/Check",
                                           request_serializer=lambda b: b,
                                           response_deserializer=lambda b: b)
        try:
            resp = check(req, timeout=self.timeout)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e, self.target, "grpc.health.v1.Health/Check") from None
        status = resp[1] if len(resp) >= 2 and resp[0] == 0x08 else 0
        return {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}.get(status, "UNKNOWN")

    # -- the calls ------------------------------------------------------------------------

    def status(self, *, metadata: Metadata = ()) -> Status:
        return Status.from_pb(self.call("GetStatus", pb.GetStatusRequest(), metadata))

    def runners(self, *, metadata: Metadata = ()) -> List[RunnerStatus]:
        r = self.call("ListRunners", pb.ListRunnersRequest(), metadata)
        return [RunnerStatus.from_pb(x) for x in r.runners]

    def release_runner(self, runner: str, *, metadata: Metadata = ()) -> ReleasedRunner:
        """Remove a runner's allocation, tunnel and workloads (a placeholder: "#ID")."""
        return ReleasedRunner.from_pb(self.call("ReleaseRunner", pb.ReleaseRunnerRequest(runner=runner), metadata))

    def cleanup_inactive(self, *, metadata: Metadata = ()) -> List[str]:
        """Release every inactive runner (and expired placeholder); the ones released."""
        return list(self.call("CleanupInactive", pb.CleanupInactiveRequest(), metadata).runners)

    def attach(self, runner: str, workload_id: str, *, netns: str = "", pid: int = 0, network: str = "",
               labels: Optional[Mapping[str, str]] = None, requested_ip: str = "",
               reservation_token: str = "", vm: bool = False, metadata: Metadata = ()) -> Attachment:
        """Give a container namespace (`netns` path or `pid`) or a VM (`vm=True`) an interface."""
        req = pb.AttachWorkloadRequest(
            runner=runner, workload_id=workload_id, netns=netns, pid=pid, network=network,
            labels=dict(labels or {}), requested_ip=requested_ip, reservation_token=reservation_token,
            kind=pb.WORKLOAD_KIND_VM if vm else pb.WORKLOAD_KIND_UNSPECIFIED)
        return Attachment.from_pb(self.call("AttachWorkload", req, metadata))

    def detach(self, workload_id: str, *, runner: str = "", network: str = "",
               metadata: Metadata = ()) -> None:
        self.call("DetachWorkload", pb.DetachWorkloadRequest(workload_id=workload_id, runner=runner,
                                                             network=network), metadata)

    def workloads_page(self, *, runner: str = "", labels: Optional[Mapping[str, str]] = None,
                       network: str = "", page_size: int = 0, page_token: str = "",
                       metadata: Metadata = ()) -> WorkloadPage:
        """One page of ListWorkloads (page_size 0: the host's default, 1000)."""
        r = self.call("ListWorkloads", pb.ListWorkloadsRequest(
            runner=runner, labels=dict(labels or {}), network=network, page_size=page_size,
            page_token=page_token), metadata)
        return WorkloadPage([Workload.from_pb(w) for w in r.workloads], r.next_page_token)

    def workloads(self, *, runner: str = "", labels: Optional[Mapping[str, str]] = None,
                  network: str = "", page_size: int = 0, metadata: Metadata = ()) -> Iterator[Workload]:
        """Every matching workload, fetching page after page as the iteration needs them."""
        token = ""
        while True:
            page = self.workloads_page(runner=runner, labels=labels, network=network,
                                       page_size=page_size, page_token=token, metadata=metadata)
            yield from page.workloads
            if not page.next_page_token:
                return
            token = page.next_page_token

    def reserve(self, runner: str, *, ip: str = "", ttl_seconds: int = 0, network: str = "",
                metadata: Metadata = ()) -> ReservedAddress:
        """Hold an address on a runner (the next free one, or `ip`) for `ttl_seconds` (0: 300)."""
        return ReservedAddress.from_pb(self.call("ReserveAddress", pb.ReserveAddressRequest(
            runner=runner, ip=ip, ttl_seconds=ttl_seconds, network=network), metadata))

    def validate_reservation(self, token: str, *, runner: str = "", metadata: Metadata = ()) -> Reservation:
        return Reservation.from_pb(self.call("ValidateReservation", pb.ValidateReservationRequest(
            token=token, runner=runner), metadata))

    def release(self, token: str, *, metadata: Metadata = ()) -> None:
        """Give an unused reservation's address back."""
        self.call("ReleaseReservation", pb.ReleaseReservationRequest(token=token), metadata)

    def reservations(self, *, runner: str = "", metadata: Metadata = ()) -> List[Reservation]:
        r = self.call("ListReservations", pb.ListReservationsRequest(runner=runner), metadata)
        return [Reservation.from_pb(x) for x in r.reservations]

    def diagnose(self, *, runner: str = "", metadata: Metadata = ()) -> Diagnosis:
        """Compare the records with each connected runner's kernel (`weir doctor`)."""
        return Diagnosis.from_pb(self.call("Diagnose", pb.DiagnoseRequest(runner=runner), metadata))

    def watch(self, *, after: int = 0, only_new: bool = False, metadata: Metadata = ()) -> "EventStream":
        """The cluster's events after sequence `after` (0: the retained history), then new ones.

        Iterate it; `cancel()` (from another thread too) ends the iteration. On UNAVAILABLE it
        moves to the next target and resumes after the last event it yielded.
        """
        return EventStream(self, after, only_new, metadata)


class EventStream:
    """An iterator of `Event`s from WatchEvents; see `Client.watch`."""

    def __init__(self, client: Client, after: int, only_new: bool, metadata: Metadata):
        self._client = client
        self._after = after
        self._only_new = only_new
        self._metadata = metadata
        self._lock = threading.Lock()
        self._call = None
        self._cancelled = False
        #: The sequence number of the last event yielded (0: none yet).
        self.last_seq = 0

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._call is not None:
                self._call.cancel()

    def __iter__(self) -> Iterator[Event]:
        c = self._client
        i = c._current
        failures = 0
        while True:
            if self.last_seq:
                req = pb.WatchEventsRequest(after=self.last_seq)
            else:
                req = pb.WatchEventsRequest(after=self._after, only_new=self._only_new)
            with self._lock:
                if self._cancelled:
                    return
                self._call = c.stub(i).WatchEvents(req, metadata=c.metadata(self._metadata))
            try:
                for e in self._call:
                    failures = 0
                    self.last_seq = e.seq
                    yield Event.from_pb(e)
                return
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.CANCELLED and (self._cancelled or c._closed):
                    return
                failures += 1
                if e.code() == grpc.StatusCode.UNAVAILABLE and failures < len(c.targets):
                    i = c._move_on(i)
                    continue
                raise errors.from_rpc_error(e, c.targets[i].url, "WatchEvents") from None


__all__ = ["Client", "EventStream", "Target", "resolve_token", "DEFAULT_HOST", "DEFAULT_TIMEOUT",
           "WeirError", "ConfigurationError"]
