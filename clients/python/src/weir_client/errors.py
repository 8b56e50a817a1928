"""The exceptions of weir_client.

Every refused or failed call raises a `WeirError` subclass chosen by its gRPC status code
(`NotFound` for NOT_FOUND, …); its `code`, `details` and `target` say what the host answered and
which host answered it. A misconfigured client (no token, a bad URL, half a TLS key pair) raises
`ConfigurationError` before any call is made.
"""

from typing import Dict, List, Optional, Tuple, Type

import grpc


class ConfigurationError(ValueError):
    """The client cannot be built as asked (no token, an unsupported URL, a missing file)."""


class WeirError(Exception):
    """A call the host refused, or that failed on its way."""

    def __init__(self, code: grpc.StatusCode, details: str, target: str, method: str = ""):
        self.code = code
        self.details = details
        self.target = target
        self.method = method
        where = f"{method} at {target}" if method else target
        super().__init__(f"{code.name}: {details} ({where})")


class InvalidArgument(WeirError):
    """INVALID_ARGUMENT: a malformed field (the message names it)."""


class NotFound(WeirError):
    """NOT_FOUND: an unknown runner, workload, network or reservation."""


class AlreadyExists(WeirError):
    """ALREADY_EXISTS: a conflicting attach or reservation."""


class FailedPrecondition(WeirError):
    """FAILED_PRECONDITION: an inactive runner, an expired or used token, events not retained."""


class PermissionDenied(WeirError):
    """PERMISSION_DENIED: the token does not allow the call (e.g. a join token)."""


class Unauthenticated(WeirError):
    """UNAUTHENTICATED: a missing or wrong token."""


class ResourceExhausted(WeirError):
    """RESOURCE_EXHAUSTED: a full subnet or id pool, a host at its call limits."""


class Unavailable(WeirError):
    """UNAVAILABLE: no host could be reached, or the runner did not answer in time."""


class NoLeader(Unavailable):
    """UNAVAILABLE: of several hosts, none answered as the leader within `leader_wait`.

    `answers` lists each URL with what it answered last, in the order they were tried; `target`
    is every URL, comma-separated.
    """

    def __init__(self, answers: List[Tuple[str, str]], waited: float, retry: float, method: str = ""):
        self.answers = list(answers)
        self.waited = waited
        lines = [f"no host leads: none of the {len(self.answers)} hosts answered as the leader "
                 f"(tried for {waited:g}s, every {retry * 1000:g}ms)"]
        lines += [f"  {url}: {why}" for url, why in self.answers]
        super().__init__(grpc.StatusCode.UNAVAILABLE, "\n".join(lines),
                         ",".join(url for url, _ in self.answers), method)


class Aborted(WeirError):
    """ABORTED: the runner failed the change (nothing was kept), or a watcher fell behind."""


class OutOfRange(WeirError):
    """OUT_OF_RANGE: `after` is beyond the last event."""


class DeadlineExceeded(WeirError):
    """DEADLINE_EXCEEDED: the call's timeout passed."""


_BY_CODE: Dict[grpc.StatusCode, Type[WeirError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def from_rpc_error(err: grpc.RpcError, target: str, method: str = "") -> WeirError:
    """The WeirError of a failed grpcio call."""
    code: Optional[grpc.StatusCode] = err.code() if hasattr(err, "code") else None
    details = (err.details() if hasattr(err, "details") else None) or str(err)
    if code is None:
        code = grpc.StatusCode.UNKNOWN
    return _BY_CODE.get(code, WeirError)(code, details, target, method)
