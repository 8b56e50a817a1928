"""The client over TLS and mTLS (a lab host with a TLS listener: see conftest.py)."""

import os

import pytest

import weir_client
from weir_client import Client


@pytest.fixture
def tls():
    env = {k: os.environ.get(f"WEIR_TEST_TLS_{k.upper()}") for k in ("host", "ca", "cert", "key")}
    if not all(env.values()):
        pytest.skip("no TLS host: set WEIR_TEST_TLS_HOST, _CA, _CERT, _KEY (core/tests/python_client.rs does)")
    return env


def test_mtls_with_the_ca_and_a_client_certificate(tls, lab):
    with Client(tls["host"], token_file=lab.token_file, tls_ca=tls["ca"], tls_cert=tls["cert"],
                tls_key=tls["key"]) as c:
        assert c.status().plan == "10.128.0.0/12/6/14"
    # The certificate checked for another name it carries.
    with Client(tls["host"], token_file=lab.token_file, tls_ca=tls["ca"], tls_cert=tls["cert"],
                tls_key=tls["key"], tls_server_name="weir-host") as c:
        assert c.status().plan == "10.128.0.0/12/6/14"


def test_the_tls_options_from_the_environment(tls, lab, monkeypatch):
    monkeypatch.setenv("WEIR_TLS_CA", tls["ca"])
    monkeypatch.setenv("WEIR_TLS_CERT", tls["cert"])
    monkeypatch.setenv("WEIR_TLS_KEY", tls["key"])
    with Client(tls["host"], token_file=lab.token_file) as c:
        assert c.status().plan == "10.128.0.0/12/6/14"


def test_without_a_client_certificate_or_the_ca_the_handshake_fails(tls, lab, monkeypatch):
    for v in ("WEIR_TLS_CA", "WEIR_TLS_CERT", "WEIR_TLS_KEY"):
        monkeypatch.delenv(v, raising=False)
    with Client(tls["host"], token_file=lab.token_file, tls_ca=tls["ca"], timeout=10) as c:
        with pytest.raises(weir_client.Unavailable):
            c.status()
    # The system's roots do not know the lab's CA.
    with Client(tls["host"], token_file=lab.token_file, tls_cert=tls["cert"], tls_key=tls["key"],
                timeout=10) as c:
        with pytest.raises(weir_client.Unavailable):
            c.status()
    # Plaintext to the TLS listener.
    with Client(tls["host"].replace("https://", "http://"), token_file=lab.token_file, timeout=10) as c:
        with pytest.raises(weir_client.WeirError):
            c.status()
