"""`Client`: the common calls of weir.v1.Control over grpcio, typed.

Targets are URLs, as for the `weir` CLI:

- `unix:///run/weir/host.sock` — the host's control socket (plaintext; only root can open it).
  grpcio would send the socket path as the HTTP/2 `:authority`, which Weir's host (hyper/h2)
  refuses with `INTERNAL … RST_STREAM`; the client names the authority `localhost` instead
  (`grpc.default_authority`).
- `http://HOST:PORT` — plaintext TCP.
- `https://HOST:PORT` — TLS; `tls_ca` (PEM file; default: the system's roots), and for a host
  that requires client certificates `tls_cert` and `tls_key`.

Several targets are several hosts of which one leads (failover; docs/api.md, "Several hosts"),
with the same rules as the `weir` CLI:

- Before its first call the client finds the leader: it asks each target in turn for the health
  of `weir.v1.Control` and uses the first that answers SERVING (a standby answers NOT_SERVING, a
  host that is down does not answer). While none does, it goes over the list again every
  LEADER_RETRY seconds for up to `leader_wait` (LEADER_WAIT), then raises `NoLeader`, naming
  each target and what it answered.
- A call a standby refuses (UNAVAILABLE with the metadata `weir-role: standby`; nothing of it was
  applied) is sent again to the leader the refusal names in `weir-leader-url`, else to the leader
  found anew over the list, at most MAX_LEADER_HOPS times.
- Another UNAVAILABLE (the host went away, or it could not do the call itself) is sent again to
  the leader found anew — unless the host that answered still leads: then it was its own answer
  (e.g. a runner that did not answer in time) and it is raised. A retried attach or detach is
  safe: both are idempotent on the host (the same attach gets the same answer).

The client stays on the leader it found. With a single target none of this happens: calls go to
it, and what it answers is raised.
"""

import os
import threading
import time
from dataclasses import dataclass
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
#: Seconds a client of several hosts keeps looking for the leader while none answers as one (an
#: election under way, the leader restarting), going over the list every LEADER_RETRY seconds;
#: then it raises `NoLeader`. The `weir` CLI waits as long.
LEADER_WAIT = 5.0
#: Seconds between two rounds over the hosts while none leads.
LEADER_RETRY = 0.2
#: How many times one call is sent again after a standby refused it (or its host went away).
MAX_LEADER_HOPS = 3
#: Seconds one health probe of a host may take.
PROBE_TIMEOUT = 5.0
#: The service whose health says whether a host leads.
CONTROL_SERVICE = "weir.v1.Control"

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


@dataclass(frozen=True)
class Standby:
    """What a standby's refusal says about the leader (each None when the standby does not know)."""
    leader: Optional[str] = None
    leader_url: Optional[str] = None


def standby_of(err: grpc.RpcError) -> Optional[Standby]:
    """The standby's refusal in a failed call: UNAVAILABLE with the metadata `weir-role: standby`."""
    if not hasattr(err, "code") or err.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    md: Dict[str, str] = {}
    # A refusal is a trailers-only answer: grpcio gives its metadata as trailing metadata; look
    # at the initial metadata too.
    for part in ("initial_metadata", "trailing_metadata"):
        get = getattr(err, part, None)
        try:
            items = get() if get else None
        except Exception:  # noqa: BLE001 (a call object that has none)
            items = None
        for key, value in items or ():
            if isinstance(value, bytes):
                continue
            md[key.lower()] = value.strip()
    if md.get("weir-role") != "standby":
        return None
    return Standby(md.get("weir-leader") or None, md.get("weir-leader-url") or None)


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
    leader_wait: with several targets, seconds to keep looking for the leader while none leads
      (default LEADER_WAIT); see the module's documentation.

    Use it as a context manager, or call close().
    """

    def __init__(self, hosts: Union[str, Sequence[str], None] = None, *, token: Optional[str] = None,
                 token_file: Optional[str] = None, tls_ca: Optional[str] = None,
                 tls_cert: Optional[str] = None, tls_key: Optional[str] = None,
                 tls_server_name: Optional[str] = None, timeout: Optional[float] = DEFAULT_TIMEOUT,
                 options: Sequence[Tuple[str, object]] = (), leader_wait: float = LEADER_WAIT):
        self.targets = [Target(u) for u in _hosts(hosts)]
        self._token = resolve_token(token, token_file)
        self.timeout = timeout
        self.leader_wait = leader_wait
        self._several = len(self.targets) > 1
        # A host that was down is tried again soon (grpcio backs off up to 2 minutes by default),
        # so the hosts' list can be gone over every LEADER_RETRY seconds.
        backoff: List[Tuple[str, object]] = [("grpc.initial_reconnect_backoff_ms", 200),
                                             ("grpc.max_reconnect_backoff_ms", 1000)]
        self._options = (backoff if self._several else []) + list(options)
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
        # With several targets: whether the current one is the leader found (or followed).
        self._leader_known = not self._several
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

    # -- the leader (several targets) ------------------------------------------------------

    def _probe(self, i: int) -> Optional[str]:
        """None when target i leads (its health says SERVING for weir.v1.Control), else its answer."""
        try:
            # With the token: an authenticated probe is not counted against the host's limit of
            # unauthenticated calls.
            status = self._check(i, CONTROL_SERVICE, PROBE_TIMEOUT, self.metadata())
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                return f"cannot connect: {e.details()}"
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return f"no health answer within {PROBE_TIMEOUT:g}s"
            return f"health check: {e.code().name}: {e.details()}"
        if status == "SERVING":
            return None
        if status == "NOT_SERVING":
            return "NOT_SERVING (a standby)"
        return f"health: {status}"

    def _find_leader(self, method: str = "") -> int:
        """Make the first target (in order) that leads current; raise NoLeader after leader_wait."""
        start = time.monotonic()
        while True:
            answers = []
            for i in range(len(self.targets)):
                why = self._probe(i)
                if why is None:
                    with self._lock:
                        self._current = i
                        self._leader_known = True
                    return i
                answers.append((self.targets[i].url, why))
            elapsed = time.monotonic() - start
            if elapsed >= self.leader_wait:
                raise errors.NoLeader(answers, self.leader_wait, LEADER_RETRY, method)
            time.sleep(min(LEADER_RETRY, self.leader_wait - elapsed))

    def _leader(self, method: str) -> int:
        """The target calls go to: the current one, once the leader is known."""
        if self._leader_known:
            return self._current
        return self._find_leader(method)

    def _follow(self, url: str) -> Optional[int]:
        """Make the leader a refusal named current (a target of its own if it is not one); None
        when its URL cannot be used (malformed, or https:// without TLS settings)."""
        with self._lock:
            found = [i for i, t in enumerate(self.targets) if t.url == url]
            if found:
                i = found[0]
            else:
                try:
                    t = Target(url)
                except ConfigurationError:
                    return None
                if t.tls and self._credentials is None:
                    return None
                self.targets.append(t)
                i = len(self.targets) - 1
            self._current = i
            self._leader_known = True
            return i

    def _after_unavailable(self, i: int, err: grpc.RpcError, method: str, resume: bool) -> Optional[int]:
        """Where to send again a call target i failed with UNAVAILABLE; None: raise its error.

        A standby's refusal goes to the leader it names, else to the leader found anew. Any
        other UNAVAILABLE too, unless target i still leads and `resume` is false: then the host
        answered it itself (e.g. a runner that did not answer in time).
        """
        standby = standby_of(err)
        if standby is None:
            if not resume and self._probe(i) is None:
                return None
        elif standby.leader_url and standby.leader_url != self.targets[i].url:
            j = self._follow(standby.leader_url)
            if j is not None:
                return j
        with self._lock:
            self._leader_known = False
        return self._find_leader(method)

    def call(self, method: str, request, metadata: Metadata = (), timeout=_CLIENT_TIMEOUT):
        """Call a unary method of Control by name (on the leader, with several targets)."""
        deadline = self.timeout if timeout is _CLIENT_TIMEOUT else timeout
        i = self._leader(method) if self._several else self._current
        hops = 0
        while True:
            try:
                return getattr(self.stub(i), method)(request, metadata=self.metadata(metadata),
                                                     timeout=deadline)
            except grpc.RpcError as e:
                err = e
            again = None
            if self._several and err.code() == grpc.StatusCode.UNAVAILABLE and hops < MAX_LEADER_HOPS:
                again = self._after_unavailable(i, err, method, resume=False)
            if again is None:
                raise errors.from_rpc_error(err, self.targets[i].url, method) from None
            i = again
            hops += 1

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
        """grpc.health.v1.Health/Check on the current target (no token needed): "SERVING", …

        A leader answers SERVING for "weir.v1.Control", a standby NOT_SERVING.
        """
        try:
            return self._check(self._current, service, self.timeout)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e, self.target, "grpc.health.v1.Health/Check") from None

    def _check(self, i: int, service: str, timeout: Optional[float], metadata: Metadata = ()) -> str:
        """Health/Check on target i; raises grpc.RpcError."""
        name = service.encode()
        if len(name) > 127:
            raise ConfigurationError("health: a service name of at most 127 bytes")
        # HealthCheckRequest{service = 1} and HealthCheckResponse{status = 1}, encoded by hand:
        # the client has no other use for grpcio-health-checking.
        req = b"\x0a" + bytes([len(name)]) + name if name else b""
        check = self.channel(i).unary_unary("/grpc.health.v1.Health/Check",
                                            request_serializer=lambda b: b,
                                            response_deserializer=lambda b: b)
        resp = check(req, timeout=timeout, metadata=list(metadata) or None)
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

        Iterate it; `cancel()` (from another thread too) ends the iteration. With several
        targets, a watch refused by a standby or cut off (UNAVAILABLE) goes on from the leader
        (the one the refusal names, or the one found anew) after the last event it yielded.
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
        i = c._leader("WatchEvents") if c._several else c._current
        hops = 0
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
                    hops = 0
                    self.last_seq = e.seq
                    yield Event.from_pb(e)
                return
            except grpc.RpcError as e:
                err = e
            if err.code() == grpc.StatusCode.CANCELLED and (self._cancelled or c._closed):
                return
            if not (c._several and err.code() == grpc.StatusCode.UNAVAILABLE and hops < MAX_LEADER_HOPS):
                raise errors.from_rpc_error(err, c.targets[i].url, "WatchEvents") from None
            hops += 1
            again = c._after_unavailable(i, err, "WatchEvents", resume=True)
            assert again is not None
            i = again


__all__ = ["Client", "EventStream", "Target", "Standby", "standby_of", "resolve_token",
           "DEFAULT_HOST", "DEFAULT_TIMEOUT", "LEADER_WAIT", "LEADER_RETRY", "MAX_LEADER_HOPS",
           "WeirError", "ConfigurationError"]
