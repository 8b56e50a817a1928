"""The client against a real host (a lab: see conftest.py)."""

import socket
import threading

import pytest

import weir_client
from weir_client import Client


@pytest.fixture
def weir(lab):
    with Client(lab.host, token_file=lab.token_file) as c:
        yield c


def test_status_health_and_runners(weir, netns):
    s = weir.status()
    assert s.plan == "10.128.0.0/12/6/14"
    assert s.overlay_enabled and s.host_ip == "10.128.0.1/12"
    assert s.networks[0].name == "default" and s.networks[0].mode == "overlay"
    names = {r.name for r in s.runners}
    assert {r for r, _ in netns} <= names
    assert all(isinstance(r, weir_client.RunnerStatus) and r.active and r.connected for r in s.runners)
    assert s.host_version and all(r.version == s.host_version for r in s.runners), s
    assert {r.name for r in weir.runners()} == names
    assert weir.health() == "SERVING"
    assert weir.health("weir.v1.Control") == "SERVING"


def test_a_job_reserve_attach_page_watch_detach(weir, netns):
    (r1, ns1), (r2, ns2), (r3, ns3) = netns[:3]
    start = weir.status().last_event_seq
    events = weir.watch(after=start)
    seen = []
    ids = {"pyjob-master", "pyjob-w0", "pyjob-w1"}

    def collect():
        for e in events:
            seen.append(e)
            if ids <= {x.workload_id for x in seen if x.kind == "workload_detached"}:
                return

    t = threading.Thread(target=collect, daemon=True)
    t.start()
    try:
        _job(weir, ids, (r1, ns1), (r2, ns2), (r3, ns3))
    finally:
        for w in weir.workloads(labels={"job": "pyjob"}):
            weir.detach(w.workload_id)
    t.join(10)
    events.cancel()
    assert not t.is_alive(), f"the watch did not see every detach: {seen}"
    kinds = [e.kind for e in seen]
    assert kinds[:2] == ["reservation_made", "reservation_used"], kinds
    assert kinds.count("workload_attached") == 3 and kinds.count("workload_detached") == 3
    assert [e.seq for e in seen] == sorted(e.seq for e in seen) and seen[0].seq > start
    assert events.last_seq == seen[-1].seq


def _job(weir, ids, first, second, third):
    (r1, ns1), (r2, ns2), (r3, ns3) = first, second, third
    res = weir.reserve(r1, ttl_seconds=120)
    assert isinstance(res, weir_client.ReservedAddress) and res.token.startswith("wr1.")
    v = weir.validate_reservation(res.token, runner=r1)
    assert (v.state, v.ip, v.runner) == ("reserved", res.ip, r1)
    master = weir.attach(r1, "pyjob-master", netns=ns1, reservation_token=res.token,
                         labels={"job": "pyjob", "role": "master"})
    assert master.address == res.ip and master.ip.endswith("/18")
    assert (master.kind, master.ifname, master.runner) == ("container", "eth0", r1)
    assert weir.validate_reservation(res.token).state == "used"
    w0 = weir.attach(r2, "pyjob-w0", netns=ns2, labels={"job": "pyjob", "master_addr": master.address})
    w1 = weir.attach(r3, "pyjob-w1", netns=ns3, labels={"job": "pyjob"})
    # The same attach again is the same answer (idempotent).
    assert weir.attach(r3, "pyjob-w1", netns=ns3, labels={"job": "pyjob"}) == w1

    # One per page: three pages, every workload once, in key order.
    page = weir.workloads_page(labels={"job": "pyjob"}, page_size=1)
    assert len(page.workloads) == 1 and page.next_page_token
    listed = list(weir.workloads(labels={"job": "pyjob"}, page_size=1))
    assert [w.workload_id for w in listed] == sorted(ids)
    by_id = {w.workload_id: w for w in listed}
    assert by_id["pyjob-w0"].labels == {"job": "pyjob", "master_addr": master.address}
    assert by_id["pyjob-w0"].ip == w0.ip and by_id["pyjob-master"].reservation_id == res.reservation_id
    assert by_id["pyjob-w0"].origin == "scheduler"
    on_r2 = sorted(w for w, r in (("pyjob-master", r1), ("pyjob-w0", r2), ("pyjob-w1", r3)) if r == r2)
    assert [w.workload_id for w in weir.workloads(runner=r2, labels={"job": "pyjob"})] == on_r2

    for wid in sorted(ids):
        weir.detach(wid)
    assert list(weir.workloads(labels={"job": "pyjob"})) == []


def test_a_reservation_released_is_gone(weir, netns):
    runner = netns[0][0]
    res = weir.reserve(runner)
    assert res.reservation_id in {r.reservation_id for r in weir.reservations(runner=runner)}
    weir.release(res.token)
    assert res.reservation_id not in {r.reservation_id for r in weir.reservations()}
    with pytest.raises(weir_client.WeirError):
        weir.validate_reservation(res.token)


def test_refusals_raise_their_exceptions(weir, lab, netns):
    with pytest.raises(weir_client.NotFound, match="no-such-runner"):
        weir.attach("no-such-runner", "x", netns=netns[0][1])
    with pytest.raises(weir_client.NotFound):
        weir.detach("never-attached")
    with pytest.raises(weir_client.InvalidArgument):
        weir.workloads_page(page_token="not a token")
    with pytest.raises(weir_client.InvalidArgument):
        weir.reserve(netns[0][0], ttl_seconds=5)
    with pytest.raises(weir_client.OutOfRange):
        next(iter(weir.watch(after=weir.status().last_event_seq + 1000)))
    with Client(lab.host, token="not-the-token-0123456789") as wrong:
        with pytest.raises(weir_client.Unauthenticated) as e:
            wrong.status()
        assert e.value.target == lab.host


def test_the_token_from_weir_token(lab, monkeypatch):
    monkeypatch.setenv("WEIR_TOKEN", lab.token)
    monkeypatch.setenv("WEIR_HOST", lab.host)
    with Client() as c:
        assert c.status().plan == "10.128.0.0/12/6/14"


def test_an_unreachable_host_is_skipped_for_the_next(lab, tmp_path):
    # Several hosts: the client asks each in turn which one leads; those that do not answer are
    # passed over, and the lab's host (alone, so the leader) is the one it uses.
    down = f"unix://{tmp_path}/down.sock"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = f"http://127.0.0.1:{s.getsockname()[1]}"
    with Client([dead_port, down, lab.host], token_file=lab.token_file) as c:
        assert c.target == dead_port
        assert c.status().plan == "10.128.0.0/12/6/14"
        assert c.target == lab.host, "it stays on the host that answered"
        assert c.health("weir.v1.Control") == "SERVING"
        # A refusal of the leader's is the answer, not a reason to look elsewhere.
        with pytest.raises(weir_client.NotFound):
            c.detach("never-attached")
        assert c.target == lab.host
    with Client([down, lab.host], token_file=lab.token_file) as c:
        # A watch started on the unreachable host moves on too.
        stream = c.watch(after=0)
        first = next(iter(stream))
        stream.cancel()
        assert first.seq == 1 and c.target == lab.host
