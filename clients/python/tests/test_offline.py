"""What needs no host: URLs, tokens, TLS options, error mapping, and which copy is imported."""

import os
import sys

import grpc
import pytest

import weir_client
from weir_client import Client, ConfigurationError, Target, resolve_token
from weir_client.errors import from_rpc_error


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


def test_no_reachable_host_is_unavailable_naming_the_last_target(tmp_path):
    a, b = f"unix://{tmp_path}/a.sock", f"unix://{tmp_path}/b.sock"
    with Client([a, b], token="t" * 20, timeout=5) as c:
        with pytest.raises(weir_client.Unavailable) as e:
            c.status()
        assert e.value.target == b and e.value.method == "GetStatus"
        # It moved on, and starts from the target that failed last next time.
        assert c.target == b
