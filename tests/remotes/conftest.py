"""Fixtures of the DVID audit, fidelity and follow-up modules: one DVID test server per test
module (``server``), a repo on it (``repo``) and a plain HTTP client (``http``).  A module that
means another server by these names defines its own fixture, which wins."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from voxgate.remotes.dvid import DVIDRepo
from voxgate.testing.dvid import DVIDServerProcess, start_server

from .scratch import remove_scratch_dir


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DVIDServerProcess]:
    d = tmp_path_factory.mktemp("dvid")
    srv = start_server(log=d / "server.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def repo(server: DVIDServerProcess) -> DVIDRepo:
    return DVIDRepo.create(server.url, alias="tests")


@pytest.fixture
def http(server: DVIDServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module", autouse=True)
def _state_machine_scratch_removed() -> Iterator[None]:
    """The volumes a module's state machines made (tests/remotes/scratch.py) are removed at
    its end."""
    yield
    remove_scratch_dir()
