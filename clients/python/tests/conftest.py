"""The lab the tests run against, described by the environment (core/tests/python_client.rs
builds one and sets these; test_tls.py has its own):

  WEIR_TEST_HOST        the host's URL, e.g. unix:///run/weir-lab/NAME/host.sock
  WEIR_TEST_TOKEN_FILE  a file holding a control token
  WEIR_TEST_NETNS       (for the tests that attach) namespaces to attach, RUNNER=PATH,RUNNER=PATH,… (at least three, on
                        two runners or more; the tests detach everything they attach)
"""

import os
from dataclasses import dataclass
from typing import List, Tuple

import pytest


@dataclass
class LabInfo:
    host: str
    token_file: str
    netns: List[Tuple[str, str]]

    @property
    def token(self) -> str:
        with open(self.token_file) as f:
            return f.read().strip()


@pytest.fixture(scope="session")
def lab() -> LabInfo:
    host = os.environ.get("WEIR_TEST_HOST")
    token_file = os.environ.get("WEIR_TEST_TOKEN_FILE")
    if not host or not token_file:
        pytest.skip("no lab: set WEIR_TEST_HOST and WEIR_TEST_TOKEN_FILE (core/tests/python_client.rs does)")
    netns = []
    for item in os.environ.get("WEIR_TEST_NETNS", "").split(","):
        if item:
            runner, _, path = item.partition("=")
            netns.append((runner, path))
    return LabInfo(host, token_file, netns)


@pytest.fixture
def netns(lab) -> List[Tuple[str, str]]:
    """The namespaces to attach (WEIR_TEST_NETNS): three at least, on two runners at least."""
    assert len(lab.netns) >= 3 and len({r for r, _ in lab.netns}) >= 2, f"WEIR_TEST_NETNS: {lab.netns}"
    return lab.netns
