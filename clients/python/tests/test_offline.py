"""What needs no real host: URLs, tokens, TLS options, error mapping, which copy is imported, and
finding and following the leader among several hosts (fake hosts on loopback)."""

import os
import socket
import sys
import threading
import time
from concurrent import futures

import grpc
import pytest

import weir_client
from weir_client import Client, ConfigurationError, Standby, Target, resolve_token, standby_of
from weir_client.errors import from_rpc_error
from weir_client.v1 import control_pb2 as pb


def test_the_installed_package_is_the_one_imported():
    # The Rust test installs the package into a fresh venv and runs these tests outside the
    # checkout; WEIR_TEST_INSTALLED says so.
    if os.environ.get("WEIR_TEST_INSTALLED"):
        assert weir_client.__file__.startswith(sys.prefix), weir_client.__file__
    from weir_client.v1 import control_pb2, control_pb2_grpc
    assert control_pb2.DESCRIPTOR.name == "weir/v1/control.proto"
    assert control_pb2_grpc.ControlStub


def test_unix_targets_name_the_authority_localhost():
    t = Target("unix:///run/weir/host.sock")
    assert t.grpc_target == "unix:///run/weir/host.sock"
    assert ("grpc.default_authority", "localhost") in t.options
    assert not t.tls


def test_tcp_targets():
    assert Target("http://10.0.0.1:7700").grpc_target == "10.0.0.1:7700"
    assert not Target("http://10.0.0.1:7700").tls
    assert Target("https://weir-host:7700/").grpc_target == "weir-host:7700"
    assert Target("https://weir-host:7700").tls


@pytest.mark.parametrize("url", ["10.0.0.1:7700", "unix://relative.sock", "grpc://h:1", "http://h:1/x", "http://"])
def test_bad_urls_are_refused_naming_the_forms(url):
    with pytest.raises(ConfigurationError, match="unix:///"):
        Target(url)


def test_the_token_comes_from_the_argument_the_file_or_weir_token(tmp_path, monkeypatch):
    monkeypatch.setenv("WEIR_TOKEN", "from-the-environment-0123")
    f = tmp_path / "t"
    f.write_text("from-the-file-0123456789\n")
    assert resolve_token("from-the-argument-012345", str(f)) == "from-the-argument-012345"
    assert resolve_token(None, str(f)) == "from-the-file-0123456789"
    assert resolve_token() == "from-the-environment-0123"
    monkeypatch.delenv("WEIR_TOKEN")
    with pytest.raises(ConfigurationError, match="WEIR_TOKEN"):
        resolve_token()
    with pytest.raises(ConfigurationError, match="missing"):
        resolve_token(None, str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigurationError, match="empty"):
        resolve_token(None, str(tmp_path / "empty"))


def test_hosts_default_to_weir_host_then_the_control_socket(monkeypatch):
    monkeypatch.setenv("WEIR_TOKEN", "t" * 20)
    monkeypatch.setenv("WEIR_HOST", "unix:///a.sock, unix:///b.sock")
    assert [t.url for t in Client().targets] == ["unix:///a.sock", "unix:///b.sock"]
    monkeypatch.delenv("WEIR_HOST")
    assert Client().target == weir_client.DEFAULT_HOST == "unix:///run/weir/host.sock"


def test_tls_options_are_checked_before_any_call(tmp_path, monkeypatch):
    for v in ("WEIR_TLS_CA", "WEIR_TLS_CERT", "WEIR_TLS_KEY"):
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(ConfigurationError, match="tls_cert and tls_key"):
        Client("https://h:7700", token="t" * 20, tls_cert=str(tmp_path / "c.pem"))
    with pytest.raises(ConfigurationError, match="tls_ca .*missing.pem"):
        Client("https://h:7700", token="t" * 20, tls_ca=str(tmp_path / "missing.pem"))
    # Plaintext targets ignore the TLS options.
    Client("http://h:7700", token="t" * 20, tls_ca=str(tmp_path / "missing.pem"))


class _Failed(grpc.RpcError):
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


def test_status_codes_map_to_exceptions():
    e = from_rpc_error(_Failed(grpc.StatusCode.NOT_FOUND, "runner r9"), "unix:///s", "AttachWorkload")
    assert isinstance(e, weir_client.NotFound) and isinstance(e, weir_client.WeirError)
    assert e.code == grpc.StatusCode.NOT_FOUND and e.details == "runner r9" and e.target == "unix:///s"
    assert str(e) == "NOT_FOUND: runner r9 (AttachWorkload at unix:///s)"
    e = from_rpc_error(_Failed(grpc.StatusCode.DATA_LOSS, "x"), "t")
    assert type(e) is weir_client.WeirError


def test_a_standby_refusal_is_read_from_the_metadata():
    class Refused(_Failed):
        def __init__(self, code, md):
            super().__init__(code, "host h2 is a standby")
            self._md = md

        def trailing_metadata(self):
            return self._md

    md = (("weir-role", "standby"), ("weir-leader", "h1"), ("weir-leader-url", "http://192.0.2.1:7700"))
    assert standby_of(Refused(grpc.StatusCode.UNAVAILABLE, md)) == Standby("h1", "http://192.0.2.1:7700")
    assert standby_of(Refused(grpc.StatusCode.UNAVAILABLE, md[:1])) == Standby(None, None)
    # Not a standby's: another code, an UNAVAILABLE without the role, an error without metadata.
    assert standby_of(Refused(grpc.StatusCode.NOT_FOUND, md)) is None
    assert standby_of(Refused(grpc.StatusCode.UNAVAILABLE, md[1:])) is None
    assert standby_of(_Failed(grpc.StatusCode.UNAVAILABLE, "the runner did not answer")) is None


def test_no_leader_names_every_target_and_its_answer():
    e = weir_client.NoLeader([("http://a:7700", "cannot connect: refused"),
                              ("unix:///b.sock", "NOT_SERVING (a standby)")], 5.0, 0.2, "GetStatus")
    assert isinstance(e, weir_client.Unavailable) and e.code == grpc.StatusCode.UNAVAILABLE
    assert e.details == ("no host leads: none of the 2 hosts answered as the leader (tried for 5s, every 200ms)\n"
                         "  http://a:7700: cannot connect: refused\n"
                         "  unix:///b.sock: NOT_SERVING (a standby)")
    assert e.target == "http://a:7700,unix:///b.sock" and e.method == "GetStatus"


# -- several hosts: fake hosts on loopback (grpcio servers), nothing else -----------------------

TOKEN = "t" * 20


class FakeHost:
    """A host on loopback: the health of weir.v1.Control (`serving`), and `answer(context)` to
    every GetStatus (a GetStatusResponse, or an abort) and WatchEvents (events, or an abort)."""

    def __init__(self, serving, answer):
        self.serving = serving
        self.answer = answer
        self.calls = 0
        self.probe_tokens = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        raw = dict(request_deserializer=lambda b: b, response_serializer=lambda b: b)
        self.server.add_generic_rpc_handlers([
            grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
                "Check": grpc.unary_unary_rpc_method_handler(self._check, **raw)}),
            grpc.method_handlers_generic_handler("weir.v1.Control", {
                "GetStatus": grpc.unary_unary_rpc_method_handler(
                    self._call, request_deserializer=pb.GetStatusRequest.FromString,
                    response_serializer=pb.GetStatusResponse.SerializeToString),
                "WatchEvents": grpc.unary_stream_rpc_method_handler(
                    self._watch, request_deserializer=pb.WatchEventsRequest.FromString,
                    response_serializer=pb.Event.SerializeToString)}),
        ])
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.url = f"http://127.0.0.1:{port}"
        self.server.start()

    def _check(self, request, context):
        self.probe_tokens.append(dict(context.invocation_metadata()).get("authorization"))
        if request != b"\x0a\x0fweir.v1.Control":
            return b"\x08\x01"
        return b"\x08\x01" if self.serving else b"\x08\x02"

    def _call(self, request, context):
        self.calls += 1
        return self.answer(context)

    def _watch(self, request, context):
        self.calls += 1
        yield from self.answer(context, request)

    def stop(self):
        self.server.stop(None).wait()


def leader(name):
    """A leader's answer: GetStatus says `name` in its plan; WatchEvents sends two events."""
    def answer(context, watch=None):
        if watch is None:
            return pb.GetStatusResponse(plan=name)
        return iter([pb.Event(seq=watch.after + 1, detail=name), pb.Event(seq=watch.after + 2, detail=name)])
    return answer


def standby(leader_url=None, message="host h2 is a standby"):
    """A standby's refusal, naming the leader at `leader_url` (a callable: read at each call)."""
    def answer(context, watch=None):
        md = [("weir-role", "standby")]
        url = leader_url() if callable(leader_url) else leader_url
        if url:
            md += [("weir-leader", "h1"), ("weir-leader-url", url)]
        context.set_trailing_metadata(md)
        context.abort(grpc.StatusCode.UNAVAILABLE, message)
    return answer


@pytest.fixture
def hosts():
    started = []

    def start(serving, answer):
        h = FakeHost(serving, answer)
        started.append(h)
        return h
    yield start
    for h in started:
        h.stop()


def dead_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def plan(c):
    return c.call("GetStatus", pb.GetStatusRequest()).plan


def test_the_leader_is_the_first_target_in_order_whose_health_says_serving(hosts):
    dead = dead_url()
    a = hosts(False, standby())
    b = hosts(True, leader("b"))
    other = hosts(True, leader("other"))
    with Client([dead, a.url, b.url, other.url], token=TOKEN) as c:
        assert c.target == dead, "nothing is asked before the first call"
        assert plan(c) == "b" and c.target == b.url
        assert plan(c) == "b" and b.calls == 2, "it stays on the leader"
    assert (a.calls, other.calls) == (0, 0)
    # The probes carry the token (an authenticated check is not rate-limited).
    assert a.probe_tokens and set(a.probe_tokens) == {f"Bearer {TOKEN}"}


def test_a_standby_refusal_is_followed_to_the_leader_it_names(hosts):
    b = hosts(True, leader("b"))
    # Its health still says it leads, but it refuses calls as a standby now.
    deposed = hosts(True, standby(b.url))
    with Client([deposed.url, dead_url()], token=TOKEN) as c:
        assert plan(c) == "b"
        assert c.target == b.url and b.url in [t.url for t in c.targets], "the leader became a target"
        assert plan(c) == "b"
    assert (deposed.calls, b.calls) == (1, 2)


def test_a_refusal_naming_no_leader_goes_on_over_the_list(hosts):
    a = hosts(True, standby(None, "host a is a standby; no host leads yet"))
    b = hosts(False, leader("b"))
    with Client([a.url, b.url], token=TOKEN) as c:
        c._find_leader()
        assert c.target == a.url
        a.serving = False
        threading.Timer(0.3, lambda: setattr(b, "serving", True)).start()
        assert plan(c) == "b" and c.target == b.url
    assert (a.calls, b.calls) == (1, 1)


def test_without_a_leader_it_looks_for_leader_wait_then_names_every_answer(hosts):
    dead = dead_url()
    a = hosts(False, standby())
    started = time.monotonic()
    with Client([dead, a.url], token=TOKEN, leader_wait=0.7) as c:
        with pytest.raises(weir_client.NoLeader) as e:
            plan(c)
    assert time.monotonic() - started >= 0.5
    assert [url for url, _ in e.value.answers] == [dead, a.url]
    assert e.value.answers[0][1].startswith("cannot connect: ")
    assert e.value.answers[1][1] == "NOT_SERVING (a standby)"
    assert e.value.target == f"{dead},{a.url}" and e.value.method == "GetStatus"
    assert "tried for 0.7s" in str(e.value) and a.calls == 0


def test_a_leader_elected_while_it_looks_is_found(hosts):
    a = hosts(False, leader("a"))
    threading.Timer(0.5, lambda: setattr(a, "serving", True)).start()
    with Client([dead_url(), a.url], token=TOKEN) as c:
        assert plan(c) == "a"


def test_refusals_are_followed_a_bounded_number_of_times(hosts):
    confused = hosts(True, standby(None, "confused"))
    with Client([confused.url, dead_url()], token=TOKEN) as c:
        with pytest.raises(weir_client.Unavailable, match="confused") as e:
            plan(c)
        assert e.value.target == confused.url
    assert confused.calls == 1 + weir_client.MAX_LEADER_HOPS


def test_an_unavailable_from_a_host_that_still_leads_is_its_answer(hosts):
    def slow_runner(context, watch=None):
        context.abort(grpc.StatusCode.UNAVAILABLE, "runner r1 did not answer within 20s")
    a = hosts(True, slow_runner)
    b = hosts(True, leader("b"))
    with Client([a.url, b.url], token=TOKEN) as c:
        with pytest.raises(weir_client.Unavailable, match="runner r1"):
            plan(c)
        assert c.target == a.url
    assert (a.calls, b.calls) == (1, 0)


def test_a_leader_gone_is_looked_for_again(hosts):
    a = hosts(True, leader("a"))
    b = hosts(False, leader("b"))
    with Client([a.url, b.url], token=TOKEN) as c:
        assert plan(c) == "a"
        a.stop()
        b.serving = True
        assert plan(c) == "b" and c.target == b.url


def test_a_watch_refused_by_a_standby_goes_on_from_the_leader(hosts):
    b = hosts(True, leader("b"))
    deposed = hosts(True, standby(b.url))
    with Client([deposed.url], token=TOKEN) as one:
        # One target: its refusal is the answer.
        with pytest.raises(weir_client.Unavailable, match="is a standby"):
            next(iter(one.watch(after=7)))
    with Client([deposed.url, dead_url()], token=TOKEN) as c:
        stream = c.watch(after=7)
        events = list(stream)
        assert [(e.seq, e.detail) for e in events] == [(8, "b"), (9, "b")] and stream.last_seq == 9
        assert c.target == b.url


def test_one_target_is_called_as_it_is(hosts):
    a = hosts(False, standby("http://192.0.2.1:7700"))
    with Client(a.url, token=TOKEN) as c:
        with pytest.raises(weir_client.Unavailable, match="is a standby") as e:
            plan(c)
        assert e.value.target == a.url
    assert a.calls == 1 and a.probe_tokens == [], "no probe, no following"
